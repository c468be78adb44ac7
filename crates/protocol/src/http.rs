//! The HTTP rules of the jobs API (docs/protocol.md §4) that every server
//! applies the same way: the reference worker and the Modal web front (which
//! reads them through the native module). Each rule is here once.

use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ErrorBody, ErrorCode, ErrorInfo, CONTAINER_MEDIA_TYPE};
use crate::container::Limits;
use crate::error::CodecError;
use crate::json::{parse_json_body, JsonBody};

/// Largest JSON request body: it is parsed in memory (the binary container
/// has no such cliff).
pub const MAX_JSON_BODY: u64 = 64 << 20;

/// Seconds a `429 too_many_requests` asks a client to wait.
pub const RETRY_AFTER_BUSY: u64 = 5;
/// Seconds a `503 not_ready` asks a client to wait.
pub const RETRY_AFTER_NOT_READY: u64 = 1;

impl ErrorCode {
    /// The HTTP status of an error answer with this code (§4.6). Job codes
    /// are no HTTP answers; `internal` and those are 500.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidPayload => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Expired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidInput => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::NotReady => 503,
            _ => 500,
        }
    }

    /// The `Retry-After` an answer with this code carries, if any.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            ErrorCode::TooManyRequests => Some(RETRY_AFTER_BUSY),
            ErrorCode::NotReady => Some(RETRY_AFTER_NOT_READY),
            _ => None,
        }
    }

    /// The code's name on the wire (`"invalid_input"`).
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// A code from its name.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

/// An error answer: its code (hence status), message and details.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub details: serde_json::Value,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn status(&self) -> u16 {
        self.code.http_status()
    }

    /// The response body, `{"error": {code, message, details}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Refusal::new(
            ErrorCode::Unauthorized,
            "missing or wrong bearer token: send `Authorization: Bearer <token>`",
        )
    }

    /// 413: a body over `limit` bytes (`json`: the JSON cap applied).
    pub fn too_large(limit: u64, json: bool) -> Self {
        let message = if json {
            format!(
                "JSON bodies are limited to {limit} bytes; send large inputs as `{CONTAINER_MEDIA_TYPE}`"
            )
        } else {
            format!("request body is larger than the server's limit of {limit} bytes")
        };
        Refusal::new(ErrorCode::PayloadTooLarge, message)
            .with_details(serde_json::json!({ "max_body_bytes": limit }))
    }

    /// 400 `invalid_payload` (a container, or a JSON form's value tree, that
    /// fails decoding) or 400 `bad_request` (a JSON body that is not one of
    /// the forms), with the codec check as `details.kind`.
    pub fn bad_payload(e: &CodecError) -> Self {
        let code = if e.kind() == "invalid_json_body" {
            ErrorCode::BadRequest
        } else {
            ErrorCode::InvalidPayload
        };
        Refusal::new(code, format!("the inputs are invalid: {e}"))
            .with_details(serde_json::json!({ "kind": e.kind() }))
    }
}

/// How a submit body is encoded, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMedia {
    /// The binary container (also taken as `application/octet-stream`).
    Container,
    /// The base64 or plain inputs JSON form.
    Json,
}

impl SubmitMedia {
    /// The kind of a `Content-Type` (parameters ignored), or 415.
    pub fn of(content_type: Option<&str>) -> Result<SubmitMedia, Refusal> {
        let ctype = content_type.unwrap_or("");
        let mime = ctype
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            CONTAINER_MEDIA_TYPE | "application/octet-stream" => Ok(SubmitMedia::Container),
            "application/json" => Ok(SubmitMedia::Json),
            _ => Err(Refusal::new(
                ErrorCode::UnsupportedMediaType,
                format!("send the inputs as `{CONTAINER_MEDIA_TYPE}` (binary container) or `application/json` (JSON form); got {ctype:?}"),
            )),
        }
    }

    /// The largest body of this kind for a server whose limit is `max_body_bytes`.
    pub fn limit(self, max_body_bytes: u64) -> u64 {
        match self {
            SubmitMedia::Container => max_body_bytes,
            SubmitMedia::Json => max_body_bytes.min(MAX_JSON_BODY),
        }
    }

    /// The 413 for a body of this kind over its limit.
    pub fn too_large(self, max_body_bytes: u64) -> Refusal {
        let limit = self.limit(max_body_bytes);
        Refusal::too_large(limit, self == SubmitMedia::Json && limit < max_body_bytes)
    }

    /// A declared `Content-Length`: 400 when it is not a number, 413 when it
    /// is over the limit; the length when declared.
    pub fn check_length(
        self,
        content_length: Option<&str>,
        max_body_bytes: u64,
    ) -> Result<Option<u64>, Refusal> {
        let Some(raw) = content_length else {
            return Ok(None);
        };
        let len: u64 = raw
            .trim()
            .parse()
            .map_err(|_| Refusal::new(ErrorCode::BadRequest, "Content-Length is not a number"))?;
        if len > self.limit(max_body_bytes) {
            return Err(self.too_large(max_body_bytes));
        }
        Ok(Some(len))
    }
}

