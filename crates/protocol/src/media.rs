//! Values as media files and files as values: the one rule `comfy-remote
//! run`, the worker's Comfy API v2 and the Modal web front share.
//!
//! A file becomes an input value by its format ([`InputFormat`]): PNG and
//! JPEG become an `IMAGE` (`[1,H,W,3]` f32 in 0..1, as ComfyUI's LoadImage
//! makes it), WAV an `AUDIO`, safetensors its one tensor or a dict of them
//! (a `LATENT` when it has `samples`). An output value becomes files
//! ([`files_of`]): `IMAGE`/`MASK` one PNG per batch item, `AUDIO` one WAV
//! per batch item, a string one UTF-8 text file, values holding tensors one
//! safetensors file (`LATENT`s are marked as such), anything else JSON.
//! Files are built in memory; the worker writes them where it keeps them.

use std::io::Cursor;

use crate::packed::quantize;
use crate::types;
use crate::value::{ComfyType, DType, Entry, Tensor, Value};

/// Why a file is not the value it claims to be, or a value has no file form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MediaError(pub String);

fn err(message: impl Into<String>) -> MediaError {
    MediaError(message.into())
}

/// What a file that is an input is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// PNG or JPEG: an `IMAGE`.
    Image,
    /// WAV: an `AUDIO`.
    Wav,
    /// safetensors: its tensor, or a dict of its tensors.
    Safetensors,
}

/// File extensions an input file may have, lower case.
pub const INPUT_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "wav", "safetensors"];

impl InputFormat {
    /// The format of a file name, by its extension (case-insensitive).
    pub fn of_name(name: &str) -> Option<InputFormat> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "png" | "jpg" | "jpeg" => Some(InputFormat::Image),
            "wav" => Some(InputFormat::Wav),
            "safetensors" => Some(InputFormat::Safetensors),
            _ => None,
        }
    }

    /// The format of a media type (parameters ignored).
    pub fn of_content_type(content_type: &str) -> Option<InputFormat> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "image/png" | "image/jpeg" | "image/jpg" => Some(InputFormat::Image),
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some(InputFormat::Wav),
            _ => None,
        }
    }

    /// The format of a file by its name, else by its media type, else by its
    /// first bytes (PNG, JPEG and RIFF/WAVE signatures).
    pub fn detect(name: Option<&str>, content_type: Option<&str>, head: &[u8]) -> Option<Self> {
        name.and_then(InputFormat::of_name)
            .or_else(|| content_type.and_then(InputFormat::of_content_type))
            .or_else(|| {
                if head.starts_with(b"\x89PNG") || head.starts_with(&[0xFF, 0xD8, 0xFF]) {
                    Some(InputFormat::Image)
                } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
                    Some(InputFormat::Wav)
                } else {
                    None
                }
            })
    }

    /// The Comfy type a file of this format is, when it is one type.
    pub fn comfy_type(self) -> Option<&'static str> {
        match self {
            InputFormat::Image => Some(ComfyType::IMAGE),
            InputFormat::Wav => Some(ComfyType::AUDIO),
            InputFormat::Safetensors => None,
        }
    }

    /// Read `bytes` of this format as a value.
    pub fn read(self, bytes: &[u8]) -> Result<Value<'static>, MediaError> {
        match self {
            InputFormat::Image => read_image(bytes),
            InputFormat::Wav => read_wav(bytes),
            InputFormat::Safetensors => read_safetensors(bytes),
        }
    }
}

/// An `[…]` f32 tensor value of `values`.
pub fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Result<Value<'static>, MediaError> {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Tensor::new(DType::F32, shape, data)
        .map(Value::Tensor)
        .map_err(|e| err(e.to_string()))
}

/// PNG/JPEG -> IMAGE `[1,H,W,3]` f32 in 0..1 (`u8 / 255`, as LoadImage).
pub fn read_image(bytes: &[u8]) -> Result<Value<'static>, MediaError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| err(format!("not a PNG or JPEG image ({e})")))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let values: Vec<f32> = img.as_raw().iter().map(|&b| f32::from(b) / 255.0).collect();
    f32_tensor(vec![1, h as usize, w as usize, 3], &values)
}

