//! [`CodecError`]: every way a payload can fail to encode or decode.
//!
//! Each variant carries the context a user needs to find the problem (the
//! tensor name, the path inside the value tree, the limit that was hit);
//! messages say what happened and, where there is one, what to do.

use crate::value::DType;

/// Why a payload could not be encoded or a container could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    #[error("container is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("container header is {size} bytes, over the limit of {limit} bytes")]
    HeaderTooLarge { size: u64, limit: u64 },
    #[error(
        "container is truncated: {what} needs {needed} bytes but only {available} are present"
    )]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("container header is not valid JSON: {message}")]
    InvalidHeader { message: String },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("tensor `{tensor}` has dtype {dtype}, which comfy-remote does not carry (supported: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64)")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("container has {count} tensors, over the limit of {limit}")]
    TooManyTensors { count: u64, limit: u64 },
    #[error("tensor `{tensor}` has rank {rank}, over the limit of {limit}")]
    RankTooLarge {
        tensor: String,
        rank: usize,
        limit: usize,
    },
    #[error("tensor `{tensor}` has {elements} elements, over the limit of {limit}")]
    TooManyElements {
        tensor: String,
        elements: u64,
        limit: u64,
    },
    #[error("tensor `{tensor}` has invalid data offsets: {reason}")]
    InvalidOffsets { tensor: String, reason: String },
    #[error("container is not a valid safetensors file: {message}")]
    Container { message: String },
    #[error("container has no `comfy_remote` metadata: it is a plain safetensors file, not a comfy-remote payload")]
    MissingMetadata,
    #[error("payload format version {version} is not supported (this build reads version 1); upgrade comfy-remote")]
    UnsupportedVersion { version: String },
    #[error("value nesting is deeper than the limit of {limit} at {path}")]
    TooDeep { path: String, limit: usize },
    #[error("duplicate key `{key}` at {path}")]
    DuplicateKey { path: String, key: String },
    #[error("duplicate entry name `{name}`")]
    DuplicateEntry { name: String },
    #[error("unknown tag `{tag}` at {path}")]
    UnknownTag { path: String, tag: String },
    #[error("invalid value at {path}: {reason}")]
    InvalidNode { path: String, reason: String },
    #[error("{path} refers to tensor `{tensor}`, which the container does not have")]
    DanglingRef { path: String, tensor: String },
    #[error("tensor `{tensor}` is referenced more than once (again at {path})")]
    DuplicateRef { path: String, tensor: String },
    #[error("tensor `{tensor}` is not referenced by any value")]
    UnreferencedTensor { tensor: String },
    #[error("cannot encode {what}: {hint}")]
    Unsupported { what: String, hint: String },
    #[error("invalid JSON body: {reason}")]
    InvalidJsonBody { reason: String },
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

    /// A stable, machine-readable name of the variant (`"too_large"`), for
    /// error details in API responses and for the Python binding.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::ShapeOverflow { .. } => "shape_overflow",
            CodecError::LengthMismatch { .. } => "length_mismatch",
            CodecError::TooLarge { .. } => "too_large",
            CodecError::HeaderTooLarge { .. } => "header_too_large",
            CodecError::Truncated { .. } => "truncated",
            CodecError::InvalidHeader { .. } => "invalid_header",
            CodecError::InvalidUtf8 { .. } => "invalid_utf8",
            CodecError::UnsupportedDtype { .. } => "unsupported_dtype",
            CodecError::TooManyTensors { .. } => "too_many_tensors",
            CodecError::RankTooLarge { .. } => "rank_too_large",
            CodecError::TooManyElements { .. } => "too_many_elements",
            CodecError::InvalidOffsets { .. } => "invalid_offsets",
            CodecError::Container { .. } => "invalid_container",
            CodecError::MissingMetadata => "missing_metadata",
            CodecError::UnsupportedVersion { .. } => "unsupported_version",
            CodecError::TooDeep { .. } => "too_deep",
            CodecError::DuplicateKey { .. } => "duplicate_key",
            CodecError::DuplicateEntry { .. } => "duplicate_entry",
            CodecError::UnknownTag { .. } => "unknown_tag",
            CodecError::InvalidNode { .. } => "invalid_node",
            CodecError::DanglingRef { .. } => "dangling_ref",
            CodecError::DuplicateRef { .. } => "duplicate_ref",
            CodecError::UnreferencedTensor { .. } => "unreferenced_tensor",
            CodecError::Unsupported { .. } => "unsupported",
            CodecError::InvalidJsonBody { .. } => "invalid_json_body",
        }
    }
}
