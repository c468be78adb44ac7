//! A job: spawned on the runtime, it submits, follows the job to its end
//! (events, else polling), fetches the result, and cancels the remote job
//! when asked, when its time is up or when it is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use comfy_remote_protocol::api::{JobStatus, JobView, Progress, CONTAINER_MEDIA_TYPE};
use reqwest::header::{ACCEPT, ETAG, IF_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, watch};

use super::upload::Upload;
use super::{join, Client, ConnectSlot, ViewSlot, LAST_CONNECT_ERROR};
use crate::error::{ClientError, Result};
use crate::http::append_body;
use crate::status::{JobDoc, ResultRef};

/// How a job begins: submitted now, or one submitted before.
#[derive(Debug)]
pub(super) enum Start {
    Submit(Upload),
    Attach(String),
}

/// What a running job reports, in order. Exactly one of `Done` or `Error`
/// comes last.
#[derive(Debug)]
pub enum JobEvent {
    /// The endpoint accepted the job.
    Submitted { id: String, status: JobStatus },
    /// The status changed.
    Status { status: JobStatus },
    /// Progress moved (monotonic: `fraction` never goes down) or its text changed.
    Progress(Progress),
    /// A preview image from the remote workflow.
    Preview {
        mime: String,
        data: Vec<u8>,
        node: Option<String>,
    },
    /// The job succeeded: the outputs as container bytes.
    Done(Vec<u8>),
    /// The job failed, was canceled or timed out, or the endpoint misbehaved.
    Error(ClientError),
}

impl Client {
    /// Start a job on the current tokio runtime. Events arrive on
    /// [`Job::next`]; dropping the [`Job`] cancels it.
    pub fn spawn_job(self: &Arc<Self>, body: Bytes) -> Job {
        self.spawn_upload(Upload::Bytes(body))
    }

    /// [`Client::spawn_job`] with the container in memory or in a file
    /// ([`Upload::File`] is streamed; the file must stay until the job
    /// ends, since a retried submit reads it again).
    pub fn spawn_upload(self: &Arc<Self>, upload: Upload) -> Job {
        self.spawn(Start::Submit(upload))
    }

    /// Follow a job submitted earlier (by its id on this endpoint) to its
    /// end, as [`Client::spawn_upload`] follows a new one: its events, its
    /// result, and the remote cancel when asked or past the job timeout.
    pub fn spawn_attach(self: &Arc<Self>, job_id: &str) -> Job {
        self.spawn(Start::Attach(job_id.to_owned()))
    }

    fn spawn(self: &Arc<Self>, start: Start) -> Job {
        let (tx, rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let client = Arc::clone(self);
        let view = ViewSlot::default();
        let slot = Arc::clone(&view);
        let task = tokio::spawn(async move {
            let outcome = client.run_job(start, &tx, cancel_rx, &slot).await;
            let last = match outcome {
                Ok(bytes) => JobEvent::Done(bytes),
                Err(e) => JobEvent::Error(e),
            };
            let _ = tx.send(last);
        });
        Job {
            events: rx,
            cancel: cancel_tx,
            task,
            finished: false,
            view,
        }
    }

    async fn run_job(
        &self,
        start: Start,
        tx: &mpsc::UnboundedSender<JobEvent>,
        mut cancel: watch::Receiver<bool>,
        view: &ViewSlot,
    ) -> Result<Vec<u8>> {
        let (job_tx, mut job_rx) = watch::channel::<Option<(Url, JobDoc)>>(None);
        let drive = self.drive(start, tx, &job_tx, view);
        // A zero timeout means no limit.
        let limit = self.opts.job_timeout.filter(|t| !t.is_zero());
        let connect_error = ConnectSlot::default();
        let drive = LAST_CONNECT_ERROR.scope(connect_error.clone(), drive);
        tokio::pin!(drive);
        let deadline = async {
            match limit {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let timed_out = tokio::select! {
            r = &mut drive => return r,
            _ = cancel.wait_for(|c| *c) => false,
            _ = &mut deadline => true,
        };
        // The submit may still be in flight: give it a moment so the job we
        // cancel is the one it creates, rather than leaving it orphaned.
        if job_rx.borrow().is_none() {
            let grace = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    r = &mut drive => { if job_rx.borrow().is_none() { return r; } break; }
                    c = job_rx.changed() => { if c.is_err() || job_rx.borrow().is_some() { break; } }
                    _ = &mut grace => break,
                }
            }
        }
        let job = job_rx.borrow().clone();
        if timed_out && job.is_none() {
            // Nothing was submitted: if the endpoint could not be reached,
            // that (not the timeout) is what went wrong.
            let unreachable = connect_error.lock().ok().and_then(|mut e| e.take());
            if let Some(err) = unreachable {
                return Err(err);
            }
        }
        let id = job
            .as_ref()
            .and_then(|(_, d)| d.id.clone())
            .unwrap_or_else(|| "(not yet submitted)".to_owned());
        if let Some((at, doc)) = &job {
            if let Err(e) = self.cancel(at, doc).await {
                tracing::warn!(error = %e, "could not cancel the remote job");
                if !timed_out {
                    return Err(e);
                }
            }
        }
        let _ = tx.send(JobEvent::Status {
            status: JobStatus::Canceled,
        });
        if timed_out {
            return Err(ClientError::Timeout {
                job_id: id,
                timeout: limit.unwrap_or_default(),
            });
        }
        Err(ClientError::Canceled { job_id: id })
    }

    /// Download a result. A connection lost mid-body is resumed where it
    /// broke (`Range` with the ETag as `If-Range`, so the bytes are of one
    /// version), up to the retry policy's attempts; a server that answers
    /// a range with the whole body is read again from the start.
    async fn download(&self, url: &Url) -> Result<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        let mut etag: Option<String> = None;
        let mut breaks = 0u32;
        loop {
            let from = out.len();
            let resp = self
                .send("GET", url, || {
                    let r = self
                        .result_headers(self.http.get(url.clone()))
                        .header(ACCEPT, CONTAINER_MEDIA_TYPE)
                        .timeout(self.opts.request_timeout);
                    match (&etag, from) {
                        (Some(tag), n) if n > 0 => r
                            .header(RANGE, format!("bytes={n}-"))
                            .header(IF_RANGE, tag.as_str()),
                        _ => r,
                    }
                })
                .await?;
            if resp.status() != StatusCode::PARTIAL_CONTENT {
                out.clear();
            }
            etag = resp
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if out.is_empty() {
                if let Some(len) = resp.content_length().and_then(|l| usize::try_from(l).ok()) {
                    let _ = out.try_reserve_exact(len);
                }
            }
            match append_body(resp, &mut out).await {
                Ok(()) => return Ok(out),
                Err(source) => {
                    breaks += 1;
                    let resumable = etag.is_some() && !out.is_empty();
                    if breaks >= self.opts.retry.max_attempts.max(1) || !resumable {
                        return Err(ClientError::Unreachable {
                            url: url.to_string(),
                            attempts: breaks,
                            source,
                        });
                    }
                    tracing::debug!(%url, bytes = out.len(), "result download broke; resuming");
                    tokio::time::sleep(self.opts.retry.backoff(breaks - 1)).await;
                }
            }
        }
    }

