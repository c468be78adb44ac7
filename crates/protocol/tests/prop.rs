//! Property tests: random payloads round-trip exactly; random and mutated
//! bytes never panic the decoder.

use std::borrow::Cow;

use comfy_remote_protocol::{
    decode, encode, ComfyType, DType, Entry, Limits, Payload, Tensor, Value,
};
use proptest::prelude::*;

fn tensor() -> impl Strategy<Value = Value<'static>> {
    (
        prop::sample::select(DType::ALL.to_vec()),
        prop::collection::vec(0usize..4, 0..4),
    )
        .prop_flat_map(|(dtype, shape)| {
            let n = shape.iter().product::<usize>() * dtype.size();
            prop::collection::vec(any::<u8>(), n).prop_map(move |data| {
                Value::Tensor(Tensor::new(dtype, shape.clone(), data).expect("sized"))
            })
        })
}

fn leaf() -> impl Strategy<Value = Value<'static>> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)].prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| Value::Bytes(Cow::Owned(b))),
        tensor(),
    ]
}

fn value() -> impl Strategy<Value = Value<'static>> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Tuple),
            prop::collection::btree_map("\\$?[a-z]{0,4}", inner, 0..6)
                .prop_map(|m| Value::Dict(m.into_iter().collect())),
        ]
    })
}

fn payload() -> impl Strategy<Value = Payload<'static>> {
    prop::collection::btree_map(
        "[a-z_]{1,8}",
        (prop::option::of("[A-Z]{1,8}"), value()),
        0..5,
    )
    .prop_map(|m| Payload {
        entries: m
            .into_iter()
            .map(|(name, (ty, value))| Entry {
                name,
                comfy_type: ty.map(ComfyType),
                value,
            })
            .collect(),
    })
}

/// Equality that treats NaN as equal to NaN (bit for bit).
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn payloads_round_trip_exactly(p in payload()) {
        let bytes = encode(&p).expect("encode");
        let back = decode(&bytes, &Limits::default()).expect("decode");
        prop_assert_eq!(back.entries.len(), p.entries.len());
        for (a, b) in p.entries.iter().zip(&back.entries) {
            prop_assert_eq!(&a.name, &b.name);
            prop_assert_eq!(&a.comfy_type, &b.comfy_type);
            prop_assert!(same(&a.value, &b.value), "{:?} != {:?}", a.value, b.value);
        }
        prop_assert_eq!(encode(&back).expect("re-encode"), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&data, &Limits::default());
    }

    #[test]
    fn mutated_containers_never_panic(
        p in payload(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = encode(&p).expect("encode");
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(decoded) = decode(&bytes, &Limits::default()) {
            // Whatever the decoder accepts, the encoder can write again.
            encode(&decoded).expect("re-encode accepted input");
        }
    }
}
