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

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use safetensors::tensor::{Metadata, TensorInfo};

pub use crate::error::CodecError;
use crate::tree::{
    check_unique_keys, parse_json, write_document, BlobInfo, Json, Node, NodeEntry, Path,
    TreeParser, INLINE_STR_MAX, METADATA_KEY,
};
use crate::value::{ComfyType, DType, Entry, Payload, Tensor, Value};

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

// ---------------------------------------------------------------------------
// Decoding.
// ---------------------------------------------------------------------------

/// A data-section blob after header validation: its place in the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the container.
    pub start: usize,
    pub end: usize,
}

/// A validated header: the value tree with references resolved to slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Bytes before the data section (8-byte length + JSON header).
    pub header_len: usize,
    pub entries: Vec<NodeEntry>,
    pub slots: Vec<Slot>,
}

impl Layout {
    /// The value tree in canonical JSON, with references named as in the
    /// container (what the Python binding walks).
    pub fn tree_json(&self) -> String {
        write_document(&self.entries, &|i| {
            self.slots
                .get(i)
                .map(|s| s.name.clone())
                .unwrap_or_default()
        })
    }
}

/// How many bytes of a container [`read_layout`] needs to see: the 8-byte
/// prefix plus the header length it declares, checked against `limits`.
pub fn header_len(prefix: &[u8], total_len: u64, limits: &Limits) -> Result<usize, CodecError> {
    if total_len > limits.max_total_bytes {
        return Err(CodecError::TooLarge {
            size: total_len,
            limit: limits.max_total_bytes,
        });
    }
    let Some(len_bytes) = prefix.get(..LEN_PREFIX) else {
        return Err(CodecError::Truncated {
            what: "the 8-byte header length",
            needed: LEN_PREFIX as u64,
            available: prefix.len() as u64,
        });
    };
    let mut arr = [0u8; LEN_PREFIX];
    arr.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(arr);
    // Checked before anything is read or allocated for the header.
    if n > limits.max_header_bytes {
        return Err(CodecError::HeaderTooLarge {
            size: n,
            limit: limits.max_header_bytes,
        });
    }
    let needed = n + LEN_PREFIX as u64;
    if needed > total_len {
        return Err(CodecError::Truncated {
            what: "the header",
            needed,
            available: total_len,
        });
    }
    usize::try_from(needed).map_err(|_| CodecError::TooLarge {
        size: needed,
        limit: usize::MAX as u64,
    })
}

