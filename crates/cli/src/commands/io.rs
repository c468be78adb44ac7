//! Files <-> values for `comfy-remote run`: PNG/JPEG images, WAV audio,
//! safetensors and JSON literals in; PNG, WAV, text, JSON and safetensors out.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use comfy_remote_protocol::{ComfyType, DType, Entry, Tensor, Value};

/// The name of an `--input name=value` (trimmed), if it has one.
pub fn input_name(spec: &str) -> Option<&str> {
    let (name, _) = spec.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

/// Parse one `--input name=value` into a payload entry: `json:VALUE` is
/// JSON, `text:VALUE` a string as written; otherwise an existing regular
/// file with a known extension (.png/.jpg/.jpeg, .wav, .safetensors) is
/// read, and anything else that is not a path is a literal (int, float,
/// true/false, text). A path that cannot be read as an input (a directory,
/// an unknown extension, a known extension that does not exist) is an
/// error rather than a string, so a typo is not sent as text.
pub fn parse_input(spec: &str) -> anyhow::Result<Entry<'static>> {
    let Some((_, raw)) = spec.split_once('=') else {
        bail!("--input {spec:?}: expected name=path, name=json:VALUE, name=text:VALUE or name=literal");
    };
    let Some(name) = input_name(spec) else {
        bail!("--input {spec:?}: the name is empty");
    };
    let (ty, value) = if let Some(json) = raw.strip_prefix("json:") {
        let j: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("--input {name}: not valid JSON"))?;
        (None, json_to_value(&j))
    } else if let Some(text) = raw.strip_prefix("text:") {
        (None, Value::Str(text.to_owned()))
    } else {
        let path = Path::new(raw);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let known = matches!(
            ext.as_deref(),
            Some("png" | "jpg" | "jpeg" | "wav" | "safetensors")
        );
        if path.is_dir() {
            bail!(
                "--input {name}: {} is a directory; give a file, or text:VALUE for a string",
                path.display()
            );
        }
        if path.is_file() {
            match ext.as_deref() {
                Some("png" | "jpg" | "jpeg") => (Some(ComfyType::IMAGE), read_image(path)?),
                Some("wav") => (Some(ComfyType::AUDIO), read_wav(path)?),
                Some("safetensors") => (None, read_safetensors(path)?),
                _ => bail!(
                    "--input {name}: {} has an unsupported extension; use .png, .jpg, .jpeg, .wav, .safetensors, json:VALUE or text:VALUE",
                    path.display()
                ),
            }
        } else if path.exists() {
            bail!(
                "--input {name}: {} is not a regular file; give a file, or text:VALUE for a string",
                path.display()
            );
        } else if known {
            bail!(
                "--input {name}: no such file {}; use text:VALUE to send it as a string",
                path.display()
            );
        } else {
            (None, literal(raw))
        }
    };
    Ok(Entry {
        name: name.to_owned(),
        comfy_type: ty.map(ComfyType::new),
        value,
    })
}

fn literal(raw: &str) -> Value<'static> {
    if let Ok(i) = raw.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return Value::Float(f);
    }
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(raw.to_owned()),
    }
}

/// JSON -> value: integers stay INT, other numbers FLOAT, objects dicts.
pub fn json_to_value(j: &serde_json::Value) -> Value<'static> {
    match j {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(a) => Value::List(a.iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => Value::Dict(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        ),
    }
}

fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> anyhow::Result<Value<'static>> {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(Value::Tensor(Tensor::new(DType::F32, shape, data)?))
}

/// PNG/JPEG -> IMAGE `[1,H,W,3]` f32 in 0..1.
pub fn read_image(path: &Path) -> anyhow::Result<Value<'static>> {
    let img = image::open(path)
        .with_context(|| format!("reading image {}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let values: Vec<f32> = img.as_raw().iter().map(|&b| f32::from(b) / 255.0).collect();
    f32_tensor(vec![1, h as usize, w as usize, 3], &values)
}

/// WAV -> AUDIO `{waveform [1,C,T] f32, sample_rate}`.
pub fn read_wav(path: &Path) -> anyhow::Result<Value<'static>> {
    let mut r =
        hound::WavReader::open(path).with_context(|| format!("reading WAV {}", path.display()))?;
    let spec = r.spec();
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    let frames = samples.len() / channels;
    let mut planar = vec![0f32; frames * channels];
    for (i, s) in samples.iter().take(frames * channels).enumerate() {
        planar[(i % channels) * frames + i / channels] = *s;
    }
    Ok(Value::Dict(vec![
        (
            "waveform".into(),
            f32_tensor(vec![1, channels, frames], &planar)?,
        ),
        (
            "sample_rate".into(),
            Value::Int(i64::from(spec.sample_rate)),
        ),
    ]))
}

