//! The binary container: a safetensors file whose `__metadata__` carries the
//! value tree. Encoding, decoding and the decoder's limits.
//!
//! Both directions go through a layout step that needs no tensor data:
//! [`read_layout`] validates a header against the total length, and
//! [`Prepared`] plans a header plus data offsets before any byte is copied.
//! That is what lets the Python binding decode without copying tensor data
//! and encode with exactly one copy into the output, and what lets
//! [`encode_to_writer`] / [`Prepared::write_to`] stream a container (the
//! header, then each tensor's bytes) to a file or socket without building it
//! in memory.

mod decode;
mod encode;

pub use crate::error::CodecError;
pub use decode::{decode, header_len, read_layout, Layout, Slot};
pub use encode::{
    encode, encode_to_writer, encode_to_writer_with, encode_with, flatten, pack_tree, prepare_tree,
    Blob, BlobSource, Prepared, WriteError,
};

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

/// Size of the little-endian header length that opens every container.
pub const LEN_PREFIX: usize = 8;

/// Deepest nesting an encoder produces: deeper trees would be refused by
/// every decoder running the default limits.
const MAX_ENCODE_DEPTH: usize = 64;

// The outer safetensors header nests three levels deep
// (`{"t0":{"shape":[..]}}`), the value tree at most two JSON levels per
// value level (a tag object around an array) plus the document, the entry
// list and the entry object.
const OUTER_HEADER_DEPTH: usize = 3;
fn tree_json_depth(limits: &Limits) -> usize {
    limits.max_depth.saturating_mul(2).saturating_add(4)
}
