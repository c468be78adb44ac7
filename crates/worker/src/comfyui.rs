//! ComfyUI: the HTTP client, the supervisor of the child process (or of an
//! attached instance) and the websocket follower that routes events to jobs.
//!
//! ComfyUI sends a prompt's events only to the websocket of the `client_id`
//! that queued it, so the worker keeps exactly one socket under its own id
//! and routes each event by `prompt_id`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::process;

mod events;
mod files;
pub use events::{ComfyEvent, EventReceiver, EventRouter};

/// How the worker gets its ComfyUI.
#[derive(Debug, Clone)]
pub enum ComfyMode {
    /// Start `python main.py` in `dir` and supervise it.
    Spawn {
        dir: PathBuf,
        python: PathBuf,
        /// Extra arguments for `main.py` (e.g. `--cpu`).
        args: Vec<String>,
    },
    /// Use a ComfyUI that is already running at `url`.
    Attach {
        url: String,
        /// Its output directory, when this machine sees it: the files a
        /// prompt wrote are read from there rather than through `/view`.
        output_dir: Option<PathBuf>,
    },
}

/// Where a prompt is in ComfyUI's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePlace {
    Running,
    Pending,
    Absent,
}

/// Why ComfyUI refused a prompt.
#[derive(Debug)]
pub enum QueueError {
    /// 400 with ComfyUI's validation body (`error`, `node_errors`).
    Rejected(Value),
    Unavailable(String),
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// A small HTTP client for ComfyUI's server routes.
#[derive(Debug, Clone)]
pub struct ComfyClient {
    base: Arc<Mutex<String>>,
    http: reqwest::Client,
    /// Posts prompts only: its connections are driven by the runtime of
    /// the dispatcher, which posts them (the backstage runtime of [`crate::Worker`]).
    post: reqwest::Client,
    pub client_id: String,
    /// ComfyUI's output directory, when it is on this machine (`files`).
    output_dir: Option<Arc<PathBuf>>,
}

impl ComfyClient {
    fn new(base: String, output_dir: Option<PathBuf>) -> Self {
        ComfyClient {
            output_dir: output_dir.map(Arc::new),
            base: Arc::new(Mutex::new(base.trim_end_matches('/').to_owned())),
            http: http_client(),
            post: http_client(),
            client_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:8188`.
    pub fn base(&self) -> String {
        self.base.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_base(&self, base: String) {
        *self.base.lock().unwrap_or_else(|p| p.into_inner()) = base;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Does ComfyUI answer?
    pub async fn alive(&self) -> bool {
        matches!(
            self.http.get(self.url("/prompt")).timeout(Duration::from_secs(10)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    pub async fn object_info(&self) -> Result<Value, WorkerError> {
        let r = self
            .http
            .get(self.url("/object_info"))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /object_info: {e}")))?;
        r.json()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /object_info: {e}")))
    }

    /// Queue `prompt` under our `client_id` and the given `prompt_id`.
    /// `number` is ComfyUI's queue priority (lower runs first): the job's
    /// place in our queue, so prompts run in submit order even when two are
    /// posted concurrently.
    /// `extra_data` (a v2 job's partner-node key) goes with this prompt only.
    pub async fn queue_prompt(
        &self,
        prompt: &Value,
        prompt_id: &str,
        number: i64,
        extra_data: Option<&Value>,
    ) -> Result<(), QueueError> {
        let mut body = json!({ "prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id, "number": number });
        if let Some(extra) = extra_data {
            body["extra_data"] = extra.clone();
        }
        let r = self
            .post
            .post(self.url("/prompt"))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            // ComfyUI runs the valid outputs of a partly invalid prompt and
            // reports the rest in `node_errors`: a job needs all of them.
            let partial = body
                .get("node_errors")
                .and_then(Value::as_object)
                .is_some_and(|e| !e.is_empty());
            if !partial {
                return Ok(());
            }
            let _ = self.delete_pending(prompt_id).await;
            let _ = self.interrupt(prompt_id).await;
            return Err(QueueError::Rejected(body));
        }
        if status.as_u16() == 400 {
            Err(QueueError::Rejected(body))
        } else {
            Err(QueueError::Unavailable(format!(
                "POST /prompt returned {status}: {body}"
            )))
        }
    }

    /// Interrupt `prompt_id` only if it is the one running.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), WorkerError> {
        self.post_json("/interrupt", json!({ "prompt_id": prompt_id }))
            .await
    }

    /// Remove `prompt_id` from ComfyUI's pending queue.
    pub async fn delete_pending(&self, prompt_id: &str) -> Result<(), WorkerError> {
        self.post_json("/queue", json!({ "delete": [prompt_id] }))
            .await
    }

    async fn post_json(&self, path: &str, body: Value) -> Result<(), WorkerError> {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("POST {path}: {e}")))?;
        if !r.status().is_success() {
            return Err(WorkerError::Comfy(format!(
                "POST {path} returned {}",
                r.status()
            )));
        }
        Ok(())
    }

    /// Where `prompt_id` is in ComfyUI's queue.
    pub async fn queue_place(&self, prompt_id: &str) -> Result<QueuePlace, WorkerError> {
        let r = self
            .http
            .get(self.url("/queue"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /queue: {e}")))?;
        let v: Value = r
            .json()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /queue: {e}")))?;
        let has = |key: &str| {
            v.get(key).and_then(Value::as_array).is_some_and(|items| {
                items
                    .iter()
                    .any(|i| i.get(1).and_then(Value::as_str) == Some(prompt_id))
            })
        };
        Ok(if has("queue_running") {
            QueuePlace::Running
        } else if has("queue_pending") {
            QueuePlace::Pending
        } else {
            QueuePlace::Absent
        })
    }

    /// The history entry of `prompt_id`, once it has finished.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Value>, WorkerError> {
        let r = self
            .http
            .get(self.url(&format!("/history/{prompt_id}")))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /history: {e}")))?;
        let v: Value = r
            .json()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /history: {e}")))?;
        Ok(v.get(prompt_id).cloned())
    }
}

/// Shared view of the supervised ComfyUI.
#[derive(Debug, Clone)]
pub struct ComfyHandle {
    pub client: ComfyClient,
    pub router: Arc<EventRouter>,
    /// ComfyUI answers HTTP.
    pub ready: watch::Receiver<bool>,
    /// Our websocket to ComfyUI is connected.
    pub ws_up: watch::Receiver<bool>,
    /// Bumped every time ComfyUI (re)starts: a prompt queued in an older
    /// generation is gone.
    pub generation: watch::Receiver<u64>,
    /// Set when start-up failed for good.
    pub fatal: watch::Receiver<Option<String>>,
    pub restarts: Arc<AtomicU64>,
    /// Pid of the ComfyUI child (0 when attached or down).
    pub pid: Arc<AtomicU32>,
}

struct Senders {
    ready: watch::Sender<bool>,
    ws_up: watch::Sender<bool>,
    generation: watch::Sender<u64>,
    fatal: watch::Sender<Option<String>>,
}

/// Start supervising ComfyUI. The returned tasks stop when `shutdown` fires
/// (and, in spawn mode, stop the child with its process group).
pub fn start(
    mode: ComfyMode,
    shutdown: CancellationToken,
) -> (ComfyHandle, Vec<tokio::task::JoinHandle<()>>) {
    let (base, output_dir) = match &mode {
        ComfyMode::Attach { url, output_dir } => (url.clone(), output_dir.clone()),
        ComfyMode::Spawn { dir, args, .. } => (
            String::from("http://127.0.0.1:0"),
            Some(files::output_dir_of(dir, args)),
        ),
    };
    let client = ComfyClient::new(base, output_dir);
    let (ready_tx, ready) = watch::channel(false);
    let (ws_tx, ws_up) = watch::channel(false);
    let (gen_tx, generation) = watch::channel(0u64);
    let (fatal_tx, fatal) = watch::channel(None);
    let handle = ComfyHandle {
        client: client.clone(),
        router: Arc::new(EventRouter::default()),
        ready,
        ws_up,
        generation,
        fatal,
        restarts: Arc::new(AtomicU64::new(0)),
        pid: Arc::new(AtomicU32::new(0)),
    };
    let senders = Arc::new(Senders {
        ready: ready_tx,
        ws_up: ws_tx,
        generation: gen_tx,
        fatal: fatal_tx,
    });
    let sup = {
        let (h, s, sd) = (handle.clone(), senders.clone(), shutdown.clone());
        tokio::spawn(async move {
            match mode {
                ComfyMode::Spawn { dir, python, args } => {
                    supervise_child(h, s, sd, dir, python, args).await
                }
                ComfyMode::Attach { .. } => supervise_attached(h, s, sd).await,
            }
        })
    };
    let ws = {
        let (h, s) = (handle.clone(), senders);
        tokio::spawn(async move { follow_websocket(h, s, shutdown).await })
    };
    (handle, vec![sup, ws])
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn supervise_attached(h: ComfyHandle, s: Arc<Senders>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let ok = h.client.alive().await;
        if ok {
            failures = 0;
            if !*s.ready.borrow() {
                tracing::info!(url = %h.client.base(), "ComfyUI answers");
                s.generation.send_modify(|g| *g += 1);
                s.ready.send_replace(true);
            }
        } else {
            failures += 1;
            if failures >= 3 && *s.ready.borrow() {
                tracing::warn!(url = %h.client.base(), "ComfyUI stopped answering");
                s.ready.send_replace(false);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if ok { 1000 } else { 250 })) => {}
        }
    }
}

async fn supervise_child(
    h: ComfyHandle,
    s: Arc<Senders>,
    shutdown: CancellationToken,
    dir: PathBuf,
    python: PathBuf,
    args: Vec<String>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut early_deaths = 0u32;
    let mut ever_ready = false;
    loop {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                s.fatal
                    .send_replace(Some(format!("no free loopback port: {e}")));
                return;
            }
        };
        h.client.set_base(format!("http://127.0.0.1:{port}"));
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg("main.py")
            .args([
                "--listen",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--disable-auto-launch",
            ])
            .args(&args)
            .current_dir(&dir);
        // ComfyUI prints to stdout; our stdout is for results, so its output joins our log.
        cmd.stdout(std::io::stderr());
        tracing::info!(python = %python.display(), dir = %dir.display(), port, "starting ComfyUI");
        let mut child = match process::spawn_group(cmd) {
            Ok(c) => c,
            Err(e) => {
                s.fatal.send_replace(Some(format!(
                    "could not start {} main.py in {}: {e}; check --python and --comfyui",
                    python.display(),
                    dir.display()
                )));
                return;
            }
        };
        h.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        let started = Instant::now();
        let mut ready = false;
        let mut failures = 0u32;
        let exit = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    s.ready.send_replace(false);
                    tracing::info!("stopping ComfyUI");
                    process::stop_group(&mut child, Duration::from_secs(10)).await;
                    h.pid.store(0, Ordering::SeqCst);
                    return;
                }
                status = child.wait() => break status,
                _ = tokio::time::sleep(Duration::from_millis(if ready { 1000 } else { 200 })) => {
                    let ok = h.client.alive().await;
                    if ok {
                        failures = 0;
                        if !ready {
                            ready = true;
                            ever_ready = true;
                            early_deaths = 0;
                            tracing::info!(port, secs = started.elapsed().as_secs_f32(), "ComfyUI is ready");
                            s.generation.send_modify(|g| *g += 1);
                            s.ready.send_replace(true);
                        } else if !*s.ready.borrow() {
                            s.ready.send_replace(true);
                        }
                    } else if ready {
                        failures += 1;
                        if failures >= 5 {
                            s.ready.send_replace(false);
                        }
                    }
                }
            }
        };
        s.ready.send_replace(false);
        h.pid.store(0, Ordering::SeqCst);
        // Reap the rest of its group.
        process::stop_group(&mut child, Duration::from_millis(100)).await;
        let status = exit
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        if !ready {
            early_deaths += 1;
            if !ever_ready && early_deaths >= 3 {
                s.fatal.send_replace(Some(format!(
                    "ComfyUI exited during start-up three times ({status}) with the Python {}; see its log above. \
                     If that Python lacks ComfyUI's requirements, pass --python with the one of ComfyUI's environment",
                    python.display()
                )));
                return;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        h.restarts.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(%status, retry_in_ms = backoff.as_millis() as u64, "ComfyUI exited; restarting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn follow_websocket(h: ComfyHandle, s: Arc<Senders>, shutdown: CancellationToken) {
    let mut ready = h.ready.clone();
    loop {
        if !*ready.borrow() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = ready.changed() => { if r.is_err() { return; } continue; }
            }
        }
        let url = format!(
            "{}/ws?clientId={}",
            h.client.base().replacen("http", "ws", 1),
            h.client.client_id
        );
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => {
                let flags =
                    json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}});
                let _ = ws.send(Message::text(flags.to_string())).await;
                tracing::debug!("websocket to ComfyUI connected");
                s.ws_up.send_replace(true);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => { s.ws_up.send_replace(false); return; }
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Text(t))) => h.router.on_text(t.as_str()),
                            Some(Ok(Message::Binary(b))) => h.router.on_binary(&b),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => { tracing::debug!("websocket error: {e}"); break; }
                            None => break,
                        }
                    }
                }
                s.ws_up.send_replace(false);
                tracing::debug!("websocket to ComfyUI closed");
            }
            Err(e) => tracing::debug!("websocket connect failed: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
