//! Container work for `comfy_remote.codec`: planning, writing and validating
//! containers over Python buffers, and the one `CodecError` exception class.
//!
//! Python walks its own values (torch, numpy, tuples) and hands this module
//! a JSON tree plus flat byte buffers; this module never sees a torch
//! tensor. Decoding reads only the header and returns byte ranges, so
//! Python builds tensors over the caller's buffer without copying.
//!
//! The module targets the abi3 limited API of Python 3.10, which has no
//! buffer protocol: byte data comes in as `bytes` or as the address of
//! memory that Python keeps alive, and goes out as `bytes` (created
//! uninitialized and written once, rather than zero-filled and then
//! overwritten) or straight into a file.

use std::io::Write as _;
use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

use comfy_remote_protocol::container::{
    header_len, pack_tree, prepare_tree, Blob, BlobSource, Prepared, WriteError,
};
use comfy_remote_protocol::packed::{unpack, Codec};
use comfy_remote_protocol::tree::{parse_tree, BlobInfo};
use comfy_remote_protocol::{read_layout, CodecError as RsCodecError, DType, Limits, PackOptions};

create_exception!(
    comfy_remote.codec,
    CodecError,
    PyValueError,
    "A value could not be encoded, or bytes are not a valid comfy-remote container."
);

/// The one place a Rust codec error becomes a Python exception; `kind` is
/// the stable variant name (`"too_large"`, `"dangling_ref"`, ...).
fn to_py(py: Python<'_>, e: &RsCodecError) -> PyErr {
    let err = CodecError::new_err(e.to_string());
    // Setting an attribute on a fresh exception instance cannot fail in
    // practice; if it did, the message alone still explains the error.
    let _ = err.value(py).setattr("kind", e.kind());
    err
}

fn parse_dtype(py: Python<'_>, name: &str) -> PyResult<DType> {
    DType::parse(name).ok_or_else(|| {
        to_py(
            py,
            &RsCodecError::UnsupportedDtype {
                tensor: "<input>".into(),
                dtype: name.to_owned(),
            },
        )
    })
}

