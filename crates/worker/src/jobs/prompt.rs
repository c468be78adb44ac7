//! Jobs that run a graph of their own rather than the served workflow
//! (Comfy API v2 on a worker started with `--allow-any-workflow`):
//! admission (the graph and the files it reads, kept in the job directory
//! so the job survives a restart), the files put into ComfyUI's input
//! directory before the prompt is queued, and the files the prompt wrote,
//! read back from ComfyUI into the job's result container.
//!
//! ```text
//! <job dir>/prompt-job.json     {prompt, uploads: [{subfolder, filename, file}]}: the API-format
//!                               graph to queue and what goes into ComfyUI's input directory
//! <job dir>/uploads/<file>      those files' bytes
//! <job dir>/files/<n>           the prompt's larger output files, while they are collected
//! <job dir>/result.crc          one entry per output file: `<node id>/<file name>` (bytes), or a node's text;
//!                               only without an output sink (`super::sink`), when the outputs were
//!                               too large to hold, or once a protocol v1 client asked for it
//! ```
//!
//! Each file made is work for the file system on every job, so a job makes
//! few: one file says what it runs, a graph that reads no files has no
//! `uploads/`, and outputs up to [`HELD_OUTPUT_BYTES`] in all are held in
//! memory until the result container is written (`files/` holds only what
//! is larger). A spool written before `prompt-job.json` holds the graph in
//! `prompt.json` and the list in `uploads.json`; such jobs are still read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use comfy_remote_protocol::api::{ErrorCode, ErrorInfo, ValueInfo};
use comfy_remote_protocol::v2::outputs::{node_file_entry, split, Naming};
use comfy_remote_protocol::{Entry, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::admission::{internal, SubmitError};
use super::Engine;
use crate::store::{Inserted, JobRow, NewJob};

/// How often and how many times the history of a prompt that ended is
/// asked for before it is there (ComfyUI stores it after the end event).
const HISTORY_POLL: std::time::Duration = std::time::Duration::from_millis(20);
const HISTORY_TRIES: u32 = 250;

/// What a prompt job runs: its graph and the files it reads.
const JOB_FILE: &str = "prompt-job.json";
/// The same, in a spool written before [`JOB_FILE`]: the graph, and the
/// list of files beside it (absent: none).
const OLD_PROMPT_FILE: &str = "prompt.json";
const OLD_UPLOADS_FILE: &str = "uploads.json";
const UPLOADS_DIR: &str = "uploads";
const FILES_DIR: &str = "files";

/// Output bytes a prompt job holds in memory while it collects them; past
/// this, each further file is written to `files/` and mapped back.
const HELD_OUTPUT_BYTES: usize = 8 << 20;

/// A job that runs `prompt` (API format).
#[derive(Debug, Clone)]
pub struct PromptJob {
    pub prompt: Map<String, Json>,
    /// Files the graph reads from ComfyUI's input directory.
    pub uploads: Vec<Upload>,
    /// Run again from the start after a worker restart.
    pub retryable: bool,
    /// ComfyUI's per-prompt `extra_data`, kept in memory only: a job run
    /// again after a restart runs without it.
    pub extra_data: Option<Json>,
}

/// A file placed into ComfyUI's input directory as `subfolder/filename`.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Where its bytes are now (hard-linked, else copied, into the job).
    pub source: PathBuf,
    pub subfolder: String,
    pub filename: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct UploadEntry {
    subfolder: String,
    filename: String,
    file: String,
}

/// What a prompt job's directory says it runs ([`JOB_FILE`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OwnPrompt {
    pub prompt: Json,
    #[serde(default)]
    uploads: Vec<UploadEntry>,
}

/// A prompt job of this process, held in memory until it ends (so its
/// graph is not read back from its directory to run it).
#[derive(Debug)]
pub(crate) struct HeldPrompt {
    own: Arc<OwnPrompt>,
    extra_data: Option<Json>,
}

impl HeldPrompt {
    /// Remove the files its job kept for the run (those of `uploads/`, by
    /// name: the directory is not listed); blocking.
    pub(super) fn cleanup(&self, dir: &Path) {
        if self.own.uploads.is_empty() {
            return;
        }
        let uploads = dir.join(UPLOADS_DIR);
        for u in &self.own.uploads {
            let _ = std::fs::remove_file(uploads.join(&u.file));
        }
        let _ = std::fs::remove_dir(&uploads);
    }

