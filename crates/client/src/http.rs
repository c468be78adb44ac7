//! Reading responses: error bodies as [`ClientError::Http`] (a comfy-remote
//! error envelope, or any body shortened to a readable line), bodies read
//! once into a buffer of their announced size, JSON documents.

use reqwest::{Response, Url};
use serde_json::Value as Json;

use crate::error::{ClientError, Result};

/// Whether a response body is a container (not a JSON document).
pub(crate) fn is_container(resp: &Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(comfy_remote_protocol::api::CONTAINER_MEDIA_TYPE))
}

pub(crate) async fn http_error(method: &'static str, url: &Url, resp: Response) -> ClientError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<Json>(&text) {
        Ok(j) => {
            let e = j.get("error").unwrap_or(&j);
            let code = e.get("code").and_then(Json::as_str).map(str::to_owned);
            let msg = e
                .get("message")
                .or_else(|| e.get("detail"))
                .and_then(Json::as_str)
                .map(str::to_owned)
                .or_else(|| e.as_str().map(str::to_owned));
            (code, msg)
        }
        Err(_) => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        let t = shorten_body(&text);
        if t.is_empty() {
            status.canonical_reason().unwrap_or("no body").to_owned()
        } else {
            t
        }
    });
    ClientError::Http {
        method,
        url: url.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// A non-JSON error body for a message: HTML tags (and `<head>`, scripts,
/// styles) dropped, whitespace collapsed, at most about 200 characters.
pub(crate) fn shorten_body(text: &str) -> String {
    let mut plain = String::with_capacity(text.len().min(4096));
    if text.trim_start().starts_with('<') {
        let lower = text.to_ascii_lowercase();
        let mut i = 0;
        while i < text.len() {
            let rest = &lower[i..];
            if rest.starts_with('<') {
                let skip_to = ["head", "script", "style"].iter().find_map(|tag| {
                    rest[1..].starts_with(tag).then(|| {
                        rest.find(&format!("</{tag}"))
                            .map_or(text.len(), |end| i + end)
                    })
                });
                let from = skip_to.unwrap_or(i);
                i = lower[from..]
                    .find('>')
                    .map_or(text.len(), |end| from + end + 1);
                plain.push(' ');
            } else {
                let next = rest.find('<').map_or(text.len(), |n| i + n);
                plain.push_str(&text[i..next]);
                i = next;
            }
        }
    } else {
        plain.push_str(text);
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    let joined = words.join(" ");
    if joined.chars().count() > 200 {
        let cut: String = joined.chars().take(200).collect();
        format!("{cut}...")
    } else {
        joined
    }
}

/// The whole body, copied once into a buffer sized by `Content-Length`
/// (`Response::bytes` gathers the chunks and copies them again).
pub(crate) async fn read_body(url: &Url, mut resp: Response) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(len) = resp.content_length().and_then(|l| usize::try_from(l).ok()) {
        // A size the server announces but does not send costs address space only.
        let _ = out.try_reserve_exact(len);
    }
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(ClientError::Unreachable {
                    url: url.to_string(),
                    attempts: 1,
                    source,
                })
            }
        }
    }
}

/// Append a response's body to `out` chunk by chunk; the error of a
/// connection that broke mid-body (what was read stays in `out`).
pub(crate) async fn append_body(
    mut resp: Response,
    out: &mut Vec<u8>,
) -> std::result::Result<(), reqwest::Error> {
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(())
}

pub(crate) async fn read_json(url: &Url, resp: Response) -> Result<(Url, Json)> {
    let at = resp.url().clone();
    let bytes = read_body(url, resp).await?;
    let json = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::protocol(url.as_str(), format!("body is not JSON ({e})")))?;
    Ok((at, json))
}