/// WAV -> AUDIO `{waveform [1,C,T] f32, sample_rate}`.
pub fn read_wav(bytes: &[u8]) -> Result<Value<'static>, MediaError> {
    let mut r = hound::WavReader::new(Cursor::new(bytes))
        .map_err(|e| err(format!("not a WAV file ({e})")))?;
    let spec = r.spec();
    let channels = usize::from(spec.channels.max(1));
    let bad = |e: hound::Error| err(format!("a damaged WAV file ({e})"));
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>().map_err(bad)?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(bad)?
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

/// safetensors -> the single tensor, or a dict of name -> tensor (a LATENT
/// when it has `samples`), names sorted.
pub fn read_safetensors(bytes: &[u8]) -> Result<Value<'static>, MediaError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| err(format!("not a safetensors file ({e})")))?;
    let mut items = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st.tensor(name).map_err(|e| err(e.to_string()))?;
        let dtype = dtype_from_st(view.dtype())
            .ok_or_else(|| err(format!("tensor {name} has an unsupported dtype")))?;
        let t = Tensor::new(dtype, view.shape().to_vec(), view.data().to_vec())
            .map_err(|e| err(e.to_string()))?;
        items.push((name.to_owned(), Value::Tensor(t)));
    }
    match items.len() {
        0 => Err(err("the safetensors file holds no tensors")),
        1 => Ok(items.pop().map(|(_, v)| v).unwrap_or(Value::None)),
        _ => Ok(Value::Dict(items)),
    }
}

/// What an output file is (the kinds Comfy API v2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Image,
    /// Only from ComfyUI's own outputs (animated images, videos).
    Video,
    Audio,
    Text,
    Latent,
    /// Tensors or JSON that are none of the above.
    File,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Image => "image",
            FileKind::Video => "video",
            FileKind::Audio => "audio",
            FileKind::Text => "text",
            FileKind::Latent => "latent",
            FileKind::File => "file",
        }
    }
}

/// One file an output value becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFile {
    /// The file name: the entry's name (`/` and `\` replaced), `_NNN` per
    /// batch item when there are several, and the extension.
    pub name: String,
    pub kind: FileKind,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// The media type of safetensors files.
pub const SAFETENSORS_MEDIA_TYPE: &str = "application/vnd.safetensors";

fn numbered(name: &str, i: usize, n: usize, ext: &str) -> String {
    if n == 1 {
        format!("{name}.{ext}")
    } else {
        format!("{name}_{i:03}.{ext}")
    }
}

/// A float tensor's values as f32 (`None` for other dtypes).
pub fn to_f32(t: &Tensor<'_>) -> Option<Vec<f32>> {
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

fn png(
    pixels: &[u8],
    w: usize,
    h: usize,
    color: image::ExtendedColorType,
) -> Result<Vec<u8>, MediaError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut out = Vec::new();
    // Fast compression: an output is written once per job, on the path to
    // the user; a few percent of size is not worth its time.
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(pixels, w as u32, h as u32, color)
        .map_err(|e| err(format!("encoding PNG: {e}")))?;
    Ok(out)
}

/// One 8-bit PNG per frame of `px` (`b` frames of `w x h x c` values).
fn png_frames(
    name: &str,
    px: &[f32],
    b: usize,
    (w, h, c): (usize, usize, usize),
    color: image::ExtendedColorType,
) -> Result<Vec<MediaFile>, MediaError> {
    let frame = w * h * c;
    (0..b)
        .map(|i| {
            let item: Vec<u8> = px[i * frame..(i + 1) * frame]
                .iter()
                .map(|v| quantize(*v))
                .collect();
            Ok(MediaFile {
                name: numbered(name, i, b, "png"),
                kind: FileKind::Image,
                content_type: "image/png",
                bytes: png(&item, w, h, color)?,
            })
        })
        .collect()
}

