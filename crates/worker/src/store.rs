//! The durable job table (embedded SQLite, WAL): submit, claim, finish,
//! recovery after a restart, and retention.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use comfy_remote_protocol::api::{ErrorCode, ErrorInfo, JobStatus, ValueInfo};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::WorkerError;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One row of the job table.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Queue order.
    pub seq: i64,
    pub id: String,
    pub status: JobStatus,
    pub retryable: bool,
    pub idempotency_key: Option<String>,
    pub body_sha256: String,
    pub input_bytes: i64,
    pub result_bytes: Option<i64>,
    pub error: Option<ErrorInfo>,
    pub outputs: Vec<ValueInfo>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// It runs a graph of its own (its record holds it: [`NewJob::prompt`]).
    pub own_graph: bool,
    /// A waiting job's place in the queue, when it was read with the row
    /// (`Engine::job`); never stored.
    pub queue_position: Option<u64>,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub retryable: bool,
    pub idempotency_key: Option<String>,
    pub body_sha256: String,
    pub input_bytes: i64,
    /// The graph of its own it runs, and what it reads (JSON; see
    /// `jobs::prompt`); `None` for a job of the served workflow.
    pub prompt: Option<String>,
}

/// Result of an insert with an idempotency key.
#[derive(Debug)]
pub enum Inserted {
    New(JobRow),
    /// Same key, same body: the job submitted before.
    Existing(JobRow),
    /// Same key, different body.
    Conflict(JobRow),
}

/// What recovery did at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub requeued: usize,
    pub failed: usize,
}

/// The job store. One connection behind a mutex: every statement is short.
#[derive(Debug)]
pub struct Store {
    db: Db,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL,
  retryable INTEGER NOT NULL DEFAULT 0,
  idempotency_key TEXT UNIQUE,
  body_sha256 TEXT NOT NULL,
  input_bytes INTEGER NOT NULL DEFAULT 0,
  result_bytes INTEGER,
  error TEXT,
  outputs TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  started_at INTEGER,
  finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
";

/// Columns added after the first release: (name, definition). Added to an
/// existing database when it is opened.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    // 1 once retention deleted the job's files (the sweep skips it then).
    ("files_dropped", "INTEGER NOT NULL DEFAULT 0"),
    // What a job that runs a graph of its own runs (`NewJob::prompt`).
    ("prompt", "TEXT"),
];

/// Columns of earlier releases that nothing reads any more; dropped from an
/// existing database when it is opened.
const DROPPED_COLUMNS: &[&str] = &["attempts", "prompt_id", "owner", "lease_until"];

const COLUMNS: &str = "seq, id, status, retryable, idempotency_key, body_sha256, \
     input_bytes, result_bytes, error, outputs, created_at, updated_at, started_at, finished_at, \
     prompt IS NOT NULL";

fn row_to_job(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    let status: String = r.get(2)?;
    let error: Option<String> = r.get(8)?;
    let outputs: Option<String> = r.get(9)?;
    Ok(JobRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        retryable: r.get::<_, i64>(3)? != 0,
        idempotency_key: r.get(4)?,
        body_sha256: r.get(5)?,
        input_bytes: r.get(6)?,
        result_bytes: r.get(7)?,
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        outputs: outputs
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default(),
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
        own_graph: r.get(14)?,
        queue_position: None,
    })
}

/// Statements a connection keeps prepared (more than either store has).
const STATEMENT_CACHE: usize = 64;

/// A SQLite database of the worker's (the job store, the v2 store): every
/// one opened with the same durability settings (WAL; synced at
/// checkpoints, so a committed row survives a crash of the process) and
/// `schema` applied.
pub(crate) fn open_connection(path: &Path, schema: &str) -> Result<Connection, WorkerError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The worker is its database's only user (one connection, one
    // process): no file lock is taken and released on every transaction,
    // and a second worker started on the same spool is refused.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Checkpoints (which write the database file and sync it) run on a
    // blocking thread every CHECKPOINT_EVERY writes ([`write`]), never in
    // a statement run on the async runtime.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Every statement is prepared once per connection and reused.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// Writes between two checkpoints of a database's write-ahead log (about
/// what SQLite's own default of 1000 pages holds).
const CHECKPOINT_EVERY: u32 = 256;

