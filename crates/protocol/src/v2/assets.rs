//! Assets: the upload form (`multipart/form-data`, read incrementally by
//! [`FormReader`] so a file is streamed, never held), the rules of its
//! fields, and the JSON of an asset, for the worker and the Modal front.

use std::collections::HashMap;

use memchr::memmem;

use super::errors::{Code, Refusal};
use super::view::content_url;
use super::wire::Asset;
use crate::api::rfc3339;

/// The largest asset a server takes by default (`serve --max-asset-bytes`).
pub const DEFAULT_MAX_ASSET_BYTES: u64 = 2 << 30;

/// The largest text field of an upload form.
pub const MAX_FIELD_BYTES: usize = 64 << 10;
/// Bounds of a requested retention (`expires_in`), in seconds.
pub const EXPIRES_IN: std::ops::RangeInclusive<i64> = 60..=604_800;

/// A piece of an upload form, in the order the form has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A text field.
    Field {
        name: String,
        value: String,
    },
    /// The start of a file part (`name` is the field, usually `file`).
    FileStart {
        name: String,
        filename: Option<String>,
        content_type: Option<String>,
    },
    /// Bytes of the current file part.
    FileData(Vec<u8>),
    FileEnd,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// After a delimiter: `--` ends the form, CRLF starts a part.
    AfterDelimiter,
    Headers,
    Field {
        name: String,
    },
    File,
    Done,
}

/// An incremental `multipart/form-data` reader: feed it the body's
/// chunks, it returns the parts. Text fields are capped at
/// [`MAX_FIELD_BYTES`]; file bytes pass through.
#[derive(Debug)]
pub struct FormReader {
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    state: State,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(
        Code::InvalidRequest,
        format!("the multipart body is malformed: {}", message.into()),
    )
}

/// A parameter of a header value (`name="x"`), unquoted.
fn param(header: &str, key: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().trim_matches('"').to_owned())
    })
}

impl FormReader {
    /// A reader for a body of `content_type` (which must be
    /// `multipart/form-data` with a boundary; else 415).
    pub fn new(content_type: Option<&str>) -> Result<FormReader, Refusal> {
        let ct = content_type.unwrap_or("");
        let is_form = ct
            .split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"));
        let boundary = param(ct, "boundary").filter(|b| !b.is_empty() && b.len() <= 200);
        let (true, Some(boundary)) = (is_form, boundary) else {
            return Err(Refusal::new(
                Code::UnsupportedMediaType,
                "send the asset as multipart/form-data with a `file` part",
            ));
        };
        // The body's first delimiter has no CRLF before it: start with one.
        Ok(FormReader {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            buf: b"\r\n".to_vec(),
            state: State::Preamble,
        })
    }

