//! Prometheus text metrics, hand-written: jobs by status, job durations,
//! ComfyUI restarts and readiness.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use comfy_remote_protocol::api::JobStatus;

/// Upper bounds (seconds) of the job duration histogram.
const BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Counters the engine updates.
#[derive(Debug, Default)]
pub struct Metrics {
    pub submitted: AtomicU64,
    pub rejected: AtomicU64,
    pub progress_events: AtomicU64,
    pub expired: AtomicU64,
    durations: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    by_status: std::collections::BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// Record a finished job.
    pub fn finished(&self, status: JobStatus, secs: f64) {
        let mut h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        *h.by_status.entry(status.as_str()).or_default() += 1;
    }

    /// Render all metrics. `jobs` are the store's counts by status.
    pub fn render(&self, jobs: &[(String, u64)], restarts: u64, ready: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP comfy_remote_jobs Jobs in the store by status.");
        let _ = writeln!(out, "# TYPE comfy_remote_jobs gauge");
        for s in [
            "queued",
            "running",
            "canceling",
            "succeeded",
            "failed",
            "canceled",
            "expired",
        ] {
            let n = jobs
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "comfy_remote_jobs{{status=\"{s}\"}} {n}");
        }
        let h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP comfy_remote_jobs_finished_total Jobs finished by this process, by status."
        );
        let _ = writeln!(out, "# TYPE comfy_remote_jobs_finished_total counter");
        for (s, n) in &h.by_status {
            let _ = writeln!(
                out,
                "comfy_remote_jobs_finished_total{{status=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP comfy_remote_job_duration_seconds Time from start to finish of a job."
        );
        let _ = writeln!(out, "# TYPE comfy_remote_job_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "comfy_remote_job_duration_seconds_bucket{{le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "comfy_remote_job_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "comfy_remote_job_duration_seconds_sum {}", h.sum);
        let _ = writeln!(out, "comfy_remote_job_duration_seconds_count {}", h.count);
        for (name, help, v) in [
            (
                "comfy_remote_jobs_submitted_total",
                "Jobs accepted.",
                self.submitted.load(Ordering::Relaxed),
            ),
            (
                "comfy_remote_requests_rejected_total",
                "Requests refused with 4xx.",
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "comfy_remote_progress_events_total",
                "Progress events published.",
                self.progress_events.load(Ordering::Relaxed),
            ),
            (
                "comfy_remote_results_expired_total",
                "Results deleted by retention.",
                self.expired.load(Ordering::Relaxed),
            ),
            (
                "comfy_remote_comfyui_restarts_total",
                "Times ComfyUI exited and was restarted.",
                restarts,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP comfy_remote_comfyui_ready Whether ComfyUI answers."
        );
        let _ = writeln!(out, "# TYPE comfy_remote_comfyui_ready gauge");
        let _ = writeln!(out, "comfy_remote_comfyui_ready {}", u8::from(ready));
        out
    }
}
