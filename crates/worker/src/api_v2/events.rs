//! `GET /api/v2/jobs/{id}/events`: the job's live state as SSE, without
//! ids (v2 has no resume). On connect: `status`, the latest `progress`
//! and the latest `preview`; then every change as the engine publishes
//! it (no throttling: each `progress` is a complete snapshot); when the
//! job ends, one `output` per output file, then the terminal `status`,
//! and the stream closes. A finished job's stream is its outputs and
//! its `status`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use comfy_remote_protocol::api::{JobStatus, JobView};
use comfy_remote_protocol::v2::wire::{Progress, StatusEvent};
use comfy_remote_protocol::v2::{view, Code, Refusal};

use super::{V2Error, KEEPALIVE, V2};
use crate::error::Path;
use crate::live::EventData;

/// Counts an open stream; uncounted when the stream is dropped.
struct StreamSlot(Arc<V2>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()))
}

/// What a stream sent last, so it sends changes only.
#[derive(Default)]
struct Sent {
    status: Option<StatusEvent>,
    progress: Option<Progress>,
}

impl Sent {
    fn status(&mut self, v: &JobView) -> Option<Event> {
        let s = view::status_event(v);
        (self.status.as_ref() != Some(&s)).then(|| {
            let e = event("status", &s);
            self.status = Some(s);
            e
        })
    }

    fn progress(&mut self, p: &comfy_remote_protocol::api::Progress) -> Option<Event> {
        let p = view::progress(p);
        (self.progress.as_ref() != Some(&p)).then(|| {
            let e = event("progress", &p);
            self.progress = Some(p);
            e
        })
    }
}

pub(super) async fn events(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    let row = v2.stored(&id).await?;
    if v2.streams.fetch_add(1, Ordering::SeqCst) >= v2.config.max_event_streams {
        v2.streams.fetch_sub(1, Ordering::SeqCst);
        return Err(Refusal::new(
            Code::TooManyStreams,
            format!(
                "this server has {} event streams open; close one, or poll GET /api/v2/jobs/{{id}}",
                v2.config.max_event_streams
            ),
        )
        .into());
    }
    let slot = StreamSlot(v2.clone());
    let base = v2.base(&headers);
    let engine = v2.engine.clone();
    let shutdown = engine.shutdown.clone();
    // Subscribe before the snapshot is read: nothing published between is lost.
    let live = engine.live(&id);
    let sub = live.as_ref().map(|l| l.subscribe(None));
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut sent = Sent::default();
        let row = match engine.job(&id).await { Ok(Some(r)) => r, _ => row };
        let view = engine.status_view(&row).await;
        let finish = |v2: Arc<V2>, id: String, base: String| async move {
            // The outputs of a succeeded job, then its terminal status.
            let mut frames = Vec::new();
            if let Ok(Some(row)) = v2.engine.job(&id).await {
                let v = v2.engine.status_view(&row).await;
                if let Ok(job) = v2.job_of(&row, &base).await {
                    for o in &job.outputs {
                        frames.push(event("output", o));
                    }
                }
                frames.push(event("progress", &view::progress(&v.progress)));
                frames.push(event("status", &view::status_event(&v)));
            }
            frames
        };
        if row.status.is_terminal() {
            for f in finish(v2.clone(), id.clone(), base.clone()).await {
                yield Ok::<_, Infallible>(f);
            }
            return;
        }
        if let Some(e) = sent.status(&view) { yield Ok(e); }
        if view.status == JobStatus::Running {
            if let Some(e) = sent.progress(&view.progress) { yield Ok(e); }
        }
        if let Some(p) = live.as_ref().and_then(|l| l.last_preview()) {
            yield Ok(event("preview", &view::preview(&p)));
        }
        let Some(sub) = sub else {
            // Not live in this process (it cannot run here): report its end when it comes.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                if let Ok(Some(r)) = engine.job(&id).await {
                    if r.status.is_terminal() {
                        for f in finish(v2.clone(), id.clone(), base.clone()).await { yield Ok(f); }
                        return;
                    }
                }
            }
        };
        let mut rx = sub.rx;
        let mut last = sub.replay.last().map_or(sub.after, |e| e.seq);
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Ok(ev) => {
                    if ev.seq <= last { continue; }
                    last = ev.seq;
                    match &ev.data {
                        EventData::Status(v) if !v.status.is_terminal() => {
                            if let Some(e) = sent.status(v) { yield Ok(e); }
                        }
                        EventData::Status(_) => {}
                        EventData::Progress(p) => {
                            if let Some(e) = sent.progress(p) { yield Ok(e); }
                        }
                        EventData::Preview(p) => yield Ok(event("preview", &view::preview(p))),
                        EventData::Done(_) => {
                            for f in finish(v2.clone(), id.clone(), base.clone()).await { yield Ok(f); }
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow a reader: resync with the job as it is now.
                    if let Ok(Some(r)) = engine.job(&id).await {
                        if r.status.is_terminal() {
                            for f in finish(v2.clone(), id.clone(), base.clone()).await { yield Ok(f); }
                            return;
                        }
                        let v = engine.status_view(&r).await;
                        if let Some(e) = sent.status(&v) { yield Ok(e); }
                        if let Some(e) = sent.progress(&v.progress) { yield Ok(e); }
                    }
                }
                Err(_) => return,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEPALIVE))
        .into_response())
}