    /// The parts `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Part>, Refusal> {
        self.buf.extend_from_slice(chunk);
        let mut parts = Vec::new();
        loop {
            let progressed = self.step(&mut parts)?;
            if !progressed {
                break;
            }
        }
        Ok(parts)
    }

    /// The end of the body: refused unless the form was complete.
    pub fn finish(&mut self) -> Result<(), Refusal> {
        if self.state == State::Done {
            Ok(())
        } else {
            Err(bad("it ends before its closing boundary"))
        }
    }

    fn step(&mut self, parts: &mut Vec<Part>) -> Result<bool, Refusal> {
        let dlen = self.delimiter.len();
        match &self.state {
            State::Done => {
                self.buf.clear();
                Ok(false)
            }
            State::Preamble => match memmem::find(&self.buf, &self.delimiter) {
                Some(i) => {
                    self.buf.drain(..i + dlen);
                    self.state = State::AfterDelimiter;
                    Ok(true)
                }
                None => {
                    if self.buf.len() > MAX_FIELD_BYTES + dlen {
                        return Err(bad("no boundary where the form should start"));
                    }
                    Ok(false)
                }
            },
            State::AfterDelimiter => {
                if self.buf.len() < 2 {
                    return Ok(false);
                }
                if self.buf.starts_with(b"--") {
                    self.state = State::Done;
                } else if self.buf.starts_with(b"\r\n") {
                    self.buf.drain(..2);
                    self.state = State::Headers;
                } else {
                    return Err(bad("a boundary is not followed by a line break"));
                }
                Ok(true)
            }
            State::Headers => {
                let Some(end) = memmem::find(&self.buf, b"\r\n\r\n") else {
                    if self.buf.len() > 16 << 10 {
                        return Err(bad("a part's headers are too long"));
                    }
                    return Ok(false);
                };
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut disposition = None;
                let mut content_type = None;
                for line in text.split("\r\n") {
                    let Some((k, v)) = line.split_once(':') else {
                        continue;
                    };
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-disposition" => disposition = Some(v.trim().to_owned()),
                        "content-type" => content_type = Some(v.trim().to_owned()),
                        _ => {}
                    }
                }
                let disposition =
                    disposition.ok_or_else(|| bad("a part has no Content-Disposition"))?;
                let name = param(&disposition, "name").ok_or_else(|| bad("a part has no name"))?;
                let filename = param(&disposition, "filename");
                if filename.is_some() || name == "file" {
                    parts.push(Part::FileStart {
                        name,
                        filename,
                        content_type,
                    });
                    self.state = State::File;
                } else {
                    self.state = State::Field { name };
                }
                Ok(true)
            }
            State::Field { name } => match memmem::find(&self.buf, &self.delimiter) {
                Some(i) => {
                    if i > MAX_FIELD_BYTES {
                        return Err(bad(format!(
                            "the field `{name}` is longer than {MAX_FIELD_BYTES} bytes"
                        )));
                    }
                    let value = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                    parts.push(Part::Field {
                        name: name.clone(),
                        value,
                    });
                    self.buf.drain(..i + dlen);
                    self.state = State::AfterDelimiter;
                    Ok(true)
                }
                None => {
                    if self.buf.len() > MAX_FIELD_BYTES + dlen {
                        return Err(bad(format!(
                            "the field `{name}` is longer than {MAX_FIELD_BYTES} bytes"
                        )));
                    }
                    Ok(false)
                }
            },
            State::File => match memmem::find(&self.buf, &self.delimiter) {
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::FileData(self.buf[..i].to_vec()));
                    }
                    parts.push(Part::FileEnd);
                    self.buf.drain(..i + dlen);
                    self.state = State::AfterDelimiter;
                    Ok(true)
                }
                None => {
                    // Keep what could be the start of a delimiter split across chunks.
                    let keep = dlen - 1;
                    if self.buf.len() > keep {
                        let n = self.buf.len() - keep;
                        parts.push(Part::FileData(self.buf[..n].to_vec()));
                        self.buf.drain(..n);
                    }
                    Ok(false)
                }
            },
        }
    }
}

/// The checked fields of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub file_path: String,
    pub content_type: String,
    pub expected_hash: Option<String>,
    /// Seconds the asset is kept, when the form asks.
    pub expires_in: Option<i64>,
}

/// The rules of an upload's text fields (`file_path` required;
/// `content_type`, else the file part's, else octet-stream; optional
/// `expected_hash` and `expires_in`); `has_file`: the form had a file part.
pub fn upload_fields(
    fields: &HashMap<String, String>,
    has_file: bool,
    part_type: Option<&str>,
) -> Result<Upload, Refusal> {
    if !has_file {
        return Err(Refusal::new(
            Code::InvalidRequest,
            "the form has no `file` part",
        ));
    }
    let text = |k: &str| fields.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let file_path = text("file_path").ok_or_else(|| {
        Refusal::new(
            Code::InvalidRequest,
            "the form has no `file_path` (the file's name, e.g. photo.png)",
        )
    })?;
    if file_path.len() > 1024 || file_path.contains('\0') {
        return Err(Refusal::new(
            Code::InvalidRequest,
            "`file_path` must be at most 1024 characters",
        ));
    }
    Ok(Upload {
        file_path: file_path.to_owned(),
        content_type: text("content_type")
            .or(part_type)
            .unwrap_or("application/octet-stream")
            .to_owned(),
        expected_hash: text("expected_hash").map(str::to_owned),
        expires_in: expires_in(text("expires_in"))?,
    })
}

/// `expires_in`: whole seconds within [`EXPIRES_IN`].
pub fn expires_in(raw: Option<&str>) -> Result<Option<i64>, Refusal> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| EXPIRES_IN.contains(n))
            .map(Some)
            .ok_or_else(|| {
                Refusal::new(
                    Code::InvalidRequest,
                    "`expires_in` must be whole seconds from 60 to 604800",
                )
            }),
    }
}

/// The declared hash against the one computed from the bytes received.
pub fn check_hash(expected: Option<&str>, actual: &str) -> Result<(), Refusal> {
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(actual) => Err(Refusal::new(
            Code::HashMismatch,
            format!(
                "the bytes received hash to {actual}, not the declared {e}; nothing was stored"
            ),
        )),
        _ => Ok(()),
    }
}