/// Where Python keeps the bytes of one tensor.
#[derive(FromPyObject)]
enum Data<'py> {
    /// A `bytes` object (byte strings, pickles, small data).
    Bytes(Bound<'py, PyBytes>),
    /// A C-contiguous CPU torch tensor or numpy array whose memory is lent
    /// for the call. Under the abi3 (3.10) limited API there is no buffer
    /// protocol, so the module asks the object itself for its address and
    /// size ([`lent_range`]) and checks it is what it must be; no caller
    /// ever passes an address.
    Lent(Bound<'py, PyAny>),
}

/// A byte range that outlives the GIL release: its owner is held by the
/// caller's argument list for the whole call.
#[derive(Clone, Copy)]
struct RawRange {
    address: usize,
    len: usize,
}

impl RawRange {
    #[allow(unsafe_code)]
    fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `address` and `len` were read by `lent_range` from a
        // C-contiguous CPU tensor or array (checked there) whose memory is
        // exactly `len` bytes from `address`; the object is in the call's
        // argument list, so the memory stays allocated until the call
        // returns, and the slice borrows `self`, which lives no longer than
        // the call.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }
}

/// The memory of a lent torch tensor or numpy array, after checking that
/// it is one, on the CPU, C-contiguous, of `shape`.
fn lent_range(obj: &Bound<'_, PyAny>, shape: &[usize]) -> PyResult<RawRange> {
    let unsupported = |what: String| {
        CodecError::new_err(format!(
            "cannot encode {what}: tensors are lent as C-contiguous CPU torch tensors or numpy arrays"
        ))
    };
    let (address, len, dims): (usize, usize, Vec<usize>) = if obj.hasattr("data_ptr")? {
        let device: String = obj.getattr("device")?.getattr("type")?.extract()?;
        let contiguous: bool = obj.call_method0("is_contiguous")?.extract()?;
        let lazy = obj.call_method0("is_conj")?.extract::<bool>()?
            || obj.call_method0("is_neg")?.extract::<bool>()?;
        if device != "cpu" || !contiguous || lazy {
            return Err(unsupported(format!(
                "a tensor on {device} (contiguous: {contiguous}, lazy conjugate/negative: {lazy})"
            )));
        }
        let numel: usize = obj.call_method0("numel")?.extract()?;
        let size: usize = obj.call_method0("element_size")?.extract()?;
        (
            obj.call_method0("data_ptr")?.extract()?,
            numel.saturating_mul(size),
            obj.getattr("shape")?.extract()?,
        )
    } else if obj.hasattr("__array_interface__")? {
        let iface = obj.getattr("__array_interface__")?;
        let contiguous: bool = obj.getattr("flags")?.get_item("C_CONTIGUOUS")?.extract()?;
        if !contiguous {
            return Err(unsupported("a non-contiguous array".into()));
        }
        let (address, _readonly): (usize, bool) = iface.get_item("data")?.extract()?;
        (
            address,
            obj.getattr("nbytes")?.extract()?,
            obj.getattr("shape")?.extract()?,
        )
    } else {
        return Err(unsupported(format!("a {}", obj.get_type().name()?)));
    };
    if dims != shape {
        return Err(unsupported(format!(
            "a tensor of shape {dims:?} declared as {shape:?}"
        )));
    }
    Ok(RawRange { address, len })
}

/// Check the tensors Python handed over against their dtypes and shapes,
/// and plan the container (header final, every blob placed).
fn plan<'a, 'py>(
    py: Python<'py>,
    tree_json: &str,
    tensors: &'a [(String, Vec<usize>, Data<'py>)],
    pack: &PackOptions,
) -> PyResult<(Prepared<'static>, Vec<Source<'a>>)> {
    let mut infos = Vec::with_capacity(tensors.len());
    let mut sources: Vec<Source<'a>> = Vec::with_capacity(tensors.len());
    for (i, (dtype, shape, data)) in tensors.iter().enumerate() {
        let dtype = parse_dtype(py, dtype)?;
        let expected = comfy_remote_protocol::Tensor::numel(shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| {
                to_py(
                    py,
                    &RsCodecError::ShapeOverflow {
                        shape: shape.clone(),
                    },
                )
            })?;
        let (source, actual) = match data {
            Data::Bytes(b) => (Source::Slice(b.as_bytes()), b.as_bytes().len()),
            Data::Lent(obj) => {
                let range = lent_range(obj, shape)?;
                (Source::Raw(range), range.len)
            }
        };
        if actual != expected {
            return Err(to_py(
                py,
                &RsCodecError::LengthMismatch {
                    dtype,
                    shape: shape.clone(),
                    expected,
                    actual,
                },
            ));
        }
        infos.push(BlobInfo {
            name: format!("t{i}"),
            dtype,
            shape: shape.clone(),
        });
        sources.push(source);
    }
    let prepared = py
        .detach(|| {
            let mut entries =
                parse_tree(tree_json.as_bytes(), &infos, Limits::default().max_depth)?;
            let mut blobs: Vec<Blob<'static>> = infos
                .iter()
                .enumerate()
                .map(|(i, b)| Blob {
                    dtype: b.dtype,
                    shape: b.shape.clone(),
                    source: BlobSource::External(i),
                })
                .collect();
            pack_tree(&mut entries, &mut blobs, pack, &|i| {
                source_bytes(&sources, i).ok()
            })?;
            prepare_tree(entries, blobs)
        })
        .map_err(|e| to_py(py, &e))?;
    Ok((prepared, sources))
}

/// The bytes of tensor `i`, for [`Prepared::write_chunks`].
fn source_bytes<'s>(sources: &'s [Source<'_>], i: usize) -> Result<&'s [u8], RsCodecError> {
    match sources.get(i) {
        Some(Source::Slice(s)) => Ok(s),
        Some(Source::Raw(r)) => Ok(r.as_slice()),
        None => Err(RsCodecError::Container {
            message: format!("tensor {i} has no data"),
        }),
    }
}

/// A new `bytes` object of `len` bytes, filled in file order through
/// [`Prepared::write_chunks`] without first zero-filling it.
struct UninitBytes {
    /// Address of the object's data; only ever written through, in bounds.
    address: usize,
    len: usize,
    pos: usize,
}

impl UninitBytes {
    #[allow(unsafe_code)]
    fn new(py: Python<'_>, len: usize) -> PyResult<(Bound<'_, PyBytes>, UninitBytes)> {
        let size = pyo3::ffi::Py_ssize_t::try_from(len)
            .map_err(|_| PyValueError::new_err("container too large"))?;
        // SAFETY: with a NULL source, PyBytes_FromStringAndSize returns a
        // new reference to a bytes object of `size` bytes whose contents are
        // left for the caller to fill (or NULL with an exception set, which
        // `from_owned_ptr_or_err` turns into an error). The object is not
        // shared with any other code until this module returns it.
        let obj = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size),
            )?
            .cast_into_unchecked::<PyBytes>()
        };
        // SAFETY: `obj` is a bytes object, so PyBytes_AsString returns its
        // data pointer (valid for `len` bytes for as long as `obj` lives).
        let data = unsafe { pyo3::ffi::PyBytes_AsString(obj.as_ptr()) };
        if data.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok((
            obj,
            UninitBytes {
                address: data as usize,
                len,
                pos: 0,
            },
        ))
    }

    #[allow(unsafe_code)]
    fn put(&mut self, chunk: &[u8]) -> Result<(), RsCodecError> {
        let end = self
            .pos
            .checked_add(chunk.len())
            .filter(|&end| end <= self.len)
            .ok_or_else(|| RsCodecError::Container {
                message: "the container outgrew its planned size".into(),
            })?;
        // SAFETY: `address..address + len` is the data of a bytes object
        // that this call alone holds (see `new`) and that outlives this
        // write; `pos..end` lies within it (checked above); `chunk` is
        // other memory (Python's tensors or the header), so the ranges do
        // not overlap. Bytes are only written, never read, so no reference
        // to uninitialized memory is ever made.
        unsafe {
            std::ptr::copy_nonoverlapping(
                chunk.as_ptr(),
                (self.address as *mut u8).add(self.pos),
                chunk.len(),
            );
        }
        self.pos = end;
        Ok(())
    }
}

