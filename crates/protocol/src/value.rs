//! The typed value model: what a container carries, independent of bytes.

use std::borrow::Cow;
use std::fmt;

/// Element type of a tensor. Names follow safetensors (`F32`, `BF16`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// All dtypes, in the order used by docs and tests.
    pub const ALL: [DType; 13] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    /// The safetensors name (`"F32"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }

    /// Parse a safetensors dtype name; `None` for names this protocol does not carry.
    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dense, C-contiguous, little-endian tensor. `data.len()` always equals
/// `shape.iter().product() * dtype.size()` for values built by [`Tensor::new`]
/// or returned by the decoder.
#[derive(Clone, PartialEq)]
pub struct Tensor<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl<'a> Tensor<'a> {
    /// Number of elements, `None` on overflow.
    pub fn numel(shape: &[usize]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Build a tensor, checking that the byte length matches shape and dtype.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<Self, crate::CodecError> {
        let data = data.into();
        let expected = Tensor::numel(&shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| crate::CodecError::shape_overflow(&shape))?;
        if expected != data.len() {
            return Err(crate::CodecError::length_mismatch(
                dtype,
                &shape,
                expected,
                data.len(),
            ));
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Detach from the buffer this tensor borrows.
    pub fn into_owned(self) -> Tensor<'static> {
        Tensor {
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}

/// A value in a payload. Mirrors the Python values ComfyUI passes between
/// nodes: containers keep their kind (list vs tuple) and order, numbers keep
/// int vs float, tensors keep dtype and shape bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// Any f64, including NaN and infinities.
    Float(f64),
    Str(String),
    List(Vec<Value<'a>>),
    Tuple(Vec<Value<'a>>),
    /// String-keyed, insertion-ordered, no duplicate keys.
    Dict(Vec<(String, Value<'a>)>),
    Tensor(Tensor<'a>),
    Bytes(Cow<'a, [u8]>),
    /// An HMAC-SHA256-signed pickle. Opaque to Rust: only the Python side,
    /// with pickle explicitly enabled and the shared secret, may open it.
    Pickle {
        data: Cow<'a, [u8]>,
        /// Lower-case hex HMAC-SHA256 of `data`.
        signature: String,
    },
}

impl Value<'_> {
    /// Detach from the buffer this value borrows.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Float(f),
            Value::Str(s) => Value::Str(s),
            Value::List(v) => Value::List(v.into_iter().map(Value::into_owned).collect()),
            Value::Tuple(v) => Value::Tuple(v.into_iter().map(Value::into_owned).collect()),
            Value::Dict(v) => {
                Value::Dict(v.into_iter().map(|(k, v)| (k, v.into_owned())).collect())
            }
            Value::Tensor(t) => Value::Tensor(t.into_owned()),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Pickle { data, signature } => Value::Pickle {
                data: Cow::Owned(data.into_owned()),
                signature,
            },
        }
    }

    /// Look a key up in a dict value.
    pub fn get(&self, key: &str) -> Option<&Value<'_>> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The Comfy type of a value (`IMAGE`, `LATENT`, ...). Carried explicitly in
/// the container; inferred by [`ComfyType::infer`] when absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ComfyType(pub String);

impl ComfyType {
    pub const IMAGE: &'static str = "IMAGE";
    pub const MASK: &'static str = "MASK";
    pub const LATENT: &'static str = "LATENT";
    pub const AUDIO: &'static str = "AUDIO";
    pub const STRING: &'static str = "STRING";
    pub const INT: &'static str = "INT";
    pub const FLOAT: &'static str = "FLOAT";
    pub const BOOLEAN: &'static str = "BOOLEAN";
    pub const ANY: &'static str = "*";

    /// Types that hold live model objects and can never travel.
    pub const UNTRAVELLABLE: [&'static str; 9] = [
        "MODEL",
        "CLIP",
        "VAE",
        "CONDITIONING",
        "CONTROL_NET",
        "CLIP_VISION",
        "STYLE_MODEL",
        "UPSCALE_MODEL",
        "GLIGEN",
    ];

    pub fn new(name: impl Into<String>) -> Self {
        ComfyType(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Infer the Comfy type of a value the way the Python side does:
    /// 4-D float tensor -> IMAGE, 3-D float tensor -> MASK, dict with a
    /// `samples` tensor -> LATENT, dict with `waveform` and `sample_rate` ->
    /// AUDIO, scalars -> STRING/INT/FLOAT/BOOLEAN, anything else -> `*`.
    pub fn infer(value: &Value<'_>) -> ComfyType {
        let is_float =
            |t: &Tensor<'_>| matches!(t.dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
        let name = match value {
            Value::Tensor(t) if is_float(t) && t.shape.len() == 4 => Self::IMAGE,
            Value::Tensor(t) if is_float(t) && t.shape.len() == 3 => Self::MASK,
            Value::Dict(_) if matches!(value.get("samples"), Some(Value::Tensor(_))) => {
                Self::LATENT
            }
            Value::Dict(_)
                if matches!(value.get("waveform"), Some(Value::Tensor(_)))
                    && matches!(value.get("sample_rate"), Some(Value::Int(_))) =>
            {
                Self::AUDIO
            }
            Value::Str(_) => Self::STRING,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Int(_) => Self::INT,
            Value::Float(_) => Self::FLOAT,
            _ => Self::ANY,
        };
        ComfyType::new(name)
    }
}

impl fmt::Display for ComfyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One named value of a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    pub name: String,
    /// The declared Comfy type; `None` means "infer on the receiving side".
    pub comfy_type: Option<ComfyType>,
    pub value: Value<'a>,
}

/// An ordered set of named values: a job's inputs or its outputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload<'a> {
    pub entries: Vec<Entry<'a>>,
}

impl<'a> Payload<'a> {
    pub fn get(&self, name: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn into_owned(self) -> Payload<'static> {
        Payload {
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    name: e.name,
                    comfy_type: e.comfy_type,
                    value: e.value.into_owned(),
                })
                .collect(),
        }
    }
}