    /// Its graph reads files (kept in the job's `uploads/`).
    pub(super) fn reads_files(&self) -> bool {
        !self.own.uploads.is_empty()
    }
}

/// Does the job in `dir` run a graph of its own?
pub fn is_prompt_job(dir: &Path) -> bool {
    dir.join(JOB_FILE).is_file() || dir.join(OLD_PROMPT_FILE).is_file()
}

/// A file of a job directory; `None` when there is none.
fn read_if_there(path: &Path, what: &str) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading the job's {what}: {e}")),
    }
}

/// What the job in `dir` runs, when it runs a graph of its own.
fn read_own_prompt(dir: &Path) -> Result<Option<OwnPrompt>, String> {
    if let Some(bytes) = read_if_there(&dir.join(JOB_FILE), "graph")? {
        return serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let Some(text) = read_if_there(&dir.join(OLD_PROMPT_FILE), "graph")? else {
        return Ok(None);
    };
    let prompt = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let uploads = match read_if_there(&dir.join(OLD_UPLOADS_FILE), "file list")? {
        Some(u) => serde_json::from_slice(&u).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    Ok(Some(OwnPrompt { prompt, uploads }))
}

impl Engine {
    /// Admit a job that runs `job.prompt`: the limit on unfinished jobs,
    /// then its directory and record. ComfyUI validates the graph when it
    /// is queued (a refusal fails the job with `validation_failed`).
    pub async fn submit_prompt(&self, job: PromptJob) -> Result<JobRow, SubmitError> {
        self.check_capacity(false).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.job_dir(&id);
        let prompt = Json::Object(job.prompt);
        let text = serde_json::to_vec(&prompt).map_err(internal)?;
        let sha = hex::encode(Sha256::digest(&text));
        let uploads = job.uploads;
        let d = dir.clone();
        let stored = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, OwnPrompt)> {
            let mut total = text.len() as u64;
            if uploads.is_empty() {
                std::fs::create_dir_all(&d)?;
            } else {
                std::fs::create_dir_all(d.join(UPLOADS_DIR))?;
            }
            let mut entries = Vec::with_capacity(uploads.len());
            for (i, u) in uploads.iter().enumerate() {
                let file = i.to_string();
                let dest = d.join(UPLOADS_DIR).join(&file);
                // A hard link costs nothing and keeps the bytes when the asset expires.
                if std::fs::hard_link(&u.source, &dest).is_err() {
                    std::fs::copy(&u.source, &dest)?;
                }
                total += std::fs::metadata(&dest)?.len();
                entries.push(UploadEntry {
                    subfolder: u.subfolder.clone(),
                    filename: u.filename.clone(),
                    file,
                });
            }
            // Last: a directory that says what it runs is complete.
            let own = OwnPrompt {
                prompt,
                uploads: entries,
            };
            std::fs::write(d.join(JOB_FILE), serde_json::to_vec(&own)?)?;
            Ok((total, own))
        })
        .await
        .map_err(internal)?;
        let (total, own) = match stored {
            Ok(t) => t,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(internal(e));
            }
        };
        let new = NewJob {
            id: id.clone(),
            retryable: job.retryable,
            idempotency_key: None,
            body_sha256: sha,
            input_bytes: total as i64,
        };
        match self.store.run(move |s| s.insert(&new)).await {
            Ok(Inserted::New(row)) => {
                let held = HeldPrompt {
                    own: Arc::new(own),
                    extra_data: job.extra_data,
                };
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), Arc::new(held));
                tracing::info!(job = %id, bytes = total, "job accepted (its own graph)");
                self.accepted(&row).await;
                Ok(row)
            }
            Ok(_) => Err(internal("a new job id was taken")),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(internal(e))
            }
        }
    }

    /// The graph of prompt job `id` (`Ok(None)` for a job of the served
    /// workflow): held since it was accepted, else (accepted before a
    /// restart) read from its directory.
    pub(super) async fn own_prompt(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<Option<Arc<OwnPrompt>>, String> {
        if let Some(h) = self.held_prompt(id) {
            return Ok(Some(h.own.clone()));
        }
        let d = dir.to_path_buf();
        let read = tokio::task::spawn_blocking(move || read_own_prompt(&d))
            .await
            .map_err(|e| e.to_string())?;
        read.map(|own| own.map(Arc::new))
    }

    /// Does job `id` run a graph of its own?
    pub(super) fn runs_own_graph(&self, id: &str, dir: &Path) -> bool {
        self.held_prompt(id).is_some() || is_prompt_job(dir)
    }

    fn held_prompt(&self, id: &str) -> Option<Arc<HeldPrompt>> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Put a prompt job's files into ComfyUI's input directory.
    pub(super) async fn place_uploads(&self, dir: &Path, own: &OwnPrompt) -> Result<(), String> {
        let generation = *self.comfy.generation.borrow();
        for u in &own.uploads {
            let path = dir.join(UPLOADS_DIR).join(&u.file);
            // Files are named by their content's hash: one ComfyUI already
            // has is not written again (a prompt of an earlier job may be
            // reading it right now). What this ComfyUI process was given is
            // remembered; after a restart, ComfyUI is asked.
            let key = format!("{}/{}", u.subfolder, u.filename);
            if self.was_placed(generation, &key) {
                continue;
            }
            let size = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
            if size.is_some()
                && self
                    .comfy
                    .client
                    .input_size(&u.subfolder, &u.filename)
                    .await
                    == size
            {
                self.mark_placed(generation, key);
                continue;
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("reading the job's file {}: {e}", u.filename))?;
            self.comfy
                .client
                .upload_input(&u.subfolder, &u.filename, bytes)
                .await
                .map_err(|e| e.to_string())?;
            self.mark_placed(generation, key);
        }
        Ok(())
    }

    /// A prompt's history. ComfyUI records it just after it reports the
    /// prompt's success: it is asked for again until it is there.
    async fn prompt_history(
        &self,
        prompt_id: &str,
        fail: &impl Fn(String) -> ErrorInfo,
    ) -> Result<Json, ErrorInfo> {
        let mut history = None;
        for _ in 0..HISTORY_TRIES {
            history = self
                .comfy
                .client
                .history(prompt_id)
                .await
                .map_err(|e| fail(format!("reading the prompt's outputs from ComfyUI: {e}")))?;
            if history.is_some() {
                break;
            }
            tokio::time::sleep(HISTORY_POLL).await;
        }
        history.ok_or_else(|| {
            fail("ComfyUI kept no history of the prompt, so its outputs are unknown".to_owned())
        })
    }

    fn was_placed(&self, generation: u64, key: &str) -> bool {
        let placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed.0 == generation && placed.1.contains(key)
    }

    fn mark_placed(&self, generation: u64, key: String) {
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        if placed.0 != generation {
            *placed = (generation, Default::default());
        }
        placed.1.insert(key);
    }

    /// The partner-node `extra_data` a job was submitted with (memory only).
    pub(super) fn extra_data(&self, id: &str) -> Option<Json> {
        self.held_prompt(id)?.extra_data.clone()
    }

    /// Read back the files a succeeded prompt wrote into the job's result
    /// container: those its nodes showed (`shown`: `{node id: output}`,
    /// as in ComfyUI's history), else those its history names.
    pub(super) async fn collect_prompt_outputs(
        &self,
        id: &str,
        prompt_id: &str,
        shown: Option<Json>,
        dir: &Path,
    ) -> Result<(Vec<ValueInfo>, u64), ErrorInfo> {
        let fail = |message: String| ErrorInfo {
            code: ErrorCode::ExecutionFailed,
            message,
            details: Json::Null,
        };
        let history = match shown {
            Some(outputs) => serde_json::json!({ "outputs": outputs }),
            None => self.prompt_history(prompt_id, &fail).await?,
        };
        let files_dir = dir.join(FILES_DIR);
        let mut held = 0usize;
        // (entry name, what it holds)
        let mut collected: Vec<(String, Collected)> = Vec::new();
        let mut names = HashSet::new();
        let mut unique = |base: String| {
            let mut name = base.clone();
            let mut n = 1;
            while !names.insert(name.clone()) {
                n += 1;
                name = format!("{base} ({n})");
            }
            name
        };
        let empty = Map::new();
        let outputs = history
            .get("outputs")
            .and_then(Json::as_object)
            .unwrap_or(&empty);
        for (node_id, out) in outputs {
            let Some(out) = out.as_object() else { continue };
            for (key, items) in out {
                let Some(items) = items.as_array() else {
                    continue;
                };
                for item in items {
                    if let Some(filename) = item.get("filename").and_then(Json::as_str) {
                        let s = |k: &str, d: &'static str| {
                            item.get(k).and_then(Json::as_str).unwrap_or(d).to_owned()
                        };
                        let (sub, kind) = (s("subfolder", ""), s("type", "output"));
                        let bytes = self
                            .comfy
                            .client
                            .view(filename, &sub, &kind)
                            .await
                            .map_err(|e| {
                                fail(format!(
                                    "reading output {filename:?} of node {node_id}: {e}"
                                ))
                            })?;
                        let held_now = held + bytes.len();
                        let kept = if held_now <= HELD_OUTPUT_BYTES {
                            held = held_now;
                            Collected::Held(bytes)
                        } else {
                            let path = files_dir.join(collected.len().to_string());
                            tokio::fs::create_dir_all(&files_dir)
                                .await
                                .map_err(super::outcome::internal_error)?;
                            tokio::fs::write(&path, &bytes)
                                .await
                                .map_err(super::outcome::internal_error)?;
                            Collected::File(path)
                        };
                        let base = filename.rsplit('/').next().unwrap_or(filename);
                        collected.push((unique(node_file_entry(node_id, base)), kept));
                    } else if let (Some(text), "text") = (item.as_str(), key.as_str()) {
                        collected.push((
                            unique(node_file_entry(node_id, "text")),
                            Collected::Text(text.to_owned()),
                        ));
                    }
                }
            }
        }
        let collected = match self.keep_in_sink(id, collected).await {
            Ok(kept) => return Ok(kept),
            Err(c) => c,
        };
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || write_result(&d, collected))
            .await
            .map_err(super::outcome::internal_error)?
    }

    /// Give a job's outputs to the output sink, when there is one and they
    /// are all in memory: the outputs' names and types and their size.
    /// `Err` hands them back, to be written as the result container.
    async fn keep_in_sink(
        &self,
        id: &str,
        collected: Vec<(String, Collected)>,
    ) -> Result<(Vec<ValueInfo>, u64), Vec<(String, Collected)>> {
        let Some(sink) = self.output_sink.get() else {
            return Err(collected);
        };
        let entries: Option<Vec<Entry<'_>>> = collected
            .iter()
            .map(|(name, c)| {
                let value = match c {
                    Collected::Held(b) => Value::Bytes(std::borrow::Cow::Borrowed(&b[..])),
                    Collected::Text(t) => Value::Str(t.clone()),
                    Collected::File(_) => return None,
                };
                Some(Entry {
                    name: name.clone(),
                    comfy_type: None,
                    value,
                })
            })
            .collect();
        let Some(entries) = entries else {
            return Err(collected);
        };
        let infos = super::collect::infos_of(&entries);
        let payload = comfy_remote_protocol::Payload { entries };
        let files = match split(&payload, Naming::NodeFiles) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(job = %id, "splitting the outputs into files: {e}");
                return Err(collected);
            }
        };
        drop(payload);
        // The size of the container a v1 client gets ([`super::results`]).
        let kept: Vec<_> = files
            .iter()
            .map(|f| (node_file_entry(&f.node_id, &f.name), &f.bytes[..]))
            .collect();
        let size = match super::results::kept_container_size(&kept) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(job = %id, "sizing the outputs: {e}");
                return Err(collected);
            }
        };
        drop(kept);
        match sink.keep(id, files).await {
            Ok(()) => Ok((infos, size)),
            Err(e) => {
                tracing::warn!(job = %id, "keeping the outputs as assets: {e}");
                Err(collected)
            }
        }
    }
}