/// Build a container from a value tree (`{"v":1,"entries":[...]}`, with
/// references `t<i>` naming `tensors[i]`) and the tensors as
/// `(dtype, shape, data)`, `data` being `bytes` or a C-contiguous CPU torch
/// tensor or numpy array. Returns the container, written with one copy of each tensor
/// (into a `bytes` object that is not zero-filled first) and the GIL
/// released while copying.
#[pyfunction(name = "_encode_container")]
#[pyo3(signature = (tree_json, tensors, *, codecs=Vec::new(), quantize_images=false))]
fn encode_container<'py>(
    py: Python<'py>,
    tree_json: String,
    tensors: Vec<(String, Vec<usize>, Data<'py>)>,
    codecs: Vec<String>,
    quantize_images: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let pack = pack_options(&codecs, quantize_images);
    let (prepared, sources) = plan(py, &tree_json, &tensors, &pack)?;
    let (obj, mut out) = UninitBytes::new(py, prepared.len())?;
    let written = py.detach(|| {
        prepared.write_chunks(|i| source_bytes(&sources, i), |chunk| out.put(chunk))?;
        if out.pos != out.len {
            return Err(RsCodecError::Container {
                message: "the container is shorter than planned".into(),
            });
        }
        Ok(())
    });
    // On failure the partly written object is dropped unread.
    written.map_err(|e| to_py(py, &e))?;
    Ok(obj)
}

/// Like [`encode_container`], but streams the container into the file at
/// `path` (created or truncated): the header, then each tensor's bytes
/// straight from Python's memory, so the container is never held in
/// memory. The bytes are identical to `encode_container`'s. Returns the
/// container's size. The GIL is released while writing; the file is
/// flushed but not synced.
#[pyfunction(name = "_encode_container_to_file")]
#[pyo3(signature = (tree_json, tensors, path, *, codecs=Vec::new(), quantize_images=false))]
fn encode_container_to_file<'py>(
    py: Python<'py>,
    tree_json: String,
    tensors: Vec<(String, Vec<usize>, Data<'py>)>,
    path: PathBuf,
    codecs: Vec<String>,
    quantize_images: bool,
) -> PyResult<u64> {
    let pack = pack_options(&codecs, quantize_images);
    let (prepared, sources) = plan(py, &tree_json, &tensors, &pack)?;
    let written = py.detach(|| -> Result<u64, WriteError> {
        let file = std::fs::File::create(&path)?;
        // Small pieces (the header, short byte strings) are gathered; large
        // tensors go straight from their memory to the file.
        let mut w = std::io::BufWriter::with_capacity(64 << 10, file);
        let n = prepared.write_to(&mut w, |i| source_bytes(&sources, i))?;
        w.flush()?;
        Ok(n)
    });
    match written {
        Ok(n) => Ok(n),
        Err(WriteError::Codec(e)) => Err(to_py(py, &e)),
        Err(WriteError::Io(e)) => Err(e.into()),
        Err(e) => Err(PyOSError::new_err(e.to_string())),
    }
}

