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

#[test]
fn layout_reads_the_header_alone_and_gives_byte_ranges() {
    use comfy_remote_protocol::container::header_len;
    use comfy_remote_protocol::read_layout;

    let bytes = encode(&sample()).expect("encode");
    let limits = Limits::default();
    let n = header_len(&bytes[..8], bytes.len() as u64, &limits).expect("header length");
    // Only the header is handed over; the data section is never read.
    let layout = read_layout(&bytes[..n], bytes.len() as u64, &limits).expect("layout");
    assert_eq!(layout.header_len, n);
    assert_eq!(n % 8, 0, "data section starts 8-byte aligned");
    for slot in &layout.slots {
        assert_eq!(
            slot.start % slot.dtype.size(),
            0,
            "{} is aligned",
            slot.name
        );
    }
    let decoded = decode(&bytes, &limits).expect("decode");
    let Value::Tensor(image) = &decoded.entries[0].value else {
        panic!("image is not a tensor")
    };
    let slot = &layout
        .slots
        .iter()
        .find(|s| s.shape == vec![1, 4, 4, 3])
        .expect("image slot");
    assert_eq!(&bytes[slot.start..slot.end], &image.data[..]);
    assert!(layout
        .tree_json()
        .starts_with(r#"{"v":1,"entries":[{"name":"image","type":"IMAGE","value":{"$t":"#));
}

#[test]
fn foreign_trees_are_renumbered_and_long_strings_moved_out() {
    use comfy_remote_protocol::container::{prepare_tree, Blob, BlobSource};
    use comfy_remote_protocol::tree::{parse_tree, BlobInfo};

    // A tree written by another encoder: tensors named in reverse order and
    // a long string inline.
    let long = "x".repeat(70_000);
    let tree = format!(
        r#"{{"v":1,"entries":[{{"name":"a","type":null,"value":[{{"$t":"t1"}},{{"$t":"t0"}},"{long}"]}}]}}"#
    );
    let infos = vec![
        BlobInfo {
            name: "t0".into(),
            dtype: DType::U8,
            shape: vec![1],
        },
        BlobInfo {
            name: "t1".into(),
            dtype: DType::U8,
            shape: vec![2],
        },
    ];
    let entries = parse_tree(tree.as_bytes(), &infos, 64).expect("tree");
    let data: [&[u8]; 2] = [&[9], &[7, 8]];
    let blobs = infos
        .iter()
        .zip(data)
        .map(|(i, d)| Blob {
            dtype: i.dtype,
            shape: i.shape.clone(),
            source: BlobSource::Slice(d),
        })
        .collect();
    let ours = prepare_tree(entries, blobs)
        .expect("plan")
        .to_vec()
        .expect("write");
    let expected = Payload {
        entries: vec![entry(
            "a",
            None,
            Value::List(vec![
                Value::Tensor(Tensor::new(DType::U8, vec![2], vec![7, 8]).expect("t")),
                Value::Tensor(Tensor::new(DType::U8, vec![1], vec![9]).expect("t")),
                Value::Str(long),
            ]),
        )],
    };
    assert_eq!(ours, encode(&expected).expect("encode"));
}

#[test]
fn json_bodies_are_checked() {
    use comfy_remote_protocol::decode_json_body;

    let limits = Limits::default();
    for (body, kind) in [
        (&br#"[1]"#[..], "invalid_json_body"),
        (br#"{"inputs":{"a":1},"x":2}"#, "invalid_json_body"),
        (br#"{"format":"other","data":""}"#, "invalid_json_body"),
        (
            br#"{"format":"comfy-remote/1+base64","data":"!!"}"#,
            "invalid_json_body",
        ),
        (br#"{"inputs":{"a":1,"a":2}}"#, "duplicate_key"),
        (
            br#"{"inputs":{"a":{"$pickle":"t0","sig":"00"}}}"#,
            "dangling_ref",
        ),
        (
            br#"{"format":"comfy-remote/1+base64","data":"AAAA"}"#,
            "truncated",
        ),
    ] {
        let err = decode_json_body(body, &limits).expect_err("invalid body");
        assert_eq!(err.kind(), kind, "{}: {err}", String::from_utf8_lossy(body));
    }
}

/// A writer that takes at most 7 bytes a call and can be told to fail.
struct Trickle {
    out: Vec<u8>,
    fail_after: Option<usize>,
}

impl std::io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.fail_after.is_some_and(|n| self.out.len() >= n) {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(7);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn streamed_container_is_byte_identical_and_reports_writer_errors() {
    use comfy_remote_protocol::{encode_to_writer, WriteError};

    let p = sample();
    let whole = encode(&p).expect("encode");
    let mut w = Trickle {
        out: Vec::new(),
        fail_after: None,
    };
    let n = encode_to_writer(&p, &mut w).expect("stream");
    assert_eq!(n, whole.len() as u64);
    assert_eq!(w.out, whole);

    let mut failing = Trickle {
        out: Vec::new(),
        fail_after: Some(100),
    };
    assert!(matches!(
        encode_to_writer(&p, &mut failing),
        Err(WriteError::Io(_))
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
    let mut sink = Vec::new();
    assert!(matches!(
        encode_to_writer(&lying, &mut sink),
        Err(WriteError::Codec(CodecError::LengthMismatch { .. }))
    ));
}