/// Validate the header of a container of `total_len` bytes whose first
/// bytes are `prefix` (at least [`header_len`] of them). Tensor data is not
/// read: this is everything the decoder checks except UTF-8 of `$str` blobs.
pub fn read_layout(prefix: &[u8], total_len: u64, limits: &Limits) -> Result<Layout, CodecError> {
    let header_end = header_len(prefix, total_len, limits)?;
    let Some(header) = prefix.get(LEN_PREFIX..header_end) else {
        return Err(CodecError::Truncated {
            what: "the header",
            needed: header_end as u64,
            available: prefix.len() as u64,
        });
    };
    if std::str::from_utf8(header).is_err() {
        return Err(CodecError::InvalidUtf8 {
            what: "the container header".into(),
        });
    }
    // Our own pass first: duplicate keys anywhere, typed errors that name
    // the tensor, and the count/rank/element limits before safetensors
    // builds its tables.
    let outer = parse_json(header, OUTER_HEADER_DEPTH, "container header")?;
    let Json::Object(members) = &outer else {
        return Err(CodecError::InvalidHeader {
            message: "the header must be a JSON object".into(),
        });
    };
    check_unique_keys(members, &Path::root("header"))?;
    let tensor_count = members.iter().filter(|(k, _)| k != "__metadata__").count();
    if tensor_count > limits.max_tensors {
        return Err(CodecError::TooManyTensors {
            count: tensor_count as u64,
            limit: limits.max_tensors as u64,
        });
    }
    let mut tree_text = None;
    let mut slots = Vec::with_capacity(tensor_count);
    for (key, value) in members {
        if key == "__metadata__" {
            tree_text = Some(metadata_tree(value)?);
        } else {
            slots.push(slot_from_header(key, value, limits)?);
        }
    }
    slots.sort_by_key(|s| (s.start, s.end));
    let data_len = total_len - header_end as u64;
    let mut expected_start = 0usize;
    for s in &slots {
        if s.start != expected_start {
            let reason = if s.start < expected_start {
                "it overlaps the previous tensor"
            } else {
                "it leaves a gap after the previous tensor"
            };
            return Err(CodecError::InvalidOffsets {
                tensor: s.name.clone(),
                reason: reason.into(),
            });
        }
        expected_start = s.end;
    }
    if expected_start as u64 != data_len {
        return Err(CodecError::Container {
            message: format!(
                "the data section is {data_len} bytes but the tensors cover {expected_start}"
            ),
        });
    }
    // safetensors' own validation as the final word on what a safetensors
    // reader accepts.
    let meta: Metadata = serde_json::from_slice(header).map_err(|e| CodecError::Container {
        message: e.to_string(),
    })?;
    if meta.data_len() as u64 != data_len {
        return Err(CodecError::Container {
            message: "the data section does not match the tensors' offsets".into(),
        });
    }

    let Some(tree_text) = tree_text else {
        return Err(CodecError::MissingMetadata);
    };
    let tree = parse_json(tree_text.as_bytes(), tree_json_depth(limits), "value tree")?;
    let infos: Vec<BlobInfo> = slots
        .iter()
        .map(|s| BlobInfo {
            name: s.name.clone(),
            dtype: s.dtype,
            shape: s.shape.clone(),
        })
        .collect();
    let mut parser = TreeParser::new(&infos, limits.max_depth);
    let entries = parser.document(&tree)?;
    parser.finish()?;
    for s in &mut slots {
        s.start += header_end;
        s.end += header_end;
    }
    Ok(Layout {
        header_len: header_end,
        entries,
        slots,
    })
}

fn metadata_tree(value: &Json) -> Result<String, CodecError> {
    let Json::Object(items) = value else {
        return Err(CodecError::InvalidHeader {
            message: "`__metadata__` must be an object of strings".into(),
        });
    };
    let mut found = None;
    for (k, v) in items {
        let Json::Str(s) = v else {
            return Err(CodecError::InvalidHeader {
                message: format!("`__metadata__.{k}` must be a string"),
            });
        };
        // Other keys are allowed (other safetensors tools add their own)
        // and ignored.
        if k == METADATA_KEY {
            found = Some(s.clone());
        }
    }
    found.ok_or(CodecError::MissingMetadata)
}