/// What the encoder may pack: the receiver's codecs (§2.7), and whether
/// IMAGE/MASK values may be rounded to 8 bits.
fn pack_options(codecs: &[String], quantize_images: bool) -> PackOptions {
    PackOptions {
        quantize_images,
        ..PackOptions::for_codecs(codecs.iter().map(String::as_str))
    }
}

/// The plain bytes of a `$packed` tensor (`codec`, `dtype`, `shape` as the
/// validated tree gives them), at most `max_bytes` of them. The GIL is
/// released while unpacking.
#[pyfunction(name = "_unpack")]
fn unpack_tensor<'py>(
    py: Python<'py>,
    codec: &str,
    dtype: &str,
    shape: Vec<usize>,
    data: &[u8],
    max_bytes: u64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let codec = Codec::parse(codec).ok_or_else(|| {
        to_py(
            py,
            &RsCodecError::InvalidNode {
                path: "a packed tensor".into(),
                reason: format!("unknown codec {codec:?}"),
            },
        )
    })?;
    let dtype = parse_dtype(py, dtype)?;
    let plain = py
        .detach(|| unpack(codec, dtype, &shape, data, max_bytes))
        .map_err(|e| to_py(py, &e))?;
    Ok(PyByteArray::new(py, &plain))
}

/// The bytes of one tensor, readable without the GIL.
enum Source<'a> {
    Slice(&'a [u8]),
    Raw(RawRange),
}

fn limits(
    max_total_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    max_tensors: Option<usize>,
    max_rank: Option<usize>,
    max_elements: Option<u64>,
    max_depth: Option<usize>,
) -> Limits {
    let d = Limits::default();
    Limits {
        max_total_bytes: max_total_bytes.unwrap_or(d.max_total_bytes),
        max_header_bytes: max_header_bytes.unwrap_or(d.max_header_bytes),
        max_tensors: max_tensors.unwrap_or(d.max_tensors),
        max_rank: max_rank.unwrap_or(d.max_rank),
        max_elements: max_elements.unwrap_or(d.max_elements),
        max_depth: max_depth.unwrap_or(d.max_depth),
    }
}

/// How many leading bytes of a `total_len`-byte container hold its header
/// (8-byte length + JSON), given at least its first 8 bytes. Fails before
/// anything is read when the container or header is over the limits.
#[pyfunction]
#[pyo3(signature = (prefix, total_len, *, max_total_bytes=None, max_header_bytes=None))]
fn container_header_len(
    py: Python<'_>,
    prefix: &[u8],
    total_len: u64,
    max_total_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
) -> PyResult<usize> {
    let limits = limits(max_total_bytes, max_header_bytes, None, None, None, None);
    header_len(prefix, total_len, &limits).map_err(|e| to_py(py, &e))
}

/// Validate a container from its header alone: `header` holds its first
/// [`container_header_len`] bytes, `total_len` is its full size. Returns
/// `(tree_json, tensors)`: the canonical value tree, and each tensor as
/// `(name, dtype, shape, start, end)`, a byte range of the container.
#[pyfunction]
#[pyo3(signature = (header, total_len, *, max_total_bytes=None, max_header_bytes=None, max_tensors=None, max_rank=None, max_elements=None, max_depth=None))]
#[allow(clippy::too_many_arguments)]
fn decode_container<'py>(
    py: Python<'py>,
    header: &[u8],
    total_len: u64,
    max_total_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    max_tensors: Option<usize>,
    max_rank: Option<usize>,
    max_elements: Option<u64>,
    max_depth: Option<usize>,
) -> PyResult<(String, Bound<'py, PyList>)> {
    let limits = limits(
        max_total_bytes,
        max_header_bytes,
        max_tensors,
        max_rank,
        max_elements,
        max_depth,
    );
    let layout = py
        .detach(|| read_layout(header, total_len, &limits))
        .map_err(|e| to_py(py, &e))?;
    let slots = PyList::empty(py);
    for s in &layout.slots {
        let shape = PyTuple::new(py, &s.shape)?;
        slots.append((s.name.as_str(), s.dtype.as_str(), shape, s.start, s.end))?;
    }
    Ok((layout.tree_json(), slots))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CodecError", m.py().get_type::<CodecError>())?;
    m.add_function(wrap_pyfunction!(encode_container, m)?)?;
    m.add_function(wrap_pyfunction!(encode_container_to_file, m)?)?;
    m.add_function(wrap_pyfunction!(container_header_len, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_tensor, m)?)?;
    m.add("CODECS", comfy_remote_protocol::packed::CODECS.to_vec())?;
    m.add_function(wrap_pyfunction!(decode_container, m)?)?;
    Ok(())
}
