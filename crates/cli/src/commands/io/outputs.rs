//! Outputs of `comfy-remote run` as files: IMAGE/MASK as PNG (one per
//! batch item), AUDIO as WAV, STRING as text, tensors as safetensors,
//! other values as JSON.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use comfy_remote_protocol::{types, ComfyType, Entry, Tensor, Value};

use super::{dtype_to_st, to_f32};

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
    let ty = types::type_of(entry);
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
    use super::super::inputs::{parse_spec, to_entry};
    use super::*;

    fn read(spec: &str) -> Entry<'static> {
        to_entry(&parse_spec(spec).expect("spec"), None).expect("entry")
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
        let e = read(&format!("image={}", src.display()));
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
        let e = read(&format!("a={}", src.display()));
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
        let again = read(&format!("a={}", out[0].display()));
        assert_eq!(again.value, e.value);
    }
}
