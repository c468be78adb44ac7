//! The job engine: admission (spooled inputs checked against the
//! signature), the dispatcher that feeds ComfyUI's queue, one driver per
//! job that follows its prompt, output collection, cancel and retention.
//!
//! Execution is serialized by ComfyUI's own queue: the dispatcher keeps at
//! most `comfy_queue_depth` prompts in ComfyUI (one running, the next ready)
//! and the rest wait in the durable store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_remote_protocol::api::{
    ErrorCode, ErrorInfo, JobResult, JobStatus, JobUrls, JobView, NodeRef, Phase, PreviewEvent,
    Progress, SignatureItem, Step, ValueInfo,
};
use comfy_remote_protocol::{ComfyType, Entry, Limits, Payload};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::comfyui::{ComfyEvent, ComfyHandle, QueueError, QueuePlace};
use crate::error::WorkerError;
use crate::live::{EventData, LiveJob};
use crate::metrics::Metrics;
use crate::store::{now_ms, JobRow, Store};
use crate::workflow::{Workflow, INPUTS_FILE, OUTPUTS_DIR};

/// Name of the result container in a job directory.
pub const RESULT_FILE: &str = "result.crc";

/// Limits and policies of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `jobs.db`, `jobs/<id>/` and `tmp/`.
    pub spool_dir: PathBuf,
    pub max_body_bytes: u64,
    pub limits: Limits,
    /// Queued + running jobs accepted at once (429 beyond).
    pub max_active_jobs: u64,
    /// Prompts handed to ComfyUI at once.
    pub comfy_queue_depth: usize,
    /// Finished jobs keep their files this long.
    pub retention: Duration,
    /// Total size of kept results; the oldest expire beyond it.
    pub max_result_bytes: u64,
    /// Results up to this size are also inlined in the job view.
    pub inline_result_bytes: u64,
    pub sweep_interval: Duration,
    /// A queued job fails with `comfyui_unavailable` once it has waited
    /// this long while ComfyUI was unreachable; zero waits forever.
    pub queue_timeout: Duration,
}

impl EngineConfig {
    pub fn new(spool_dir: PathBuf) -> Self {
        EngineConfig {
            spool_dir,
            max_body_bytes: 2 << 30,
            limits: Limits::default(),
            max_active_jobs: 64,
            comfy_queue_depth: 2,
            retention: Duration::from_secs(24 * 3600),
            max_result_bytes: 10 << 30,
            inline_result_bytes: 0,
            sweep_interval: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(600),
        }
    }
}

/// Outcome of a prompt in ComfyUI.
enum Outcome {
    Success,
    Failed(ErrorInfo),
    Canceled,
    /// The prompt vanished (ComfyUI restarted). `started`: it had begun executing.
    Lost {
        started: bool,
    },
    Shutdown,
}

/// The engine shared by the HTTP handlers and the background tasks.
#[derive(Debug)]
pub struct Engine {
    pub config: EngineConfig,
    pub store: Store,
    pub workflow: Arc<Workflow>,
    pub comfy: ComfyHandle,
    pub metrics: Metrics,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    wake: Notify,
    in_flight: AtomicUsize,
    owner: String,
    /// Event ids of this process are above this (see `Store::next_boot`).
    event_base: AtomicU64,
    /// Since when (ms) ComfyUI has not answered; `None` while it answers.
    down_since: Mutex<Option<i64>>,
    pub shutdown: CancellationToken,
}

fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// A job's URLs under `base` (no trailing slash; may be empty for relative URLs).
pub fn job_urls(base: &str, id: &str) -> JobUrls {
    let s = format!("{base}/v1/jobs/{id}");
    JobUrls {
        events: format!("{s}/events"),
        result: format!("{s}/result"),
        cancel: format!("{s}/cancel"),
        self_: s,
    }
}

