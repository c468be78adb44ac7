//! A succeeded job's outputs as assets: each file stored as a blob with an
//! asset record, once per job, so every reader sees the same asset ids. A
//! job that ran its own graph gives its files to the [`Keeper`] while it
//! collects them (the engine's output sink); any other job's result
//! container is split into files (`v2::outputs::split`) on first need (a
//! poll, a stream's end).

use std::path::PathBuf;
use std::sync::Arc;

use comfy_remote_contract::layout;
use comfy_remote_protocol::api::JobStatus;
use comfy_remote_protocol::v2::assets::AssetRecord;
use comfy_remote_protocol::v2::outputs::{node_file_entry, split, Naming, OutputFile};
use comfy_remote_protocol::v2::view::{blake3_hash, OutputRecord};
use comfy_remote_protocol::Limits;

use super::blobs::Blobs;
use super::store::{AssetRow, V2Store};
use super::V2;
use crate::error::WorkerError;
use crate::jobs::sink::{OutputSink, SinkFuture};
use crate::store::{now_ms, JobRow};

/// Stores output files as assets.
#[derive(Debug, Clone)]
pub(super) struct Keeper {
    pub store: Arc<V2Store>,
    pub blobs: Blobs,
    /// Held while a blob and the record that refers to it are written or
    /// removed, so a concurrent delete never removes bytes just referred to.
    pub blob_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Keeper {
    /// Store `files` as the output assets of job `id` (their blobs, then
    /// their records, with the job's outputs marked ready).
    async fn keep_files(
        &self,
        id: &str,
        files: Vec<OutputFile>,
    ) -> Result<Vec<AssetRow>, WorkerError> {
        let _blobs = self.blob_lock.lock().await;
        let blobs = self.blobs.clone();
        let hashed = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|f| {
                    let hash = blake3_hash(&f.bytes);
                    blobs.put_blocking(&f.bytes, &hash).map(|()| (f, hash))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?
        .map_err(|e| WorkerError::io("storing an output", e))?;
        let now = now_ms();
        let rows: Vec<AssetRow> = hashed
            .into_iter()
            .map(|(f, hash)| AssetRow {
                record: AssetRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    hash,
                    size_bytes: f.bytes.len() as u64,
                    content_type: f.content_type,
                    file_path: Some(f.name.clone()),
                    created_at: now,
                    expires_at: None,
                    job_id: Some(id.to_owned()),
                },
                node_id: Some(f.node_id),
                name: Some(f.name),
                kind: Some(f.kind),
            })
            .collect();
        let stored = rows.clone();
        let jid = id.to_owned();
        self.store
            .run(move |s| s.put_outputs(&jid, &stored))
            .await?;
        tracing::debug!(job = %id, files = rows.len(), "outputs stored as assets");
        Ok(rows)
    }
}

impl OutputSink for Keeper {
    fn keep<'a>(&'a self, job: &'a str, files: Vec<OutputFile>) -> SinkFuture<'a, ()> {
        Box::pin(async move { self.keep_files(job, files).await.map(drop) })
    }

    fn files<'a>(&'a self, job: &'a str) -> SinkFuture<'a, Vec<(String, PathBuf)>> {
        Box::pin(async move {
            let id = job.to_owned();
            let rows = self.store.read(move |s| s.outputs(&id)).await?;
            Ok(rows
                .iter()
                .map(|a| {
                    let node = a.node_id.as_deref().unwrap_or_default();
                    let name = a.name.as_deref().unwrap_or_default();
                    (node_file_entry(node, name), self.blobs.path(&a.hash))
                })
                .collect())
        })
    }
}

impl V2 {
    /// The output records of a job: none until it succeeded; its files
    /// once it has (made assets on the first call, unless they were kept
    /// as it ended).
    pub(super) async fn outputs_of(&self, row: &JobRow) -> Result<Vec<OutputRecord>, WorkerError> {
        if row.status != JobStatus::Succeeded {
            return Ok(Vec::new());
        }
        let id = row.id.clone();
        let ready = |rows: Vec<AssetRow>| rows.iter().filter_map(AssetRow::output).collect();
        let kept = |id: String| {
            self.store.read(move |s| {
                let ready = s.job(&id)?.is_some_and(|j| j.outputs_ready);
                Ok(if ready { Some(s.outputs(&id)?) } else { None })
            })
        };
        if let Some(rows) = kept(id.clone()).await? {
            return Ok(ready(rows));
        }
        let _split = self.split_lock.lock().await;
        // Another reader may have split it while this one waited.
        if let Some(rows) = kept(id.clone()).await? {
            return Ok(ready(rows));
        }
        let dir = self.engine.job_dir(&id);
        let own_graph = row.own_graph;
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
            let naming = if own_graph {
                Naming::NodeFiles
            } else {
                Naming::Signature(&sig)
            };
            split(&payload, naming)
                .map_err(|e| WorkerError::Task(format!("splitting the result into files: {e}")))
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))??;
        Ok(ready(self.keeper.keep_files(&id, files).await?))
    }
}