/// The 413 of an asset over `limit` bytes.
pub fn too_large(limit: u64) -> Refusal {
    Refusal::new(
        Code::PayloadTooLarge,
        format!("assets are limited to {limit} bytes"),
    )
    .with_details(serde_json::json!({ "max_asset_bytes": limit }))
}

/// What a server keeps of an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRecord {
    pub id: String,
    /// `blake3:<hex>`.
    pub hash: String,
    pub size_bytes: u64,
    pub content_type: String,
    pub file_path: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it expires (`None`: as long as its job's result, for outputs).
    pub expires_at: Option<i64>,
    pub job_id: Option<String>,
}

impl AssetRecord {
    /// The asset's JSON, links under `base`; `links_expire` is when a link
    /// given now stops working for an asset without its own expiry.
    pub fn asset(&self, created_new: Option<bool>, base: &str, links_expire: i64) -> Asset {
        Asset {
            id: self.id.clone(),
            hash: Some(self.hash.clone()),
            size_bytes: self.size_bytes,
            content_type: self.content_type.clone(),
            file_path: self.file_path.clone(),
            created_new,
            created_at: rfc3339(self.created_at),
            url: content_url(base, &self.id),
            url_expires_at: rfc3339(self.expires_at.unwrap_or(links_expire)),
            expires_at: self.expires_at.map(rfc3339),
            job_id: self.job_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str, file: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file_path\"\r\n\r\nphoto.png\r\n").as_bytes());
        b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
        b.extend_from_slice(file);
        b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        b
    }

    /// A form's fields, file bytes and file type.
    type Read = (HashMap<String, String>, Vec<u8>, Option<String>);

    fn read(body: &[u8], chunk: usize) -> Result<Read, Refusal> {
        let mut r = FormReader::new(Some("multipart/form-data; boundary=\"bnd\""))?;
        let mut fields = HashMap::new();
        let mut file = Vec::new();
        let mut ct = None;
        for c in body.chunks(chunk) {
            for p in r.feed(c)? {
                match p {
                    Part::Field { name, value } => {
                        fields.insert(name, value);
                    }
                    Part::FileStart { content_type, .. } => ct = content_type,
                    Part::FileData(d) => file.extend_from_slice(&d),
                    Part::FileEnd => {}
                }
            }
        }
        r.finish()?;
        Ok((fields, file, ct))
    }

    #[test]
    fn a_form_reads_the_same_in_any_chunking() {
        // Bytes that look like parts of a delimiter must pass through.
        let file: Vec<u8> = b"\r\n--bn\r\n-\r\n--bnx"
            .iter()
            .copied()
            .cycle()
            .take(5000)
            .collect();
        let body = form("bnd", &file);
        for chunk in [1, 2, 7, 64, 1 << 20] {
            let (fields, got, ct) = read(&body, chunk).expect("form");
            assert_eq!(fields["file_path"], "photo.png", "{chunk}");
            assert_eq!(got, file, "{chunk}");
            assert_eq!(ct.as_deref(), Some("image/png"));
        }
    }

    #[test]
    fn bad_forms_and_fields_are_refused() {
        assert_eq!(
            FormReader::new(Some("application/json"))
                .expect_err("415")
                .code,
            Code::UnsupportedMediaType
        );
        let truncated = &form("bnd", b"xyz")[..40];
        assert_eq!(
            read(truncated, 8).expect_err("truncated").code,
            Code::InvalidRequest
        );
        let no_path = upload_fields(&HashMap::new(), true, None).expect_err("no path");
        assert!(no_path.message.contains("file_path"));
        let f: HashMap<String, String> = [
            ("file_path".into(), "a.png".into()),
            ("expires_in".into(), "5".into()),
        ]
        .into();
        assert_eq!(
            upload_fields(&f, true, None).expect_err("expiry").code,
            Code::InvalidRequest
        );
        let f: HashMap<String, String> = [("file_path".into(), "a.png".into())].into();
        let u = upload_fields(&f, true, Some("image/png")).expect("ok");
        assert_eq!((u.content_type.as_str(), u.expires_in), ("image/png", None));
        assert_eq!(
            check_hash(Some("blake3:aa"), "blake3:bb")
                .expect_err("mismatch")
                .code,
            Code::HashMismatch
        );
        assert!(check_hash(Some("BLAKE3:AA"), "blake3:aa").is_ok());
    }
}
