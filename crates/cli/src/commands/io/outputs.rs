//! Outputs of `comfy-remote run` as files: IMAGE/MASK as PNG (one per
//! batch item), AUDIO as WAV, STRING as text, tensors as safetensors,
//! other values as JSON (the protocol's rule, `media::files_of`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use comfy_remote_protocol::media;
use comfy_remote_protocol::Entry;

/// Write one output into `dir`; returns the files written.
pub fn write_output(dir: &Path, entry: &Entry<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let files = media::files_of(entry).with_context(|| format!("output {:?}", entry.name))?;
    let mut written = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        std::fs::write(&path, &f.bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::inputs::{parse_spec, to_entry};
    use super::*;
    use comfy_remote_protocol::Value;

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
