//! A blocking facade over the async client, for callers without a runtime
//! (the Python binding): one shared background runtime, waits with timeouts.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::client::{Client, ClientOptions, Job, JobEvent};
use crate::error::{ClientError, Result};
use crate::signature::{LocalInput, Signature};

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

    pub fn plan_inputs(&self, local: &[LocalInput]) -> Result<Vec<String>> {
        runtime()?.block_on(self.inner.plan_inputs(local))
    }

    /// Start a job; it runs in the background until its last event.
    pub fn start(&self, body: Bytes) -> Result<BlockingJob> {
        let rt = runtime()?;
        let _guard = rt.enter();
        Ok(BlockingJob {
            job: Mutex::new(self.inner.spawn_job(body)),
        })
    }
}

/// A running job; `next_event` waits at most its timeout, so a caller can
/// check its own interrupt flag between waits.
#[derive(Debug)]
pub struct BlockingJob {
    job: Mutex<Job>,
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
}
