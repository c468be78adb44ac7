//! Files and values for `comfy-remote run`: what `--input` reads
//! ([`inputs`]) and what the outputs are written as ([`outputs`]).

pub mod inputs;
pub mod outputs;

use comfy_remote_protocol::{DType, Tensor, Value};

pub(crate) fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> anyhow::Result<Value<'static>> {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(Value::Tensor(Tensor::new(DType::F32, shape, data)?))
}

pub(crate) fn dtype_from_st(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::BOOL => DType::Bool,
        S::U8 => DType::U8,
        S::I8 => DType::I8,
        S::I16 => DType::I16,
        S::U16 => DType::U16,
        S::I32 => DType::I32,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        S::U64 => DType::U64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        _ => return None,
    })
}

pub(crate) fn dtype_to_st(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::Bool => S::BOOL,
        DType::U8 => S::U8,
        DType::I8 => S::I8,
        DType::I16 => S::I16,
        DType::U16 => S::U16,
        DType::I32 => S::I32,
        DType::U32 => S::U32,
        DType::I64 => S::I64,
        DType::U64 => S::U64,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::F32 => S::F32,
        _ => S::F64,
    }
}

/// A float tensor's values as f32 (`None` for other dtypes).
pub(crate) fn to_f32(t: &Tensor<'_>) -> Option<Vec<f32>> {
    match t.dtype {
        DType::F32 => Some(
            t.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::F64 => Some(
            t.data
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
        _ => None,
    }
}
