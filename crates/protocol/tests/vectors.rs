//! Golden vectors: containers committed in `tests/vectors/` that every
//! implementation must decode and re-encode byte for byte.
//!
//! `COMFY_REMOTE_WRITE_VECTORS=1 cargo test -p comfy-remote-protocol --test
//! vectors` rewrites them (and `manifest.json`) from the payloads below;
//! without it the test checks the committed files against those payloads.

use std::borrow::Cow;
use std::path::PathBuf;

use comfy_remote_protocol::{
    decode, encode, encode_to_writer, encode_with, ComfyType, DType, Entry, Limits, PackOptions,
    Payload, Tensor, Value,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// Deterministic bytes: a small LCG, so vectors need no rand crate.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// Floats in 0..1 (like an IMAGE), as little-endian f32 bytes.
fn unit_f32(shape: &[usize], seed: u64) -> Tensor<'static> {
    let n: usize = shape.iter().product();
    let data = bytes(n, seed)
        .into_iter()
        .flat_map(|b| (f32::from(b) / 255.0).to_le_bytes())
        .collect::<Vec<u8>>();
    Tensor::new(DType::F32, shape.to_vec(), data).expect("tensor")
}

/// `1 - k/255` for random bytes `k` (an inverted IMAGE): at most 256
/// distinct values, none of them `k/255`.
fn inverted_f32(shape: &[usize], seed: u64) -> Tensor<'static> {
    let n: usize = shape.iter().product();
    let data = bytes(n, seed)
        .into_iter()
        .flat_map(|b| (1.0 - f32::from(b) / 255.0).to_le_bytes())
        .collect::<Vec<u8>>();
    Tensor::new(DType::F32, shape.to_vec(), data).expect("tensor")
}