enum Collected {
    /// Bytes held in memory.
    Held(bytes::Bytes),
    /// A file in `files/`.
    File(PathBuf),
    Text(String),
}

/// The result container of a prompt job: its files as bytes (the larger
/// ones mapped, so they are streamed into the container, never held).
fn write_result(
    dir: &Path,
    collected: Vec<(String, Collected)>,
) -> Result<(Vec<ValueInfo>, u64), ErrorInfo> {
    let maps = collected
        .iter()
        .map(|(_, c)| match c {
            Collected::File(p) => crate::fsutil::map(p).map(Some),
            Collected::Held(_) | Collected::Text(_) => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(super::outcome::internal_error)?;
    let entries: Vec<Entry<'_>> = collected
        .iter()
        .zip(&maps)
        .map(|((name, c), map)| Entry {
            name: name.clone(),
            comfy_type: None,
            value: match (c, map) {
                (Collected::Text(t), _) => Value::Str(t.clone()),
                (Collected::Held(b), _) => Value::Bytes(std::borrow::Cow::Borrowed(&b[..])),
                (_, Some(m)) => Value::Bytes(std::borrow::Cow::Borrowed(&m[..])),
                (_, None) => Value::None,
            },
        })
        .collect();
    let written = super::collect::write_container(dir, entries);
    // Only larger outputs were spilled to `files/`.
    let spilled = maps.iter().any(Option::is_some);
    drop(maps);
    if spilled {
        let _ = std::fs::remove_dir_all(dir.join(FILES_DIR));
    }
    written.map_err(super::outcome::internal_error)
}

/// A finished prompt job's files that only served the run.
pub(super) fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(UPLOADS_DIR));
    let _ = std::fs::remove_dir_all(dir.join(FILES_DIR));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_directory_says_what_it_runs_in_one_file_and_an_older_spools_two_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        assert!(
            read_own_prompt(d).expect("read").is_none(),
            "a job of the served workflow"
        );
        assert!(!is_prompt_job(d));

        // A spool of an earlier version: the graph, and the list beside it.
        std::fs::write(
            d.join(OLD_PROMPT_FILE),
            br#"{"1": {"class_type": "A", "inputs": {}}}"#,
        )
        .expect("graph");
        let own = read_own_prompt(d).expect("read").expect("a prompt job");
        assert!(own.uploads.is_empty() && own.prompt["1"]["class_type"] == "A");
        std::fs::write(
            d.join(OLD_UPLOADS_FILE),
            br#"[{"subfolder": "s", "filename": "f.png", "file": "0"}]"#,
        )
        .expect("list");
        let own = read_own_prompt(d).expect("read").expect("a prompt job");
        assert_eq!(own.uploads[0].filename, "f.png");
        assert!(is_prompt_job(d));

        // Today's: one file, which wins.
        let now = OwnPrompt {
            prompt: serde_json::json!({"2": {"class_type": "B", "inputs": {}}}),
            uploads: vec![],
        };
        std::fs::write(d.join(JOB_FILE), serde_json::to_vec(&now).expect("json")).expect("job");
        let own = read_own_prompt(d).expect("read").expect("a prompt job");
        assert!(own.uploads.is_empty() && own.prompt["2"]["class_type"] == "B");
    }

    #[test]
    fn held_and_spilled_outputs_and_text_make_one_container_and_leave_no_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = dir.path().join(FILES_DIR);
        std::fs::create_dir_all(&files).expect("files dir");
        std::fs::write(files.join("1"), b"large bytes").expect("spilled");
        let collected = vec![
            (
                "9/a.png".to_owned(),
                Collected::Held(bytes::Bytes::from_static(b"held")),
            ),
            ("9/b.png".to_owned(), Collected::File(files.join("1"))),
            ("4/text".to_owned(), Collected::Text("hello".into())),
        ];
        let (infos, size) = write_result(dir.path(), collected).expect("written");
        let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["9/a.png", "9/b.png", "4/text"]);
        let path = comfy_remote_contract::layout::result_file(dir.path());
        let bytes = std::fs::read(&path).expect("result");
        assert_eq!(bytes.len() as u64, size);
        let payload =
            comfy_remote_protocol::decode(&bytes, &comfy_remote_protocol::Limits::default())
                .expect("decode");
        let values: Vec<_> = payload.entries.iter().map(|e| e.value.clone()).collect();
        assert_eq!(
            values,
            [
                Value::Bytes(b"held".as_slice().into()),
                Value::Bytes(b"large bytes".as_slice().into()),
                Value::Str("hello".into()),
            ]
        );
        assert!(
            !files.exists(),
            "files/ is removed once the container is written"
        );
    }
}
