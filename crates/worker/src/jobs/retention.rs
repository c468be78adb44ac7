//! Retention: results are deleted after `retention` or beyond
//! `max_result_bytes` (the job record stays, a succeeded job becomes
//! `expired`), and queued jobs fail once they waited past the queue
//! timeout while ComfyUI was unreachable. Deletes of job directories
//! (gigabytes, at times) run on blocking threads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use comfy_remote_protocol::api::JobStatus;

use super::Engine;
use crate::store::now_ms;

impl Engine {
    /// Fail queued jobs that waited past the queue timeout while ComfyUI
    /// was unreachable.
    pub(super) async fn fail_overdue(&self) {
        let t = self.config.queue_timeout;
        let Some(down) = self.comfy_down_since() else {
            return;
        };
        let cutoff = now_ms() - t.as_millis() as i64;
        let Some(err) = self.overdue_error(Some(down), cutoff) else {
            return;
        };
        let message = err.message.clone();
        match self
            .store
            .run(move |s| s.fail_queued_before(cutoff, &err))
            .await
        {
            Ok(ids) => {
                for id in &ids {
                    tracing::warn!(job = %id, "{message}");
                    self.metrics.finished(JobStatus::Failed, 0.0);
                    self.cleanup_inputs(id).await;
                    self.publish_status(id).await;
                }
                if !ids.is_empty() {
                    self.queue_moved();
                }
            }
            Err(e) => tracing::error!("failing overdue jobs: {e}"),
        }
    }

    /// Delete files of finished jobs beyond the retention policy.
    pub async fn sweep(&self) {
        let cutoff = now_ms() - self.config.retention.as_millis() as i64;
        let max = self.config.max_result_bytes;
        match self
            .store
            .run(move |s| s.retention_victims(cutoff, max))
            .await
        {
            Ok(victims) => {
                for row in victims {
                    let dir = self.job_dir(&row.id);
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                    let id = row.id.clone();
                    if let Err(e) = self.store.run(move |s| s.expire(&id)).await {
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
        let spool = self.config.spool_dir.clone();
        let _ = tokio::task::spawn_blocking(move || crate::uploads::sweep(&spool)).await;
        // Forget finished live jobs after a while; their final state is in the store.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() > 256 {
            live.retain(|_, j| !j.is_done());
        }
    }

    /// Run the retention sweep until shutdown.
    pub async fn janitor(self: Arc<Self>) {
        loop {
            self.sweep().await;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.sweep_interval) => {}
            }
        }
    }
}