fn slot_from_header(name: &str, value: &Json, limits: &Limits) -> Result<Slot, CodecError> {
    let bad = |reason: &str| CodecError::InvalidHeader {
        message: format!("tensor `{name}`: {reason}"),
    };
    let Json::Object(fields) = value else {
        return Err(bad("expected an object with dtype, shape and data_offsets"));
    };
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    let Some(Json::Str(dtype_name)) = field("dtype") else {
        return Err(bad("`dtype` must be a string"));
    };
    let Some(dtype) = DType::parse(dtype_name) else {
        return Err(CodecError::UnsupportedDtype {
            tensor: name.to_owned(),
            dtype: dtype_name.clone(),
        });
    };
    let Some(Json::Array(dims)) = field("shape") else {
        return Err(bad("`shape` must be an array of non-negative integers"));
    };
    if dims.len() > limits.max_rank {
        return Err(CodecError::RankTooLarge {
            tensor: name.to_owned(),
            rank: dims.len(),
            limit: limits.max_rank,
        });
    }
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d {
            Json::Int(i) if *i >= 0 => {
                shape.push(usize::try_from(*i).map_err(|_| bad("dimension too large"))?)
            }
            _ => return Err(bad("`shape` must be an array of non-negative integers")),
        }
    }
    let elements = Tensor::numel(&shape).ok_or_else(|| CodecError::shape_overflow(&shape))?;
    if elements as u64 > limits.max_elements {
        return Err(CodecError::TooManyElements {
            tensor: name.to_owned(),
            elements: elements as u64,
            limit: limits.max_elements,
        });
    }
    let Some(Json::Array(offsets)) = field("data_offsets") else {
        return Err(bad("`data_offsets` must be [start, end]"));
    };
    let (start, end) = match offsets.as_slice() {
        [Json::Int(s), Json::Int(e)] if *s >= 0 && *e >= *s => (
            usize::try_from(*s).map_err(|_| bad("offset too large"))?,
            usize::try_from(*e).map_err(|_| bad("offset too large"))?,
        ),
        _ => {
            return Err(CodecError::InvalidOffsets {
                tensor: name.to_owned(),
                reason: "`data_offsets` must be [start, end] with start <= end".into(),
            })
        }
    };
    let expected = elements
        .checked_mul(dtype.size())
        .ok_or_else(|| CodecError::shape_overflow(&shape))?;
    if end - start != expected {
        return Err(CodecError::length_mismatch(
            dtype,
            &shape,
            expected,
            end - start,
        ));
    }
    Ok(Slot {
        name: name.to_owned(),
        dtype,
        shape,
        start,
        end,
    })
}

/// Decode container bytes, borrowing tensor data from `bytes`.
pub fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Payload<'a>, CodecError> {
    let layout = read_layout(bytes, bytes.len() as u64, limits)?;
    let mut entries = Vec::with_capacity(layout.entries.len());
    for e in &layout.entries {
        entries.push(Entry {
            name: e.name.clone(),
            comfy_type: e.comfy_type.clone().map(ComfyType),
            value: resolve(&e.value, &layout.slots, bytes, &e.name)?,
        });
    }
    Ok(Payload { entries })
}

fn resolve<'a>(
    node: &Node,
    slots: &[Slot],
    bytes: &'a [u8],
    entry: &str,
) -> Result<Value<'a>, CodecError> {
    let data = |i: usize| -> Result<(&Slot, &'a [u8]), CodecError> {
        let slot = slots.get(i).ok_or_else(|| CodecError::Container {
            message: "internal: reference to a missing slot".into(),
        })?;
        let data = bytes
            .get(slot.start..slot.end)
            .ok_or(CodecError::Truncated {
                what: "a tensor",
                needed: slot.end as u64,
                available: bytes.len() as u64,
            })?;
        Ok((slot, data))
    };
    let list = |items: &[Node]| -> Result<Vec<Value<'a>>, CodecError> {
        items
            .iter()
            .map(|n| resolve(n, slots, bytes, entry))
            .collect()
    };
    Ok(match node {
        Node::Null => Value::None,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::Int(*i),
        Node::Float(f) => Value::Float(*f),
        Node::Str(s) => Value::Str(s.clone()),
        Node::List(items) => Value::List(list(items)?),
        Node::Tuple(items) => Value::Tuple(list(items)?),
        Node::Dict(members) => Value::Dict(
            members
                .iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, slots, bytes, entry)?)))
                .collect::<Result<_, CodecError>>()?,
        ),
        Node::Tensor(i) => {
            let (slot, data) = data(*i)?;
            Value::Tensor(Tensor {
                dtype: slot.dtype,
                shape: slot.shape.clone(),
                data: Cow::Borrowed(data),
            })
        }
        Node::Bytes(i) => Value::Bytes(Cow::Borrowed(data(*i)?.1)),
        Node::LongStr(i) => {
            let (slot, data) = data(*i)?;
            let s = std::str::from_utf8(data).map_err(|_| CodecError::InvalidUtf8 {
                what: format!("string tensor `{}` in entry `{entry}`", slot.name),
            })?;
            Value::Str(s.to_owned())
        }
        Node::Pickle { blob, sig } => Value::Pickle {
            data: Cow::Borrowed(data(*blob)?.1),
            signature: sig.clone(),
        },
    })
}

