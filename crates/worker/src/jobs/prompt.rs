//! Jobs that run a graph of their own rather than the served workflow
//! (Comfy API v2 on a worker started with `--allow-any-workflow`):
//! admission (the graph and the list of files it reads, kept in the job's
//! record, and those files, kept in the spool, so the job survives a
//! restart), the files put into ComfyUI's input directory before the
//! prompt is queued, and the files the prompt wrote, read back from
//! ComfyUI into the output sink (or the job's result container).
//!
//! ```text
//! jobs.prompt                    {prompt, uploads: [{subfolder, filename, file}]}: the API-format
//!                                graph to queue and what goes into ComfyUI's input directory
//! <spool>/inputs/<job id>.<n>    those files' bytes (`file`), until the job ends
//! <job dir>/files/<n>            the prompt's larger output files, while they are collected
//! <job dir>/result.crc           one entry per output file: `<node id>/<file name>` (bytes), or a node's text;
//!                                only without an output sink (`super::sink`), when the outputs were
//!                                too large to hold, or once a protocol v1 client asked for it
//! ```
//!
//! Each file or directory made is work for the file system on every job,
//! so a job makes few: its record says what it runs, its input files are
//! hard links in one directory, and outputs up to [`HELD_OUTPUT_BYTES`] in
//! all are held in memory until they are kept (`files/`, and the job's
//! directory, are made only for what is larger). A spool written before
//! the record held the graph kept it in the job's directory
//! (`prompt-job.json`, or older, `prompt.json` and `uploads.json`, with
//! the files in `uploads/`); [`Engine::adopt_spooled_prompts`] moves such
//! jobs into the record when the worker starts.

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

/// What a prompt job ran, in a spool written before its record held it.
const OLD_JOB_FILE: &str = "prompt-job.json";
/// The same, older: the graph, and the list of files beside it (absent: none).
const OLDER_PROMPT_FILE: &str = "prompt.json";
const OLDER_UPLOADS_FILE: &str = "uploads.json";
/// The files of such a job, in its directory.
const OLD_UPLOADS_DIR: &str = "uploads";
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
    /// Where its bytes are now (hard-linked, else copied, into the spool).
    pub source: PathBuf,
    pub subfolder: String,
    pub filename: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct UploadEntry {
    subfolder: String,
    filename: String,
    /// Its name in the spool's `inputs/` (in a job's `uploads/`, in a
    /// spool of an earlier version).
    file: String,
}

/// What a prompt job runs (its record, `jobs.prompt`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OwnPrompt {
    pub prompt: Json,
    #[serde(default)]
    uploads: Vec<UploadEntry>,
}

impl OwnPrompt {
    /// Remove the files it read, kept in `inputs` (by name: the directory
    /// is not listed); blocking.
    fn remove_inputs(&self, inputs: &Path) {
        for u in &self.uploads {
            let _ = std::fs::remove_file(inputs.join(&u.file));
        }
    }
}

/// A prompt job of this process, held in memory until it ends (so its
/// graph is not read back from the store to run it).
#[derive(Debug)]
pub(crate) struct HeldPrompt {
    own: Arc<OwnPrompt>,
    extra_data: Option<Json>,
}

impl HeldPrompt {
    /// Remove the files its job kept for the run; blocking.
    pub(super) fn cleanup(&self, inputs: &Path) {
        self.own.remove_inputs(inputs);
    }

    /// Its graph reads files.
    pub(super) fn reads_files(&self) -> bool {
        !self.own.uploads.is_empty()
    }
}

/// A file of a job directory; `None` when there is none.
fn read_if_there(path: &Path, what: &str) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading the job's {what}: {e}")),
    }
}