/// One SQLite connection behind a lock (every statement is short). The
/// lock is reentrant, so a trip that holds it (see [`here`]) runs the
/// store's methods, which take it again, on the same thread.
#[derive(Debug)]
pub(crate) struct Db {
    conn: parking_lot::ReentrantMutex<RefCell<Connection>>,
    /// Writes so far (a checkpoint follows every [`CHECKPOINT_EVERY`]th).
    writes: std::sync::atomic::AtomicU32,
}

impl Db {
    pub(crate) fn new(conn: Connection) -> Db {
        Db {
            conn: parking_lot::ReentrantMutex::new(RefCell::new(conn)),
            writes: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Count a write; true when the log is due a checkpoint.
    fn wrote(&self) -> bool {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        n.wrapping_add(1) % CHECKPOINT_EVERY == 0
    }

    /// Copy the write-ahead log into the database; blocking.
    fn checkpoint(&self) {
        let done = self.with(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())));
        if let Err(e) = done {
            tracing::warn!("checkpointing a database: {e}");
        }
    }

    /// Run `f` on the connection (waiting for its lock).
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, WorkerError> {
        let held = self.conn.lock();
        let mut conn = held.borrow_mut();
        Ok(f(&mut conn)?)
    }
}

/// A store on one [`Db`].
pub(crate) trait OnDb {
    fn db(&self) -> &Db;
}

/// Run `f` on `store` on a blocking thread, so statements (and the waits on
/// its connection's lock) never stall the async runtime.
pub(crate) async fn run_blocking<S, T, F>(store: &Arc<S>, f: F) -> Result<T, WorkerError>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> Result<T, WorkerError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?
}

/// Run `f`, which only reads, on `store`: here, when no other thread holds
/// the connection (a read of a few rows takes microseconds, less than
/// handing it to a blocking thread), else on a blocking thread.
pub(crate) async fn read<S, T, F>(store: &Arc<S>, f: F) -> Result<T, WorkerError>
where
    S: OnDb + Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> Result<T, WorkerError> + Send + 'static,
{
    match here(&**store, f) {
        Ok(done) => done,
        Err(f) => run_blocking(store, f).await,
    }
}

/// Run `f`, which writes, on `store` as [`read`] does (a commit does not
/// sync: WAL with `synchronous=NORMAL`); every [`CHECKPOINT_EVERY`]
/// writes, a checkpoint follows on a blocking thread.
pub(crate) async fn write<S, T, F>(store: &Arc<S>, f: F) -> Result<T, WorkerError>
where
    S: OnDb + Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> Result<T, WorkerError> + Send + 'static,
{
    let done = read(store, f).await;
    if store.db().wrote() {
        let s = Arc::clone(store);
        tokio::task::spawn_blocking(move || s.db().checkpoint());
    }
    done
}

/// `f` run on this thread while it holds the connection; `Err(f)` when
/// another thread holds it.
fn here<S: OnDb, T, F: FnOnce(&S) -> Result<T, WorkerError>>(
    store: &S,
    f: F,
) -> Result<Result<T, WorkerError>, F> {
    let Some(held) = store.db().conn.try_lock() else {
        return Err(f);
    };
    let done = f(store);
    drop(held);
    Ok(done)
}

impl OnDb for Store {
    fn db(&self) -> &Db {
        &self.db
    }
}

impl Store {
    /// Run `f`, which may write, on the store ([`write`]).
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, WorkerError> + Send + 'static,
    {
        write(self, f).await
    }