// ---------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------

/// Where the bytes of one blob come from when the container is written.
#[derive(Debug, Clone)]
pub enum BlobSource<'a> {
    Slice(&'a [u8]),
    Owned(Vec<u8>),
    /// Supplied by the caller of [`Prepared::write_into`] (e.g. a Python
    /// buffer), identified by the caller's index.
    External(usize),
}

/// A blob to be written: its tensor description and where its bytes are.
#[derive(Debug, Clone)]
pub struct Blob<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub source: BlobSource<'a>,
}

impl Blob<'_> {
    fn nbytes(&self) -> Result<usize, CodecError> {
        Tensor::numel(&self.shape)
            .and_then(|n| n.checked_mul(self.dtype.size()))
            .ok_or_else(|| CodecError::shape_overflow(&self.shape))
    }
}

/// A container planned but not yet written: the header is final and every
/// blob has its offset.
#[derive(Debug)]
pub struct Prepared<'a> {
    header: Vec<u8>,
    /// Blobs with their absolute offsets, in file order.
    pieces: Vec<(usize, Blob<'a>)>,
    total_len: usize,
}

fn safetensors_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::Bool => safetensors::Dtype::BOOL,
        DType::U8 => safetensors::Dtype::U8,
        DType::I8 => safetensors::Dtype::I8,
        DType::I16 => safetensors::Dtype::I16,
        DType::U16 => safetensors::Dtype::U16,
        DType::I32 => safetensors::Dtype::I32,
        DType::U32 => safetensors::Dtype::U32,
        DType::I64 => safetensors::Dtype::I64,
        DType::U64 => safetensors::Dtype::U64,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F32 => safetensors::Dtype::F32,
        DType::F64 => safetensors::Dtype::F64,
    }
}

/// Blob `i` is named `t{i}`; blobs are numbered in depth-first encounter order.
fn blob_name(i: usize) -> String {
    format!("t{i}")
}

