//! Routing ComfyUI's websocket events to the job that owns each prompt:
//! text frames (`execution_*`, `executing`, `progress`, `progress_state`)
//! and binary preview frames, decoded into [`ComfyEvent`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// An event of one prompt, decoded from ComfyUI's websocket.
#[derive(Debug, Clone)]
pub enum ComfyEvent {
    Started,
    Cached(Vec<String>),
    Executing(String),
    Progress {
        node: Option<String>,
        value: u64,
        max: u64,
    },
    /// A node ran (or was taken from the cache), with the outputs ComfyUI
    /// shows for it (`{"images": [{filename, subfolder, type}], ...}`), the
    /// same ComfyUI records in the prompt's history.
    Executed(String, Option<Value>),
    Success,
    Error {
        node_id: String,
        node_type: String,
        message: String,
        details: Value,
    },
    Interrupted,
    /// `executing` with `node: null`: the prompt left the executor.
    Finished,
    Preview {
        mime: String,
        data: Vec<u8>,
        node: Option<String>,
    },
}

/// Events buffered for one prompt. A driver that falls this far behind
/// loses the newest ones (counted in `dropped`); it still learns the
/// prompt's end from ComfyUI's history, which it checks when the prompt
/// leaves the queue.
const EVENT_BUFFER: usize = 1024;

/// The events of one prompt, as its driver receives them.
pub type EventReceiver = mpsc::Receiver<ComfyEvent>;

/// Routes websocket events to the job that owns each prompt.
#[derive(Debug, Default)]
pub struct EventRouter {
    routes: Mutex<HashMap<String, mpsc::Sender<ComfyEvent>>>,
    /// Events dropped because their prompt's buffer was full.
    pub dropped: AtomicU64,
    /// The prompt ComfyUI is executing (previews without metadata carry no id).
    current: Mutex<Option<String>>,
    /// The last step sent for each prompt: ComfyUI reports a step through
    /// its progress-bar hook both as `progress` and in `progress_state`,
    /// and only in `progress_state` through the V3 `set_progress`.
    last_step: Mutex<HashMap<String, Step>>,
}

/// A node's step, as `progress` and `progress_state` report it.
type Step = (Option<String>, u64, u64);