fn dtype_from_st(d: safetensors::Dtype) -> Option<DType> {
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

fn dtype_to_st(d: DType) -> safetensors::Dtype {
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

/// safetensors -> the single tensor, or a dict of name -> tensor (a LATENT
/// when it has `samples`).
pub fn read_safetensors(path: &Path) -> anyhow::Result<Value<'static>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut items = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st.tensor(name)?;
        let dtype = dtype_from_st(view.dtype()).with_context(|| {
            format!("{}: tensor {name} has an unsupported dtype", path.display())
        })?;
        let t = Tensor::new(dtype, view.shape().to_vec(), view.data().to_vec())?;
        items.push((name.to_owned(), Value::Tensor(t)));
    }
    Ok(match items.len() {
        0 => bail!("{} holds no tensors", path.display()),
        1 => items.pop().map(|(_, v)| v).unwrap_or(Value::None),
        _ => Value::Dict(items),
    })
}

fn to_f32(t: &Tensor<'_>) -> Option<Vec<f32>> {
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

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn numbered(dir: &Path, name: &str, i: usize, n: usize, ext: &str) -> PathBuf {
    if n == 1 {
        dir.join(format!("{name}.{ext}"))
    } else {
        dir.join(format!("{name}_{i:03}.{ext}"))
    }
}

/// Write one output into `dir`; returns the files written.
pub fn write_output(dir: &Path, entry: &Entry<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let ty = entry
        .comfy_type
        .clone()
        .unwrap_or_else(|| ComfyType::infer(&entry.value));
    let name = entry.name.replace(['/', '\\'], "_");
    let mut files = Vec::new();
    match (ty.as_str(), &entry.value) {
        (ComfyType::IMAGE, Value::Tensor(t))
            if t.shape.len() == 4 && matches!(t.shape[3], 1 | 3 | 4) =>
        {
            if let Some(px) = to_f32(t) {
                let (b, h, w, c) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
                for i in 0..b {
                    let item = &px[i * h * w * c..(i + 1) * h * w * c];
                    let path = numbered(dir, &name, i, b, "png");
                    let bytes: Vec<u8> = item.iter().map(|v| to_u8(*v)).collect();
                    let color = match c {
                        1 => image::ExtendedColorType::L8,
                        3 => image::ExtendedColorType::Rgb8,
                        _ => image::ExtendedColorType::Rgba8,
                    };
                    image::save_buffer(&path, &bytes, w as u32, h as u32, color)
                        .with_context(|| format!("writing {}", path.display()))?;
                    files.push(path);
                }
                return Ok(files);
            }
        }
        (ComfyType::MASK, Value::Tensor(t)) if t.shape.len() == 3 => {
            if let Some(px) = to_f32(t) {
                let (b, h, w) = (t.shape[0], t.shape[1], t.shape[2]);
                for i in 0..b {
                    let bytes: Vec<u8> = px[i * h * w..(i + 1) * h * w]
                        .iter()
                        .map(|v| to_u8(*v))
                        .collect();
                    let path = numbered(dir, &name, i, b, "png");
                    image::save_buffer(
                        &path,
                        &bytes,
                        w as u32,
                        h as u32,
                        image::ExtendedColorType::L8,
                    )
                    .with_context(|| format!("writing {}", path.display()))?;
                    files.push(path);
                }
                return Ok(files);
            }
        }
        (ComfyType::AUDIO, v) => {
            if let (Some(Value::Tensor(t)), Some(Value::Int(rate))) =
                (v.get("waveform"), v.get("sample_rate"))
            {
                if let (Some(s), 3) = (to_f32(t), t.shape.len()) {
                    let (b, c, n) = (t.shape[0], t.shape[1], t.shape[2]);
                    for i in 0..b {
                        let path = numbered(dir, &name, i, b, "wav");
                        let spec = hound::WavSpec {
                            channels: u16::try_from(c).context("too many audio channels")?,
                            sample_rate: u32::try_from(*rate).context("bad sample rate")?,
                            bits_per_sample: 32,
                            sample_format: hound::SampleFormat::Float,
                        };
                        let mut wr = hound::WavWriter::create(&path, spec)?;
                        for f in 0..n {
                            for ch in 0..c {
                                wr.write_sample(s[i * c * n + ch * n + f])?;
                            }
                        }
                        wr.finalize()?;
                        files.push(path);
                    }
                    return Ok(files);
                }
            }
        }
        (_, Value::Str(s)) => {
            let path = dir.join(format!("{name}.txt"));
            std::fs::write(&path, s)?;
            return Ok(vec![path]);
        }
        _ => {}
    }
    // Anything else: tensors into safetensors, the rest as JSON.
    let mut tensors = Vec::new();
    collect_tensors(&entry.value, "", &mut tensors);
    if !tensors.is_empty() {
        let path = dir.join(format!("{name}.safetensors"));
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(k, t)| {
                Ok((
                    k.clone(),
                    safetensors::tensor::TensorView::new(
                        dtype_to_st(t.dtype),
                        t.shape.clone(),
                        &t.data,
                    )?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        safetensors::serialize_to_file(views, None, &path)?;
        files.push(path);
    } else {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&value_to_json(&entry.value))?,
        )?;
        files.push(path);
    }
    Ok(files)
}

fn collect_tensors<'v>(v: &'v Value<'_>, prefix: &str, out: &mut Vec<(String, &'v Tensor<'v>)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((
            if prefix.is_empty() {
                "tensor".into()
            } else {
                prefix.to_owned()
            },
            t,
        )),
        Value::Dict(items) => items
            .iter()
            .for_each(|(k, v)| collect_tensors(v, &key(k), out)),
        Value::List(items) | Value::Tuple(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| collect_tensors(v, &key(&i.to_string()), out)),
        _ => {}
    }
}