    pub(super) async fn finish(&self, at: &Url, doc: JobDoc) -> Result<Vec<u8>> {
        let job_id = doc.id.clone().unwrap_or_default();
        match doc.status {
            Some(JobStatus::Succeeded) => {}
            Some(JobStatus::Canceled) => return Err(ClientError::Canceled { job_id }),
            Some(JobStatus::Expired) => {
                return Err(ClientError::JobFailed {
                    job_id,
                    code: Some(doc.error_code.unwrap_or_else(|| "expired".into())),
                    message: doc
                        .error_message
                        .unwrap_or_else(|| "the job expired before it ran".into()),
                })
            }
            _ => {
                return Err(ClientError::JobFailed {
                    job_id,
                    code: doc.error_code,
                    message: doc
                        .error_message
                        .or(doc.status_word)
                        .unwrap_or_else(|| "no error message".into()),
                })
            }
        }
        let result = match doc.result {
            Some(r) => r,
            None => match doc.result_url {
                Some(u) => ResultRef::Url(u),
                None => {
                    return Err(ClientError::protocol(
                        at.as_str(),
                        "the job succeeded but the endpoint sent no result",
                    ))
                }
            },
        };
        match result {
            ResultRef::Inline(bytes) => Ok(bytes),
            ResultRef::Url(u) => self.download(&join(at, &u)?).await,
            ResultRef::Plain(json) => {
                // The protocol's one JSON-to-value reading (§2.3 without blobs).
                let text = serde_json::to_vec(&json).map_err(|e| {
                    ClientError::protocol(at.as_str(), format!("unreadable plain result: {e}"))
                })?;
                let value = comfy_remote_protocol::parse_value(
                    &text,
                    &comfy_remote_protocol::Limits::default(),
                )?;
                let entry = comfy_remote_protocol::Entry {
                    name: "result".to_owned(),
                    comfy_type: Some(comfy_remote_protocol::ComfyType::infer(&value)),
                    value,
                };
                Ok(comfy_remote_protocol::encode(
                    &comfy_remote_protocol::Payload {
                        entries: vec![entry],
                    },
                )?)
            }
        }
    }
}

/// A job started by [`Client::spawn_job`].
#[derive(Debug)]
pub struct Job {
    events: mpsc::UnboundedReceiver<JobEvent>,
    cancel: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    finished: bool,
    view: ViewSlot,
}

impl Job {
    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<JobEvent> {
        let ev = self.events.recv().await;
        self.note(&ev);
        ev
    }

    fn note(&mut self, ev: &Option<JobEvent>) {
        if matches!(ev, Some(JobEvent::Done(_) | JobEvent::Error(_)) | None) {
            self.finished = true;
        }
    }

    /// Ask for the job to be canceled; the remote cancel is sent and the
    /// job then ends with [`ClientError::Canceled`].
    pub fn cancel(&self) {
        let _ = self.cancel.send(true);
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The latest `JobView` the endpoint sent for this job (native endpoints
    /// only): the submit answer, then each `status`/`done` event or poll.
    /// Set before the events it causes, so after a `Status` or `Done` event
    /// it is that document or a later one.
    pub fn view(&self) -> Option<JobView> {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }

    /// The slot behind [`Job::view`], for readers that do not hold the job.
    pub(crate) fn view_slot(&self) -> ViewSlot {
        Arc::clone(&self.view)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // An abandoned job must not keep a GPU busy: cancel it remotely.
        if !self.finished && !self.task.is_finished() {
            let _ = self.cancel.send(true);
        }
    }
}