impl EventRouter {
    pub fn register(&self, prompt_id: &str) -> EventReceiver {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prompt_id.to_owned(), tx);
        rx
    }

    pub fn unregister(&self, prompt_id: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prompt_id);
        self.last_step
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prompt_id);
    }

    /// Whether `step` is news for the prompt (and remember it).
    fn new_step(&self, prompt_id: &str, step: &Step) -> bool {
        let mut last = self.last_step.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(prompt_id) == Some(step) {
            return false;
        }
        last.insert(prompt_id.to_owned(), step.clone());
        true
    }

    /// Route a step unless the prompt already has it.
    fn step(&self, prompt_id: Option<String>, node: Option<String>, value: u64, max: u64) {
        let Some(pid) = prompt_id.or_else(|| self.current()) else {
            return;
        };
        if self.new_step(&pid, &(node.clone(), value, max)) {
            self.send(&pid, ComfyEvent::Progress { node, value, max });
        }
    }

    /// The steps of running nodes in a `progress_state` message: whole
    /// numbers out of at least 2 (a running node without steps reports 0
    /// of 1, which is no step).
    fn progress_state(&self, prompt_id: Option<String>, data: &Value) {
        let Some(nodes) = data.get("nodes").and_then(Value::as_object) else {
            return;
        };
        for state in nodes.values() {
            if state.get("state").and_then(Value::as_str) != Some("running") {
                continue;
            }
            let number = |k: &str| state.get(k).and_then(Value::as_f64);
            let (Some(value), Some(max)) = (number("value"), number("max")) else {
                continue;
            };
            let whole = |x: f64| x.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&x);
            if !(whole(value) && whole(max) && max >= 2.0 && value <= max) {
                continue;
            }
            let node = state
                .get("display_node_id")
                .or(state.get("node_id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let pid = state
                .get("prompt_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| prompt_id.clone());
            self.step(pid, node, value as u64, max as u64);
        }
    }

    fn send(&self, prompt_id: &str, ev: ComfyEvent) {
        if let Some(tx) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(prompt_id)
        {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        prompt = prompt_id,
                        "a job's driver fell behind ComfyUI's events; dropping the newest"
                    );
                }
            }
        }
    }

    fn set_current(&self, prompt_id: Option<String>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = prompt_id;
    }

    fn current(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decode one text frame and route it.
    pub fn on_text(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let ty = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let prompt_id = data
            .get("prompt_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        let ev = match ty {
            "execution_start" => {
                self.set_current(prompt_id.clone());
                ComfyEvent::Started
            }
            "execution_cached" => ComfyEvent::Cached(
                data.get("nodes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "executing" => match s("node") {
                Some(node) => ComfyEvent::Executing(node),
                None => {
                    self.set_current(None);
                    ComfyEvent::Finished
                }
            },
            "progress" => {
                let n = |k: &str| data.get(k).and_then(Value::as_u64).unwrap_or(0);
                return self.step(prompt_id, s("node"), n("value"), n("max"));
            }
            "progress_state" => return self.progress_state(prompt_id, &data),
            "executed" => match s("node") {
                Some(node) => ComfyEvent::Executed(
                    node,
                    data.get("output").filter(|o| o.is_object()).cloned(),
                ),
                None => return,
            },
            "execution_success" => ComfyEvent::Success,
            "execution_error" => ComfyEvent::Error {
                node_id: s("node_id").unwrap_or_default(),
                node_type: s("node_type").unwrap_or_default(),
                message: s("exception_message").unwrap_or_default().trim().to_owned(),
                details: json!({
                    "exception_type": data.get("exception_type"),
                    "traceback": data.get("traceback"),
                }),
            },
            "execution_interrupted" => ComfyEvent::Interrupted,
            _ => return,
        };
        if let Some(pid) = prompt_id.or_else(|| self.current()) {
            self.send(&pid, ev);
        }
    }

    /// Decode one binary frame (previews) and route it.
    pub fn on_binary(&self, data: &[u8]) {
        if data.len() < 8 {
            return;
        }
        let kind = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let word = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        match kind {
            1 => {
                let mime = if word == 2 { "image/png" } else { "image/jpeg" };
                if let Some(pid) = self.current() {
                    self.send(
                        &pid,
                        ComfyEvent::Preview {
                            mime: mime.into(),
                            data: data[8..].to_vec(),
                            node: None,
                        },
                    );
                }
            }
            4 => {
                let len = word as usize;
                let Some(meta) = data.get(8..8usize.saturating_add(len)) else {
                    return;
                };
                let Ok(meta) = serde_json::from_slice::<Value>(meta) else {
                    return;
                };
                let image = data[8 + len..].to_vec();
                let mime = meta
                    .get("image_type")
                    .and_then(Value::as_str)
                    .unwrap_or("image/png")
                    .to_owned();
                let node = meta
                    .get("display_node_id")
                    .or(meta.get("node_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let pid = meta
                    .get("prompt_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| self.current());
                if let Some(pid) = pid {
                    self.send(
                        &pid,
                        ComfyEvent::Preview {
                            mime,
                            data: image,
                            node,
                        },
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_previews_reach_the_prompt_that_owns_them() {
        let router = EventRouter::default();
        let mut rx = router.register("p1");
        let mut other = router.register("p2");
        router.on_text(r#"{"type": "execution_start", "data": {"prompt_id": "p1"}}"#);
        router.on_text(r#"{"type": "progress", "data": {"prompt_id": "p1", "node": "3", "value": 2, "max": 8}}"#);
        // A legacy preview (type 1, JPEG) carries no prompt id: it belongs to the running prompt.
        let mut legacy = vec![0, 0, 0, 1, 0, 0, 0, 1];
        legacy.extend_from_slice(b"jpegbytes");
        router.on_binary(&legacy);
        // A preview with metadata (type 4) names its prompt and node.
        let meta = br#"{"prompt_id": "p2", "node_id": "7", "display_node_id": "7", "image_type": "image/png"}"#;
        let mut framed = vec![0, 0, 0, 4];
        framed.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        framed.extend_from_slice(meta);
        framed.extend_from_slice(b"pngbytes");
        router.on_binary(&framed);
        router.on_binary(&[0, 0, 0, 4, 255, 255, 255, 255]); // lying length: ignored
        router.on_text("not json");
        assert!(matches!(rx.try_recv(), Ok(ComfyEvent::Started)));
        assert!(matches!(
            rx.try_recv(),
            Ok(ComfyEvent::Progress {
                value: 2,
                max: 8,
                ..
            })
        ));
        match rx.try_recv() {
            Ok(ComfyEvent::Preview { mime, data, .. }) => {
                assert_eq!(
                    (mime.as_str(), data.as_slice()),
                    ("image/jpeg", &b"jpegbytes"[..])
                )
            }
            other => panic!("expected a preview, got {other:?}"),
        }
        match other.try_recv() {
            Ok(ComfyEvent::Preview { mime, data, node }) => {
                assert_eq!(mime, "image/png");
                assert_eq!(data, b"pngbytes");
                assert_eq!(node.as_deref(), Some("7"));
            }
            other => panic!("expected a preview, got {other:?}"),
        }
        assert!(rx.try_recv().is_err() && other.try_recv().is_err());
    }

    fn steps(rx: &mut EventReceiver) -> Vec<(Option<String>, u64, u64)> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let ComfyEvent::Progress { node, value, max } = ev {
                out.push((node, value, max));
            }
        }
        out
    }

    #[test]
    fn steps_come_from_progress_state_too_and_each_arrives_once() {
        let router = EventRouter::default();
        let mut rx = router.register("p1");
        let state = |node: &str, value: f64, max: f64, st: &str| {
            format!(
                r#"{{"type": "progress_state", "data": {{"prompt_id": "p1", "nodes": {{
                    "{node}": {{"value": {value}, "max": {max}, "state": "{st}", "node_id": "{node}",
                              "display_node_id": "{node}", "prompt_id": "p1"}},
                    "2": {{"value": 1, "max": 1, "state": "finished", "node_id": "2", "prompt_id": "p1"}}}}}}}}"#
            )
        };
        // A node started (0 of 1): no step.
        router.on_text(&state("5", 0.0, 1.0, "running"));
        // A V3 node's set_progress: progress_state only.
        router.on_text(&state("5", 1.0, 4.0, "running"));
        router.on_text(&state("5", 2.0, 4.0, "running"));
        // The progress-bar hook sends both: the step is routed once.
        router.on_text(
            r#"{"type": "progress", "data": {"prompt_id": "p1", "node": "5", "value": 3, "max": 4}}"#,
        );
        router.on_text(&state("5", 3.0, 4.0, "running"));
        // Fractions and finished nodes are no steps.
        router.on_text(&state("5", 0.5, 1.0, "running"));
        router.on_text(&state("5", 4.0, 4.0, "finished"));
        let five = Some("5".to_owned());
        assert_eq!(
            steps(&mut rx),
            [(five.clone(), 1, 4), (five.clone(), 2, 4), (five, 3, 4)]
        );
        // A new prompt starts afresh.
        router.unregister("p1");
        let mut rx = router.register("p1");
        router.on_text(&state("5", 1.0, 4.0, "running"));
        assert_eq!(steps(&mut rx).len(), 1);
    }
}
