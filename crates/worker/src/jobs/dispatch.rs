//! The dispatcher that feeds ComfyUI's queue in submit order, and the
//! driver that follows one job's prompt to its end: posting it, routing
//! its events into progress, cancel, and what happens when ComfyUI
//! restarts under it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_remote_contract::layout;
use comfy_remote_protocol::api::{
    ErrorCode, ErrorInfo, JobStatus, NodeRef, Phase, PreviewEvent, Progress,
};
use comfy_remote_protocol::Limits;
use serde_json::Value;
use tokio::task::JoinSet;

use super::collect::collect_outputs;
use super::outcome::{
    canceled_error, execution_error, internal_error, outcome_from_history, validation_error,
    Outcome,
};
use super::progress::Tracker;
use super::Engine;
use crate::comfyui::{ComfyEvent, EventReceiver, QueueError, QueuePlace};
use crate::live::{EventData, LiveJob};
use crate::store::{now_ms, JobRow};

/// One of the `comfy_queue_depth` places in ComfyUI's queue, held from a
/// job's claim until ComfyUI is done with its prompt; dropping it lets the
/// dispatcher hand over the next job.
pub(super) struct Slot(Arc<Engine>);

impl Slot {
    fn take(engine: &Arc<Engine>) -> Slot {
        engine.in_flight.fetch_add(1, Ordering::SeqCst);
        Slot(engine.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Where a job's post stands among the others': prompts are posted in the
/// order their jobs were claimed, each as soon as the one before it is on
/// its way, without waiting for ComfyUI's answer to it. ComfyUI runs its
/// queue by the `number` each prompt carries (the job's place in ours), so
/// the order holds whenever more than one prompt waits there.
struct PostOrder {
    /// Fires, or is dropped, when the job claimed before this one posts.
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired when this job's prompt is on its way.
    go: tokio::sync::oneshot::Sender<()>,
}

impl Engine {
    /// Feed ComfyUI from the store until shutdown. Drivers are owned here.
    pub async fn dispatch(self: Arc<Self>) {
        let mut drivers = JoinSet::new();
        let mut ready = self.comfy.ready.clone();
        // The turn of the job claimed last: the next one posts after it.
        let mut last: Option<tokio::sync::oneshot::Receiver<()>> = None;
        loop {
            while drivers.try_join_next().is_some() {}
            self.fail_overdue().await;
            let can_run = *ready.borrow()
                && self.in_flight.load(Ordering::SeqCst) < self.config.comfy_queue_depth;
            if can_run {
                let prompt_id = uuid::Uuid::new_v4().to_string();
                match self.store.run(|s| s.claim_next()).await {
                    Ok(Some(row)) => {
                        let slot = Slot::take(&self);
                        let (live, _) = self.live_or_add(&row.id, Progress::start(Phase::Starting));
                        let engine = self.clone();
                        let (go, turn) = tokio::sync::oneshot::channel::<()>();
                        let after = last.replace(turn);
                        drivers.spawn(async move {
                            let id = row.id.clone();
                            let order = PostOrder { after, go };
                            engine.drive(row, prompt_id, live, order, slot).await;
                            tracing::debug!(job = %id, "driver finished");
                        });
                        self.queue_moved();
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!("claiming a job: {e}"),
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = ready.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Drivers see the same shutdown token and return promptly.
        while drivers.join_next().await.is_some() {}
    }

    async fn drive(
        self: &Arc<Self>,
        row: JobRow,
        prompt_id: String,
        live: Arc<LiveJob>,
        order: PostOrder,
        slot: Slot,
    ) {
        let id = row.id.clone();
        let t0 = Instant::now();
        let dir = self.job_dir(&id);
        let rx = self.comfy.router.register(&prompt_id);
        let outcome = self.follow(&row, &prompt_id, &dir, &live, rx, order).await;
        self.comfy.router.unregister(&prompt_id);
        // ComfyUI is done with the prompt: the next one may go while this
        // job's outputs are collected and recorded.
        drop(slot);
        let (status, error, outputs, bytes) = match outcome {
            Outcome::Shutdown => return,
            Outcome::Lost { started: false } => {
                // Never reached the executor: run it again.
                tracing::info!(job = %id, "ComfyUI restarted before the job started; re-queued");
                if live.cancel.is_cancelled() {
                    (JobStatus::Canceled, Some(canceled_error()), vec![], None)
                } else {
                    let key = id.clone();
                    let _ = self.store.run(move |s| s.requeue(&key)).await;
                    let _ = tokio::fs::remove_dir_all(layout::outputs_dir(&dir)).await;
                    let mut p = Progress::start(Phase::Queued);
                    p.text = "re-queued after a ComfyUI restart".into();
                    live.publish(EventData::Progress(p));
                    self.publish_status(&id).await;
                    return;
                }
            }
            Outcome::Lost { started: true } => (
                JobStatus::Failed,
                Some(ErrorInfo {
                    code: ErrorCode::ComfyuiUnavailable,
                    message: "ComfyUI stopped (crashed or was killed) while running this job; \
                              the worker restarted it, submit the job again"
                        .into(),
                    details: Value::Null,
                }),
                vec![],
                None,
            ),
            Outcome::Canceled => (JobStatus::Canceled, Some(canceled_error()), vec![], None),
            Outcome::Failed(e) => (JobStatus::Failed, Some(e), vec![], None),
            Outcome::Success(shown) => {
                let mut p = live.progress();
                p.phase = Phase::Collecting;
                p.node = None;
                p.step = None;
                p.text = "collecting outputs".into();
                live.publish(EventData::Progress(p));
                let collected = if row.own_graph {
                    self.collect_prompt_outputs(&id, &prompt_id, shown, &dir)
                        .await
                } else {
                    let outputs_sig = self.workflow.outputs.clone();
                    // Outputs come from our own node, not from a client: the
                    // request limits do not apply, only sanity bounds.
                    let limits = Limits {
                        max_total_bytes: 1 << 40,
                        ..Limits::default()
                    };
                    let d = dir.clone();
                    tokio::task::spawn_blocking(move || collect_outputs(&d, &outputs_sig, &limits))
                        .await
                        .unwrap_or_else(|e| Err(internal_error(e)))
                };
                match collected {
                    Ok((infos, bytes)) => (JobStatus::Succeeded, None, infos, Some(bytes as i64)),
                    Err(e) => (JobStatus::Failed, Some(e), vec![], None),
                }
            }
        };
        // Recorded and read back in one trip to the store; watchers hear
        // of the end before the job's inputs are cleaned up.
        let key = id.clone();
        let recorded = self
            .store
            .run(move |s| {
                s.finish(&key, status, error.as_ref(), &outputs, bytes)?;
                s.get(&key)
            })
            .await;
        self.metrics.finished(status, t0.elapsed().as_secs_f64());
        tracing::info!(job = %id, status = status.as_str(), secs = t0.elapsed().as_secs_f32(), "job finished");
        match recorded {
            Ok(Some(row)) => self.publish_row(&row).await,
            Ok(None) => {}
            Err(e) => tracing::error!(job = %id, "recording the outcome: {e}"),
        }
        // The jobs behind it in ComfyUI's queue moved up.
        self.queue_moved();
        self.cleanup_inputs(&id).await;
    }

    async fn follow(
        self: &Arc<Self>,
        row: &JobRow,
        prompt_id: &str,
        dir: &Path,
        live: &Arc<LiveJob>,
        mut rx: EventReceiver,
        order: PostOrder,
    ) -> Outcome {
        let (id, seq) = (row.id.as_str(), row.seq);
        let comfy = &self.comfy;
        // Wait for ComfyUI and our websocket, so no event of this prompt is lost.
        let mut ws = comfy.ws_up.clone();
        let claimed = now_ms();
        loop {
            // Seen here: a later change of the websocket is noticed below.
            if *ws.borrow_and_update() && *comfy.ready.borrow() {
                break;
            }
            if let Some(e) = self.overdue_error(self.comfy_down_since(), claimed) {
                return Outcome::Failed(e);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                _ = live.cancel.cancelled() => return Outcome::Canceled,
                _ = ws.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let mut generation = comfy.generation.clone();
        let gen0 = *generation.borrow_and_update();
        // A job of the served workflow, or one that runs its own graph.
        let own = match self.own_prompt(row) {
            Ok(own) => own,
            Err(e) => return Outcome::Failed(internal_error(e)),
        };
        let prompt = match &own {
            Some(o) => o.prompt.clone(),
            None => self.workflow.prompt_for_job(dir),
        };
        let empty = serde_json::Map::new();
        let nodes = prompt.as_object().unwrap_or(&empty);
        let extra = self.extra_data(id);
        // The job claimed before this one has begun posting (or gave up).
        if let Some(after) = order.after {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                _ = live.cancel.cancelled() => return Outcome::Canceled,
                _ = after => {}
            }
        }
        let _ = order.go.send(());
        let mut tries = 0;
        loop {
            let placed = match &own {
                Some(o) => self.place_uploads(o).await,
                None => Ok(()),
            };
            let queued = match placed {
                Ok(()) => {
                    comfy
                        .client
                        .queue_prompt(&prompt, prompt_id, seq, extra.as_ref())
                        .await
                }
                Err(msg) => Err(QueueError::Unavailable(msg)),
            };
            match queued {
                Ok(()) => break,
                Err(QueueError::Rejected(body)) => {
                    return Outcome::Failed(validation_error(&body, nodes))
                }
                Err(QueueError::Unavailable(msg)) => {
                    tries += 1;
                    tracing::warn!(job = %id, "queueing the prompt failed: {msg}");
                    if tries >= 10 {
                        return Outcome::Failed(ErrorInfo {
                            code: ErrorCode::ComfyuiUnavailable,
                            message: format!("ComfyUI did not accept the prompt: {msg}"),
                            details: Value::Null,
                        });
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                        _ = live.cancel.cancelled() => return Outcome::Canceled,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tracing::info!(job = %id, prompt = %prompt_id, "prompt queued in ComfyUI");
        let mut tracker = Tracker::new(nodes);
        let mut started = false;
        let mut cancel_requested = false;
        // A job that runs its own graph collects the files its nodes show:
        // ComfyUI names them as each node runs (the same it then records in
        // the prompt's history), so no history is read after the end;
        // unless the websocket dropped meanwhile (a message may be lost).
        let shows_outputs = own.is_some();
        let mut shown = serde_json::Map::new();
        // Whether ComfyUI still has the prompt is checked every 2 s while
        // it runs, every 10 s while it waits (one GET /queue each, which
        // copies ComfyUI's whole queue), and at once when an event says
        // it ended.
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        let (mut ticks, mut check_now) = (0u32, false);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Outcome::Shutdown };
                    match ev {
                        ComfyEvent::Success => {
                            let intact = !ws.has_changed().unwrap_or(true);
                            return Outcome::Success((shows_outputs && intact).then(|| Value::Object(std::mem::take(&mut shown))));
                        }
                        ComfyEvent::Error { node_id, node_type, message, details } => {
                            return Outcome::Failed(execution_error(id, &node_id, &node_type, &message, &details));
                        }
                        ComfyEvent::Interrupted => {
                            return if cancel_requested || live.cancel.is_cancelled() {
                                Outcome::Canceled
                            } else {
                                Outcome::Failed(ErrorInfo {
                                    code: ErrorCode::ExecutionFailed,
                                    message: "ComfyUI interrupted the prompt (someone pressed Cancel on the worker's ComfyUI)".into(),
                                    details: Value::Null,
                                })
                            };
                        }
                        ComfyEvent::Preview { mime, data, node } => {
                            use base64::Engine as _;
                            let node = node.or_else(|| tracker.current.clone()).map(|n| NodeRef { class_type: tracker.class_of(&n), id: n });
                            live.publish(EventData::Preview(PreviewEvent {
                                mime,
                                data: base64::engine::general_purpose::STANDARD.encode(data),
                                node,
                            }));
                        }
                        ComfyEvent::Finished => {
                            // Success/error arrive before this; check history in case they were missed.
                            check_now = true;
                            tick.reset_immediately();
                        }
                        ComfyEvent::Executed(node, output) => {
                            if let (true, Some(output)) = (shows_outputs, output) {
                                shown.insert(node.clone(), output);
                            }
                            if let Some(p) = tracker.apply(ComfyEvent::Executed(node, None)) {
                                self.metrics.progress_events.fetch_add(1, Ordering::Relaxed);
                                live.publish(EventData::Progress(p));
                            }
                        }
                        other => {
                            if matches!(other, ComfyEvent::Started | ComfyEvent::Executing(_)) && !started {
                                started = true;
                                // Recorded and read back in one trip to the store.
                                let key = id.to_owned();
                                match self.store.run(move |s| { s.mark_started(&key)?; s.get(&key) }).await {
                                    Ok(Some(row)) => self.publish_row(&row).await,
                                    Ok(None) => {}
                                    Err(e) => tracing::warn!(job = %id, "recording the start: {e}"),
                                }
                                self.queue_moved();
                            }
                            if let Some(p) = tracker.apply(other) {
                                self.metrics.progress_events.fetch_add(1, Ordering::Relaxed);
                                live.publish(EventData::Progress(p));
                            }
                        }
                    }
                }
                _ = live.cancel.cancelled(), if !cancel_requested => {
                    cancel_requested = true;
                    match comfy.client.queue_place(prompt_id).await {
                        Ok(QueuePlace::Pending) => {
                            let _ = comfy.client.delete_pending(prompt_id).await;
                            // It may have started in between; then interrupt it too.
                            if comfy.client.queue_place(prompt_id).await.ok() != Some(QueuePlace::Running) {
                                return Outcome::Canceled;
                            }
                            let _ = comfy.client.interrupt(prompt_id).await;
                        }
                        Ok(QueuePlace::Running) => {
                            if let Err(e) = comfy.client.interrupt(prompt_id).await {
                                tracing::warn!(job = %id, "interrupt: {e}");
                            }
                        }
                        Ok(QueuePlace::Absent) => {
                            check_now = true;
                            tick.reset_immediately();
                        }
                        Err(_) => return Outcome::Canceled,
                    }
                }
                r = generation.changed() => {
                    if r.is_err() || *generation.borrow() != gen0 {
                        return if cancel_requested { Outcome::Canceled } else { Outcome::Lost { started } };
                    }
                }
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let due = started || check_now || ticks % 5 == 0;
                    if !due || !*comfy.ready.borrow() {
                        continue;
                    }
                    check_now = false;
                    match comfy.client.queue_place(prompt_id).await {
                        Ok(QueuePlace::Absent) => {}
                        Ok(_) => continue,
                        Err(_) => continue,
                    }
                    // Drain events that raced with the check.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if !rx.is_empty() { continue; }
                    match comfy.client.history(prompt_id).await {
                        Ok(Some(h)) => return outcome_from_history(&h, cancel_requested),
                        Ok(None) => {
                            if cancel_requested { return Outcome::Canceled; }
                            return Outcome::Lost { started };
                        }
                        Err(_) => continue,
                    }
                }
            }
        }
    }
}