/// The files one output value becomes (see the module docs).
pub fn files_of(entry: &Entry<'_>) -> Result<Vec<MediaFile>, MediaError> {
    let ty = types::type_of(entry);
    let name = entry.name.replace(['/', '\\'], "_");
    match (ty.as_str(), &entry.value) {
        (ComfyType::IMAGE, Value::Tensor(t))
            if t.shape.len() == 4 && matches!(t.shape[3], 1 | 3 | 4) =>
        {
            if let Some(px) = to_f32(t) {
                let (b, h, w, c) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
                let color = match c {
                    1 => image::ExtendedColorType::L8,
                    3 => image::ExtendedColorType::Rgb8,
                    _ => image::ExtendedColorType::Rgba8,
                };
                return png_frames(&name, &px, b, (w, h, c), color);
            }
        }
        (ComfyType::MASK, Value::Tensor(t)) if t.shape.len() == 3 => {
            if let Some(px) = to_f32(t) {
                let (b, h, w) = (t.shape[0], t.shape[1], t.shape[2]);
                return png_frames(&name, &px, b, (w, h, 1), image::ExtendedColorType::L8);
            }
        }
        (ComfyType::AUDIO, v) => {
            if let (Some(Value::Tensor(t)), Some(Value::Int(rate))) =
                (v.get("waveform"), v.get("sample_rate"))
            {
                if let (Some(s), 3) = (to_f32(t), t.shape.len()) {
                    let (b, c, n) = (t.shape[0], t.shape[1], t.shape[2]);
                    let spec = hound::WavSpec {
                        channels: u16::try_from(c).map_err(|_| err("too many audio channels"))?,
                        sample_rate: u32::try_from(*rate)
                            .map_err(|_| err("the sample rate is out of range"))?,
                        bits_per_sample: 32,
                        sample_format: hound::SampleFormat::Float,
                    };
                    let mut files = Vec::with_capacity(b);
                    for i in 0..b {
                        let mut buf = Cursor::new(Vec::new());
                        let wav = |e: hound::Error| err(format!("encoding WAV: {e}"));
                        let mut wr = hound::WavWriter::new(&mut buf, spec).map_err(wav)?;
                        for f in 0..n {
                            for ch in 0..c {
                                wr.write_sample(s[i * c * n + ch * n + f]).map_err(wav)?;
                            }
                        }
                        wr.finalize().map_err(wav)?;
                        files.push(MediaFile {
                            name: numbered(&name, i, b, "wav"),
                            kind: FileKind::Audio,
                            content_type: "audio/wav",
                            bytes: buf.into_inner(),
                        });
                    }
                    return Ok(files);
                }
            }
        }
        (_, Value::Str(s)) => {
            return Ok(vec![MediaFile {
                name: format!("{name}.txt"),
                kind: FileKind::Text,
                content_type: "text/plain; charset=utf-8",
                bytes: s.as_bytes().to_vec(),
            }])
        }
        (_, Value::Bytes(b)) => {
            return Ok(vec![MediaFile {
                name,
                kind: FileKind::File,
                content_type: "application/octet-stream",
                bytes: b.to_vec(),
            }])
        }
        _ => {}
    }
    // Anything else: tensors into safetensors, the rest as JSON.
    let mut tensors = Vec::new();
    collect_tensors(&entry.value, "", &mut tensors);
    if !tensors.is_empty() {
        let views = tensors
            .iter()
            .map(|(k, t)| {
                safetensors::tensor::TensorView::new(dtype_to_st(t.dtype), t.shape.clone(), &t.data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| err(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = safetensors::serialize(views, None).map_err(|e| err(e.to_string()))?;
        let kind = if ty.as_str() == ComfyType::LATENT {
            FileKind::Latent
        } else {
            FileKind::File
        };
        return Ok(vec![MediaFile {
            name: format!("{name}.safetensors"),
            kind,
            content_type: SAFETENSORS_MEDIA_TYPE,
            bytes,
        }]);
    }
    let bytes =
        serde_json::to_vec_pretty(&value_to_json(&entry.value)).map_err(|e| err(e.to_string()))?;
    Ok(vec![MediaFile {
        name: format!("{name}.json"),
        kind: FileKind::File,
        content_type: "application/json",
        bytes,
    }])
}

/// Our dtype of a safetensors one (`None` for those the protocol does not carry).
pub fn dtype_from_st(d: safetensors::Dtype) -> Option<DType> {
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

/// The safetensors dtype of ours.
pub fn dtype_to_st(d: DType) -> safetensors::Dtype {
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
        DType::F64 => S::F64,
    }
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

    fn entry(name: &str, ty: Option<&str>, value: Value<'static>) -> Entry<'static> {
        Entry {
            name: name.into(),
            comfy_type: ty.map(ComfyType::new),
            value,
        }
    }

    #[test]
    fn png_round_trips_through_image_values() {
        let src = png(
            &[0, 128, 255, 10, 20, 30],
            2,
            1,
            image::ExtendedColorType::Rgb8,
        )
        .expect("png");
        assert_eq!(
            InputFormat::detect(None, None, &src),
            Some(InputFormat::Image)
        );
        let v = InputFormat::Image.read(&src).expect("read");
        let Value::Tensor(t) = &v else {
            panic!("tensor")
        };
        assert_eq!(t.shape, vec![1, 1, 2, 3]);
        let files = files_of(&entry("out/x", Some("IMAGE"), v)).expect("files");
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].name.as_str(), files[0].kind),
            ("out_x.png", FileKind::Image)
        );
        let back = image::load_from_memory(&files[0].bytes)
            .expect("open")
            .to_rgb8();
        assert_eq!(back.as_raw(), &vec![0, 128, 255, 10, 20, 30]);
    }

    #[test]
    fn a_batch_is_one_file_per_item_and_masks_are_grey() {
        let v = f32_tensor(vec![2, 1, 1, 3], &[0.0, 0.5, 1.0, 1.0, 1.0, 1.0]).expect("t");
        let names: Vec<_> = files_of(&entry("img", None, v))
            .expect("files")
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["img_000.png", "img_001.png"]);
        let m = f32_tensor(vec![1, 2, 2], &[0.0, 1.0, 1.0, 0.0]).expect("m");
        let f = files_of(&entry("m", Some("MASK"), m)).expect("mask");
        let back = image::load_from_memory(&f[0].bytes).expect("open");
        assert_eq!(back.color(), image::ColorType::L8);
    }

    #[test]
    fn wav_round_trips_through_audio_values() {
        let wave = f32_tensor(vec![1, 2, 2], &[0.5, 0.25, -0.5, -0.25]).expect("t");
        let audio = Value::Dict(vec![
            ("waveform".into(), wave),
            ("sample_rate".into(), Value::Int(8000)),
        ]);
        let files = files_of(&entry("a", Some("AUDIO"), audio.clone())).expect("files");
        assert_eq!(
            (files[0].kind, files[0].content_type),
            (FileKind::Audio, "audio/wav")
        );
        assert_eq!(
            InputFormat::detect(None, None, &files[0].bytes),
            Some(InputFormat::Wav)
        );
        assert_eq!(InputFormat::Wav.read(&files[0].bytes).expect("read"), audio);
    }

    #[test]
    fn strings_are_text_latents_are_safetensors_and_the_rest_json() {
        let f = files_of(&entry("s", None, Value::Str("hé".into()))).expect("text");
        assert_eq!(
            (f[0].name.as_str(), f[0].kind, f[0].bytes.as_slice()),
            ("s.txt", FileKind::Text, "hé".as_bytes())
        );
        let samples =
            Value::Tensor(Tensor::new(DType::F32, vec![1, 4, 1, 1], vec![0u8; 16]).expect("t"));
        let latent = Value::Dict(vec![("samples".into(), samples)]);
        let f = files_of(&entry("l", None, latent.clone())).expect("latent");
        assert_eq!(
            (f[0].name.as_str(), f[0].kind),
            ("l.safetensors", FileKind::Latent)
        );
        assert_eq!(
            InputFormat::Safetensors.read(&f[0].bytes).expect("read"),
            latent.get("samples").cloned().expect("s")
        );
        let f = files_of(&entry("n", None, Value::List(vec![Value::Int(1)]))).expect("json");
        assert_eq!(
            (f[0].name.as_str(), f[0].content_type),
            ("n.json", "application/json")
        );
    }

    #[test]
    fn formats_come_from_the_name_then_the_media_type_then_the_bytes() {
        assert_eq!(InputFormat::of_name("A.JPEG"), Some(InputFormat::Image));
        assert_eq!(InputFormat::of_name("notes.txt"), None);
        assert_eq!(
            InputFormat::of_content_type("audio/wav; x=1"),
            Some(InputFormat::Wav)
        );
        assert_eq!(
            InputFormat::detect(Some("x.bin"), Some("text/plain"), b"hello"),
            None
        );
        assert!(InputFormat::Image.read(b"not an image").is_err());
    }
}