impl<'a> Prepared<'a> {
    /// Plan a container for a canonical tree (blobs numbered in encounter
    /// order, long strings already blobs).
    pub fn new(entries: &[NodeEntry], blobs: Vec<Blob<'a>>) -> Result<Self, CodecError> {
        let tree = write_document(entries, &blob_name);
        let mut named: Vec<(String, Blob<'a>)> = blobs
            .into_iter()
            .enumerate()
            .map(|(i, b)| (blob_name(i), b))
            .collect();
        // safetensors' own order: descending dtype alignment, then name. It
        // keeps every tensor aligned to its element size, and makes our bytes
        // identical to `safetensors::serialize` (tested).
        named.sort_by(|(ln, l), (rn, r)| {
            safetensors_dtype(r.dtype)
                .cmp(&safetensors_dtype(l.dtype))
                .then_with(|| ln.cmp(rn))
        });
        let mut infos = Vec::with_capacity(named.len());
        let mut starts = Vec::with_capacity(named.len());
        let mut offset = 0usize;
        for (name, blob) in &named {
            let n = blob.nbytes()?;
            if let BlobSource::Slice(s) = &blob.source {
                if s.len() != n {
                    return Err(CodecError::length_mismatch(
                        blob.dtype,
                        &blob.shape,
                        n,
                        s.len(),
                    ));
                }
            }
            if let BlobSource::Owned(s) = &blob.source {
                if s.len() != n {
                    return Err(CodecError::length_mismatch(
                        blob.dtype,
                        &blob.shape,
                        n,
                        s.len(),
                    ));
                }
            }
            let end = offset
                .checked_add(n)
                .ok_or_else(|| CodecError::shape_overflow(&blob.shape))?;
            starts.push(offset);
            infos.push((
                name.clone(),
                TensorInfo {
                    dtype: safetensors_dtype(blob.dtype),
                    shape: blob.shape.clone(),
                    data_offsets: (offset, end),
                },
            ));
            offset = end;
        }
        let meta = Metadata::new(
            Some(HashMap::from([(METADATA_KEY.to_owned(), tree)])),
            infos,
        )
        .map_err(|e| CodecError::Container {
            message: e.to_string(),
        })?;
        let mut json = serde_json::to_vec(&meta).map_err(|e| CodecError::Container {
            message: e.to_string(),
        })?;
        // Pad with spaces to a multiple of 8, as safetensors does, so tensor
        // data stays aligned.
        json.resize(json.len().next_multiple_of(LEN_PREFIX), b' ');
        let mut header = Vec::with_capacity(LEN_PREFIX + json.len());
        header.extend_from_slice(&(json.len() as u64).to_le_bytes());
        header.extend_from_slice(&json);
        let base = header.len();
        let total_len = base
            .checked_add(offset)
            .ok_or_else(|| CodecError::shape_overflow(&[base, offset]))?;
        let pieces = named
            .into_iter()
            .zip(starts)
            .map(|((_, b), start)| (base + start, b))
            .collect();
        Ok(Prepared {
            header,
            pieces,
            total_len,
        })
    }

    /// Total container size in bytes.
    pub fn len(&self) -> usize {
        self.total_len
    }

    /// Whether the container would be empty (never: the header is there).
    pub fn is_empty(&self) -> bool {
        self.total_len == 0
    }

    /// Write the container into `out` (exactly [`Prepared::len`] bytes).
    /// `external(index, dst)` fills the bytes of a [`BlobSource::External`].
    pub fn write_into<E>(
        &self,
        out: &mut [u8],
        mut external: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<CodecError>,
    {
        if out.len() != self.total_len {
            return Err(CodecError::Truncated {
                what: "the output buffer",
                needed: self.total_len as u64,
                available: out.len() as u64,
            }
            .into());
        }
        let (head, rest) = out.split_at_mut(self.header.len());
        head.copy_from_slice(&self.header);
        let base = self.header.len();
        let mut rest = rest;
        let mut pos = base;
        for (offset, blob) in &self.pieces {
            let n = blob.nbytes()?;
            // Pieces are contiguous and in order, so `offset == pos`.
            debug_assert_eq!(*offset, pos);
            let (dst, tail) = rest.split_at_mut(n);
            match &blob.source {
                BlobSource::Slice(s) => dst.copy_from_slice(s),
                BlobSource::Owned(v) => dst.copy_from_slice(v),
                BlobSource::External(i) => external(*i, dst)?,
            }
            rest = tail;
            pos += n;
        }
        Ok(())
    }

    /// Hand the container to `sink` in file order, piece by piece: the
    /// header, then each blob's bytes (borrowed, never copied here). Every
    /// byte goes to `sink` exactly once and the pieces add up to
    /// [`Prepared::len`]. `external(index)` gives the bytes of a
    /// [`BlobSource::External`]; a slice of the wrong length is an error
    /// before anything of that blob reaches `sink`.
    pub fn write_chunks<'x, E>(
        &'x self,
        mut external: impl FnMut(usize) -> Result<&'x [u8], CodecError>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<CodecError>,
    {
        sink(&self.header)?;
        for (_, blob) in &self.pieces {
            let n = blob.nbytes()?;
            let data: &[u8] = match &blob.source {
                BlobSource::Slice(s) => s,
                BlobSource::Owned(v) => v,
                BlobSource::External(i) => external(*i)?,
            };
            if data.len() != n {
                return Err(
                    CodecError::length_mismatch(blob.dtype, &blob.shape, n, data.len()).into(),
                );
            }
            sink(data)?;
        }
        Ok(())
    }

    /// Stream the container to `w` (header, then tensor bytes, in order)
    /// without holding it in memory; returns the bytes written. The bytes
    /// are the same as [`Prepared::to_vec`]'s. `w` is not flushed.
    pub fn write_to<'x, W: Write + ?Sized>(
        &'x self,
        w: &mut W,
        external: impl FnMut(usize) -> Result<&'x [u8], CodecError>,
    ) -> Result<u64, WriteError> {
        self.write_chunks(external, |chunk| w.write_all(chunk).map_err(WriteError::Io))?;
        Ok(self.total_len as u64)
    }

    /// Write the container into a new vector (each byte written once).
    pub fn to_vec(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(self.total_len);
        self.write_chunks(no_external, |chunk| {
            out.extend_from_slice(chunk);
            Ok::<(), CodecError>(())
        })?;
        Ok(out)
    }
}

fn no_external<'x>(_: usize) -> Result<&'x [u8], CodecError> {
    Err(CodecError::Container {
        message: "external blob without a source".into(),
    })
}

/// Why a container could not be streamed: the payload, or the writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("writing the container failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Turns values into a canonical node tree and its blobs.
struct Flattener<'v> {
    blobs: Vec<Blob<'v>>,
}

