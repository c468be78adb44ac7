//! A blocking facade over the async client, for callers without a runtime
//! (the Python binding): one shared background runtime, waits with timeouts.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Runtime;

use comfy_remote_protocol::api::JobView;

use crate::client::{Client, ClientOptions, Job, JobEvent, ViewSlot};
use crate::error::{ClientError, Result};
use crate::signature::{LocalInput, Signature};
use crate::status::JobDoc;

fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("comfy-remote-client")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ClientError::protocol("(local)", format!("could not start the I/O runtime: {e}")))
}

/// A [`Client`] whose calls block the calling thread.
#[derive(Debug, Clone)]
pub struct BlockingClient {
    inner: Arc<Client>,
}

impl BlockingClient {
    pub fn new(opts: ClientOptions) -> Result<Self> {
        Ok(BlockingClient {
            inner: Arc::new(Client::new(opts)?),
        })
    }

    pub fn signature(&self) -> Result<Option<Signature>> {
        runtime()?.block_on(self.inner.signature())
    }

    /// See [`Client::upload_codecs`].
    pub fn upload_codecs(&self) -> Result<Vec<String>> {
        runtime()?.block_on(self.inner.upload_codecs())
    }

    pub fn plan_inputs(&self, local: &[LocalInput]) -> Result<Vec<String>> {
        runtime()?.block_on(self.inner.plan_inputs(local))
    }

    /// Ask the endpoint to cancel job `id` (a native endpoint's job id),
    /// without following it: whoever follows the job sees how it ends.
    /// `Ok(false)` when the endpoint has no way to cancel.
    pub fn cancel_job(&self, id: &str) -> Result<bool> {
        let doc = JobDoc {
            id: Some(id.to_owned()),
            ..JobDoc::default()
        };
        let at = reqwest::Url::parse(self.inner.options().endpoint.trim()).map_err(|e| {
            ClientError::InvalidUrl {
                url: self.inner.options().endpoint.clone(),
                reason: e.to_string(),
            }
        })?;
        runtime()?.block_on(self.inner.cancel(&at, &doc))
    }

    /// Start a job; it runs in the background until its last event.
    pub fn start(&self, body: Bytes) -> Result<BlockingJob> {
        let rt = runtime()?;
        let _guard = rt.enter();
        let job = self.inner.spawn_job(body);
        Ok(BlockingJob {
            view: job.view_slot(),
            job: Mutex::new(job),
        })
    }
}

/// A running job; `next_event` waits at most its timeout, so a caller can
/// check its own interrupt flag between waits.
#[derive(Debug)]
pub struct BlockingJob {
    job: Mutex<Job>,
    /// Shared with the job, so it can be read while `next_event` waits.
    view: ViewSlot,
}

impl BlockingJob {
    /// The next event, or `None` if none came within `timeout` or the job
    /// has ended (see [`BlockingJob::is_finished`]).
    pub fn next_event(&self, timeout: Duration) -> Result<Option<JobEvent>> {
        let rt = runtime()?;
        let mut job = match self.job.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        if job.is_finished() {
            return Ok(None);
        }
        Ok(rt
            .block_on(async { tokio::time::timeout(timeout, job.next()).await })
            .ok()
            .flatten())
    }

    /// Request cancellation (remote cancel included); the job then ends with
    /// a [`ClientError::Canceled`] event. Never blocks.
    pub fn cancel(&self) {
        match self.job.lock() {
            Ok(j) => j.cancel(),
            Err(poisoned) => poisoned.into_inner().cancel(),
        }
    }

    pub fn is_finished(&self) -> bool {
        match self.job.lock() {
            Ok(j) => j.is_finished(),
            Err(poisoned) => poisoned.into_inner().is_finished(),
        }
    }

    /// The latest `JobView` the endpoint sent (see [`Job::view`]). Does not
    /// wait for a `next_event` in progress.
    pub fn view(&self) -> Option<JobView> {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }
}
