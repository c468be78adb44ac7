//! The result a client downloads: the outputs container as collected, or a
//! packed copy of it for a client that reads packed tensors (§2.7), made
//! once per packing and kept beside it in the job directory (so a resumed
//! download gets the same bytes, and retention deletes it with the job).

use std::path::PathBuf;

use comfy_remote_contract::layout;
use comfy_remote_protocol::{Entry, Limits, PackOptions, Payload, Value};

use super::Engine;
use crate::error::WorkerError;
use crate::store::JobRow;

/// The file name of the result packed with `opts` (`result.crc` unpacked).
fn variant_name(opts: &PackOptions) -> String {
    let tag = opts.tag();
    if tag.is_empty() {
        layout::RESULT_FILE.to_owned()
    } else {
        format!("result.{tag}.{}", layout::CONTAINER_EXT)
    }
}

/// The result container of a job whose outputs the output sink kept: one
/// bytes entry per file, `(<node id>/<file name>, bytes)`.
fn kept_entries<'a>(files: impl Iterator<Item = (&'a String, &'a [u8])>) -> Vec<Entry<'a>> {
    files
        .map(|(name, bytes)| Entry {
            name: name.clone(),
            comfy_type: None,
            value: Value::Bytes(std::borrow::Cow::Borrowed(bytes)),
        })
        .collect()
}

/// The size of that container.
pub(super) fn kept_container_size(
    files: &[(String, &[u8])],
) -> Result<u64, comfy_remote_protocol::WriteError> {
    let entries = kept_entries(files.iter().map(|(n, b)| (n, *b)));
    comfy_remote_protocol::encode_to_writer(&Payload { entries }, &mut std::io::sink())
}

impl Engine {
    /// The result of job `row` for a client that reads `opts`: the stored
    /// container, or its packed copy (made now when it does not exist yet,
    /// on a blocking thread).
    pub async fn result_file(
        &self,
        row: &JobRow,
        opts: &PackOptions,
    ) -> Result<PathBuf, WorkerError> {
        let dir = self.job_dir(&row.id);
        let plain = self.container(row).await?;
        if opts.is_empty() {
            return Ok(plain);
        }
        let packed = dir.join(variant_name(opts));
        if tokio::fs::try_exists(&packed).await.unwrap_or(false) {
            return Ok(packed);
        }
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || -> Result<PathBuf, WorkerError> {
            let io = |what: &str, e: std::io::Error| WorkerError::io(what.to_owned(), e);
            let map = crate::fsutil::map(&plain).map_err(|e| io("reading the result", e))?;
            // Our own container: only sanity bounds apply.
            let limits = Limits {
                max_total_bytes: 1 << 40,
                ..Limits::default()
            };
            let payload = comfy_remote_protocol::decode(&map, &limits)
                .map_err(|e| WorkerError::Comfy(format!("the stored result is unreadable: {e}")))?;
            let tmp = packed.with_extension(format!("{}.tmp", std::process::id()));
            let file = std::fs::File::create(&tmp).map_err(|e| io("packing the result", e))?;
            let mut w = std::io::BufWriter::new(file);
            let written = comfy_remote_protocol::encode_to_writer_with(&payload, &mut w, &opts)
                .map_err(|e| WorkerError::Comfy(format!("packing the result: {e}")))
                .and_then(|_| {
                    std::io::Write::flush(&mut w).map_err(|e| io("packing the result", e))
                });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &packed).map_err(|e| io("packing the result", e))?;
            Ok(packed)
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?
    }

    /// The result container of job `row` as collected; for a prompt job
    /// whose outputs went to the output sink, made now from the files it
    /// kept (each a bytes entry `<node id>/<file name>`) and kept beside.
    async fn container(&self, row: &JobRow) -> Result<PathBuf, WorkerError> {
        let dir = self.job_dir(&row.id);
        let plain = layout::result_file(&dir);
        if tokio::fs::try_exists(&plain).await.unwrap_or(false) {
            return Ok(plain);
        }
        // Only a prompt job's outputs go to the sink.
        let Some(sink) = self.output_sink.get().filter(|_| row.own_graph) else {
            return Ok(plain);
        };
        let files = sink.files(&row.id).await?;
        tokio::task::spawn_blocking(move || -> Result<PathBuf, WorkerError> {
            let io = |e: std::io::Error| WorkerError::io("writing the result".to_owned(), e);
            let maps = files
                .iter()
                .map(|(_, path)| crate::fsutil::map(path))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io)?;
            let entries = kept_entries(files.iter().zip(&maps).map(|((n, _), m)| (n, &m[..])));
            // Its outputs were all kept: it has no directory yet.
            std::fs::create_dir_all(&dir).map_err(io)?;
            // A name of its own: two readers may make it at once.
            let tmp = dir.join(format!(
                "{}.{}.tmp",
                layout::RESULT_FILE,
                uuid::Uuid::new_v4()
            ));
            let written = (|| -> Result<(), WorkerError> {
                let file = std::fs::File::create(&tmp).map_err(io)?;
                let mut w = std::io::BufWriter::new(file);
                comfy_remote_protocol::encode_to_writer(&Payload { entries }, &mut w)
                    .map_err(|e| WorkerError::Comfy(format!("writing the result: {e}")))?;
                std::io::Write::flush(&mut w).map_err(io)?;
                std::fs::rename(&tmp, &plain).map_err(io)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map(|()| plain)
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?
    }

    /// Wait up to `secs` for job `id` to end; its row when it has.
    pub async fn wait_terminal(
        &self,
        id: &str,
        secs: u64,
    ) -> Result<Option<crate::store::JobRow>, WorkerError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        let Some(live) = self.live(id) else {
            return Ok(self.job(id).await?.filter(|r| r.status.is_terminal()));
        };
        let mut sub = live.subscribe(None).rx;
        loop {
            if live.is_done() {
                return Ok(self.job(id).await?.filter(|r| r.status.is_terminal()));
            }
            tokio::select! {
                r = sub.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
            }
        }
    }
}
