//! The job engine: the jobs a worker holds and what it does with them.
//!
//! - [`admission`]: [`Engine::submit`], a body spooled to disk, decoded with
//!   the limits, checked against the signature and stored (idempotently);
//! - `dispatch`: the loop that feeds ComfyUI's queue and the driver that
//!   follows one prompt to its end;
//! - `progress`: ComfyUI's per-node events as one monotonic progress;
//! - `outcome`: ComfyUI's answers (validation errors, history, node
//!   failures) as job errors that carry no server internals;
//! - `collect`: the Remote Outputs' files as the result container;
//! - [`prompt`]: jobs that run a graph of their own (Comfy API v2 with
//!   `--allow-any-workflow`): their files in, their files out;
//! - `results`: the result a client downloads (packed copies, made once);
//! - `retention`: expiry of results and of jobs stuck waiting for ComfyUI.
//!
//! Execution is serialized by ComfyUI's own queue: the dispatcher keeps at
//! most `comfy_queue_depth` prompts in ComfyUI (one running, the next ones ready)
//! and the rest wait in the durable store. A trip to the store runs on the
//! calling thread when its connection is free, else on a blocking thread
//! ([`Store::run`], [`Store::read`]); its checkpoints always run on one.

mod admission;
mod collect;
mod dispatch;
mod outcome;
mod progress;
pub mod prompt;
mod results;
mod retention;
pub mod sink;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfy_remote_contract::layout;
use comfy_remote_protocol::api::{
    rfc3339, ErrorCode, ErrorInfo, JobResult, JobStatus, JobUrls, JobView, JsonForm, Phase,
    Progress,
};
use comfy_remote_protocol::Limits;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::comfyui::ComfyHandle;
use crate::error::WorkerError;
use crate::live::{EventData, LiveJob};
use crate::metrics::Metrics;
use crate::store::{now_ms, JobRow, Store};
use comfy_remote_contract::Workflow;

/// The least time between two looks at the queue for the places of the
/// jobs waiting in it ([`Engine::keep_queue_positions`]).
const POSITIONS_PAUSE: Duration = Duration::from_millis(20);

pub use admission::{SubmitBody, SubmitError, SubmitRequest, Submitted};
pub use prompt::{PromptJob, Upload};

/// Limits and policies of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `jobs.db`, `jobs/<id>/`, `inputs/` and `tmp/`. Absolute: job directories
    /// are handed to ComfyUI, which would resolve a relative path against
    /// its own directory.
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

/// The defaults of [`EngineConfig`], which `comfy-remote serve` shows as
/// its flags' defaults.
pub mod defaults {
    /// `--max-body-bytes`.
    pub const MAX_BODY_BYTES: u64 = 2 << 30;
    /// `--max-jobs`.
    pub const MAX_ACTIVE_JOBS: u64 = 64;
    /// `--comfyui-queue-depth`: one running and enough ready that a run of
    /// prompts of a few milliseconds each (weight-free, or cached) does not
    /// outrun the worker's posting of the next ones while a storm of
    /// submits keeps it busy.
    pub const COMFY_QUEUE_DEPTH: usize = 16;
    /// `--retention-secs`.
    pub const RETENTION_SECS: u64 = 24 * 3600;
    /// `--max-result-bytes`.
    pub const MAX_RESULT_BYTES: u64 = 10 << 30;
    /// `--inline-result-bytes`.
    pub const INLINE_RESULT_BYTES: u64 = 0;
    /// `--queue-timeout-secs`.
    pub const QUEUE_TIMEOUT_SECS: u64 = 600;
    /// Seconds between retention sweeps.
    pub const SWEEP_SECS: u64 = 30;
}

impl EngineConfig {
    /// The defaults, with `spool_dir` made absolute against the current directory.
    pub fn new(spool_dir: PathBuf) -> Self {
        EngineConfig {
            spool_dir: std::path::absolute(&spool_dir).unwrap_or(spool_dir),
            max_body_bytes: defaults::MAX_BODY_BYTES,
            limits: Limits {
                max_total_bytes: defaults::MAX_BODY_BYTES,
                ..Limits::default()
            },
            max_active_jobs: defaults::MAX_ACTIVE_JOBS,
            comfy_queue_depth: defaults::COMFY_QUEUE_DEPTH,
            retention: Duration::from_secs(defaults::RETENTION_SECS),
            max_result_bytes: defaults::MAX_RESULT_BYTES,
            inline_result_bytes: defaults::INLINE_RESULT_BYTES,
            sweep_interval: Duration::from_secs(defaults::SWEEP_SECS),
            queue_timeout: Duration::from_secs(defaults::QUEUE_TIMEOUT_SECS),
        }
    }
}

