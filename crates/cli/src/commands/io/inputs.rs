//! `--input NAME=VALUE` for `comfy-remote run`: what the user typed, and the
//! value it becomes for the input's declared type.
//!
//! A value is `json:VALUE` (the protocol's JSON value encoding, so
//! `{"$tuple": [1, 2]}` is a tuple as in the HTTP inputs form),
//! `text:VALUE` (a string as written), a path of an existing file with a
//! known extension (.png/.jpg/.jpeg -> IMAGE, .wav -> AUDIO, .safetensors
//! -> tensors), or a literal. A literal becomes what the endpoint's
//! signature declares when that conversion is exact and unambiguous (`7`
//! for a FLOAT is 7.0, `42` for a STRING is "42", `1` for a BOOLEAN is
//! true); without a signature it is an int, a float, true/false or text.
//! A path-like value that cannot be read (a directory, an unknown
//! extension, a missing file) is an error, so a typo is not sent as text.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use comfy_remote_protocol::media::{InputFormat, INPUT_EXTENSIONS};
use comfy_remote_protocol::{types, CodecError, ComfyType, Entry, Limits, Value};

/// What one `--input` says, before it is read or converted.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub source: Source,
}

/// Where an input's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A `json:` value, read when the command line is (a syntax error is
    /// found before anything is sent).
    Json(Value<'static>),
    Text(String),
    /// An existing regular file with a known extension.
    File(PathBuf),
    Literal(String),
}

