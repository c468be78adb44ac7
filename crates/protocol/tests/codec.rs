//! Container round trips, determinism, safetensors compatibility and the
//! decoder's refusals, as a user of the crate sees them.

use std::borrow::Cow;

use comfy_remote_protocol::{
    decode, encode, CodecError, ComfyType, DType, Entry, Limits, Payload, Tensor, Value,
};

fn f32_tensor(shape: &[usize]) -> Tensor<'static> {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n)
        .flat_map(|i| (i as f32 / n as f32).to_le_bytes())
        .collect();
    Tensor::new(DType::F32, shape.to_vec(), data).expect("tensor")
}

fn entry(name: &str, ty: Option<&str>, value: Value<'static>) -> Entry<'static> {
    Entry {
        name: name.into(),
        comfy_type: ty.map(ComfyType::new),
        value,
    }
}

fn sample() -> Payload<'static> {
    Payload {
        entries: vec![
            entry(
                "image",
                Some("IMAGE"),
                Value::Tensor(f32_tensor(&[1, 4, 4, 3])),
            ),
            entry(
                "latent",
                Some("LATENT"),
                Value::Dict(vec![
                    ("samples".into(), Value::Tensor(f32_tensor(&[1, 4, 2, 2]))),
                    ("batch_index".into(), Value::List(vec![Value::Int(0)])),
                ]),
            ),
            entry("seed", None, Value::Int(-42)),
            entry("cfg", None, Value::Float(7.0)),
            entry("nan", None, Value::Float(f64::NAN)),
            entry(
                "size",
                None,
                Value::Tuple(vec![Value::Int(512), Value::Int(768)]),
            ),
            entry(
                "tagged",
                None,
                Value::Dict(vec![("$t".into(), Value::None)]),
            ),
            entry("raw", None, Value::Bytes(Cow::Owned(vec![0, 1, 2, 255]))),
            entry("long", None, Value::Str("é".repeat(40_000))),
        ],
    }
}

/// NaN != NaN, so compare through the canonical bytes instead.
fn same(a: &Payload<'_>, b: &Payload<'_>) -> bool {
    encode(a).expect("encode a") == encode(b).expect("encode b")
}

#[test]
fn round_trip_keeps_every_value_and_borrows_tensor_data() {
    let p = sample();
    let bytes = encode(&p).expect("encode");
    let back = decode(&bytes, &Limits::default()).expect("decode");
    assert!(same(&p, &back));
    assert_eq!(back.entries[0].comfy_type, Some(ComfyType::new("IMAGE")));
    let Value::Tensor(t) = &back.entries[0].value else {
        panic!("image is not a tensor")
    };
    assert!(matches!(t.data, Cow::Borrowed(_)));
    assert_eq!(t.shape, vec![1, 4, 4, 3]);
    assert_eq!(back.entries[3].value, Value::Float(7.0));
    assert_eq!(back.entries[2].value, Value::Int(-42));
    assert_eq!(back.entries[8].value, Value::Str("é".repeat(40_000)));
}

#[test]
fn encoding_is_deterministic() {
    assert_eq!(encode(&sample()).expect("a"), encode(&sample()).expect("b"));
}

#[test]
fn container_is_byte_identical_to_safetensors_serialize() {
    let p = sample();
    let ours = encode(&p).expect("encode");
    let st = safetensors::SafeTensors::deserialize(&ours).expect("safetensors reads it");
    let meta = safetensors::SafeTensors::read_metadata(&ours)
        .expect("metadata")
        .1;
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let theirs = safetensors::serialize(tensors, meta.metadata().clone()).expect("serialize");
    assert_eq!(ours, theirs);
}

#[test]
fn refuses_plain_safetensors_without_metadata() {
    let data = vec![0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data)
        .expect("view");
    let bytes = safetensors::serialize([("x", view)], None).expect("serialize");
    assert_eq!(
        decode(&bytes, &Limits::default()).expect_err("no metadata"),
        CodecError::MissingMetadata
    );
}

#[test]
fn refuses_oversized_header_before_reading_it() {
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(matches!(
        decode(&bytes, &Limits::default()),
        Err(CodecError::HeaderTooLarge { .. })
    ));
}

#[test]
fn limits_are_enforced() {
    let bytes = encode(&sample()).expect("encode");
    let tight = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        decode(&bytes, &l).expect_err("over a limit")
    };
    assert!(matches!(
        tight(|l| l.max_total_bytes = 10),
        CodecError::TooLarge { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_header_bytes = 10),
        CodecError::HeaderTooLarge { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_tensors = 1),
        CodecError::TooManyTensors { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_rank = 3),
        CodecError::RankTooLarge { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_elements = 10),
        CodecError::TooManyElements { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_depth = 0),
        CodecError::TooDeep { .. }
    ));
}

#[test]
fn encoder_refuses_what_cannot_travel() {
    let dup = Payload {
        entries: vec![
            entry("a", None, Value::Int(1)),
            entry("a", None, Value::Int(2)),
        ],
    };
    assert!(matches!(
        encode(&dup),
        Err(CodecError::DuplicateEntry { .. })
    ));
    let lying = Payload {
        entries: vec![entry(
            "t",
            None,
            Value::Tensor(Tensor {
                dtype: DType::F32,
                shape: vec![2],
                data: Cow::Owned(vec![0; 3]),
            }),
        )],
    };
    assert!(matches!(
        encode(&lying),
        Err(CodecError::LengthMismatch { .. })
    ));
}
