//! Following a submitted job: the SSE stream with `Last-Event-ID`
//! reconnects, polling between them and as a fallback, and the documents
//! they give turned into events (status changes, monotonic progress).

use base64::Engine as _;
use comfy_remote_protocol::api::{JobStatus, Phase, PreviewEvent, Progress};
use futures::StreamExt as _;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};

use super::job::{JobEvent, Start};
use super::{join, Client, ViewSlot};
use crate::error::{ClientError, Result};
use crate::http::http_error;
use crate::sse::SseParser;
use crate::status::JobDoc;

impl Client {
    pub(super) async fn drive(
        &self,
        start: Start,
        tx: &mpsc::UnboundedSender<JobEvent>,
        job_tx: &watch::Sender<Option<(Url, JobDoc)>>,
        view: &ViewSlot,
    ) -> Result<Vec<u8>> {
        let (at, doc) = match start {
            // One idempotency key for every retry of this submit.
            Start::Submit(body) => {
                self.submit_upload(body, &uuid::Uuid::new_v4().to_string())
                    .await?
            }
            Start::Attach(id) => {
                if !self.is_native().await? {
                    return Err(ClientError::protocol(
                        self.endpoint.as_str(),
                        "following a job by its id needs a comfy-remote endpoint (GET /v1/info)",
                    ));
                }
                let url = join(&self.base, &format!("v1/jobs/{id}"))?;
                let (at, json) = self.get_json(&url).await?;
                let doc =
                    JobDoc::parse(&json).map_err(|r| ClientError::protocol(at.as_str(), r))?;
                (at, doc)
            }
        };
        let _ = tx.send(JobEvent::Submitted {
            id: doc.id.clone().unwrap_or_default(),
            status: doc.status.unwrap_or(JobStatus::Queued),
        });
        job_tx.send_replace(Some((at.clone(), doc.clone())));
        let mut f = Follower {
            tx,
            status: doc.status,
            last: None,
            view,
        };
        f.observe(&doc);
        let mut at = at;
        let mut doc = doc;
        let mut sse_ok = self.opts.use_events && doc.events_url.is_some();
        let mut last_event_id: Option<String> = None;
        let mut sse_failures = 0u32;
        while !doc.status.is_some_and(JobStatus::is_terminal) {
            if sse_ok {
                match self.follow_sse(&at, &doc, &mut f, &mut last_event_id).await {
                    Ok(Some(d)) => {
                        doc = merge(doc, d);
                        continue;
                    }
                    Ok(None) => sse_failures += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "event stream unavailable; polling");
                        sse_ok = false;
                    }
                }
                if sse_failures > 5 {
                    sse_ok = false;
                }
                tokio::time::sleep(self.opts.retry.backoff(sse_failures)).await;
                // Poll once between reconnects so a missed terminal state is seen.
            }
            let poll = self.poll_url(&at, &doc).await?;
            let (new_at, json) = self.get_json(&poll).await?;
            let d = JobDoc::parse(&json).map_err(|r| ClientError::protocol(new_at.as_str(), r))?;
            f.observe(&d);
            doc = merge(doc, d);
            at = new_at;
            if !doc.status.is_some_and(JobStatus::is_terminal) && !sse_ok {
                tokio::time::sleep(self.opts.poll_interval).await;
            }
        }
        job_tx.send_replace(Some((at.clone(), doc.clone())));
        self.finish(&at, doc).await
    }

    async fn poll_url(&self, at: &Url, doc: &JobDoc) -> Result<Url> {
        if let Some(p) = &doc.poll_url {
            return join(at, p);
        }
        match &doc.id {
            Some(id) if self.is_native().await? => join(&self.base, &format!("v1/jobs/{id}")),
            _ => Err(ClientError::protocol(
                at.as_str(),
                "the job is not finished and the endpoint gave no poll_url to follow it",
            )),
        }
    }

    /// Follow the SSE stream until a terminal document (`Some`), a clean
    /// end of stream (`None`, reconnect), or an error (fall back to polling).
    async fn follow_sse(
        &self,
        at: &Url,
        doc: &JobDoc,
        f: &mut Follower<'_>,
        last_event_id: &mut Option<String>,
    ) -> Result<Option<JobDoc>> {
        let Some(events) = &doc.events_url else {
            return Ok(None);
        };
        let url = join(at, events)?;
        let mut req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id.as_deref() {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.to_string(),
                attempts: 1,
                source,
            })?;
        let is_stream = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !resp.status().is_success() || !is_stream {
            return Err(http_error("GET", &url, resp).await);
        }
        let mut parser = SseParser::default();
        let mut stream = resp.bytes_stream();
        loop {
            let chunk =
                match tokio::time::timeout(self.opts.stream_idle_timeout, stream.next()).await {
                    Err(_) | Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                    Ok(Some(Ok(c))) => c,
                };
            for ev in parser.push(&chunk) {
                if ev.id.is_some() {
                    *last_event_id = ev.id.clone();
                }
                let json: Json = match serde_json::from_str(&ev.data) {
                    Ok(j) => j,
                    Err(_) => continue,
                };
                match ev.event.as_str() {
                    "progress" => {
                        let p = json.get("progress").unwrap_or(&json);
                        if let Some(p) = crate::status::parse_progress(p, f.status) {
                            f.progress(p);
                        }
                    }
                    "preview" => {
                        if let Ok(p) = serde_json::from_value::<PreviewEvent>(json) {
                            if let Ok(data) =
                                base64::engine::general_purpose::STANDARD.decode(p.data.trim())
                            {
                                let _ = f.tx.send(JobEvent::Preview {
                                    mime: p.mime,
                                    data,
                                    node: p.node.map(|n| n.id),
                                });
                            }
                        }
                    }
                    _ => {
                        // status, done, message: a job document.
                        let d = JobDoc::parse(&json)
                            .map_err(|r| ClientError::protocol(url.as_str(), r))?;
                        f.observe(&d);
                        if d.status.is_some_and(JobStatus::is_terminal) {
                            return Ok(Some(d));
                        }
                    }
                }
            }
        }
    }
}

