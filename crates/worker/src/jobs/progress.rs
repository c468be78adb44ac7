//! ComfyUI's per-node events (`execution_start`, `executing`, `progress`,
//! `executed`, cached nodes) as one monotonic progress snapshot with the
//! node, the step and a line of text.

use std::collections::{HashMap, HashSet};

use comfy_remote_protocol::api::{NodeRef, Phase, Progress, Step};
use serde_json::Value;

use crate::comfyui::ComfyEvent;

/// Turns ComfyUI's per-node events into one monotonic progress.
pub(super) struct Tracker {
    classes: HashMap<String, String>,
    total: usize,
    done: HashSet<String>,
    pub(super) current: Option<String>,
    step: Option<Step>,
}

impl Tracker {
    pub(super) fn new(prompt: &serde_json::Map<String, Value>) -> Self {
        let classes: HashMap<_, _> = prompt
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

    pub(super) fn class_of(&self, node: &str) -> Option<String> {
        self.classes.get(node).cloned()
    }

    pub(super) fn apply(&mut self, ev: ComfyEvent) -> Option<Progress> {
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
            ComfyEvent::Executed(node, _) => {
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
