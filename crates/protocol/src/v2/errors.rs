//! v2's error codes, each with its HTTP status and `Retry-After`, the
//! error answer ([`Refusal`]) and how a protocol v1 answer reads in v2.

use serde::{Deserialize, Serialize};

use crate::api::ErrorCode;
use crate::http::RETRY_AFTER_NOT_READY;

/// An error code of Comfy API v2 (the contract's core codes, and the ones
/// comfy-remote adds for HTTP-level refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// A malformed request: a body that is not JSON, a bad header or query.
    InvalidRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    /// `expected_hash` does not match the bytes received.
    HashMismatch,
    /// An output asset: deleted with its job, not on its own.
    AssetInUse,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    InvalidWorkflow,
    WorkflowFormatUi,
    MissingAsset,
    IdempotencyKeyReuse,
    MetadataNotSupported,
    BlobNotFound,
    QueueFull,
    TooManyStreams,
    /// ComfyUI does not answer (yet): retry.
    DeploymentNotReady,
    /// A failure of ours; the message says to see the server's log.
    UpstreamError,
    /// A route this server does not serve (the Modal front lists no jobs).
    NotImplemented,
}

impl Code {
    /// The HTTP status of an answer with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidRequest => 400,
            Code::Unauthorized => 401,
            Code::NotFound | Code::BlobNotFound => 404,
            Code::MethodNotAllowed => 405,
            Code::HashMismatch | Code::AssetInUse => 409,
            Code::PayloadTooLarge => 413,
            Code::UnsupportedMediaType => 415,
            Code::RangeNotSatisfiable => 416,
            Code::InvalidWorkflow
            | Code::WorkflowFormatUi
            | Code::MissingAsset
            | Code::IdempotencyKeyReuse
            | Code::MetadataNotSupported => 422,
            Code::QueueFull | Code::TooManyStreams | Code::DeploymentNotReady => 429,
            Code::UpstreamError => 500,
            Code::NotImplemented => 501,
        }
    }

    /// The `Retry-After` (seconds) an answer with this code carries.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            Code::QueueFull | Code::TooManyStreams => Some(super::RETRY_AFTER_BUSY),
            Code::DeploymentNotReady => Some(RETRY_AFTER_NOT_READY),
            _ => None,
        }
    }

    /// The code's name on the wire.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// How a protocol v1 answer code reads in v2 (docs/protocol.md §5.1).
    pub fn from_v1(code: ErrorCode) -> Code {
        match code {
            ErrorCode::BadRequest => Code::InvalidRequest,
            ErrorCode::Unauthorized => Code::Unauthorized,
            ErrorCode::NotFound | ErrorCode::Expired => Code::NotFound,
            ErrorCode::MethodNotAllowed => Code::MethodNotAllowed,
            ErrorCode::PayloadTooLarge => Code::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType => Code::UnsupportedMediaType,
            // The values a v2 graph carried break the workflow's signature
            // or the container rules: the graph is what is wrong.
            ErrorCode::InvalidInput | ErrorCode::InvalidPayload => Code::InvalidWorkflow,
            ErrorCode::TooManyRequests => Code::QueueFull,
            ErrorCode::NotReady => Code::DeploymentNotReady,
            ErrorCode::Conflict => Code::IdempotencyKeyReuse,
            _ => Code::UpstreamError,
        }
    }
}

/// An error answer of v2: `{"error": {code, message, details}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    /// An object, or null.
    pub details: serde_json::Value,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
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

    /// The response body.
    pub fn body(&self) -> serde_json::Value {
        let details = match &self.details {
            serde_json::Value::Object(_) => self.details.clone(),
            serde_json::Value::Null => serde_json::Value::Null,
            other => serde_json::json!({ "value": other }),
        };
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message, "details": details}})
    }

    /// 500: a failure of ours, logged, never described.
    pub fn internal() -> Self {
        Refusal::new(Code::UpstreamError, "internal error; see the server's log")
    }

    pub fn not_found(what: &str) -> Self {
        Refusal::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn unauthorized() -> Self {
        let v1 = crate::http::Refusal::unauthorized();
        Refusal::new(Code::Unauthorized, v1.message)
    }
}

/// A protocol v1 answer, as v2 says it: the code mapped, message and
/// details kept (an `invalid_input`'s `details.input` names the input).
impl From<crate::http::Refusal> for Refusal {
    fn from(r: crate::http::Refusal) -> Self {
        Refusal::new(Code::from_v1(r.code), r.message).with_details(r.details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_contracts_statuses() {
        for (code, status, name) in [
            (Code::InvalidWorkflow, 422, "invalid_workflow"),
            (Code::WorkflowFormatUi, 422, "workflow_format_ui"),
            (Code::MissingAsset, 422, "missing_asset"),
            (Code::IdempotencyKeyReuse, 422, "idempotency_key_reuse"),
            (Code::HashMismatch, 409, "hash_mismatch"),
            (Code::BlobNotFound, 404, "blob_not_found"),
            (Code::QueueFull, 429, "queue_full"),
            (Code::TooManyStreams, 429, "too_many_streams"),
            (Code::DeploymentNotReady, 429, "deployment_not_ready"),
            (Code::UpstreamError, 500, "upstream_error"),
        ] {
            assert_eq!((code.http_status(), code.as_str().as_str()), (status, name));
        }
        assert_eq!(Code::QueueFull.retry_after(), Some(5));
        assert_eq!(Code::DeploymentNotReady.retry_after(), Some(1));
        assert_eq!(Code::MissingAsset.retry_after(), None);
    }

    #[test]
    fn v1_answers_read_as_v2_ones() {
        let r: Refusal = crate::http::Refusal::new(ErrorCode::InvalidInput, "bad steps")
            .with_details(serde_json::json!({"input": "steps"}))
            .into();
        assert_eq!(r.code, Code::InvalidWorkflow);
        assert_eq!(r.body()["error"]["details"]["input"], "steps");
        assert_eq!(Code::from_v1(ErrorCode::TooManyRequests), Code::QueueFull);
        assert_eq!(Code::from_v1(ErrorCode::NotReady), Code::DeploymentNotReady);
        assert_eq!(Code::from_v1(ErrorCode::Internal), Code::UpstreamError);
        assert!(Refusal::new(Code::NotFound, "x").body()["error"]["details"].is_null());
    }
}