/// Combine a newer partial document with what we knew: simple endpoints
/// often send links only once.
pub(super) fn merge(old: JobDoc, new: JobDoc) -> JobDoc {
    JobDoc {
        id: new.id.or(old.id),
        status: new.status.or(old.status),
        status_word: new.status_word.or(old.status_word),
        progress: new.progress.or(old.progress),
        poll_url: new.poll_url.or(old.poll_url),
        events_url: new.events_url.or(old.events_url),
        result_url: new.result_url.or(old.result_url),
        cancel_url: new.cancel_url.or(old.cancel_url),
        result: new.result.or(old.result),
        error_code: new.error_code.or(old.error_code),
        error_message: new.error_message.or(old.error_message),
        view: new.view.or(old.view),
    }
}

/// Turns documents into events: status changes and monotonic progress.
pub(super) struct Follower<'a> {
    tx: &'a mpsc::UnboundedSender<JobEvent>,
    status: Option<JobStatus>,
    last: Option<Progress>,
    view: &'a ViewSlot,
}

impl Follower<'_> {
    fn observe(&mut self, d: &JobDoc) {
        // Before the events, so a reader of an event sees this view or a later one.
        if let Some(v) = &d.view {
            *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
        }
        if let Some(s) = d.status {
            if self.status != Some(s) {
                self.status = Some(s);
                let _ = self.tx.send(JobEvent::Status { status: s });
            }
        }
        if let Some(p) = &d.progress {
            self.progress(p.clone());
        } else if d.status == Some(JobStatus::Succeeded) {
            let mut p = Progress::start(Phase::Done);
            p.fraction = 1.0;
            p.value = 1.0;
            self.progress(p);
        }
    }

    fn progress(&mut self, mut p: Progress) {
        if let Some(last) = &self.last {
            if p.fraction < last.fraction {
                p.fraction = last.fraction;
            }
        }
        if p.text.is_empty() {
            p.text = describe_progress(self.status, &p);
        }
        if self.last.as_ref() != Some(&p) {
            self.last = Some(p.clone());
            let _ = self.tx.send(JobEvent::Progress(p));
        }
    }
}

/// One line for the progress text: phase, queue position, node and step.
pub fn describe_progress(status: Option<JobStatus>, p: &Progress) -> String {
    let pct = (p.fraction * 100.0).round();
    match p.phase {
        Phase::Queued => match p.queue_position {
            Some(0) => "queued (next)".to_owned(),
            Some(n) => format!("queued (position {n})"),
            None => "queued".to_owned(),
        },
        Phase::Starting => "starting".to_owned(),
        Phase::Collecting => "collecting outputs".to_owned(),
        Phase::Done => match status {
            Some(s) => s.as_str().to_owned(),
            None => "done".to_owned(),
        },
        Phase::Running => {
            let mut s = "running".to_owned();
            if let Some(n) = &p.node {
                match &n.class_type {
                    Some(t) => s.push_str(&format!(" {t} (#{})", n.id)),
                    None => s.push_str(&format!(" node #{}", n.id)),
                }
            }
            if let Some(step) = &p.step {
                s.push_str(&format!(" step {}/{}", step.value, step.max));
            }
            s.push_str(&format!(" {pct}%"));
            s
        }
    }
}