/// The engine shared by the HTTP handlers and the background tasks.
#[derive(Debug)]
pub struct Engine {
    pub config: EngineConfig,
    pub store: Arc<Store>,
    pub workflow: Arc<Workflow>,
    pub comfy: ComfyHandle,
    pub metrics: Metrics,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    wake: Notify,
    /// The queue moved: [`Engine::keep_queue_positions`] tells the watched
    /// waiting jobs their new places.
    queue_moved: Notify,
    in_flight: AtomicUsize,
    /// Event ids of this process are above this (see `Store::next_boot`).
    event_base: AtomicU64,
    /// Since when (ms) ComfyUI has not answered; `None` while it answers.
    down_since: Mutex<Option<i64>>,
    /// What unfinished prompt jobs of this process run (their graph, as
    /// also stored in their directory, and the `extra_data`, never stored).
    held: Mutex<HashMap<String, Arc<prompt::HeldPrompt>>>,
    /// Where prompt jobs' outputs go (set once, by the v2 surface).
    output_sink: std::sync::OnceLock<Arc<dyn sink::OutputSink>>,
    /// Files put into ComfyUI's input directory (named by their content's
    /// hash) under the ComfyUI generation they were put there in.
    placed: Mutex<(u64, std::collections::HashSet<String>)>,
    /// Running hashes of resumable uploads.
    pub(crate) upload_digests: crate::uploads::Digests,
    pub shutdown: CancellationToken,
}

/// Where a job waits, for its queue position.
enum Waiting {
    /// In the worker's own queue.
    Here,
    /// Handed to ComfyUI, not yet executing.
    InComfyUi,
}

/// The place in the queue of `row` when it waits.
fn position_in(s: &Store, row: &JobRow) -> Result<Option<u64>, WorkerError> {
    Ok(match waiting(row) {
        None => None,
        Some(Waiting::Here) => Some(s.queue_position(row.seq)?),
        Some(Waiting::InComfyUi) => Some(s.handed_position(row.seq)?),
    })
}