fn typed(name: &str, ty: &str, value: Value<'static>) -> Entry<'static> {
    Entry {
        name: name.into(),
        comfy_type: Some(ComfyType::new(ty)),
        value,
    }
}

fn untyped(name: &str, value: Value<'static>) -> Entry<'static> {
    Entry {
        name: name.into(),
        comfy_type: None,
        value,
    }
}

fn dict(items: Vec<(&str, Value<'static>)>) -> Value<'static> {
    Value::Dict(items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A smooth [n] F32 signal (packs with `shuffle-zstd`).
fn smooth_f32(n: usize) -> Tensor<'static> {
    let data = (0..n)
        .flat_map(|i| ((i as f32) * 0.01).sin().to_le_bytes())
        .collect::<Vec<u8>>();
    Tensor::new(DType::F32, vec![n], data).expect("tensor")
}

/// Vectors written with every codec (§2.7): their packed bytes are those of
/// this encoder and zstd's level 1 (a newer zstd may pack differently;
/// decoding them to the payload is what every implementation must do).
fn packed_vectors() -> Vec<(&'static str, &'static str, Payload<'static>)> {
    vec![
        (
            "image_8bit_packed",
            "IMAGE [2,32,48,3] F32, every value k/255: `$packed` u8-grad-zstd",
            Payload {
                entries: vec![typed(
                    "image",
                    "IMAGE",
                    Value::Tensor(unit_f32(&[2, 32, 48, 3], 9)),
                )],
            },
        ),
        (
            "image_inverted_packed",
            "IMAGE [1,32,48,3] F32, every value 1 - k/255 (an inverted 8-bit image): `$packed` u8-palette-zstd",
            Payload {
                entries: vec![typed(
                    "image",
                    "IMAGE",
                    Value::Tensor(inverted_f32(&[1, 32, 48, 3], 11)),
                )],
            },
        ),
        (
            "smooth_f32_packed",
            "a smooth [4096] F32 signal: `$packed` shuffle-zstd, beside a short plain tensor",
            Payload {
                entries: vec![
                    untyped("signal", Value::Tensor(smooth_f32(4096))),
                    untyped("small", Value::Tensor(unit_f32(&[4], 10))),
                ],
            },
        ),
    ]
}

/// `(file stem, description, payload)` of every vector.
fn vectors() -> Vec<(&'static str, &'static str, Payload<'static>)> {
    let all_dtypes = DType::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let shape = vec![2, 3];
            let mut data = bytes(6 * d.size(), 100 + i as u64);
            if d == DType::Bool {
                data.iter_mut().for_each(|b| *b &= 1);
            }
            let name = d.as_str().to_ascii_lowercase();
            untyped(
                &name,
                Value::Tensor(Tensor::new(d, shape, data).expect("tensor")),
            )
        })
        .collect();
    vec![
        (
            "image_f32",
            "IMAGE [1,8,8,3] F32 in 0..1, declared type",
            Payload {
                entries: vec![typed("image", "IMAGE", Value::Tensor(unit_f32(&[1, 8, 8, 3], 1)))],
            },
        ),
        (
            "mask",
            "MASK [2,8,8] F32, type left to inference",
            Payload {
                entries: vec![untyped("mask", Value::Tensor(unit_f32(&[2, 8, 8], 2)))],
            },
        ),
        (
            "latent_with_noise_mask_and_batch_index",
            "LATENT dict: samples [2,4,8,8] F32, noise_mask [2,1,8,8] F32, batch_index [0,1]",
            Payload {
                entries: vec![typed(
                    "latent",
                    "LATENT",
                    dict(vec![
                        ("samples", Value::Tensor(unit_f32(&[2, 4, 8, 8], 3))),
                        ("noise_mask", Value::Tensor(unit_f32(&[2, 1, 8, 8], 4))),
                        ("batch_index", Value::List(vec![Value::Int(0), Value::Int(1)])),
                    ]),
                )],
            },
        ),
        (
            "audio",
            "AUDIO dict: waveform [1,2,256] F32 and sample_rate 44100",
            Payload {
                entries: vec![typed(
                    "audio",
                    "AUDIO",
                    dict(vec![
                        ("waveform", Value::Tensor(unit_f32(&[1, 2, 256], 5))),
                        ("sample_rate", Value::Int(44100)),
                    ]),
                )],
            },
        ),
        (
            "primitives_nested",
            "every non-tensor kind: None, bools, ints at the i64 edges, floats (-0.0, 1e+30, 0.1), unicode, list, tuple, nested dicts, a dict with `$` keys, bytes, empties",
            Payload {
                entries: vec![
                    typed("text", "STRING", Value::Str("a cat, \"quoted\", naïve ✓ 🐈".into())),
                    typed("steps", "INT", Value::Int(20)),
                    typed("cfg", "FLOAT", Value::Float(7.0)),
                    typed("flag", "BOOLEAN", Value::Bool(true)),
                    untyped("none", Value::None),
                    untyped(
                        "ints",
                        Value::List(vec![Value::Int(i64::MIN), Value::Int(-1), Value::Int(0), Value::Int(i64::MAX)]),
                    ),
                    untyped(
                        "floats",
                        Value::List(vec![Value::Float(-0.0), Value::Float(1e30), Value::Float(0.1), Value::Float(-2.5e-8)]),
                    ),
                    untyped(
                        "size",
                        Value::Tuple(vec![Value::Int(512), Value::Int(768)]),
                    ),
                    untyped(
                        "nested",
                        dict(vec![
                            ("list", Value::List(vec![Value::Tuple(vec![]), Value::List(vec![]), dict(vec![])])),
                            ("deeper", dict(vec![("a", dict(vec![("b", Value::Bool(false))]))])),
                        ]),
                    ),
                    untyped("dollar_keys", dict(vec![("$t", Value::Str("not a tensor".into())), ("plain", Value::Int(1))])),
                    untyped("raw", Value::Bytes(Cow::Owned(vec![0, 1, 2, 254, 255]))),
                ],
            },
        ),
        (
            "all_dtypes",
            "a [2,3] tensor of each of the 13 dtypes, BOOL through F64 incl. F16 and BF16",
            Payload { entries: all_dtypes },
        ),
        (
            "large_string",
            "a 70 000-byte string (travels as a `$str` U8 tensor) beside a short one",
            Payload {
                entries: vec![
                    typed("long", "STRING", Value::Str("0123456789".repeat(7_000))),
                    typed("short", "STRING", Value::Str("short".into())),
                ],
            },
        ),
        (
            "non_finite_floats",
            "NaN, +inf and -inf as values and inside a list",
            Payload {
                entries: vec![
                    typed("nan", "FLOAT", Value::Float(f64::NAN)),
                    typed("inf", "FLOAT", Value::Float(f64::INFINITY)),
                    untyped(
                        "list",
                        Value::List(vec![Value::Float(f64::NEG_INFINITY), Value::Float(1.5), Value::Float(f64::NAN)]),
                    ),
                ],
            },
        ),
    ]
}

fn manifest(
    vectors: &[(&str, &str, Payload<'static>)],
    packed: &[(&str, &str, Payload<'static>)],
) -> serde_json::Value {
    let items: Vec<serde_json::Value> = vectors
        .iter()
        .map(|v| (v, false))
        .chain(packed.iter().map(|v| (v, true)))
        .map(|((stem, about, p), packed)| {
            serde_json::json!({
                "file": format!("{stem}.crc"),
                "description": about,
                "packed": packed,
                "entries": p.entries.iter().map(|e| serde_json::json!({
                    "name": e.name,
                    "declared_type": e.comfy_type.as_ref().map(|t| t.0.clone()),
                    "inferred_type": ComfyType::infer(&e.value).0,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "protocol": "comfy-remote/1", "vectors": items })
}

#[test]
fn golden_vectors_decode_and_reencode_byte_identically() {
    let vectors = vectors();
    let packed = packed_vectors();
    let write = std::env::var_os(comfy_remote_protocol::env::WRITE_VECTORS).is_some();
    if write {
        std::fs::create_dir_all(dir()).expect("mkdir");
        for (stem, _, p) in &vectors {
            std::fs::write(
                dir().join(format!("{stem}.crc")),
                encode(p).expect("encode"),
            )
            .expect("write");
        }
        for (stem, _, p) in &packed {
            std::fs::write(
                dir().join(format!("{stem}.crc")),
                encode_with(p, &PackOptions::all()).expect("encode"),
            )
            .expect("write");
        }
        let text = serde_json::to_string_pretty(&manifest(&vectors, &packed)).expect("json") + "\n";
        std::fs::write(dir().join("manifest.json"), text).expect("write manifest");
    }
    for (stem, _, p) in &packed {
        let path = dir().join(format!("{stem}.crc"));
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let decoded =
            decode(&committed, &Limits::default()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(&decoded, p, "{stem}: unpacks to its payload");
        assert_eq!(
            encode_with(p, &PackOptions::all()).expect("encode"),
            committed,
            "{stem}: this encoder packs differently"
        );
        assert!(
            committed.len() < encode(p).expect("plain").len(),
            "{stem}: packing must pay"
        );
    }
    for (stem, _, p) in &vectors {
        let path = dir().join(format!("{stem}.crc"));
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed,
            encode(p).expect("encode"),
            "{stem}: encoder output changed"
        );
        let mut streamed = Vec::new();
        let written = encode_to_writer(p, &mut streamed).expect("stream");
        assert_eq!(written, committed.len() as u64, "{stem}: streamed length");
        assert_eq!(streamed, committed, "{stem}: streamed bytes differ");
        let decoded =
            decode(&committed, &Limits::default()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(
            encode(&decoded).expect("re-encode"),
            committed,
            "{stem}: re-encoding differs"
        );
        for (d, e) in decoded.entries.iter().zip(&p.entries) {
            assert_eq!(d.name, e.name);
            assert_eq!(d.comfy_type, e.comfy_type);
        }
    }
    let manifest_text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest");
    let on_disk: serde_json::Value = serde_json::from_str(&manifest_text).expect("manifest json");
    assert_eq!(
        on_disk,
        manifest(&vectors, &packed),
        "manifest.json is stale"
    );
}