impl<'v> Flattener<'v> {
    fn push(&mut self, blob: Blob<'v>) -> usize {
        self.blobs.push(blob);
        self.blobs.len() - 1
    }

    fn bytes_blob(&mut self, data: &'v [u8]) -> usize {
        self.push(Blob {
            dtype: DType::U8,
            shape: vec![data.len()],
            source: BlobSource::Slice(data),
        })
    }

    fn node(
        &mut self,
        v: &'v Value<'_>,
        path: &mut Path,
        depth: usize,
    ) -> Result<Node, CodecError> {
        let nested = |path: &Path| {
            if depth >= MAX_ENCODE_DEPTH {
                Err(CodecError::TooDeep {
                    path: path.to_string(),
                    limit: MAX_ENCODE_DEPTH,
                })
            } else {
                Ok(())
            }
        };
        Ok(match v {
            Value::None => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Int(i) => Node::Int(*i),
            Value::Float(f) => Node::Float(*f),
            Value::Str(s) if s.len() > INLINE_STR_MAX => {
                Node::LongStr(self.bytes_blob(s.as_bytes()))
            }
            Value::Str(s) => Node::Str(s.clone()),
            Value::List(items) => {
                nested(path)?;
                Node::List(self.items(items, path, depth)?)
            }
            Value::Tuple(items) => {
                nested(path)?;
                Node::Tuple(self.items(items, path, depth)?)
            }
            Value::Dict(members) => {
                nested(path)?;
                let mut seen = std::collections::HashSet::with_capacity(members.len());
                let mut out = Vec::with_capacity(members.len());
                for (k, item) in members {
                    if !seen.insert(k.as_str()) {
                        return Err(CodecError::DuplicateKey {
                            path: path.to_string(),
                            key: k.clone(),
                        });
                    }
                    path.key(k);
                    out.push((k.clone(), self.node(item, path, depth + 1)?));
                    path.pop();
                }
                Node::Dict(out)
            }
            Value::Tensor(t) => {
                let t2 = Tensor::new(t.dtype, t.shape.clone(), &t.data[..])?;
                Node::Tensor(self.push(Blob {
                    dtype: t2.dtype,
                    shape: t2.shape,
                    source: BlobSource::Slice(&t.data[..]),
                }))
            }
            Value::Bytes(b) => Node::Bytes(self.bytes_blob(b)),
            Value::Pickle { data, signature } => {
                if !crate::tree::is_signature(signature) {
                    return Err(CodecError::Unsupported {
                        what: format!("the pickle at {path}"),
                        hint: "its signature must be a lower-case hex HMAC-SHA256 (64 digits)"
                            .into(),
                    });
                }
                Node::Pickle {
                    blob: self.bytes_blob(data),
                    sig: signature.clone(),
                }
            }
        })
    }

    fn items(
        &mut self,
        items: &'v [Value<'_>],
        path: &mut Path,
        depth: usize,
    ) -> Result<Vec<Node>, CodecError> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            path.index(i);
            out.push(self.node(item, path, depth + 1)?);
            path.pop();
        }
        Ok(out)
    }
}

