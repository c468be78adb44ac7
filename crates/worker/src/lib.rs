//! The comfy-remote worker gateway: a durable jobs API in front of a
//! supervised ComfyUI.
//!
//! - [`comfyui`]: the ComfyUI child (or an attached instance), its HTTP
//!   routes and the websocket that streams a prompt's events;
//! - [`store`]: jobs in SQLite (submit, claim, recovery, retention);
//! - [`jobs`]: the engine that runs jobs through ComfyUI's queue;
//! - [`api`]: the HTTP routes (`router(state)`), served by [`serve`];
//! - [`api_v2`]: Comfy API v2 on the same engine (`api_v2::router`);
//! - [`uploads`]: resumable uploads of large containers.
//!
//! [`Worker::start`] wires them; [`serve`] runs the HTTP server until the
//! shutdown token fires, then [`Worker::stop`] stops every task and child.

pub mod api;
pub mod api_v2;
pub mod comfyui;
pub mod error;
mod fsutil;
pub mod jobs;
pub mod live;
pub mod metrics;
mod process;
pub mod store;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

pub use api::{router, AppState};
pub use comfy_remote_contract::{Workflow, WorkflowFile};
pub use comfyui::ComfyMode;
pub use error::{ApiError, WorkerError};
pub use jobs::{Engine, EngineConfig};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started worker: the engine and the tasks it owns.
#[derive(Debug)]
pub struct Worker {
    pub engine: Arc<Engine>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    /// Where the tasks run (declared before the lock: dropped first).
    _backstage: Backstage,
    /// The spool's lock, released when the worker is dropped (after stop).
    _lock: fsutil::SpoolLock,
}

impl Worker {
    /// Start ComfyUI (or attach), wait until it answers, convert a UI-format
    /// workflow with its `/object_info`, validate the workflow against it,
    /// recover the store and start the dispatcher. On error everything
    /// started is stopped again.
    pub async fn start(
        mode: ComfyMode,
        workflow: WorkflowFile,
        config: EngineConfig,
        startup_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Worker, WorkerError> {
        std::fs::create_dir_all(&config.spool_dir)
            .map_err(|e| WorkerError::io(format!("creating {}", config.spool_dir.display()), e))?;
        // One worker per job store: a second one would recover (fail) the
        // first one's running jobs and take its queue.
        let lock = fsutil::lock_spool(&config.spool_dir)
            .map_err(|e| WorkerError::io(format!("locking {}", config.spool_dir.display()), e))?
            .map_err(|pid| WorkerError::SpoolInUse {
                spool: config.spool_dir.clone(),
                pid,
            })?;
        let store = store::Store::open(&config.spool_dir.join("jobs.db"))?;
        let attached = match &mode {
            ComfyMode::Attach { url, .. } => Some(url.clone()),
            _ => None,
        };
        let inner = shutdown.child_token();
        let backstage = Backstage::new()?;
        let (comfy, mut tasks) = {
            let _on = backstage.enter();
            comfyui::start(mode, inner.clone())
        };
        let stop_all = |tasks: Vec<JoinHandle<()>>, token: CancellationToken| async move {
            token.cancel();
            for t in tasks {
                let _ = t.await;
            }
        };
        let mut ready = comfy.ready.clone();
        let mut fatal = comfy.fatal.clone();
        let waited = tokio::time::timeout(startup_timeout, async {
            loop {
                if *ready.borrow() {
                    return Ok(());
                }
                if let Some(msg) = fatal.borrow().clone() {
                    return Err(WorkerError::Comfy(msg));
                }
                tokio::select! {
                    _ = ready.changed() => {}
                    _ = fatal.changed() => {}
                    _ = inner.cancelled() => return Err(WorkerError::Comfy("shut down during start-up".into())),
                }
            }
        })
        .await;
        let checked = match waited {
            Err(_) => Err(WorkerError::Comfy(match &attached {
                Some(url) => format!(
                    "{url} did not answer within {}s; check that ComfyUI runs there, or raise --startup-timeout",
                    startup_timeout.as_secs()
                ),
                None => format!(
                    "did not answer within {}s; see its log above, or raise --startup-timeout",
                    startup_timeout.as_secs()
                ),
            })),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => match comfy.client.object_info().await {
                Ok(info) => checked_workflow(workflow, &info),
                Err(e) => Err(e),
            },
        };
        let workflow = match checked {
            Ok(w) => w,
            Err(e) => {
                stop_all(tasks, inner).await;
                return Err(e);
            }
        };
        let engine = Engine::new(config, store, workflow, comfy, inner.clone());
        if let Err(e) = engine.recover() {
            stop_all(tasks, inner).await;
            return Err(e);
        }
        tasks.push(backstage.spawn(engine.clone().dispatch()));
        tasks.push(tokio::spawn(engine.clone().janitor()));
        tasks.push(tokio::spawn(engine.clone().keep_queue_positions()));
        Ok(Worker {
            engine,
            tasks,
            shutdown: inner,
            _backstage: backstage,
            _lock: lock,
        })
    }

    /// Stop the dispatcher, drivers, websocket and ComfyUI (with its process group).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The runtime of the tasks that talk to ComfyUI: its websocket, the
/// supervisor, the dispatcher and the jobs' drivers. It has a thread of
/// its own, so a storm of requests on the server's runtime does not delay
/// ComfyUI's events, on which the next prompt waits (ComfyUI idles
/// meanwhile).
#[derive(Debug)]
struct Backstage {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Backstage {
    fn new() -> Result<Backstage, WorkerError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("comfyui-tasks")
            .enable_all()
            .build()
            .map(|rt| Backstage {
                handle: rt.handle().clone(),
                runtime: Some(rt),
            })
            .map_err(|e| WorkerError::io("starting the runtime of the ComfyUI tasks", e))
    }

    fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
    }

    fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for Backstage {
    fn drop(&mut self) {
        // Dropped from async code: its tasks have ended (or are abandoned).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The workflow to serve: converted from the UI format when it is one (logged), then checked
/// against the ComfyUI that runs it.
fn checked_workflow(file: WorkflowFile, info: &serde_json::Value) -> Result<Workflow, WorkerError> {
    let ui = file.is_ui();
    let mut workflow = file.resolve(info)?;
    if ui {
        tracing::info!(
            workflow = %workflow.name,
            nodes = workflow.prompt.len(),
            "converted the UI-format workflow to the API format with this ComfyUI's node definitions"
        );
    }
    workflow.check_against(info)?;
    Ok(workflow)
}

/// Serve `router` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Event streams write many small frames; without TCP_NODELAY each one
    // after the first waits for the client's delayed ACK (40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