/// `Idempotency-Key`: 1 to 200 visible ASCII characters (no spaces).
pub fn idempotency_key(raw: &[u8]) -> Result<String, Refusal> {
    if raw.is_empty() || raw.len() > 200 || !raw.iter().all(u8::is_ascii_graphic) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "Idempotency-Key must be 1 to 200 visible ASCII characters (no spaces)",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// The `retry` query of a submit: `true`/`1`, `false`/`0` or absent.
pub fn retry_query(value: Option<&str>) -> Result<bool, Refusal> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("retry must be true or false, not {other:?}"),
        )),
    }
}

/// A byte count header (`Upload-Offset`, `Upload-Length`): `None` when
/// absent, 400 naming the header when it is not a number.
pub fn byte_count(value: Option<&str>, header: &str) -> Result<Option<u64>, Refusal> {
    let Some(v) = value else { return Ok(None) };
    v.trim().parse().map(Some).map_err(|_| {
        Refusal::new(
            ErrorCode::BadRequest,
            format!("{header} must be a byte count, not {v:?}"),
        )
    })
}

/// `Prefer: wait=N` (RFC 7240): how long a submit may wait for its job to
/// end, at most `max_secs`; `None` when the client does not ask.
pub fn prefer_wait(prefer: Option<&str>, max_secs: u64) -> Option<u64> {
    prefer?
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .find_map(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.min(max_secs))
}

/// The longest a submit waits for its job (`Prefer: wait=N`, §4.1), below
/// the idle timeouts of common proxies.
pub const MAX_WAIT_SECS: u64 = 60;

/// The ETag of job `id`'s result packed with `opts`, `len` bytes long
/// (§4.4): packings of one result differ, a packing's bytes do not.
pub fn result_etag(id: &str, opts: &crate::PackOptions, len: u64) -> String {
    format!("\"{id}-{}-{len}\"", opts.tag())
}

/// The part of a result of `len` bytes with `etag` to send (§4.4): the
/// `Range` asked for (`416` when it is past the end), honoured only while
/// `If-Range` still names this ETag (a range of other bytes would be
/// garbage); `None` for the whole body.
pub fn result_range(
    range: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    len: u64,
) -> Result<Option<(u64, u64)>, Refusal> {
    if if_range.is_some_and(|tag| tag.trim() != etag) {
        return Ok(None);
    }
    match byte_range(range, len) {
        Ok(r) => Ok(r.map(|(first, last)| (first, last.saturating_add(1)))),
        Err(RangeError::Unsatisfiable) => Err(Refusal::new(
            ErrorCode::RangeNotSatisfiable,
            format!(
                "the range {:?} is outside the {len} bytes of the result",
                range.unwrap_or_default()
            ),
        )
        .with_details(serde_json::json!({ "length": len }))),
    }
}

/// The `Content-Range` of bytes `start..end` of `len`.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{}/{len}", end.saturating_sub(1))
}

/// The packing a client reads in a result (§2.7): `Comfy-Remote-Codecs`
/// and `Comfy-Remote-Images: 8bit`.
pub fn result_packing(codecs: Option<&str>, images: Option<&str>) -> crate::PackOptions {
    let mut opts = crate::PackOptions::for_codecs(codecs.unwrap_or("").split(','));
    opts.quantize_images =
        opts.u8_grad_zstd && images.is_some_and(|i| i.trim().eq_ignore_ascii_case("8bit"));
    opts
}

/// The base of job URLs (§4.2): `public_url` when the server has one, else
/// `proto://host` from the request's host (the caller decides whether a
/// forwarded host is trusted) and protocol; "" (paths) without a host, or
/// for one that is not a plain `host[:port]`, so a header cannot inject a URL.
pub fn base_url(public_url: Option<&str>, host: Option<&str>, proto: Option<&str>) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return String::new();
    };
    let proto = proto.map(str::trim).unwrap_or("http");
    let plain = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if plain && (proto == "http" || proto == "https") {
        format!("{proto}://{host}")
    } else {
        String::new()
    }
}

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// Syntactically a byte range, but outside the content (416).
    Unsatisfiable,
}

/// The one byte range (`first..=last`) a `Range` header asks of content
/// of `len` bytes (RFC 9110 §14.1.2): `bytes=a-b`, `bytes=a-`, `bytes=-n`.
/// `Ok(None)` serves the whole content: no header, another unit, several
/// ranges or a malformed one (which a server may ignore). A range that
/// starts past the end is [`RangeError::Unsatisfiable`].
pub fn byte_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |t: &str| t.parse::<u64>().ok();
    let range = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let Some(first) = parse(a) else {
                return Ok(None);
            };
            let last = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match parse(b) {
                    Some(l) if l >= first => l.min(len.saturating_sub(1)),
                    _ => return Ok(None),
                }
            };
            if first >= len {
                return Err(RangeError::Unsatisfiable);
            }
            (first, last)
        }
        (true, false) => {
            let Some(n) = parse(b) else { return Ok(None) };
            if n == 0 || len == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            (len.saturating_sub(n), len - 1)
        }
        (true, true) => return Ok(None),
    };
    Ok(Some(range))
}