fn waiting(row: &JobRow) -> Option<Waiting> {
    match row.status {
        JobStatus::Queued => Some(Waiting::Here),
        JobStatus::Running if row.started_at.is_none() => Some(Waiting::InComfyUi),
        _ => None,
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
            store: Arc::new(store),
            workflow: Arc::new(workflow),
            comfy,
            metrics: Metrics::default(),
            live: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            queue_moved: Notify::new(),
            in_flight: AtomicUsize::new(0),
            event_base: AtomicU64::new(0),
            down_since: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
            output_sink: std::sync::OnceLock::new(),
            placed: Mutex::new((0, std::collections::HashSet::new())),
            upload_digests: Default::default(),
            shutdown,
        })
    }

    /// Send prompt jobs' outputs to `sink` (once; a second sink is ignored).
    pub fn set_output_sink(&self, sink: Arc<dyn sink::OutputSink>) {
        let _ = self.output_sink.set(sink);
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.config.spool_dir.join("jobs").join(id)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.config.spool_dir.join("tmp")
    }

    /// The files unfinished prompt jobs read (`prompt`).
    fn inputs_dir(&self) -> PathBuf {
        self.config.spool_dir.join("inputs")
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveJob>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The live state of job `id`, made with `progress` unless it has one
    /// (its submit and the dispatcher's claim race to make it); true when
    /// made here.
    fn live_or_add(&self, id: &str, progress: Progress) -> (Arc<LiveJob>, bool) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.entry(id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => (e.get().clone(), false),
            std::collections::hash_map::Entry::Vacant(e) => {
                let job = Arc::new(LiveJob::new(
                    progress,
                    self.event_base.load(Ordering::Relaxed),
                ));
                (e.insert(job).clone(), true)
            }
        }
    }

    /// The stored job with this id (a waiting one with its place in the
    /// queue, read in the same trip to the store).
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, WorkerError> {
        let id = id.to_owned();
        self.store
            .read(move |s| {
                let Some(mut row) = s.get(&id)? else {
                    return Ok(None);
                };
                row.queue_position = position_in(s, &row)?;
                Ok(Some(row))
            })
            .await
    }

    /// Recover after a restart and prepare the spool. Call once before serving.
    pub fn recover(&self) -> Result<(), WorkerError> {
        for d in [
            self.tmp_dir(),
            self.inputs_dir(),
            self.config.spool_dir.join("jobs"),
        ] {
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
        self.adopt_spooled_prompts(&known)?;
        self.hold_unfinished_prompts()?;
        for id in self.store.queued_ids()? {
            self.live_or_add(&id, Progress::start(Phase::Queued));
        }
        Ok(())
    }

    /// The id base of this process's events: above every earlier process's.
    pub fn event_base(&self) -> u64 {
        self.event_base.load(Ordering::Relaxed)
    }

    /// The public view of a job. `base` prefixes its URLs.
    pub async fn view(&self, row: &JobRow, base: &str) -> JobView {
        let position = self.position(row).await;
        let inline = self.inline_result(row).await;
        self.view_at(row, base, position, inline)
    }

    /// The view of a job without its inline result (which a Comfy API v2
    /// job does not carry: it lists its outputs).
    pub async fn status_view(&self, row: &JobRow) -> JobView {
        let position = self.position(row).await;
        self.view_at(row, "", position, None)
    }

    /// A waiting job's place in the queue.
    async fn position(&self, row: &JobRow) -> Option<u64> {
        match waiting(row) {
            None => None,
            Some(_) if row.queue_position.is_some() => row.queue_position,
            Some(_) => {
                let r = row.clone();
                self.store
                    .read(move |s| position_in(s, &r))
                    .await
                    .ok()
                    .flatten()
            }
        }
    }

    /// The view of `row` with its queue position (when waiting) known.
    fn view_at(
        &self,
        row: &JobRow,
        base: &str,
        position: Option<u64>,
        inline: Option<JsonForm>,
    ) -> JobView {
        let mut progress = match self.live(&row.id) {
            Some(l) => l.progress(),
            None => Progress::start(Phase::Queued),
        };
        let wait = waiting(row);
        // Handed to ComfyUI but not executing yet: still queued for the user.
        let status = match wait {
            Some(_) => JobStatus::Queued,
            None => row.status,
        };
        if wait.is_some() {
            progress.phase = Phase::Queued;
            progress.queue_position = position;
            progress.text = match position {
                Some(0) | None => "queued".into(),
                Some(n) => format!("queued ({n} ahead)"),
            };
        } else if row.status.is_terminal() {
            progress.settle(row.status);
        } else if progress.phase == Phase::Queued {
            // Executing, before ComfyUI's first node event: starting, never
            // `running` with a queued phase.
            progress.phase = Phase::Starting;
            progress.queue_position = None;
            progress.text = "starting".into();
        }
        let urls = JobUrls::under(base, &row.id);
        let result = (row.status == JobStatus::Succeeded).then(|| JobResult {
            url: urls.result.clone(),
            outputs: row.outputs.clone(),
            bytes: row.result_bytes.unwrap_or(0).max(0) as u64,
            inline,
        });
        JobView {
            id: row.id.clone(),
            status,
            progress,
            poll_url: urls.self_.clone(),
            urls,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            // Handed to ComfyUI is not started: only its first event is.
            started_at: row.started_at.map(rfc3339),
            finished_at: row
                .finished_at
                .filter(|_| row.status.is_terminal())
                .map(rfc3339),
            result,
            error: row.error.clone(),
        }
    }

    async fn inline_result(&self, row: &JobRow) -> Option<JsonForm> {
        let bytes = row.result_bytes.unwrap_or(0).max(0) as u64;
        if row.status != JobStatus::Succeeded
            || bytes == 0
            || bytes > self.config.inline_result_bytes
        {
            return None;
        }
        let data = tokio::fs::read(layout::result_file(&self.job_dir(&row.id)))
            .await
            .ok()?;
        Some(JsonForm::from_container(&data))
    }

    /// Before a reader subscribes to a waiting job: its place in the queue
    /// moves without an event while no one follows it
    /// ([`Engine::keep_queue_positions`]), so publish it now, for the
    /// reader's replay to end on the current place.
    pub(crate) async fn freshen_place(&self, row: &JobRow) {
        if waiting(row).is_some() {
            self.publish_status(&row.id).await;
        }
    }

    /// Publish the job's current status (and `done` when terminal).
    async fn publish_status(&self, id: &str) {
        if self.live(id).is_none() {
            return;
        }
        if let Ok(Some(row)) = self.job(id).await {
            self.publish_row(&row).await;
        }
    }

    /// Publish `row` (just read from the store) to its watchers.
    async fn publish_row(&self, row: &JobRow) {
        let Some(live) = self.live(&row.id) else {
            return;
        };
        let view = self.view(row, "").await;
        if row.status.is_terminal() {
            live.publish(EventData::Progress(view.progress.clone()));
            live.publish(EventData::Status(Box::new(view.clone())));
            live.publish(EventData::Done(Box::new(view)));
        } else {
            live.publish(EventData::Status(Box::new(view)));
        }
    }

    /// Cancel a job. Returns the row after the request took effect.
    pub async fn cancel(&self, id: &str) -> Result<Option<JobRow>, WorkerError> {
        let Some(row) = self.job(id).await? else {
            return Ok(None);
        };
        if row.status.is_terminal() {
            return Ok(Some(row));
        }
        let key = id.to_owned();
        if self.store.run(move |s| s.cancel_if_queued(&key)).await? {
            self.metrics.finished(JobStatus::Canceled, 0.0);
            self.publish_status(id).await;
            self.cleanup_inputs(id).await;
            self.queue_moved();
        } else if let Some(live) = self.live(id) {
            let key = id.to_owned();
            self.store
                .run(move |s| s.set_status(&key, JobStatus::Canceling))
                .await?;
            self.publish_status(id).await;
            live.cancel.cancel();
        }
        self.job(id).await
    }

    /// A job was claimed, started, finished, canceled or expired: the
    /// places of those waiting behind it change.
    pub(crate) fn queue_moved(&self) {
        self.queue_moved.notify_one();
    }

    /// Tell the waiting jobs someone follows their new places whenever the
    /// queue moved, at most once per [`POSITIONS_PAUSE`]: the moves of a
    /// storm of jobs come together in one look at the queue, off the
    /// dispatcher's way (one look per move made 200 watched jobs cost
    /// 40,000 views, and the dispatcher waited on each).
    pub async fn keep_queue_positions(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.queue_moved.notified() => {}
            }
            self.refresh_queue_positions().await;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POSITIONS_PAUSE) => {}
            }
        }
    }

    /// Tell the waiting jobs someone follows their place in the queue
    /// (one query for the whole queue; a view asked later computes its own;
    /// a place that did not change is no event, see [`LiveJob::publish`]).
    async fn refresh_queue_positions(&self) {
        let watched: HashMap<String, Arc<LiveJob>> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.is_watched() && !l.is_done())
            .map(|(id, l)| (id.clone(), l.clone()))
            .collect();
        if watched.is_empty() {
            return;
        }
        let Ok(waiting) = self.store.read(|s| s.waiting_positions()).await else {
            return;
        };
        for (row, position) in waiting {
            if let Some(live) = watched.get(&row.id) {
                let view = self.view_at(&row, "", Some(position), None);
                live.publish(EventData::Status(Box::new(view)));
            }
        }
    }

    /// Drop a finished job's inputs and partial outputs (off the runtime:
    /// inputs can be gigabytes).
    async fn cleanup_inputs(&self, id: &str) {
        let dir = self.job_dir(id);
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        // A prompt job made only what it says it made (a collection that
        // failed after spilling leaves `files/` to retention).
        if let Some(h) = held {
            if h.reads_files() {
                let inputs = self.inputs_dir();
                let _ = tokio::task::spawn_blocking(move || h.cleanup(&inputs)).await;
            }
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(layout::inputs_file(&dir));
            let _ = std::fs::remove_dir_all(layout::outputs_dir(&dir));
            prompt::cleanup(&dir);
        })
        .await;
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
            details: serde_json::Value::Null,
        })
    }
}
