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
