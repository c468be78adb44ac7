//! Decoding: the header checked against the limits and the total length,
//! then the value tree resolved against the tensors it refers to.

use std::borrow::Cow;

use super::{tree_json_depth, CodecError, Limits, LEN_PREFIX, OUTER_HEADER_DEPTH};
use safetensors::tensor::Metadata;

use crate::tree::{
    check_unique_keys, parse_json, write_document, BlobInfo, Json, Node, NodeEntry, Path,
    TreeParser, METADATA_KEY,
};
use crate::value::{ComfyType, DType, Entry, Payload, Tensor, Value};

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
    check_packed(&entries, limits)?;
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

/// Packed tensors are held to the limits of tensors by the shape they
/// declare, and all of them together unpack to at most `max_total_bytes`:
/// a small container cannot ask for a large allocation.
fn check_packed(entries: &[NodeEntry], limits: &Limits) -> Result<(), CodecError> {
    fn walk(node: &Node, limits: &Limits, total: &mut u64) -> Result<(), CodecError> {
        match node {
            Node::Packed {
                blob, dtype, shape, ..
            } => {
                let name = format!("t{blob}");
                if shape.len() > limits.max_rank {
                    return Err(CodecError::RankTooLarge {
                        tensor: name,
                        rank: shape.len(),
                        limit: limits.max_rank,
                    });
                }
                let numel = Tensor::numel(shape).ok_or_else(|| CodecError::ShapeOverflow {
                    shape: shape.clone(),
                })? as u64;
                if numel > limits.max_elements {
                    return Err(CodecError::TooManyElements {
                        tensor: name,
                        elements: numel,
                        limit: limits.max_elements,
                    });
                }
                *total = total.saturating_add(numel.saturating_mul(dtype.size() as u64));
                if *total > limits.max_total_bytes {
                    return Err(CodecError::TooLarge {
                        size: *total,
                        limit: limits.max_total_bytes,
                    });
                }
            }
            Node::List(items) | Node::Tuple(items) => {
                for i in items {
                    walk(i, limits, total)?;
                }
            }
            Node::Dict(members) => {
                for (_, v) in members {
                    walk(v, limits, total)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut total = 0u64;
    for e in entries {
        walk(&e.value, limits, &mut total)?;
    }
    Ok(())
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
            value: resolve(&e.value, &layout.slots, bytes, &e.name, limits)?,
        });
    }
    Ok(Payload { entries })
}

fn resolve<'a>(
    node: &Node,
    slots: &[Slot],
    bytes: &'a [u8],
    entry: &str,
    limits: &Limits,
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
            .map(|n| resolve(n, slots, bytes, entry, limits))
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
                .map(|(k, v)| Ok((k.clone(), resolve(v, slots, bytes, entry, limits)?)))
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
        // Unpacked into memory of its own (the one decode that copies).
        Node::Packed {
            blob,
            codec,
            dtype,
            shape,
        } => {
            let plain = crate::packed::unpack(
                *codec,
                *dtype,
                shape,
                data(*blob)?.1,
                limits.max_total_bytes,
            )?;
            Value::Tensor(Tensor {
                dtype: *dtype,
                shape: shape.clone(),
                data: Cow::Owned(plain),
            })
        }
    })
}
