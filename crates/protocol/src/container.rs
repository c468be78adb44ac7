//! The binary container: encoding, decoding and the decoder's limits.
//! (Implementation pending; signatures are the contract other crates use.)

use crate::value::{DType, Payload};

/// Hard limits the decoder enforces before it allocates or trusts anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest container accepted, in bytes.
    pub max_total_bytes: u64,
    /// Largest JSON header, in bytes.
    pub max_header_bytes: u64,
    pub max_tensors: usize,
    pub max_rank: usize,
    /// Largest element count of one tensor.
    pub max_elements: u64,
    /// Deepest nesting of lists/tuples/dicts.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 8 << 30,
            max_header_bytes: 16 << 20,
            max_tensors: 4096,
            max_rank: 8,
            max_elements: 1 << 32,
            max_depth: 64,
        }
    }
}

/// Why a container could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("tensor shape {shape:?} overflows")]
    ShapeOverflow { shape: Vec<usize> },
    #[error("tensor of dtype {dtype} and shape {shape:?} needs {expected} bytes but has {actual}")]
    LengthMismatch {
        dtype: DType,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
}

impl CodecError {
    pub(crate) fn shape_overflow(shape: &[usize]) -> Self {
        CodecError::ShapeOverflow {
            shape: shape.to_vec(),
        }
    }

    pub(crate) fn length_mismatch(
        dtype: DType,
        shape: &[usize],
        expected: usize,
        actual: usize,
    ) -> Self {
        CodecError::LengthMismatch {
            dtype,
            shape: shape.to_vec(),
            expected,
            actual,
        }
    }
}

/// Encode a payload into container bytes.
pub fn encode(_payload: &Payload<'_>) -> Result<Vec<u8>, CodecError> {
    unimplemented!("container encoder")
}

/// Decode container bytes, borrowing tensor data from `bytes`.
pub fn decode<'a>(_bytes: &'a [u8], _limits: &Limits) -> Result<Payload<'a>, CodecError> {
    unimplemented!("container decoder")
}