/// What the job in `dir` runs, when a spool of an earlier version kept
/// its graph in its directory.
fn read_spooled_prompt(dir: &Path) -> Result<Option<OwnPrompt>, String> {
    if let Some(bytes) = read_if_there(&dir.join(OLD_JOB_FILE), "graph")? {
        return serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let Some(text) = read_if_there(&dir.join(OLDER_PROMPT_FILE), "graph")? else {
        return Ok(None);
    };
    let prompt = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let uploads = match read_if_there(&dir.join(OLDER_UPLOADS_FILE), "file list")? {
        Some(u) => serde_json::from_slice(&u).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    Ok(Some(OwnPrompt { prompt, uploads }))
}

/// Move what the job `id` in `dir` runs, kept there by a spool of an
/// earlier version, to the form of today: its files into `inputs`, its
/// record (returned) to be stored. `None`: a job of the served workflow.
fn adopt_spooled(id: &str, dir: &Path, inputs: &Path) -> Result<Option<String>, String> {
    let Some(mut own) = read_spooled_prompt(dir)? else {
        return Ok(None);
    };
    for u in &mut own.uploads {
        let name = format!("{id}.{}", u.file);
        let from = dir.join(OLD_UPLOADS_DIR).join(&u.file);
        match std::fs::rename(&from, inputs.join(&name)) {
            Ok(()) => {}
            // The job ended: its files were removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("moving {}: {e}", from.display())),
        }
        u.file = name;
    }
    serde_json::to_string(&own)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The spooled files [`adopt_spooled`] made redundant once the record is stored.
fn drop_spooled(dir: &Path) {
    for f in [OLD_JOB_FILE, OLDER_PROMPT_FILE, OLDER_UPLOADS_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join(OLD_UPLOADS_DIR));
}

impl Engine {
    /// Admit a job that runs `job.prompt`: the limit on unfinished jobs,
    /// then its files and record. ComfyUI validates the graph when it is
    /// queued (a refusal fails the job with `validation_failed`).
    pub async fn submit_prompt(&self, job: PromptJob) -> Result<JobRow, SubmitError> {
        self.check_capacity(false).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let prompt = Json::Object(job.prompt);
        let text = serde_json::to_vec(&prompt).map_err(internal)?;
        let sha = hex::encode(Sha256::digest(&text));
        let inputs = self.inputs_dir();
        let (files, bytes) = if job.uploads.is_empty() {
            (Vec::new(), 0)
        } else {
            let (uploads, name, dir) = (job.uploads, id.clone(), inputs.clone());
            tokio::task::spawn_blocking(move || keep_inputs(&name, &uploads, &dir))
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let own = Arc::new(OwnPrompt {
            prompt,
            uploads: files,
        });
        let record = match serde_json::to_string(&*own) {
            Ok(r) => r,
            Err(e) => {
                own.remove_inputs(&inputs);
                return Err(internal(e));
            }
        };
        let total = text.len() as u64 + bytes;
        let new = NewJob {
            id: id.clone(),
            retryable: job.retryable,
            idempotency_key: None,
            body_sha256: sha,
            input_bytes: total as i64,
            prompt: Some(record),
        };
        // Held before its row is stored: the dispatcher may claim the job
        // as soon as the row is there.
        let held = HeldPrompt {
            own: own.clone(),
            extra_data: job.extra_data,
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(held));
        let refused = match self.store.run(move |s| s.insert(&new)).await {
            Ok(Inserted::New(row)) => {
                tracing::info!(job = %id, bytes = total, "job accepted (its own graph)");
                self.accepted(&row).await;
                return Ok(row);
            }
            Ok(_) => internal("a new job id was taken"),
            Err(e) => internal(e),
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        own.remove_inputs(&inputs);
        Err(refused)
    }

    /// The graph of prompt job `row` (`Ok(None)` for a job of the served
    /// workflow), held since it was accepted or since the worker started.
    pub(super) fn own_prompt(&self, row: &JobRow) -> Result<Option<Arc<OwnPrompt>>, String> {
        match self.held_prompt(&row.id) {
            Some(h) => Ok(Some(h.own.clone())),
            None if row.own_graph => Err("the job's graph could not be read back".to_owned()),
            None => Ok(None),
        }
    }

    /// Hold the graphs of the prompt jobs a restart left unfinished, and
    /// remove the input files of any other job (one that ended while the
    /// worker stopped); at start, before serving, after the store's
    /// recovery.
    pub(super) fn hold_unfinished_prompts(&self) -> Result<(), crate::error::WorkerError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (id, record) in self.store.unfinished_prompts()? {
            match serde_json::from_str::<OwnPrompt>(&record) {
                Ok(own) => {
                    let h = HeldPrompt {
                        own: Arc::new(own),
                        extra_data: None,
                    };
                    held.insert(id, Arc::new(h));
                }
                Err(e) => tracing::error!(job = %id, "reading the job's graph: {e}"),
            }
        }
        let keep: HashSet<&str> = held
            .values()
            .flat_map(|h| h.own.uploads.iter().map(|u| u.file.as_str()))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.inputs_dir()) {
            for e in rd.flatten() {
                if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Move the prompt jobs a spool of an earlier version kept in their
    /// directories into their records (at start, before serving).
    pub(super) fn adopt_spooled_prompts(
        &self,
        known: &HashSet<String>,
    ) -> Result<(), crate::error::WorkerError> {
        let Ok(rd) = std::fs::read_dir(self.config.spool_dir.join("jobs")) else {
            return Ok(());
        };
        let inputs = self.inputs_dir();
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&id) {
                continue;
            }
            let dir = e.path();
            match adopt_spooled(&id, &dir, &inputs) {
                Ok(Some(record)) => {
                    self.store.set_own_prompt(&id, &record)?;
                    drop_spooled(&dir);
                }
                Ok(None) => {}
                Err(msg) => tracing::warn!(job = %id, "reading a spooled graph: {msg}"),
            }
        }
        Ok(())
    }

    fn held_prompt(&self, id: &str) -> Option<Arc<HeldPrompt>> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Put a prompt job's files into ComfyUI's input directory.
    pub(super) async fn place_uploads(&self, own: &OwnPrompt) -> Result<(), String> {
        let generation = *self.comfy.generation.borrow();
        let inputs = self.inputs_dir();
        for u in &own.uploads {
            let path = inputs.join(&u.file);
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
    // A job whose outputs are all held has no directory yet.
    let written = std::fs::create_dir_all(dir)
        .map_err(comfy_remote_protocol::WriteError::from)
        .and_then(|()| super::collect::write_container(dir, entries));
    // Only larger outputs were spilled to `files/`.
    let spilled = maps.iter().any(Option::is_some);
    drop(maps);
    if spilled {
        let _ = std::fs::remove_dir_all(dir.join(FILES_DIR));
    }
    written.map_err(super::outcome::internal_error)
}

/// What a finished prompt job left in its directory that only served
/// the run (outputs spilled by a collection that failed).
pub(super) fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(FILES_DIR));
}

/// Keep `uploads` for job `id` in `inputs`: hard links (they cost nothing
/// and keep the bytes when the asset expires), else copies. Their entries
/// and their size in all; blocking.
fn keep_inputs(
    id: &str,
    uploads: &[Upload],
    inputs: &Path,
) -> std::io::Result<(Vec<UploadEntry>, u64)> {
    let mut entries: Vec<UploadEntry> = Vec::with_capacity(uploads.len());
    let mut total = 0;
    let kept = (|| {
        for (i, u) in uploads.iter().enumerate() {
            let file = format!("{id}.{i}");
            let dest = inputs.join(&file);
            if std::fs::hard_link(&u.source, &dest).is_err() {
                std::fs::copy(&u.source, &dest)?;
            }
            entries.push(UploadEntry {
                subfolder: u.subfolder.clone(),
                filename: u.filename.clone(),
                file,
            });
            total += std::fs::metadata(&dest)?.len();
        }
        Ok(())
    })();
    match kept {
        Ok(()) => Ok((entries, total)),
        Err(e) => {
            for u in &entries {
                let _ = std::fs::remove_file(inputs.join(&u.file));
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_graph_of_either_earlier_form_moves_into_the_record_with_its_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (dir, inputs) = (tmp.path().join("job"), tmp.path().join("inputs"));
        std::fs::create_dir_all(dir.join(OLD_UPLOADS_DIR)).expect("dirs");
        std::fs::create_dir_all(&inputs).expect("inputs");
        assert!(
            adopt_spooled("j", &dir, &inputs).expect("read").is_none(),
            "a job of the served workflow"
        );

        // The oldest form: the graph, and the list beside it.
        std::fs::write(
            dir.join(OLDER_PROMPT_FILE),
            br#"{"1": {"class_type": "A", "inputs": {}}}"#,
        )
        .expect("graph");
        std::fs::write(
            dir.join(OLDER_UPLOADS_FILE),
            br#"[{"subfolder": "s", "filename": "f.png", "file": "0"}]"#,
        )
        .expect("list");
        std::fs::write(dir.join(OLD_UPLOADS_DIR).join("0"), b"png bytes").expect("file");
        let record = adopt_spooled("j", &dir, &inputs)
            .expect("adopt")
            .expect("a prompt job");
        let own: OwnPrompt = serde_json::from_str(&record).expect("record");
        assert_eq!(own.prompt["1"]["class_type"], "A");
        assert_eq!(
            (
                own.uploads[0].filename.as_str(),
                own.uploads[0].file.as_str()
            ),
            ("f.png", "j.0")
        );
        assert_eq!(
            std::fs::read(inputs.join("j.0")).expect("moved"),
            b"png bytes"
        );
        drop_spooled(&dir);
        assert!(adopt_spooled("j", &dir, &inputs).expect("read").is_none());
        assert!(!dir.join(OLD_UPLOADS_DIR).exists());

        // The later form: one file. A job that ended has no files left.
        let later = OwnPrompt {
            prompt: serde_json::json!({"2": {"class_type": "B", "inputs": {}}}),
            uploads: vec![UploadEntry {
                subfolder: "s".into(),
                filename: "g.png".into(),
                file: "0".into(),
            }],
        };
        std::fs::write(
            dir.join(OLD_JOB_FILE),
            serde_json::to_vec(&later).expect("json"),
        )
        .expect("job");
        let record = adopt_spooled("k", &dir, &inputs)
            .expect("adopt")
            .expect("a prompt job");
        let own: OwnPrompt = serde_json::from_str(&record).expect("record");
        assert_eq!(own.prompt["2"]["class_type"], "B");
        assert_eq!(own.uploads[0].file, "k.0");
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
