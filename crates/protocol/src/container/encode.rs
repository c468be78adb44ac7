//! Encoding: values flattened into a canonical tree and its blobs, planned
//! ([`Prepared`]) with the safetensors header final before any byte is
//! written, then written in one pass to a vector, a sink or a writer.

use std::collections::HashMap;
use std::io::Write;

use safetensors::tensor::{Metadata, TensorInfo};

use super::{CodecError, LEN_PREFIX, MAX_ENCODE_DEPTH};
use crate::packed::PackOptions;
use crate::tree::{write_document, Node, NodeEntry, Path, INLINE_STR_MAX, METADATA_KEY};
use crate::value::{DType, Payload, Tensor, Value};

/// Where the bytes of one blob come from when the container is written.
#[derive(Debug, Clone)]
pub enum BlobSource<'a> {
    Slice(&'a [u8]),
    Owned(Vec<u8>),
    /// Supplied by the caller of [`Prepared::write_chunks`] (e.g. a Python
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
        Node::Tensor(i)
        | Node::Bytes(i)
        | Node::LongStr(i)
        | Node::Pickle { blob: i, .. }
        | Node::Packed { blob: i, .. } => {
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

/// Pack the tensors of a flattened tree where `opts` allows and it pays
/// (§2.7): a `$t` node becomes `$packed` and its blob the packed bytes.
/// `bytes(i)` gives the data of blob `i` when it is external. IMAGE (1, 3
/// or 4 channels) and MASK entries are rounded to 8 bits only when
/// `opts.quantize_images` says so.
pub fn pack_tree<'b>(
    entries: &mut [NodeEntry],
    blobs: &mut [Blob<'_>],
    opts: &PackOptions,
    bytes: &dyn Fn(usize) -> Option<&'b [u8]>,
) -> Result<(), CodecError> {
    if opts.is_empty() {
        return Ok(());
    }
    fn walk<'b>(
        node: &mut Node,
        image: bool,
        blobs: &mut [Blob<'_>],
        opts: &PackOptions,
        bytes: &dyn Fn(usize) -> Option<&'b [u8]>,
    ) -> Result<(), CodecError> {
        match node {
            Node::Tensor(i) => {
                let idx = *i;
                let Some(blob) = blobs.get_mut(idx) else {
                    return Ok(());
                };
                let packed = match &blob.source {
                    BlobSource::Slice(s) => {
                        crate::packed::pack(blob.dtype, &blob.shape, s, opts, image)?
                    }
                    BlobSource::Owned(v) => {
                        crate::packed::pack(blob.dtype, &blob.shape, v, opts, image)?
                    }
                    BlobSource::External(e) => match bytes(*e) {
                        Some(s) => crate::packed::pack(blob.dtype, &blob.shape, s, opts, image)?,
                        None => None,
                    },
                };
                if let Some((codec, packed)) = packed {
                    *node = Node::Packed {
                        blob: idx,
                        codec,
                        dtype: blob.dtype,
                        shape: std::mem::take(&mut blob.shape),
                    };
                    blob.dtype = DType::U8;
                    blob.shape = vec![packed.len()];
                    blob.source = BlobSource::Owned(packed);
                }
            }
            Node::List(items) | Node::Tuple(items) => {
                for item in items {
                    walk(item, false, blobs, opts, bytes)?;
                }
            }
            Node::Dict(members) => {
                for (_, item) in members {
                    walk(item, false, blobs, opts, bytes)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    for e in entries {
        // Rounded only where an 8-bit image file is what the values become:
        // an IMAGE of 1, 3 or 4 channels, a MASK.
        let image = match (&e.comfy_type.as_deref(), &e.value) {
            (Some("IMAGE"), Node::Tensor(i)) => blobs
                .get(*i)
                .is_some_and(|b| matches!(b.shape.as_slice(), [_, _, _, 1 | 3 | 4])),
            (Some("MASK"), Node::Tensor(i)) => blobs.get(*i).is_some_and(|b| b.shape.len() == 3),
            _ => false,
        };
        walk(&mut e.value, image, blobs, opts, bytes)?;
    }
    Ok(())
}

/// Encode a payload into container bytes. Deterministic: the same payload
/// always gives the same bytes.
pub fn encode(payload: &Payload<'_>) -> Result<Vec<u8>, CodecError> {
    encode_with(payload, &PackOptions::default())
}

/// [`encode`], packing tensors as `opts` allows (§2.7).
pub fn encode_with(payload: &Payload<'_>, opts: &PackOptions) -> Result<Vec<u8>, CodecError> {
    let (mut entries, mut blobs) = flatten(payload)?;
    pack_tree(&mut entries, &mut blobs, opts, &|_| None)?;
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
    encode_to_writer_with(payload, w, &PackOptions::default())
}

/// [`encode_to_writer`], packing tensors as `opts` allows (§2.7); packed
/// tensors are held in memory in their (small) packed form.
pub fn encode_to_writer_with<W: Write + ?Sized>(
    payload: &Payload<'_>,
    w: &mut W,
    opts: &PackOptions,
) -> Result<u64, WriteError> {
    let (mut entries, mut blobs) = flatten(payload)?;
    pack_tree(&mut entries, &mut blobs, opts, &|_| None)?;
    Prepared::new(&entries, blobs)?.write_to(w, no_external)
}
