//! Errors: `WorkerError` for start-up and internals, `ApiError` for HTTP responses.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use comfy_remote_protocol::api::{ErrorBody, ErrorCode, ErrorInfo};
use comfy_remote_protocol::http::Refusal;

/// Why the worker could not start or an internal operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The remote workflow is not usable; the message says why and what to do.
    #[error(transparent)]
    Workflow(#[from] comfy_remote_contract::WorkflowError),
    #[error("job store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// ComfyUI could not be started, reached or understood.
    #[error("ComfyUI: {0}")]
    Comfy(String),
    #[error("configuration: {0}")]
    Config(String),
    /// A blocking task (a store statement, a file operation) panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
    /// Another worker holds the spool's lock (its job store is not shared).
    #[error("spool {} is in use by another worker{}", spool.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    SpoolInUse {
        spool: std::path::PathBuf,
        pid: Option<u32>,
    },
}

impl WorkerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        WorkerError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An HTTP error with a stable body. Internal details are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Box<serde_json::Value>,
    pub retry_after: Option<u64>,
    /// Logged at `warn`; not part of the response.
    pub internal: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Box::new(serde_json::Value::Null),
            retry_after: code.retry_after(),
            internal: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Box::new(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidInput,
            message,
        )
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }

    pub fn unauthorized() -> Self {
        Refusal::unauthorized().into()
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; see the worker's log",
        );
        e.internal = Some(err.to_string());
        e
    }
}

/// The protocol's error answers, with the status its table gives the code.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, r.code, r.message).with_details(r.details)
    }
}

impl From<WorkerError> for ApiError {
    fn from(err: WorkerError) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(internal) = &self.internal {
            tracing::error!(code = ?self.code, "{internal}");
        } else if self.status.is_server_error() {
            tracing::warn!(code = ?self.code, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, code = ?self.code, "{}", self.message);
        }
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message,
                details: *self.details,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        // Path parameters here are job ids: a malformed one names no job.
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("not found: {}", r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::BadRequest,
        };
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            code,
            format!("invalid JSON body: {}", r.body_text()),
        )
    }
}