/// Rewrite a view's URLs under `base`.
pub fn rebase(view: &mut JobView, base: &str) {
    view.urls = job_urls(base, &view.id);
    view.poll_url = view.urls.self_.clone();
    if let Some(r) = &mut view.result {
        r.url = view.urls.result.clone();
    }
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        store: Store,
        workflow: Workflow,
        comfy: ComfyHandle,
        shutdown: CancellationToken,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            config,
            store,
            workflow: Arc::new(workflow),
            comfy,
            metrics: Metrics::default(),
            live: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            owner: format!("worker-{}", std::process::id()),
            event_base: AtomicU64::new(0),
            down_since: Mutex::new(None),
            shutdown,
        })
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.config.spool_dir.join("jobs").join(id)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.config.spool_dir.join("tmp")
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveJob>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn add_live(&self, id: &str, progress: Progress) -> Arc<LiveJob> {
        let job = Arc::new(LiveJob::new(
            progress,
            self.event_base.load(Ordering::Relaxed),
        ));
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), job.clone());
        job
    }

    /// Recover after a restart and prepare the spool. Call once before serving.
    pub fn recover(&self) -> Result<(), WorkerError> {
        for d in [self.tmp_dir(), self.config.spool_dir.join("jobs")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| WorkerError::io(format!("creating {}", d.display()), e))?;
        }
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.event_base
            .store(self.store.next_boot()? << 32, Ordering::Relaxed);
        let r = self.store.recover()?;
        if r.requeued + r.failed > 0 {
            tracing::warn!(
                requeued = r.requeued,
                failed = r.failed,
                "recovered jobs left running by a previous worker"
            );
        }
        let known = self.store.all_ids()?;
        if let Ok(rd) = std::fs::read_dir(self.config.spool_dir.join("jobs")) {
            for e in rd.flatten() {
                if !known.contains(&e.file_name().to_string_lossy().into_owned()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        for id in self.store.queued_ids()? {
            self.add_live(&id, Progress::start(Phase::Queued));
        }
        Ok(())
    }

    /// The id base of this process's events: above every earlier process's.
    pub fn event_base(&self) -> u64 {
        self.event_base.load(Ordering::Relaxed)
    }

    /// Since when ComfyUI has not answered (`None` while it answers).
    fn comfy_down_since(&self) -> Option<i64> {
        let ready = *self.comfy.ready.borrow();
        let mut d = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if ready {
            *d = None;
        } else if d.is_none() {
            *d = Some(now_ms());
        }
        *d
    }

    /// The error of a job that waited past the queue timeout for ComfyUI,
    /// when it has (waiting since `since_ms`, ComfyUI down since `down_ms`).
    fn overdue_error(&self, down_ms: Option<i64>, since_ms: i64) -> Option<ErrorInfo> {
        let t = self.config.queue_timeout;
        let down = down_ms?;
        if t.is_zero() || now_ms() - down.max(since_ms) < t.as_millis() as i64 {
            return None;
        }
        Some(ErrorInfo {
            code: ErrorCode::ComfyuiUnavailable,
            message: format!(
                "ComfyUI has not been reachable since {}; the job waited longer than the \
                 worker's queue timeout ({} s). Submit it again once the worker is ready",
                rfc3339(down),
                t.as_secs()
            ),
            details: Value::Null,
        })
    }

    /// Fail queued jobs that waited past the queue timeout while ComfyUI
    /// was unreachable.
    fn fail_overdue(&self) {
        let t = self.config.queue_timeout;
        let Some(down) = self.comfy_down_since() else {
            return;
        };
        let cutoff = now_ms() - t.as_millis() as i64;
        let Some(err) = self.overdue_error(Some(down), cutoff) else {
            return;
        };
        match self.store.fail_queued_before(cutoff, &err) {
            Ok(ids) => {
                for id in &ids {
                    tracing::warn!(job = %id, "{}", err.message);
                    self.metrics.finished(JobStatus::Failed, 0.0);
                    self.cleanup_inputs(id);
                    self.publish_status(id);
                }
                if !ids.is_empty() {
                    self.refresh_queue_positions();
                }
            }
            Err(e) => tracing::error!("failing overdue jobs: {e}"),
        }
    }

    /// The public view of a job. `base` prefixes its URLs.
    pub fn view(&self, row: &JobRow, base: &str) -> JobView {
        let live = self.live(&row.id);
        let mut progress = match &live {
            Some(l) => l.progress(),
            None => Progress::start(Phase::Queued),
        };
        // Handed to ComfyUI but not executing yet: still queued for the user.
        let waiting = row.status == JobStatus::Running && row.started_at.is_none();
        let status = if waiting {
            JobStatus::Queued
        } else {
            row.status
        };
        if row.status == JobStatus::Queued || waiting {
            progress.phase = Phase::Queued;
            progress.queue_position = if waiting {
                self.store.handed_position(row.seq).ok()
            } else {
                self.store.queue_position(row.seq).ok()
            };
            progress.text = match progress.queue_position {
                Some(0) | None => "queued".into(),
                Some(n) => format!("queued ({n} ahead)"),
            };
        } else if row.status.is_terminal() {
            progress.phase = Phase::Done;
            progress.step = None;
            progress.node = None;
            progress.text = row.status.as_str().to_owned();
            if row.status == JobStatus::Succeeded || row.status == JobStatus::Expired {
                progress.fraction = 1.0;
                progress.value = 1.0;
            }
        }
        let urls = job_urls(base, &row.id);
        let result = (row.status == JobStatus::Succeeded).then(|| JobResult {
            url: urls.result.clone(),
            outputs: row.outputs.clone(),
            bytes: row.result_bytes.unwrap_or(0).max(0) as u64,
            inline: self.inline_result(row),
        });
        JobView {
            id: row.id.clone(),
            status,
            progress,
            poll_url: urls.self_.clone(),
            urls,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            result,
            error: row.error.clone(),
        }
    }

    fn inline_result(&self, row: &JobRow) -> Option<comfy_remote_protocol::api::JsonForm> {
        let bytes = row.result_bytes.unwrap_or(0).max(0) as u64;
        if bytes == 0 || bytes > self.config.inline_result_bytes {
            return None;
        }
        let data = std::fs::read(self.job_dir(&row.id).join(RESULT_FILE)).ok()?;
        use base64::Engine as _;
        Some(comfy_remote_protocol::api::JsonForm {
            format: comfy_remote_protocol::api::JSON_FORM_FORMAT.to_owned(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
        })
    }

    /// Publish the job's current status (and `done` when terminal).
    fn publish_status(&self, id: &str) {
        let (Some(live), Ok(Some(row))) = (self.live(id), self.store.get(id)) else {
            return;
        };
        let view = self.view(&row, "");
        if row.status.is_terminal() {
            let mut p = view.progress.clone();
            p.phase = Phase::Done;
            p.node = None;
            p.text = row.status.as_str().to_owned();
            live.publish(EventData::Progress(p));
            live.publish(EventData::Status(Box::new(view.clone())));
            live.publish(EventData::Done(Box::new(view)));
        } else {
            live.publish(EventData::Status(Box::new(view)));
        }
    }

    /// Check a decoded payload against the workflow's inputs.
    pub fn check_inputs(
        signature: &[SignatureItem],
        payload: &Payload<'_>,
    ) -> Result<(), (String, String)> {
        let mut seen = HashSet::new();
        for e in &payload.entries {
            if !seen.insert(e.name.as_str()) {
                return Err((e.name.clone(), format!("input {:?} is given twice", e.name)));
            }
            let Some(item) = signature.iter().find(|i| i.name == e.name) else {
                let names: Vec<_> = signature.iter().map(|i| i.name.as_str()).collect();
                return Err((
                    e.name.clone(),
                    format!(
                        "unknown input {:?}; this workflow takes: {}",
                        e.name,
                        names.join(", ")
                    ),
                ));
            };
            let ty = e
                .comfy_type
                .clone()
                .unwrap_or_else(|| ComfyType::infer(&e.value));
            if item.comfy_type != ComfyType::ANY && ty.as_str() != item.comfy_type {
                return Err((
                    e.name.clone(),
                    format!(
                        "input {:?} must be {} but is {}",
                        e.name, item.comfy_type, ty
                    ),
                ));
            }
            if !value_fits(ty.as_str(), &e.value) {
                return Err((
                    e.name.clone(),
                    format!(
                        "input {:?} is declared {} but its value is not one ({})",
                        e.name,
                        ty,
                        describe(&e.value)
                    ),
                ));
            }
            if let Some(bad) = ComfyType::UNTRAVELLABLE.iter().find(|t| **t == ty.as_str()) {
                return Err((
                    e.name.clone(),
                    format!(
                        "input {:?} is a {bad}, which holds a live model object and cannot travel",
                        e.name
                    ),
                ));
            }
        }
        for item in signature {
            if !item.optional && payload.get(&item.name).is_none() {
                return Err((
                    item.name.clone(),
                    format!("missing input {:?} ({})", item.name, item.comfy_type),
                ));
            }
        }
        Ok(())
    }

    /// A job was inserted: make it live and wake the dispatcher.
    pub fn accepted(&self, id: &str) {
        self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
        self.add_live(id, Progress::start(Phase::Queued));
        self.publish_status(id);
        self.wake.notify_one();
    }

    /// Cancel a job. Returns the row after the request took effect.
    pub async fn cancel(&self, id: &str) -> Result<Option<JobRow>, WorkerError> {
        let Some(row) = self.store.get(id)? else {
            return Ok(None);
        };
        if row.status.is_terminal() {
            return Ok(Some(row));
        }
        if self.store.cancel_if_queued(id)? {
            self.metrics.finished(JobStatus::Canceled, 0.0);
            self.publish_status(id);
            self.cleanup_inputs(id);
            self.refresh_queue_positions();
        } else if let Some(live) = self.live(id) {
            self.store.set_status(id, JobStatus::Canceling)?;
            self.publish_status(id);
            live.cancel.cancel();
        }
        self.store.get(id)
    }

    fn refresh_queue_positions(&self) {
        if let Ok(ids) = self.store.waiting_ids() {
            for id in ids {
                self.publish_status(&id);
            }
        }
    }

    fn cleanup_inputs(&self, id: &str) {
        let dir = self.job_dir(id);
        let _ = std::fs::remove_file(dir.join(INPUTS_FILE));
        let _ = std::fs::remove_dir_all(dir.join(OUTPUTS_DIR));
    }

    /// Feed ComfyUI from the store until shutdown. Drivers are owned here.
    pub async fn dispatch(self: Arc<Self>) {
        let mut drivers = JoinSet::new();
        let mut ready = self.comfy.ready.clone();
        loop {
            while drivers.try_join_next().is_some() {}
            self.fail_overdue();
            let can_run = *ready.borrow()
                && self.in_flight.load(Ordering::SeqCst) < self.config.comfy_queue_depth;
            if can_run {
                let prompt_id = uuid::Uuid::new_v4().to_string();
                match self.store.claim_next(&self.owner, &prompt_id) {
                    Ok(Some(row)) => {
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        let live = self.live(&row.id).unwrap_or_else(|| {
                            self.add_live(&row.id, Progress::start(Phase::Starting))
                        });
                        let engine = self.clone();
                        // The next prompt is posted only after this one, so
                        // ComfyUI sees them in queue order.
                        let (posted_tx, posted) = tokio::sync::oneshot::channel::<()>();
                        drivers.spawn(async move {
                            let id = row.id.clone();
                            engine.drive(row, prompt_id, live, posted_tx).await;
                            engine.in_flight.fetch_sub(1, Ordering::SeqCst);
                            engine.wake.notify_one();
                            tracing::debug!(job = %id, "driver finished");
                        });
                        self.refresh_queue_positions();
                        tokio::select! {
                            _ = posted => {}
                            _ = self.shutdown.cancelled() => break,
                        }
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
        posted: tokio::sync::oneshot::Sender<()>,
    ) {
        let id = row.id.clone();
        let t0 = Instant::now();
        let dir = self.job_dir(&id);
        let rx = self.comfy.router.register(&prompt_id);
        let outcome = self.follow(&row, &prompt_id, &dir, &live, rx, posted).await;
        self.comfy.router.unregister(&prompt_id);
        let (status, error, outputs, bytes) = match outcome {
            Outcome::Shutdown => return,
            Outcome::Lost { started: false } => {
                // Never reached the executor: run it again.
                tracing::info!(job = %id, "ComfyUI restarted before the job started; re-queued");
                if live.cancel.is_cancelled() {
                    (JobStatus::Canceled, Some(canceled_error()), vec![], None)
                } else {
                    let _ = self.store.requeue(&id);
                    let _ = std::fs::remove_dir_all(dir.join(OUTPUTS_DIR));
                    let mut p = Progress::start(Phase::Queued);
                    p.text = "re-queued after a ComfyUI restart".into();
                    live.publish(EventData::Progress(p));
                    self.publish_status(&id);
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
            Outcome::Success => {
                let mut p = live.progress();
                p.phase = Phase::Collecting;
                p.node = None;
                p.step = None;
                p.text = "collecting outputs".into();
                live.publish(EventData::Progress(p));
                let outputs_sig = self.workflow.outputs.clone();
                // Outputs come from our own node, not from a client: the
                // request limits do not apply, only sanity bounds.
                let limits = Limits {
                    max_total_bytes: 1 << 40,
                    ..Limits::default()
                };
                let d = dir.clone();
                match tokio::task::spawn_blocking(move || {
                    collect_outputs(&d, &outputs_sig, &limits)
                })
                .await
                {
                    Ok(Ok((infos, bytes))) => {
                        (JobStatus::Succeeded, None, infos, Some(bytes as i64))
                    }
                    Ok(Err(e)) => (JobStatus::Failed, Some(e), vec![], None),
                    Err(e) => (JobStatus::Failed, Some(internal_error(e)), vec![], None),
                }
            }
        };
        if let Err(e) = self
            .store
            .finish(&id, status, error.as_ref(), &outputs, bytes)
        {
            tracing::error!(job = %id, "recording the outcome: {e}");
        }
        self.metrics.finished(status, t0.elapsed().as_secs_f64());
        tracing::info!(job = %id, status = status.as_str(), secs = t0.elapsed().as_secs_f32(), "job finished");
        self.cleanup_inputs(&id);
        self.publish_status(&id);
    }

    async fn follow(
        self: &Arc<Self>,
        row: &JobRow,
        prompt_id: &str,
        dir: &Path,
        live: &Arc<LiveJob>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<ComfyEvent>,
        posted: tokio::sync::oneshot::Sender<()>,
    ) -> Outcome {
        let (id, seq) = (row.id.as_str(), row.seq);
        let comfy = &self.comfy;
        // Wait for ComfyUI and our websocket, so no event of this prompt is lost.
        let mut ws = comfy.ws_up.clone();
        let claimed = now_ms();
        loop {
            if *ws.borrow() && *comfy.ready.borrow() {
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
        let prompt = self.workflow.prompt_for_job(dir);
        let mut tries = 0;
        loop {
            match comfy.client.queue_prompt(&prompt, prompt_id, seq).await {
                Ok(()) => break,
                Err(QueueError::Rejected(body)) => {
                    return Outcome::Failed(validation_error(&body, &self.workflow))
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
        let _ = posted.send(());
        tracing::info!(job = %id, prompt = %prompt_id, "prompt queued in ComfyUI");
        let mut tracker = Tracker::new(&self.workflow);
        let mut started = false;
        let mut cancel_requested = false;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Outcome::Shutdown };
                    match ev {
                        ComfyEvent::Success => return Outcome::Success,
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
                            tick.reset_immediately();
                        }
                        other => {
                            if matches!(other, ComfyEvent::Started | ComfyEvent::Executing(_)) && !started {
                                started = true;
                                if let Err(e) = self.store.mark_started(id) {
                                    tracing::warn!(job = %id, "recording the start: {e}");
                                }
                                self.publish_status(id);
                                self.refresh_queue_positions();
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
                        Ok(QueuePlace::Absent) => tick.reset_immediately(),
                        Err(_) => return Outcome::Canceled,
                    }
                }
                r = generation.changed() => {
                    if r.is_err() || *generation.borrow() != gen0 {
                        return if cancel_requested { Outcome::Canceled } else { Outcome::Lost { started } };
                    }
                }
                _ = tick.tick() => {
                    if !*comfy.ready.borrow() {
                        continue;
                    }
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

    /// Delete files of finished jobs beyond the retention policy.
    pub fn sweep(&self) {
        let cutoff = now_ms() - self.config.retention.as_millis() as i64;
        match self
            .store
            .retention_victims(cutoff, self.config.max_result_bytes)
        {
            Ok(victims) => {
                for row in victims {
                    let _ = std::fs::remove_dir_all(self.job_dir(&row.id));
                    if let Err(e) = self.store.expire(&row.id) {
                        tracing::error!("expiring {}: {e}", row.id);
                    }
                    self.live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&row.id);
                    if row.status == JobStatus::Succeeded {
                        self.metrics.expired.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job = %row.id, "result expired");
                    }
                }
            }
            Err(e) => tracing::error!("retention sweep: {e}"),
        }
        // Forget finished live jobs after a while; their final state is in the store.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() > 256 {
            live.retain(|_, j| !j.is_done());
        }
    }

    /// Run the retention sweep until shutdown.
    pub async fn janitor(self: Arc<Self>) {
        loop {
            self.sweep();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.sweep_interval) => {}
            }
        }
    }
}

/// Does `value` have the shape its declared Comfy type promises?
fn value_fits(ty: &str, value: &comfy_remote_protocol::Value<'_>) -> bool {
    use comfy_remote_protocol::{DType, Value};
    let float_tensor = |v: &Value<'_>, ranks: &[usize]| {
        matches!(v, Value::Tensor(t) if ranks.contains(&t.shape.len())
            && matches!(t.dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64))
    };
    match ty {
        ComfyType::IMAGE => float_tensor(value, &[4]),
        ComfyType::MASK => float_tensor(value, &[2, 3]),
        ComfyType::LATENT => {
            matches!(value.get("samples"), Some(Value::Tensor(t)) if t.shape.len() >= 3)
        }
        ComfyType::AUDIO => {
            matches!(value.get("waveform"), Some(Value::Tensor(t)) if t.shape.len() == 3)
                && matches!(value.get("sample_rate"), Some(Value::Int(r)) if *r > 0)
        }
        ComfyType::STRING => matches!(value, Value::Str(_)),
        ComfyType::INT => matches!(value, Value::Int(_)),
        ComfyType::FLOAT => matches!(value, Value::Float(_) | Value::Int(_)),
        ComfyType::BOOLEAN => matches!(value, Value::Bool(_)),
        _ => true,
    }
}

fn describe(value: &comfy_remote_protocol::Value<'_>) -> String {
    use comfy_remote_protocol::Value;
    match value {
        Value::Tensor(t) => format!("a {} tensor of shape {:?}", t.dtype, t.shape),
        Value::Str(_) => "a string".into(),
        Value::Int(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Dict(items) => format!(
            "a dict with keys {:?}",
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
        ),
        Value::List(_) => "a list".into(),
        Value::Tuple(_) => "a tuple".into(),
        Value::None => "None".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Pickle { .. } => "a pickle".into(),
    }
}

fn canceled_error() -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::Canceled,
        message: "canceled on request".into(),
        details: Value::Null,
    }
}

fn internal_error(e: impl std::fmt::Display) -> ErrorInfo {
    tracing::error!("internal: {e}");
    ErrorInfo {
        code: ErrorCode::Internal,
        message: "internal error while collecting outputs; see the worker's log".into(),
        details: Value::Null,
    }
}

/// Turn ComfyUI's `/prompt` 400 body into one readable error.
fn validation_error(body: &Value, wf: &Workflow) -> ErrorInfo {
    let mut parts = Vec::new();
    if let Some(errors) = body.get("node_errors").and_then(Value::as_object) {
        for (node, e) in errors {
            let class = e
                .get("class_type")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    wf.prompt
                        .get(node)
                        .and_then(|n| n.get("class_type"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let msgs: Vec<String> = e
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            let m = x.get("message").and_then(Value::as_str).unwrap_or("error");
                            match x.get("details").and_then(Value::as_str) {
                                Some(d) if !d.is_empty() => format!("{m}: {d}"),
                                _ => m.to_owned(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            parts.push(format!("node {node} ({class}): {}", msgs.join("; ")));
        }
    }
    if parts.is_empty() {
        let m = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("prompt rejected");
        let d = body
            .pointer("/error/details")
            .and_then(Value::as_str)
            .unwrap_or("");
        parts.push(if d.is_empty() {
            m.to_owned()
        } else {
            format!("{m}: {d}")
        });
    }
    parts.sort();
    ErrorInfo {
        code: ErrorCode::ValidationFailed,
        message: format!("ComfyUI rejected the workflow: {}", parts.join(" | ")),
        details: body.clone(),
    }
}

fn outcome_from_history(h: &Value, cancel_requested: bool) -> Outcome {
    let status = h.get("status");
    let completed = status
        .and_then(|s| s.get("completed"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if completed {
        return Outcome::Success;
    }
    let messages = status
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for m in &messages {
        let kind = m.get(0).and_then(Value::as_str).unwrap_or_default();
        let data = m.get(1).cloned().unwrap_or(Value::Null);
        if kind == "execution_error" {
            let s = |k: &str| {
                data.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            return Outcome::Failed(execution_error(
                "",
                &s("node_id"),
                &s("node_type"),
                &s("exception_message"),
                &data,
            ));
        }
        if kind == "execution_interrupted" {
            return if cancel_requested {
                Outcome::Canceled
            } else {
                Outcome::Failed(ErrorInfo {
                    code: ErrorCode::ExecutionFailed,
                    message: "ComfyUI interrupted the prompt".into(),
                    details: Value::Null,
                })
            };
        }
    }
    // ComfyUI's status messages may carry tracebacks: logged, not sent.
    let status_text = h.get("status").map(Value::to_string).unwrap_or_default();
    tracing::warn!(status = %status_text, "prompt ended without success");
    Outcome::Failed(ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message: "ComfyUI finished the prompt without success; see the worker's log".into(),
        details: Value::Null,
    })
}

/// A node's failure: its id, type, and ComfyUI's exception type and
/// message. The traceback (with the server's paths) goes to the log only.
fn execution_error(
    job: &str,
    node_id: &str,
    node_type: &str,
    message: &str,
    comfyui: &Value,
) -> ErrorInfo {
    let traceback = match comfyui.get("traceback") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .concat(),
        Some(Value::String(t)) => t.clone(),
        _ => String::new(),
    };
    tracing::warn!(
        job,
        node = node_id,
        node_type,
        "node failed: {message}\n{traceback}"
    );
    let exception_type = comfyui
        .get("exception_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message: format!("node {node_id} ({node_type}) failed: {message}"),
        details: json!({
            "node": {"id": node_id, "type": node_type},
            "comfyui": {"exception_type": exception_type, "exception_message": message},
        }),
    }
}

/// Read each Remote Output's file in signature order into one result container.
fn collect_outputs(
    dir: &Path,
    sig: &[SignatureItem],
    limits: &Limits,
) -> Result<(Vec<ValueInfo>, u64), ErrorInfo> {
    let fail = |message: String| ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message,
        details: Value::Null,
    };
    let mut maps = Vec::with_capacity(sig.len());
    for item in sig {
        let path = dir.join(OUTPUTS_DIR).join(format!("{}.crc", item.name));
        let bytes = crate::fsutil::map(&path).map_err(|_| {
            fail(format!(
                "Remote Output {:?} (node {}) produced nothing; is it connected and did it run?",
                item.name, item.node_id
            ))
        })?;
        maps.push(bytes);
    }
    // One output: its file already is the result container (one entry with
    // that name and type), so it is checked and renamed, never copied.
    if let ([item], [bytes]) = (sig, maps.as_slice()) {
        let payload = comfy_remote_protocol::decode(bytes, limits).map_err(|e| {
            fail(format!(
                "Remote Output {:?} wrote an unreadable value: {e}",
                item.name
            ))
        })?;
        if let [entry] = payload.entries.as_slice() {
            if entry.name == item.name {
                let infos = vec![ValueInfo {
                    name: item.name.clone(),
                    comfy_type: entry
                        .comfy_type
                        .clone()
                        .unwrap_or_else(|| ComfyType::infer(&entry.value))
                        .0,
                }];
                let len = bytes.len() as u64;
                let src = dir.join(OUTPUTS_DIR).join(format!("{}.crc", item.name));
                std::fs::rename(&src, dir.join(RESULT_FILE))
                    .map_err(|e| fail(format!("storing the result: {e}")))?;
                return Ok((infos, len));
            }
        }
    }
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(sig.len());
    for (item, bytes) in sig.iter().zip(&maps) {
        let payload = comfy_remote_protocol::decode(bytes, limits).map_err(|e| {
            fail(format!(
                "Remote Output {:?} wrote an unreadable value: {e}",
                item.name
            ))
        })?;
        let entry = payload.entries.into_iter().next().ok_or_else(|| {
            fail(format!(
                "Remote Output {:?} wrote an empty container",
                item.name
            ))
        })?;
        entries.push(Entry {
            name: item.name.clone(),
            comfy_type: entry.comfy_type,
            value: entry.value,
        });
    }
    let infos = entries
        .iter()
        .map(|e| ValueInfo {
            name: e.name.clone(),
            comfy_type: e
                .comfy_type
                .clone()
                .unwrap_or_else(|| ComfyType::infer(&e.value))
                .0,
        })
        .collect();
    // Streamed from the mapped outputs into the file: the combined result
    // is never held in memory.
    let tmp = dir.join(format!("{RESULT_FILE}.tmp"));
    let written = (|| -> Result<u64, comfy_remote_protocol::WriteError> {
        let mut w = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&tmp)?);
        let n = comfy_remote_protocol::encode_to_writer(&Payload { entries }, &mut w)?;
        std::io::Write::flush(&mut w)?;
        Ok(n)
    })();
    let len = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(match e {
                comfy_remote_protocol::WriteError::Codec(e) => {
                    fail(format!("encoding the result: {e}"))
                }
                e => fail(format!("writing the result: {e}")),
            });
        }
    };
    std::fs::rename(&tmp, dir.join(RESULT_FILE))
        .map_err(|e| fail(format!("writing the result: {e}")))?;
    Ok((infos, len))
}

/// Turns ComfyUI's per-node events into one monotonic progress.
struct Tracker {
    classes: HashMap<String, String>,
    total: usize,
    done: HashSet<String>,
    current: Option<String>,
    step: Option<Step>,
}

impl Tracker {
    fn new(wf: &Workflow) -> Self {
        let classes: HashMap<_, _> = wf
            .prompt
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    n.get("class_type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        Tracker {
            total: classes.len().max(1),
            classes,
            done: HashSet::new(),
            current: None,
            step: None,
        }
    }

    fn class_of(&self, node: &str) -> Option<String> {
        self.classes.get(node).cloned()
    }

    fn apply(&mut self, ev: ComfyEvent) -> Option<Progress> {
        match ev {
            ComfyEvent::Started => {}
            ComfyEvent::Cached(nodes) => self.done.extend(nodes),
            ComfyEvent::Executing(node) => {
                if let Some(prev) = self.current.take() {
                    self.done.insert(prev);
                }
                self.current = Some(node);
                self.step = None;
            }
            ComfyEvent::Progress { node, value, max } => {
                if node.is_some() && node != self.current {
                    if let Some(prev) = self.current.take() {
                        self.done.insert(prev);
                    }
                    self.current = node;
                }
                self.step = Some(Step { value, max });
            }
            ComfyEvent::Executed(node) => {
                self.done.insert(node);
            }
            _ => return None,
        }
        let step_frac = match (&self.current, self.step) {
            (Some(c), Some(s)) if s.max > 0 && !self.done.contains(c) => {
                (s.value as f64 / s.max as f64).min(1.0)
            }
            _ => 0.0,
        };
        let done = self.done.len().min(self.total);
        // Leave room for collecting: running never reports 1.0.
        let fraction = ((done as f64 + step_frac) / self.total as f64 * 0.98).min(0.98);
        let node = self.current.clone().map(|id| NodeRef {
            class_type: self.class_of(&id),
            id,
        });
        let mut text = match &node {
            Some(n) => format!(
                "running {} (#{})",
                n.class_type.clone().unwrap_or_default(),
                n.id
            ),
            None => "running".to_owned(),
        };
        if let Some(s) = self.step {
            text.push_str(&format!(" step {}/{}", s.value, s.max));
        }
        let phase = if self.current.is_none() && self.done.is_empty() {
            Phase::Starting
        } else {
            Phase::Running
        };
        if phase == Phase::Starting {
            text = "starting".to_owned();
        }
        Some(Progress {
            value: fraction,
            max: 1.0,
            fraction,
            phase,
            node,
            step: self.step,
            queue_position: None,
            nodes_done: Some(done as u64),
            nodes_total: Some(self.total as u64),
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn execution_errors_keep_the_exception_but_not_the_traceback() {
        let data = json!({"node_id": "2", "node_type": "ImageInvert",
            "exception_type": "TypeError", "exception_message": "bad operand",
            "traceback": ["  File \"/srv/comfy/nodes.py\", line 1\n", "TypeError\n"]});
        let h = json!({"status": {"completed": false, "messages": [["execution_error", data]]}});
        let Outcome::Failed(e) = outcome_from_history(&h, false) else {
            panic!("not a failure")
        };
        assert_eq!(e.code, ErrorCode::ExecutionFailed);
        assert_eq!(e.details["node"], json!({"id": "2", "type": "ImageInvert"}));
        assert_eq!(e.details["comfyui"]["exception_type"], "TypeError");
        let text = serde_json::to_string(&e).expect("json");
        assert!(
            !text.contains("traceback") && !text.contains("/srv/comfy"),
            "{text}"
        );
        let odd = json!({"status": {"completed": false, "messages": [["odd", data]]}});
        let Outcome::Failed(e) = outcome_from_history(&odd, false) else {
            panic!("not a failure")
        };
        assert!(!serde_json::to_string(&e)
            .expect("json")
            .contains("/srv/comfy"));
    }

    #[test]
    fn validation_errors_name_node_type_and_message() {
        let wf = Workflow::parse(
            "w",
            r#"{"1": {"class_type": "RemoteOutput", "inputs": {"name": "o", "value": ["2", 0]}},
            "2": {"class_type": "ImageBlur", "inputs": {}}}"#,
        )
        .expect("wf");
        let body = json!({"error": {"message": "Prompt outputs failed validation"},
            "node_errors": {"2": {"errors": [{"message": "Value bigger than max", "details": "blur_radius: 500"}], "class_type": "ImageBlur"}}});
        let e = validation_error(&body, &wf);
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(
            e.message
                .contains("node 2 (ImageBlur): Value bigger than max: blur_radius: 500"),
            "{}",
            e.message
        );
    }
}
