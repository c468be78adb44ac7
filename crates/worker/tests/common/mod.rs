//! A worker for tests without ComfyUI: nothing answers on its ComfyUI
//! port, so jobs stay queued; the router, the engine and the spool are real.
#![allow(dead_code)] // each test file uses its part

use comfy_remote_worker::comfyui::{self, ComfyMode};
use comfy_remote_worker::store::Store;
use comfy_remote_worker::{router, AppState, Engine, EngineConfig, Workflow};
use tokio_util::sync::CancellationToken;

pub const WF: &str = r#"{
  "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
  "2": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["9", 0]}},
  "3": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["1", 0]}},
  "9": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
}"#;
pub const TOKEN: &str = "s3cret";

pub struct App {
    pub router: axum::Router,
    pub engine: std::sync::Arc<Engine>,
    _dir: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn app_with(f: impl FnOnce(&mut EngineConfig)) -> App {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = app_in(dir.path(), f);
    app._dir = Some(dir);
    app
}

/// A worker on the spool `dir` (a restart when one ran there before).
pub fn app_in(dir: &std::path::Path, f: impl FnOnce(&mut EngineConfig)) -> App {
    let mut config = EngineConfig::new(dir.to_path_buf());
    config.max_body_bytes = 1 << 20;
    config.limits.max_total_bytes = 1 << 20;
    f(&mut config);
    let shutdown = CancellationToken::new();
    // Nothing listens on port 9: ComfyUI is never ready, jobs stay queued.
    let (comfy, _tasks) = comfyui::start(
        ComfyMode::Attach {
            url: "http://127.0.0.1:9".into(),
            output_dir: None,
        },
        shutdown.clone(),
    );
    let store = Store::open(&dir.join("jobs.db")).expect("store");
    let wf = Workflow::parse("wf.json", WF).expect("workflow");
    let engine = Engine::new(config, store, wf, comfy, shutdown.clone());
    engine.recover().expect("recover");
    App {
        router: router(AppState::new(engine.clone(), Some(TOKEN), None)),
        engine,
        _dir: None,
        shutdown,
    }
}

pub fn app() -> App {
    app_with(|_| {})
}