/// The name of an `--input name=value` (trimmed), if it has one.
pub fn input_name(spec: &str) -> Option<&str> {
    let (name, _) = spec.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

/// Parse one `--input` without reading anything but the file system's
/// answer to "is this a file".
pub fn parse_spec(spec: &str) -> anyhow::Result<InputSpec> {
    let Some((_, raw)) = spec.split_once('=') else {
        bail!("--input {spec:?}: expected name=path, name=json:VALUE, name=text:VALUE or name=literal");
    };
    let Some(name) = input_name(spec) else {
        bail!("--input {spec:?}: the name is empty");
    };
    let source = if let Some(json) = raw.strip_prefix("json:") {
        let value = comfy_remote_protocol::parse_value(json.as_bytes(), &Limits::default())
            .map_err(|e| match e {
                CodecError::InvalidJsonBody { reason } => anyhow::anyhow!(
                    "--input {name}: json:{json} is not valid JSON ({})",
                    reason.trim_start_matches("JSON value: ")
                ),
                other => anyhow::anyhow!(
                    "--input {name}: json:{json} is not a value comfy-remote carries: {other}"
                ),
            })?;
        Source::Json(value)
    } else if let Some(text) = raw.strip_prefix("text:") {
        Source::Text(text.to_owned())
    } else {
        let path = Path::new(raw);
        let ext = extension(path);
        if path.is_dir() {
            bail!(
                "--input {name}: {} is a directory; give a file, or text:VALUE for a string",
                path.display()
            );
        }
        if path.is_file() {
            if !ext
                .as_deref()
                .is_some_and(|e| INPUT_EXTENSIONS.contains(&e))
            {
                bail!(
                    "--input {name}: {} has an unsupported extension; use .png, .jpg, .jpeg, .wav, .safetensors, json:VALUE or text:VALUE",
                    path.display()
                );
            }
            Source::File(path.to_path_buf())
        } else if path.exists() {
            bail!(
                "--input {name}: {} is not a regular file; give a file, or text:VALUE for a string",
                path.display()
            );
        } else if ext
            .as_deref()
            .is_some_and(|e| INPUT_EXTENSIONS.contains(&e))
        {
            bail!(
                "--input {name}: no such file {}; use text:VALUE to send it as a string",
                path.display()
            );
        } else {
            Source::Literal(raw.to_owned())
        }
    };
    Ok(InputSpec {
        name: name.to_owned(),
        source,
    })
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Read and convert one input. `declared` is the type the endpoint's
/// signature gives the input (`None`: no signature, or the input is not in
/// it); the entry is brought to it with the protocol's rule
/// ([`types::conform`]), and an error says what to type instead.
pub fn to_entry(spec: &InputSpec, declared: Option<&str>) -> anyhow::Result<Entry<'static>> {
    let name = &spec.name;
    let entry = |comfy_type: Option<&str>, value| Entry {
        name: name.clone(),
        comfy_type: comfy_type.map(ComfyType::new),
        value,
    };
    let raw = match &spec.source {
        Source::Json(value) => entry(None, value.clone()),
        Source::Text(text) => {
            if let Some(d) = declared.filter(|d| ![ComfyType::STRING, ComfyType::ANY].contains(d)) {
                bail!("--input {name} is {d} and `text:` makes a string; drop `text:`");
            }
            entry(None, Value::Str(text.clone()))
        }
        Source::File(path) => {
            let format = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(InputFormat::of_name)
                .unwrap_or(InputFormat::Safetensors);
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let value = format
                .read(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            entry(format.comfy_type(), value)
        }
        Source::Literal(text) => {
            let value = match declared {
                Some(d) => literal_as(name, d, text)?,
                None => literal(text),
            };
            entry(None, value)
        }
    };
    match declared {
        Some(d) => types::conform(d, raw).map_err(|e| anyhow::anyhow!("--input {name} {e}")),
        None => Ok(raw),
    }
}

/// A literal without a declared type: an int, a float, true/false, else text.
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

/// A literal for an input declared `declared`, when the conversion is exact
/// and unambiguous; otherwise an error that says what to type.
fn literal_as(name: &str, declared: &str, raw: &str) -> anyhow::Result<Value<'static>> {
    let trimmed = raw.trim();
    Ok(match declared {
        ComfyType::STRING => Value::Str(raw.to_owned()),
        ComfyType::INT => match trimmed.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match trimmed.parse::<f64>() {
                // 7.0 is exactly 7; 7.5 is not an int.
                Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
                _ => bail!("--input {name} is INT; type a whole number such as 7 (got {raw:?})"),
            },
        },
        ComfyType::FLOAT => match trimmed.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match trimmed.parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => bail!("--input {name} is FLOAT; type a number such as 7.0 (got {raw:?})"),
            },
        },
        ComfyType::BOOLEAN => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => bail!("--input {name} is BOOLEAN; type true or false (got {raw:?})"),
        },
        ComfyType::IMAGE | ComfyType::MASK => {
            bail!("--input {name} is {declared}; give an image file (.png, .jpg, .jpeg) or a .safetensors tensor (got {raw:?})")
        }
        ComfyType::AUDIO => {
            bail!("--input {name} is AUDIO; give a .wav file (got {raw:?})")
        }
        ComfyType::LATENT => {
            bail!("--input {name} is LATENT; give a .safetensors file with a `samples` tensor (got {raw:?})")
        }
        _ => literal(raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(spec: &str, declared: Option<&str>) -> anyhow::Result<Value<'static>> {
        Ok(to_entry(&parse_spec(spec)?, declared)?.value)
    }

    fn err(spec: &str, declared: Option<&str>) -> String {
        format!("{:#}", value(spec, declared).expect_err(spec))
    }

    #[test]
    fn literals_without_a_signature_are_inferred() {
        assert_eq!(value("n=3", None).expect("int"), Value::Int(3));
        assert_eq!(value("n=0.5", None).expect("float"), Value::Float(0.5));
        assert_eq!(value("n=true", None).expect("bool"), Value::Bool(true));
        assert_eq!(
            value("n=a cat", None).expect("str"),
            Value::Str("a cat".into())
        );
        assert!(parse_spec("noequals").is_err());
    }

    #[test]
    fn literals_take_the_declared_type_when_that_is_exact() {
        assert_eq!(value("cfg=7", Some("FLOAT")).expect("7"), Value::Float(7.0));
        assert_eq!(
            value("prompt=42", Some("STRING")).expect("42"),
            Value::Str("42".into())
        );
        assert_eq!(
            value("flag=1", Some("BOOLEAN")).expect("1"),
            Value::Bool(true)
        );
        assert_eq!(
            value("flag=False", Some("BOOLEAN")).expect("F"),
            Value::Bool(false)
        );
        assert_eq!(
            value("steps=20.0", Some("INT")).expect("20.0"),
            Value::Int(20)
        );
        assert!(err("steps=7.5", Some("INT")).contains("type a whole number such as 7"));
        assert!(err("cfg=high", Some("FLOAT")).contains("type a number such as 7.0"));
        assert!(err("flag=yes", Some("BOOLEAN")).contains("type true or false"));
        assert!(err("image=cat", Some("IMAGE")).contains("give an image file"));
        assert!(err("steps=text:20", Some("INT")).contains("drop `text:`"));
    }

    #[test]
    fn json_values_use_the_protocols_encoding() {
        assert_eq!(
            value(r#"size=json:{"$tuple": [1, 2]}"#, None).expect("tuple"),
            Value::Tuple(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(
            value("n=json:[1, 2.5, \"x\"]", None).expect("json"),
            Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into())
            ])
        );
        assert_eq!(
            value("n=json:3", Some("FLOAT")).expect("widened"),
            Value::Float(3.0)
        );
        let e = parse_spec("n=json:[1,").expect_err("syntax");
        assert!(format!("{e:#}").contains("is not valid JSON (EOF"), "{e:#}");
        let e = parse_spec(r#"n=json:{"$set": [1]}"#).expect_err("unknown tag");
        assert!(format!("{e:#}").contains("unknown tag `$set`"), "{e:#}");
    }

    #[test]
    fn text_prefix_forces_a_string() {
        assert_eq!(
            value("n=text:3", None).expect("text"),
            Value::Str("3".into())
        );
        assert_eq!(
            value("n=text:missing.png", None).expect("text"),
            Value::Str("missing.png".into())
        );
        assert_eq!(input_name(" a =1"), Some("a"));
        assert_eq!(input_name("=1"), None);
    }

    #[test]
    fn paths_that_are_not_readable_inputs_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let msg = |spec: String| format!("{:#}", parse_spec(&spec).expect_err(&spec));
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
}