/// Turn a payload into a canonical node tree and the blobs it refers to.
pub fn flatten<'v>(
    payload: &'v Payload<'_>,
) -> Result<(Vec<NodeEntry>, Vec<Blob<'v>>), CodecError> {
    let mut f = Flattener { blobs: Vec::new() };
    let mut entries = Vec::with_capacity(payload.entries.len());
    let mut names = std::collections::HashSet::with_capacity(payload.entries.len());
    for e in &payload.entries {
        if !names.insert(e.name.as_str()) {
            return Err(CodecError::DuplicateEntry {
                name: e.name.clone(),
            });
        }
        let value = f.node(&e.value, &mut Path::root(&e.name), 0)?;
        entries.push(NodeEntry {
            name: e.name.clone(),
            comfy_type: e.comfy_type.as_ref().map(|t| t.0.clone()),
            value,
        });
    }
    Ok((entries, f.blobs))
}

/// Plan a container for a tree whose blobs may be numbered in any order and
/// whose long strings may still be inline (e.g. a tree written by the
/// Python binding): blobs are renumbered in depth-first encounter order and
/// strings over the inline limit become `$str` blobs, so the bytes are the
/// same as [`encode`] gives for the equivalent payload.
pub fn prepare_tree<'a>(
    mut entries: Vec<NodeEntry>,
    blobs: Vec<Blob<'a>>,
) -> Result<Prepared<'a>, CodecError> {
    let mut slots: Vec<Option<Blob<'a>>> = blobs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    for e in &mut entries {
        renumber(&mut e.value, &mut slots, &mut out)?;
    }
    Prepared::new(&entries, out)
}

fn renumber<'a>(
    node: &mut Node,
    slots: &mut [Option<Blob<'a>>],
    out: &mut Vec<Blob<'a>>,
) -> Result<(), CodecError> {
    match node {
        Node::Str(s) if s.len() > INLINE_STR_MAX => {
            let bytes = std::mem::take(s).into_bytes();
            out.push(Blob {
                dtype: DType::U8,
                shape: vec![bytes.len()],
                source: BlobSource::Owned(bytes),
            });
            *node = Node::LongStr(out.len() - 1);
        }
        Node::Tensor(i) | Node::Bytes(i) | Node::LongStr(i) | Node::Pickle { blob: i, .. } => {
            let blob =
                slots
                    .get_mut(*i)
                    .and_then(Option::take)
                    .ok_or_else(|| CodecError::Container {
                        message: format!("blob {i} is missing or used twice"),
                    })?;
            out.push(blob);
            *i = out.len() - 1;
        }
        Node::List(items) | Node::Tuple(items) => {
            for item in items {
                renumber(item, slots, out)?;
            }
        }
        Node::Dict(members) => {
            for (_, item) in members {
                renumber(item, slots, out)?;
            }
        }
        Node::Null | Node::Bool(_) | Node::Int(_) | Node::Float(_) | Node::Str(_) => {}
    }
    Ok(())
}

/// Encode a payload into container bytes. Deterministic: the same payload
/// always gives the same bytes.
pub fn encode(payload: &Payload<'_>) -> Result<Vec<u8>, CodecError> {
    let (entries, blobs) = flatten(payload)?;
    Prepared::new(&entries, blobs)?.to_vec()
}

/// Stream a payload's container to `w`: the header, then each tensor's
/// bytes straight from the payload, so no copy of the container is held in
/// memory. The bytes are identical to [`encode`]'s; returns how many were
/// written. `w` is not flushed (wrap a `File` in a `BufWriter` and flush
/// it, or pass the `File` itself: the pieces are few and large).
pub fn encode_to_writer<W: Write + ?Sized>(
    payload: &Payload<'_>,
    w: &mut W,
) -> Result<u64, WriteError> {
    let (entries, blobs) = flatten(payload)?;
    Prepared::new(&entries, blobs)?.write_to(w, no_external)
}