/// A required bearer token, kept as its SHA-256 and compared in constant
/// time; whitespace around the token is ignored.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// `None` for a blank token.
    pub fn new(token: &str) -> Option<BearerToken> {
        let t = token.trim();
        (!t.is_empty()).then(|| BearerToken(Sha256::digest(t.as_bytes()).into()))
    }

    /// Does this `Authorization` header value carry the token?
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()))
            .is_some_and(|g| bool::from(g.as_slice().ct_eq(self.0.as_slice())))
    }
}

/// The container a JSON submit body stands for: the base64 form's bytes,
/// or the plain `{"inputs": {...}}` form encoded as a container.
pub fn json_body_container(body: &[u8], limits: &Limits) -> Result<Vec<u8>, CodecError> {
    match parse_json_body(body, limits)? {
        JsonBody::Container(bytes) => Ok(bytes),
        JsonBody::Inputs(payload) => crate::encode(&payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_code_has_its_status_and_retry_after() {
        assert_eq!(ErrorCode::Conflict.http_status(), 409);
        assert_eq!(ErrorCode::Expired.http_status(), 410);
        assert_eq!(ErrorCode::InvalidInput.http_status(), 422);
        assert_eq!(ErrorCode::ExecutionFailed.http_status(), 500);
        assert_eq!(ErrorCode::TooManyRequests.retry_after(), Some(5));
        assert_eq!(ErrorCode::parse("not_ready"), Some(ErrorCode::NotReady));
        assert_eq!(ErrorCode::NotReady.as_str(), "not_ready");
    }

    #[test]
    fn ranges_and_preferences() {
        let r = |range: &str| result_range(Some(range), None, "\"e\"", 10);
        assert_eq!(result_range(None, None, "\"e\"", 10), Ok(None));
        assert_eq!(r("bytes=4-"), Ok(Some((4, 10))));
        assert_eq!(r("bytes=2-5"), Ok(Some((2, 6))));
        assert_eq!(r("bytes=-3"), Ok(Some((7, 10))));
        assert_eq!(r("bytes=0-99"), Ok(Some((0, 10))));
        assert_eq!(r("bytes=0-1,4-5"), Ok(None));
        assert_eq!(r("bytes=10-").map_err(|r| r.status()), Err(416));
        // A range of other bytes than the client saw is the whole body.
        assert_eq!(
            result_range(Some("bytes=4-"), Some("\"old\""), "\"e\"", 10),
            Ok(None)
        );
        assert_eq!(
            result_range(Some("bytes=4-"), Some("\"e\""), "\"e\"", 10),
            Ok(Some((4, 10)))
        );
        assert_eq!(prefer_wait(Some("respond-async, wait=20"), 60), Some(20));
        assert_eq!(prefer_wait(Some("wait=600"), 60), Some(60));
        assert_eq!(prefer_wait(Some("return=minimal"), 60), None);
        let p = result_packing(Some("u8-grad-zstd, zstd-future"), Some("8bit"));
        assert!(p.u8_grad_zstd && !p.shuffle_zstd && p.quantize_images);
        assert!(!result_packing(None, Some("8bit")).quantize_images);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(idempotency_key(b"k-1").is_ok());
        for bad in [
            &b""[..],
            b"with space",
            b"tab\there",
            &[b'k'; 201],
            "ü".as_bytes(),
        ] {
            assert!(idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_come_from_a_plain_host_only() {
        assert_eq!(base_url(None, Some("h:8189"), None), "http://h:8189");
        assert_eq!(base_url(None, Some("h"), Some("https")), "https://h");
        assert_eq!(base_url(None, None, None), "");
        assert_eq!(base_url(None, Some("evil.com/x?"), None), "");
        assert_eq!(base_url(None, Some("h"), Some("javascript")), "");
        assert_eq!(base_url(Some("https://p/"), Some("h"), None), "https://p");
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range(None, 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
        assert_eq!(byte_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(byte_range(Some("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=2-99"), 10), Ok(Some((2, 9))));
        assert_eq!(
            byte_range(Some("bytes=10-"), 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(byte_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(byte_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=4-2"), 10), Ok(None));
    }

    #[test]
    fn media_types_lengths_and_tokens() {
        assert_eq!(
            SubmitMedia::of(Some("application/json; charset=utf-8")),
            Ok(SubmitMedia::Json)
        );
        assert_eq!(
            SubmitMedia::of(Some("text/plain")).map_err(|r| r.status()),
            Err(415)
        );
        let e = SubmitMedia::Json
            .check_length(Some("999999999999"), 2 << 30)
            .expect_err("over the JSON cap");
        assert_eq!(e.status(), 413);
        assert_eq!(e.details["max_body_bytes"], MAX_JSON_BODY);
        assert_eq!(
            SubmitMedia::Container
                .check_length(Some("x"), 1)
                .map_err(|r| r.status()),
            Err(400)
        );
        let t = BearerToken::new(" s3cret ").expect("token");
        assert!(t.admits(Some("Bearer s3cret")));
        assert!(!t.admits(Some("Bearer nope")) && !t.admits(None));
        assert!(BearerToken::new("  ").is_none());
    }
}