    /// Run `f`, which only reads, on the store ([`read`]).
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, WorkerError> + Send + 'static,
    {
        read(self, f).await
    }

    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, WorkerError> {
        let conn = open_connection(path, SCHEMA)?;
        let have: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('jobs')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, def) in ADDED_COLUMNS {
            if !have.iter().any(|h| h == name) {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {def}"))?;
                if *name == "files_dropped" {
                    // Expired rows had their files deleted already.
                    conn.execute_batch(
                        "UPDATE jobs SET files_dropped = 1 WHERE status = 'expired'",
                    )?;
                }
            }
        }
        for name in DROPPED_COLUMNS {
            if have.iter().any(|h| h == name) {
                conn.execute_batch(&format!("ALTER TABLE jobs DROP COLUMN {name}"))?;
            }
        }
        Ok(Store { db: Db::new(conn) })
    }

    /// Count this start of the worker and return its number (1, 2, ...):
    /// event ids of a process are above `boot << 32`, so every id of a
    /// later process is above every id of an earlier one.
    pub fn next_boot(&self) -> Result<u64, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('boot', 1)
                 ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value",
            )?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
        })
    }

    /// The job created with this idempotency key, if any.
    pub fn by_idempotency_key(&self, key: &str) -> Result<Option<JobRow>, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE idempotency_key = ?1"
            ))?
            .query_row([key], row_to_job)
            .optional()
        })
    }

    /// Insert a queued job, honouring its idempotency key.
    pub fn insert(&self, job: &NewJob) -> Result<Inserted, WorkerError> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            if let Some(key) = &job.idempotency_key {
                let existing = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE idempotency_key = ?1"))?.query_row([key],
                        row_to_job,
                    )
                    .optional()?;
                if let Some(row) = existing {
                    return Ok(if row.body_sha256 == job.body_sha256 {
                        Inserted::Existing(row)
                    } else {
                        Inserted::Conflict(row)
                    });
                }
            }
            let now = now_ms();
            let row = tx.prepare_cached(&format!(
                    "INSERT INTO jobs (id, status, retryable, idempotency_key, body_sha256, input_bytes, prompt, created_at, updated_at)
                     VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?7) RETURNING {COLUMNS}"
                ))?.query_row(params![job.id, job.retryable as i64, job.idempotency_key, job.body_sha256, job.input_bytes, job.prompt, now],
                row_to_job,
            )?;
            tx.commit()?;
            Ok(Inserted::New(row))
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRow>, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
                .query_row([id], row_to_job)
                .optional()
        })
    }

    /// What each unfinished job that runs a graph of its own runs:
    /// `(id, NewJob::prompt)`.
    pub fn unfinished_prompts(&self) -> Result<Vec<(String, String)>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, prompt FROM jobs WHERE prompt IS NOT NULL
                 AND status IN ('queued', 'running', 'canceling') ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Record what job `id` runs of its own (a spool of an earlier version
    /// kept it in the job's directory).
    pub fn set_own_prompt(&self, id: &str, prompt: &str) -> Result<(), WorkerError> {
        self.db.with(|c| {
            c.prepare_cached("UPDATE jobs SET prompt = ?2 WHERE id = ?1")?
                .execute(params![id, prompt])
                .map(drop)
        })
    }

    /// Atomically take the oldest queued job and mark it handed to ComfyUI
    /// (`running` with no `started_at` until ComfyUI begins executing it).
    pub fn claim_next(&self) -> Result<Option<JobRow>, WorkerError> {
        self.db.with(|c| {
            let now = now_ms();
            c.prepare_cached(&format!(
                "UPDATE jobs SET status = 'running', started_at = NULL, updated_at = ?1
                     WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1)
                     RETURNING {COLUMNS}"
            ))?
            .query_row(params![now], row_to_job)
            .optional()
        })
    }

    /// Set a non-terminal status (e.g. `canceling`) of a job that is not finished.
    pub fn set_status(&self, id: &str, status: JobStatus) -> Result<bool, WorkerError> {
        self.db.with(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE jobs SET status = ?2, updated_at = ?3
                 WHERE id = ?1 AND status NOT IN ('succeeded','failed','canceled','expired')",
                )?
                .execute(params![id, status.as_str(), now_ms()])?;
            Ok(n == 1)
        })
    }

    /// Record that ComfyUI began executing the job's prompt.
    pub fn mark_started(&self, id: &str) -> Result<(), WorkerError> {
        self.db.with(|c| {
            c.prepare_cached("UPDATE jobs SET started_at = ?2, updated_at = ?2 WHERE id = ?1 AND started_at IS NULL")?.execute(params![id, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Put a job that never reached ComfyUI's executor back in the queue.
    pub fn requeue(&self, id: &str) -> Result<bool, WorkerError> {
        self.db.with(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE jobs SET status = 'queued', updated_at = ?2
                 WHERE id = ?1 AND status IN ('running','canceling')",
                )?
                .execute(params![id, now_ms()])?;
            Ok(n == 1)
        })
    }

    /// Cancel a job still in our queue. `true` when it was queued.
    pub fn cancel_if_queued(&self, id: &str) -> Result<bool, WorkerError> {
        let err = ErrorInfo {
            code: ErrorCode::Canceled,
            message: "canceled before it started".into(),
            details: serde_json::Value::Null,
        };
        let err = serde_json::to_string(&err).unwrap_or_default();
        self.db.with(|c| {
            let now = now_ms();
            let n = c.prepare_cached("UPDATE jobs SET status = 'canceled', error = ?2, updated_at = ?3, finished_at = ?3
                 WHERE id = ?1 AND status = 'queued'")?.execute(params![id, err, now],
            )?;
            Ok(n == 1)
        })
    }

    /// Finish a job (terminal status). Only a non-terminal job changes.
    pub fn finish(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<&ErrorInfo>,
        outputs: &[ValueInfo],
        result_bytes: Option<i64>,
    ) -> Result<bool, WorkerError> {
        let error = error.and_then(|e| serde_json::to_string(e).ok());
        let outputs = serde_json::to_string(outputs).unwrap_or_else(|_| "[]".into());
        self.db.with(|c| {
            let now = now_ms();
            let n = c
                .prepare_cached(
                    "UPDATE jobs SET status = ?2, error = ?3, outputs = ?4, result_bytes = ?5,
                   updated_at = ?6, finished_at = ?6
                 WHERE id = ?1 AND status NOT IN ('succeeded','failed','canceled','expired')",
                )?
                .execute(params![
                    id,
                    status.as_str(),
                    error,
                    outputs,
                    result_bytes,
                    now
                ])?;
            Ok(n == 1)
        })
    }

    /// After a restart: jobs handed to ComfyUI that had not begun executing,
    /// and jobs submitted as retryable, go back to the queue; jobs that were
    /// executing fail with `worker_restarted`.
    pub fn recover(&self) -> Result<Recovery, WorkerError> {
        let err = ErrorInfo {
            code: ErrorCode::WorkerRestarted,
            message: "the worker restarted while this job was running; submit it again \
                      (or submit with ?retry=true to have it re-run automatically)"
                .into(),
            details: serde_json::Value::Null,
        };
        let err = serde_json::to_string(&err).unwrap_or_default();
        let canceled = serde_json::to_string(&ErrorInfo {
            code: ErrorCode::Canceled,
            message: "canceled on request (the worker restarted before the cancel completed)"
                .into(),
            details: serde_json::Value::Null,
        })
        .unwrap_or_default();
        self.db.with(|c| {
            let now = now_ms();
            let tx = c.transaction()?;
            let requeued = tx.prepare_cached("UPDATE jobs SET status = 'queued', updated_at = ?1
                 WHERE status = 'running' AND (retryable = 1 OR started_at IS NULL)")?.execute(params![now],
            )?;
            let canceled = tx.prepare_cached("UPDATE jobs SET status = 'canceled', error = ?2, updated_at = ?1, finished_at = ?1
                 WHERE status = 'canceling'")?.execute(params![now, canceled],
            )?;
            let failed = tx.prepare_cached("UPDATE jobs SET status = 'failed', error = ?2, updated_at = ?1, finished_at = ?1
                 WHERE status = 'running'")?.execute(params![now, err],
            )?;
            tx.commit()?;
            Ok(Recovery {
                requeued,
                failed: failed + canceled,
            })
        })
    }

    /// Fail the jobs in our queue that were queued before `cutoff_ms` with
    /// `error`; returns their ids.
    pub fn fail_queued_before(
        &self,
        cutoff_ms: i64,
        error: &ErrorInfo,
    ) -> Result<Vec<String>, WorkerError> {
        let err = serde_json::to_string(error).unwrap_or_default();
        self.db.with(|c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "UPDATE jobs SET status = 'failed', error = ?2, updated_at = ?3, finished_at = ?3
                 WHERE status = 'queued' AND updated_at < ?1 RETURNING id",
            )?;
            let rows = st.query_map(params![cutoff_ms, err, now], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Queued job ids in queue order.
    pub fn queued_ids(&self) -> Result<Vec<String>, WorkerError> {
        self.db.with(|c| {
            let mut st =
                c.prepare_cached("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Number of jobs ahead of a queued job (queued before it, plus running ones).
    pub fn queue_position(&self, seq: i64) -> Result<u64, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM jobs WHERE (status = 'queued' AND seq < ?1) OR status IN ('running','canceling')")?.query_row([seq],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
        })
    }

    /// Number of jobs ahead of one handed to ComfyUI that has not begun
    /// executing: the ones handed before it (ComfyUI runs them in order).
    pub fn handed_position(&self, seq: i64) -> Result<u64, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('running','canceling') AND seq < ?1",
            )?
            .query_row([seq], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
        })
    }

    /// Jobs waiting (queued here, or handed to ComfyUI and not yet
    /// executing), in queue order, each with its queue position as
    /// [`Store::queue_position`] and [`Store::handed_position`] count it:
    /// one query for the whole queue.
    pub fn waiting_positions(&self) -> Result<Vec<(JobRow, u64)>, WorkerError> {
        let active = self.db.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE status IN ('queued','running','canceling') ORDER BY seq"
            ))?;
            let rows = st.query_map([], row_to_job)?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        let handed = |r: &JobRow| matches!(r.status, JobStatus::Running | JobStatus::Canceling);
        let handed_total = active.iter().filter(|r| handed(r)).count() as u64;
        let (mut queued_before, mut handed_before) = (0u64, 0u64);
        let mut out = Vec::new();
        for row in active {
            let position = match row.status {
                JobStatus::Queued => Some(queued_before + handed_total),
                JobStatus::Running if row.started_at.is_none() => Some(handed_before),
                _ => None,
            };
            if row.status == JobStatus::Queued {
                queued_before += 1;
            } else {
                handed_before += 1;
            }
            if let Some(p) = position {
                out.push((row, p));
            }
        }
        Ok(out)
    }

    /// Jobs not yet finished.
    pub fn active_count(&self) -> Result<u64, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running','canceling')",
            )?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
        })
    }

    /// Job counts by status, for metrics.
    pub fn counts(&self) -> Result<Vec<(String, u64)>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?;
            rows.collect()
        })
    }

    /// Finished jobs whose files may be deleted and were not yet: older
    /// than `cutoff_ms`, or the oldest succeeded ones beyond
    /// `max_result_bytes` in total.
    pub fn retention_victims(
        &self,
        cutoff_ms: i64,
        max_result_bytes: u64,
    ) -> Result<Vec<JobRow>, WorkerError> {
        self.db.with(|c| {
            let mut victims = Vec::new();
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE status IN ('succeeded','failed','canceled')
                 AND finished_at IS NOT NULL AND files_dropped = 0 ORDER BY finished_at DESC, seq DESC"
            ))?;
            let rows = st.query_map([], row_to_job)?;
            let mut total: u64 = 0;
            for row in rows {
                let row = row?;
                let bytes = row.result_bytes.unwrap_or(0).max(0) as u64;
                let too_old = row.finished_at.unwrap_or(0) < cutoff_ms;
                let over = row.status == JobStatus::Succeeded
                    && total.saturating_add(bytes) > max_result_bytes;
                if too_old || over {
                    victims.push(row);
                } else if row.status == JobStatus::Succeeded {
                    total += bytes;
                }
            }
            Ok(victims)
        })
    }

    /// Record that a finished job's files are gone; a succeeded one expires.
    pub fn expire(&self, id: &str) -> Result<(), WorkerError> {
        let err = ErrorInfo {
            code: ErrorCode::Expired,
            message: "the result was deleted by the worker's retention policy".into(),
            details: serde_json::Value::Null,
        };
        let err = serde_json::to_string(&err).unwrap_or_default();
        self.db.with(|c| {
            c.prepare_cached("UPDATE jobs SET status = 'expired', error = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'succeeded'")?.execute(params![id, err, now_ms()],
            )?;
            // Failed/canceled rows keep their status; only their files go.
            c.prepare_cached("UPDATE jobs SET result_bytes = 0, files_dropped = 1 WHERE id = ?1")?.execute(params![id],
            )?;
            Ok(())
        })
    }

    /// Those of `ids` whose job expired or is not in the store.
    pub fn expired_or_unknown(&self, ids: &[String]) -> Result<Vec<String>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached("SELECT status FROM jobs WHERE id = ?1")?;
            let mut gone = Vec::new();
            for id in ids {
                let status: Option<String> = st.query_row([id], |r| r.get(0)).optional()?;
                if status.is_none() || status.as_deref() == Some(JobStatus::Expired.as_str()) {
                    gone.push(id.clone());
                }
            }
            Ok(gone)
        })
    }

    /// Every job id the store knows (to clean orphan spool directories).
    pub fn all_ids(&self) -> Result<std::collections::HashSet<String>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached("SELECT id FROM jobs")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_and_unknown_jobs_are_told_apart_from_the_rest_in_one_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        for id in ["kept", "old"] {
            store.insert(&new(id, None, "h")).expect("insert");
        }
        store
            .finish("old", JobStatus::Succeeded, None, &[], Some(1))
            .expect("finish");
        store.expire("old").expect("expire");
        let ids = ["kept", "old", "never"].map(String::from);
        assert_eq!(
            store.expired_or_unknown(&ids).expect("read"),
            ["old", "never"]
        );
    }

    #[test]
    fn a_checkpoint_is_due_once_every_so_many_writes_and_rows_outlive_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("jobs.db");
        let store = Store::open(&path).expect("open");
        let due: Vec<u32> = (1..=2 * CHECKPOINT_EVERY)
            .filter(|_| store.db.wrote())
            .collect();
        assert_eq!(due.len(), 2);
        store.insert(&new("a", None, "h")).expect("insert");
        store.db.checkpoint();
        drop(store);
        let again = Store::open(&path).expect("reopen");
        assert!(again.get("a").expect("get").is_some());
    }

    fn new(id: &str, key: Option<&str>, hash: &str) -> NewJob {
        NewJob {
            id: id.into(),
            retryable: false,
            idempotency_key: key.map(Into::into),
            body_sha256: hash.into(),
            input_bytes: 1,
            prompt: None,
        }
    }

    #[test]
    fn idempotency_claim_and_recovery() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        assert!(matches!(
            store.insert(&new("a", Some("k"), "h1")).expect("ins"),
            Inserted::New(_)
        ));
        assert!(
            matches!(store.insert(&new("b", Some("k"), "h1")).expect("ins"), Inserted::Existing(r) if r.id == "a")
        );
        assert!(matches!(
            store.insert(&new("c", Some("k"), "h2")).expect("ins"),
            Inserted::Conflict(_)
        ));
        assert!(matches!(
            store.insert(&new("d", None, "h")).expect("ins"),
            Inserted::New(_)
        ));
        let first = store.claim_next().expect("claim").expect("some");
        assert_eq!(first.id, "a");
        assert_eq!(first.status, JobStatus::Running);
        store.mark_started("a").expect("started");
        assert_eq!(
            store
                .queue_position(store.get("d").expect("get").expect("d").seq)
                .expect("pos"),
            1
        );
        let r = store.recover().expect("recover");
        assert_eq!(
            r,
            Recovery {
                requeued: 0,
                failed: 1
            }
        );
        let a = store.get("a").expect("get").expect("a");
        assert_eq!(a.status, JobStatus::Failed);
        assert_eq!(a.error.expect("error").code, ErrorCode::WorkerRestarted);
        // Handed to ComfyUI but never started: back in the queue after a restart.
        store.claim_next().expect("claim").expect("d");
        assert_eq!(
            store.recover().expect("recover"),
            Recovery {
                requeued: 1,
                failed: 0
            }
        );
        assert_eq!(
            store.get("d").expect("get").expect("d").status,
            JobStatus::Queued
        );
        assert!(store.cancel_if_queued("d").expect("cancel"));
        assert!(store.claim_next().expect("claim").is_none());
    }

    #[test]
    fn the_whole_queue_gets_the_places_each_job_would_be_told() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        for id in ["run", "handed1", "handed2", "q1", "q2", "q3"] {
            store.insert(&new(id, None, "h")).expect("insert");
        }
        for _ in 0..3 {
            store.claim_next().expect("claim");
        }
        store.mark_started("run").expect("started");
        let got = store.waiting_positions().expect("positions");
        let ids: Vec<&str> = got.iter().map(|(r, _)| r.id.as_str()).collect();
        assert_eq!(ids, ["handed1", "handed2", "q1", "q2", "q3"]);
        for (row, position) in &got {
            let one_by_one = if row.status == JobStatus::Queued {
                store.queue_position(row.seq)
            } else {
                store.handed_position(row.seq)
            };
            assert_eq!(*position, one_by_one.expect("position"), "{}", row.id);
        }
        assert_eq!(
            got.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn retention_expires_old_results_and_the_oldest_beyond_the_byte_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        for id in ["old", "mid", "new"] {
            store.insert(&new(id, None, "h")).expect("insert");
            store.claim_next().expect("claim");
            store
                .finish(id, JobStatus::Succeeded, None, &[], Some(100))
                .expect("finish");
        }
        let now = now_ms();
        // Everything is younger than the cutoff; 250 bytes keep the two newest.
        let v: Vec<String> = store
            .retention_victims(now - 60_000, 250)
            .expect("victims")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(v, ["old"]);
        // A cutoff in the future expires everything.
        let v = store
            .retention_victims(now + 60_000, u64::MAX)
            .expect("victims");
        assert_eq!(v.len(), 3);
        store.expire("old").expect("expire");
        let old = store.get("old").expect("get").expect("row");
        assert_eq!(old.status, JobStatus::Expired);
        assert_eq!(old.error.expect("error").code, ErrorCode::Expired);
    }

    #[test]
    fn retention_drops_each_jobs_files_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        for (id, status) in [
            ("ok", JobStatus::Succeeded),
            ("bad", JobStatus::Failed),
            ("stop", JobStatus::Canceled),
        ] {
            store.insert(&new(id, None, "h")).expect("insert");
            store.claim_next().expect("claim");
            store
                .finish(id, status, None, &[], Some(10))
                .expect("finish");
        }
        let future = now_ms() + 60_000;
        let first = store.retention_victims(future, u64::MAX).expect("victims");
        assert_eq!(first.len(), 3);
        for r in &first {
            store.expire(&r.id).expect("expire");
        }
        // Failed and canceled jobs keep their status but are not swept again.
        assert!(store
            .retention_victims(future, u64::MAX)
            .expect("victims")
            .is_empty());
        assert_eq!(
            store.get("bad").expect("get").expect("row").status,
            JobStatus::Failed
        );
    }

    #[test]
    fn a_database_of_an_earlier_version_gets_the_new_columns_and_loses_the_dead_ones() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("jobs.db");
        {
            let c = Connection::open(&path).expect("open");
            // The schema as first released: no files_dropped, no meta, and
            // columns nothing reads any more.
            c.execute_batch(
                "CREATE TABLE jobs (
                  seq INTEGER PRIMARY KEY AUTOINCREMENT,
                  id TEXT NOT NULL UNIQUE,
                  status TEXT NOT NULL,
                  attempts INTEGER NOT NULL DEFAULT 0,
                  retryable INTEGER NOT NULL DEFAULT 0,
                  idempotency_key TEXT UNIQUE,
                  body_sha256 TEXT NOT NULL,
                  input_bytes INTEGER NOT NULL DEFAULT 0,
                  result_bytes INTEGER,
                  prompt_id TEXT,
                  owner TEXT,
                  lease_until INTEGER,
                  error TEXT,
                  outputs TEXT,
                  created_at INTEGER NOT NULL,
                  updated_at INTEGER NOT NULL,
                  started_at INTEGER,
                  finished_at INTEGER
                );
                CREATE INDEX jobs_status ON jobs(status, seq);",
            )
            .expect("old schema");
            c.execute(
                "INSERT INTO jobs (id, status, body_sha256, created_at, updated_at, finished_at)
                 VALUES ('old', 'failed', 'h', 1, 1, 1)",
                [],
            )
            .expect("row");
        }
        let store = Store::open(&path).expect("migrate");
        let cols: Vec<String> = store
            .db
            .with(|c| {
                c.prepare_cached("SELECT name FROM pragma_table_info('jobs')")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .expect("columns");
        for dead in DROPPED_COLUMNS {
            assert!(!cols.iter().any(|c| c == dead), "{dead} still in {cols:?}");
        }
        let v = store
            .retention_victims(now_ms(), u64::MAX)
            .expect("victims");
        assert_eq!(v.len(), 1);
        store.expire("old").expect("expire");
        assert!(store
            .retention_victims(now_ms(), u64::MAX)
            .expect("victims")
            .is_empty());
        drop(store);
        // Opening again is a no-op; boots count up.
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.next_boot().expect("boot"), 1);
        assert_eq!(store.next_boot().expect("boot"), 2);
    }

    #[test]
    fn a_job_canceling_at_restart_is_canceled_with_the_canceled_code() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("jobs.db")).expect("open");
        store.insert(&new("c", None, "h")).expect("insert");
        store.claim_next().expect("claim");
        store.mark_started("c").expect("started");
        assert!(store.set_status("c", JobStatus::Canceling).expect("set"));
        store.recover().expect("recover");
        let row = store.get("c").expect("get").expect("row");
        assert_eq!(row.status, JobStatus::Canceled);
        assert_eq!(row.error.expect("error").code, ErrorCode::Canceled);
    }
}
