//! A succeeded job's outputs as assets: its result container split into
//! files (`v2::outputs::split`), each stored as a blob with an asset
//! record, once per job (on first need: a poll, a stream's end), so
//! nothing is split twice and every reader sees the same asset ids.

use comfy_remote_contract::layout;
use comfy_remote_protocol::api::JobStatus;
use comfy_remote_protocol::v2::assets::AssetRecord;
use comfy_remote_protocol::v2::outputs::{split, Naming};
use comfy_remote_protocol::v2::view::{blake3_hash, OutputRecord};
use comfy_remote_protocol::Limits;

use super::store::AssetRow;
use super::V2;
use crate::error::WorkerError;
use crate::jobs::prompt::is_prompt_job;
use crate::store::{now_ms, JobRow};

impl V2 {
    /// The output records of a job: none until it succeeded; its files
    /// once it has (made assets on the first call).
    pub(super) async fn outputs_of(&self, row: &JobRow) -> Result<Vec<OutputRecord>, WorkerError> {
        if row.status != JobStatus::Succeeded {
            return Ok(Vec::new());
        }
        let id = row.id.clone();
        let ready = |rows: Vec<AssetRow>| rows.iter().filter_map(AssetRow::output).collect();
        let v2job = self.store.run({
            let id = id.clone();
            move |s| s.job(&id)
        });
        if v2job.await?.is_some_and(|j| j.outputs_ready) {
            let id = id.clone();
            return Ok(ready(self.store.run(move |s| s.outputs(&id)).await?));
        }
        let _split = self.split_lock.lock().await;
        // Another reader may have split it while this one waited.
        let again = self.store.run({
            let id = id.clone();
            move |s| s.job(&id)
        });
        if again.await?.is_some_and(|j| j.outputs_ready) {
            let id = id.clone();
            return Ok(ready(self.store.run(move |s| s.outputs(&id)).await?));
        }
        let dir = self.engine.job_dir(&id);
        let sig = self.engine.workflow.outputs.clone();
        let files = tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
            let path = layout::result_file(&dir);
            let map = crate::fsutil::map(&path)
                .map_err(|e| WorkerError::io(format!("reading {}", path.display()), e))?;
            // Our own result file: sanity bounds only.
            let limits = Limits {
                max_total_bytes: 1 << 40,
                ..Limits::default()
            };
            let payload = comfy_remote_protocol::decode(&map, &limits)
                .map_err(|e| WorkerError::Task(format!("reading the result: {e}")))?;
            let naming = if is_prompt_job(&dir) {
                Naming::NodeFiles
            } else {
                Naming::Signature(&sig)
            };
            let files = split(&payload, naming)
                .map_err(|e| WorkerError::Task(format!("splitting the result into files: {e}")))?;
            Ok(files
                .into_iter()
                .map(|f| {
                    let hash = blake3_hash(&f.bytes);
                    (f, hash)
                })
                .collect::<Vec<_>>())
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))??;
        let now = now_ms();
        let mut rows = Vec::with_capacity(files.len());
        let _blobs = self.blob_lock.lock().await;
        for (f, hash) in &files {
            self.blobs
                .put(&f.bytes, hash)
                .await
                .map_err(|e| WorkerError::io("storing an output", e))?;
            rows.push(AssetRow {
                record: AssetRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    hash: hash.clone(),
                    size_bytes: f.bytes.len() as u64,
                    content_type: f.content_type.clone(),
                    file_path: Some(f.name.clone()),
                    created_at: now,
                    expires_at: None,
                    job_id: Some(id.clone()),
                },
                node_id: Some(f.node_id.clone()),
                name: Some(f.name.clone()),
                kind: Some(f.kind),
            });
        }
        let stored = rows.clone();
        let jid = id.clone();
        self.store
            .run(move |s| s.put_outputs(&jid, &stored))
            .await?;
        tracing::debug!(job = %id, files = rows.len(), "outputs stored as assets");
        Ok(ready(rows))
    }
}