/// A value as JSON (tensors summarised by dtype and shape).
pub fn value_to_json(v: &Value<'_>) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::None => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::List(a) | Value::Tuple(a) => {
            serde_json::Value::Array(a.iter().map(value_to_json).collect())
        }
        Value::Dict(d) => serde_json::Value::Object(
            d.iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Value::Tensor(t) => json!({"dtype": t.dtype.as_str(), "shape": t.shape}),
        Value::Bytes(b) => json!({"bytes": b.len()}),
        Value::Pickle { data, .. } => json!({"pickle_bytes": data.len()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_json_inputs() {
        assert_eq!(parse_input("n=3").expect("int").value, Value::Int(3));
        assert_eq!(
            parse_input("n=0.5").expect("float").value,
            Value::Float(0.5)
        );
        assert_eq!(
            parse_input("n=true").expect("bool").value,
            Value::Bool(true)
        );
        assert_eq!(
            parse_input("n=a cat").expect("str").value,
            Value::Str("a cat".into())
        );
        let e = parse_input("n=json:[1, 2.5, \"x\"]").expect("json");
        assert_eq!(
            e.value,
            Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into())
            ])
        );
        assert!(parse_input("noequals").is_err());
    }

    #[test]
    fn text_prefix_forces_a_string() {
        assert_eq!(
            parse_input("n=text:3").expect("text").value,
            Value::Str("3".into())
        );
        assert_eq!(
            parse_input("n=text:missing.png").expect("text").value,
            Value::Str("missing.png".into())
        );
        assert_eq!(input_name(" a =1"), Some("a"));
        assert_eq!(input_name("=1"), None);
    }

    #[test]
    fn paths_that_are_not_readable_inputs_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let msg = |spec: String| format!("{:#}", parse_input(&spec).expect_err(&spec));
        // A typo in a file name is not sent as text.
        let missing = dir.path().join("typo.png");
        let m = msg(format!("i={}", missing.display()));
        assert!(m.contains("no such file") && m.contains("typo.png"), "{m}");
        // A directory, even one named like an image.
        let sub = dir.path().join("frames.png");
        std::fs::create_dir(&sub).expect("dir");
        let m = msg(format!("i={}", sub.display()));
        assert!(
            m.contains("is a directory") && m.contains("frames.png"),
            "{m}"
        );
        let m = msg(format!("i={}", dir.path().display()));
        assert!(m.contains("is a directory"), "{m}");
        // An existing file with an unknown extension.
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "hi").expect("write");
        let m = msg(format!("i={}", notes.display()));
        assert!(
            m.contains("unsupported extension") && m.contains("notes.txt"),
            "{m}"
        );
    }

    #[test]
    fn png_round_trips_through_image_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("in.png");
        image::save_buffer(
            &src,
            &[0, 128, 255, 10, 20, 30],
            2,
            1,
            image::ExtendedColorType::Rgb8,
        )
        .expect("png");
        let e = parse_input(&format!("image={}", src.display())).expect("read");
        assert_eq!(e.comfy_type.as_ref().map(|t| t.as_str()), Some("IMAGE"));
        let Value::Tensor(t) = &e.value else {
            panic!("tensor")
        };
        assert_eq!(t.shape, vec![1, 1, 2, 3]);
        let out = write_output(
            dir.path(),
            &Entry {
                name: "out".into(),
                ..e
            },
        )
        .expect("write");
        let back = image::open(&out[0]).expect("open").to_rgb8();
        assert_eq!(back.as_raw(), &vec![0, 128, 255, 10, 20, 30]);
    }

    #[test]
    fn wav_round_trips_through_audio_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&src, spec).expect("wav");
        for s in [0.5f32, -0.5, 0.25, -0.25] {
            w.write_sample(s).expect("sample");
        }
        w.finalize().expect("finalize");
        let e = parse_input(&format!("a={}", src.display())).expect("read");
        let Some(Value::Tensor(t)) = e.value.get("waveform") else {
            panic!("waveform")
        };
        assert_eq!(t.shape, vec![1, 2, 2]);
        let out = write_output(
            dir.path(),
            &Entry {
                name: "o".into(),
                ..e.clone()
            },
        )
        .expect("write");
        let again = parse_input(&format!("a={}", out[0].display())).expect("reread");
        assert_eq!(again.value, e.value);
    }
}
