//! The client's error type: what went wrong, against which URL, and what to do.

use std::time::Duration;

/// Why a request to an endpoint, or a job it runs, did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint URL (widget or link) is not a usable http(s) URL.
    #[error("endpoint URL {url:?} is not valid: {reason}; give a full http:// or https:// URL")]
    InvalidUrl { url: String, reason: String },

    /// A setting (an environment variable) has a value this client does not take.
    #[error("{name}={value:?} is not valid; use one of: {expected}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        expected: String,
    },

    /// The endpoint could not be reached after every retry.
    #[error("could not reach {url} after {attempts} attempt(s): {source}; check the URL and that the service is up")]
    Unreachable {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    /// The endpoint answered with an error status (after retries, where retryable).
    #[error("{method} {url} returned HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Http {
        method: &'static str,
        url: String,
        status: u16,
        /// The `error.code` of a comfy-remote error body, when there is one.
        code: Option<String>,
        message: String,
    },

    /// The endpoint answered something this client cannot read.
    #[error("unexpected response from {url}: {reason}")]
    Protocol { url: String, reason: String },

    /// The local inputs do not fit the workflow signature the endpoint publishes.
    #[error("{message}")]
    Signature {
        /// Local input name (`value0`, ...), when one input is at fault.
        input: Option<String>,
        message: String,
    },

    /// The remote job ended in `failed` (or `expired`).
    #[error("remote job {job_id} failed{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    JobFailed {
        job_id: String,
        code: Option<String>,
        message: String,
    },

    /// The remote job was canceled (by us or by someone else).
    #[error("remote job {job_id} was canceled")]
    Canceled { job_id: String },

    /// The job did not finish within the timeout; it was canceled remotely.
    #[error("remote job {job_id} did not finish within {}; it was canceled (raise the timeout for long jobs)", seconds(timeout))]
    Timeout { job_id: String, timeout: Duration },

    /// The container file to upload could not be read.
    #[error("could not read the upload {path}: {source}")]
    Upload {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A plain JSON result could not be turned into a container.
    #[error("could not encode the endpoint's plain result: {0}")]
    Codec(#[from] comfy_remote_protocol::CodecError),
}

impl ClientError {
    pub(crate) fn protocol(url: &str, reason: impl Into<String>) -> Self {
        ClientError::Protocol {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }

    /// A short stable name of the error kind, for bindings (`"http"`, `"timeout"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::InvalidUrl { .. } => "invalid_url",
            ClientError::InvalidSetting { .. } => "invalid_setting",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Http { .. } => "http",
            ClientError::Protocol { .. } => "protocol",
            ClientError::Signature { .. } => "signature",
            ClientError::JobFailed { .. } => "job_failed",
            ClientError::Canceled { .. } => "canceled",
            ClientError::Timeout { .. } => "timeout",
            ClientError::Upload { .. } => "upload",
            ClientError::Codec(_) => "codec",
        }
    }
}

/// A duration as plain seconds: `5s`, `1.5s`.
fn seconds(d: &Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_reported_in_plain_seconds() {
        let e = ClientError::Timeout {
            job_id: "j".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(e.to_string().contains("within 5s;"), "{e}");
        let e = ClientError::Timeout {
            job_id: "j".into(),
            timeout: Duration::from_millis(1500),
        };
        assert!(e.to_string().contains("within 1.5s;"), "{e}");
    }
}
