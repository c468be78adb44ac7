//! What Comfy API v2 adds to a job, durably (SQLite `v2.db` in the spool,
//! WAL): the graph a job was submitted as, single-use idempotency keys
//! (24 h) and assets (uploaded files and job outputs), whose bytes are
//! blobs named by their hash ([`super::blobs`]).

use std::path::Path;
use std::sync::Arc;

use comfy_remote_protocol::media::FileKind;
use comfy_remote_protocol::v2::assets::AssetRecord;
use comfy_remote_protocol::v2::view::OutputRecord;
use rusqlite::{params, OptionalExtension, Row};

use crate::error::WorkerError;
use crate::store::now_ms;

/// How long an idempotency key stays claimed.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS v2_jobs (
  id TEXT PRIMARY KEY,
  own_graph INTEGER NOT NULL,
  workflow TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  outputs_ready INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
  key TEXT PRIMARY KEY,
  claimed_at INTEGER NOT NULL,
  job_id TEXT
);
CREATE TABLE IF NOT EXISTS assets (
  id TEXT PRIMARY KEY,
  hash TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  content_type TEXT NOT NULL,
  file_path TEXT,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  job_id TEXT,
  node_id TEXT,
  name TEXT,
  kind TEXT,
  position INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS assets_hash ON assets(hash);
CREATE INDEX IF NOT EXISTS assets_job ON assets(job_id, position);
";

/// An asset row: what the protocol keeps of an asset and, for outputs, the
/// node, the file's name and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetRow {
    pub record: AssetRecord,
    pub node_id: Option<String>,
    pub name: Option<String>,
    pub kind: Option<FileKind>,
}

impl std::ops::Deref for AssetRow {
    type Target = AssetRecord;

    fn deref(&self) -> &AssetRecord {
        &self.record
    }
}

impl AssetRow {
    /// The output record of an output asset.
    pub fn output(&self) -> Option<OutputRecord> {
        Some(OutputRecord {
            asset_id: self.id.clone(),
            job_id: self.job_id.clone()?,
            node_id: self.node_id.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
            kind: self.kind.unwrap_or(FileKind::File),
            content_type: self.content_type.clone(),
            size_bytes: self.size_bytes,
            hash: Some(self.hash.clone()),
        })
    }
}

const ASSET_COLUMNS: &str =
    "id, hash, size_bytes, content_type, file_path, created_at, expires_at, job_id, node_id, name, kind";

fn row_to_asset(r: &Row<'_>) -> rusqlite::Result<AssetRow> {
    let kind: Option<String> = r.get(10)?;
    Ok(AssetRow {
        record: AssetRecord {
            id: r.get(0)?,
            hash: r.get(1)?,
            size_bytes: r.get::<_, i64>(2)?.max(0) as u64,
            content_type: r.get(3)?,
            file_path: r.get(4)?,
            created_at: r.get(5)?,
            expires_at: r.get(6)?,
            job_id: r.get(7)?,
        },
        node_id: r.get(8)?,
        name: r.get(9)?,
        kind: kind.and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok()),
    })
}

/// A v2 job's own record.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Job {
    pub id: String,
    /// It runs its own graph (not the served workflow).
    pub own_graph: bool,
    /// The graph as submitted (JSON text).
    pub workflow: String,
    pub outputs_ready: bool,
}

/// The v2 store: one connection behind a mutex, every statement short.
#[derive(Debug)]
pub struct V2Store {
    db: crate::store::Db,
}

impl crate::store::OnDb for V2Store {
    fn db(&self) -> &crate::store::Db {
        &self.db
    }
}

impl V2Store {
    /// Run `f`, which may write (`crate::store::write`).
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce(&V2Store) -> Result<T, WorkerError> + Send + 'static,
    {
        crate::store::write(self, f).await
    }

    /// Run `f`, which only reads, here when it can (`crate::store::read`).
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce(&V2Store) -> Result<T, WorkerError> + Send + 'static,
    {
        crate::store::read(self, f).await
    }

    pub fn open(path: &Path) -> Result<V2Store, WorkerError> {
        let conn = crate::store::open_connection(path, SCHEMA)?;
        Ok(V2Store {
            db: crate::store::Db::new(conn),
        })
    }

    /// Claim `key` (single use): `false` when it is held (claimed less
    /// than 24 h ago). An expired claim is taken over.
    pub fn claim_key(&self, key: &str) -> Result<bool, WorkerError> {
        self.db.with(|c| {
            let now = now_ms();
            let n = c
                .prepare_cached(
                    "INSERT INTO idempotency_keys (key, claimed_at) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET claimed_at = excluded.claimed_at, job_id = NULL
                 WHERE idempotency_keys.claimed_at < ?3",
                )?
                .execute(params![key, now, now - KEY_TTL_MS])?;
            Ok(n == 1)
        })
    }

    /// Release a claim whose request created nothing.
    pub fn release_key(&self, key: &str) -> Result<(), WorkerError> {
        self.db.with(|c| {
            c.prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1 AND job_id IS NULL")?
                .execute([key])?;
            Ok(())
        })
    }

    /// Record a new v2 job (and bind its key, if any), in one transaction;
    /// its outputs may have been kept already (a job that ended at once).
    pub fn insert_job(&self, job: &V2Job, key: Option<&str>) -> Result<(), WorkerError> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            tx.prepare_cached("INSERT INTO v2_jobs (id, own_graph, workflow, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET own_graph = excluded.own_graph, workflow = excluded.workflow")?.execute(params![job.id, job.own_graph as i64, job.workflow, now_ms()],
            )?;
            if let Some(k) = key {
                tx.prepare_cached("UPDATE idempotency_keys SET job_id = ?2 WHERE key = ?1")?.execute(params![k, job.id],
                )?;
            }
            tx.commit()
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<V2Job>, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT id, own_graph, workflow, outputs_ready FROM v2_jobs WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok(V2Job {
                    id: r.get(0)?,
                    own_graph: r.get::<_, i64>(1)? != 0,
                    workflow: r.get(2)?,
                    outputs_ready: r.get::<_, i64>(3)? != 0,
                })
            })
            .optional()
        })
    }

    /// The newest v2 job ids, at most `limit`.
    pub fn recent_jobs(&self, limit: u32) -> Result<Vec<String>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM v2_jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1",
            )?;
            let rows = st.query_map([limit], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Store a job's output assets and mark its outputs ready, at once. A
    /// job without a v2 record (submitted through v1) gets one.
    pub fn put_outputs(&self, job_id: &str, assets: &[AssetRow]) -> Result<(), WorkerError> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            for (i, a) in assets.iter().enumerate() {
                tx.prepare_cached(&format!(
                        "INSERT INTO assets ({ASSET_COLUMNS}, position) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, ?9, ?10, ?11)"
                    ))?.execute(params![
                        a.id, a.hash, a.size_bytes as i64, a.content_type, a.file_path, a.created_at,
                        job_id, a.node_id, a.name, a.kind.map(|k| k.as_str()), i as i64
                    ],
                )?;
            }
            tx.prepare_cached("INSERT INTO v2_jobs (id, own_graph, workflow, created_at, outputs_ready) VALUES (?1, 0, '{}', ?2, 1)
                 ON CONFLICT(id) DO UPDATE SET outputs_ready = 1")?.execute(params![job_id, now_ms()],
            )?;
            tx.commit()
        })
    }

    /// A job's output assets, in order.
    pub fn outputs(&self, job_id: &str) -> Result<Vec<AssetRow>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ASSET_COLUMNS} FROM assets WHERE job_id = ?1 ORDER BY position"
            ))?;
            let rows = st.query_map([job_id], row_to_asset)?;
            rows.collect()
        })
    }

    /// Store an uploaded asset.
    pub fn insert_asset(&self, a: &AssetRow) -> Result<(), WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(&format!("INSERT INTO assets ({ASSET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL, NULL)"))?.execute(params![a.id, a.hash, a.size_bytes as i64, a.content_type, a.file_path, a.created_at, a.expires_at],
            )?;
            Ok(())
        })
    }

    /// An asset that has not expired.
    pub fn asset(&self, id: &str) -> Result<Option<AssetRow>, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(&format!(
                    "SELECT {ASSET_COLUMNS} FROM assets WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)"
                ))?.query_row(params![id, now_ms()],
                row_to_asset,
            )
            .optional()
        })
    }

    /// The newest live asset with these bytes (an uploaded one first).
    pub fn by_hash(&self, hash: &str) -> Result<Option<AssetRow>, WorkerError> {
        self.db.with(|c| {
            c.prepare_cached(&format!(
                    "SELECT {ASSET_COLUMNS} FROM assets WHERE hash = ?1 AND (expires_at IS NULL OR expires_at > ?2)
                     ORDER BY job_id IS NOT NULL, created_at DESC LIMIT 1"
                ))?.query_row(params![hash, now_ms()],
                row_to_asset,
            )
            .optional()
        })
    }

    /// Delete an asset record; returns its hash when no record refers to
    /// those bytes any more (the caller removes the blob).
    pub fn delete_asset(&self, id: &str) -> Result<Option<String>, WorkerError> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let hash: Option<String> = tx
                .prepare_cached("DELETE FROM assets WHERE id = ?1 RETURNING hash")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            let orphan = match hash {
                Some(h) => {
                    let left: i64 = tx
                        .prepare_cached("SELECT COUNT(*) FROM assets WHERE hash = ?1")?
                        .query_row([&h], |r| r.get(0))?;
                    (left == 0).then_some(h)
                }
                None => None,
            };
            tx.commit()?;
            Ok(orphan)
        })
    }

    /// Uploaded assets past their expiry.
    pub fn expired_assets(&self) -> Result<Vec<String>, WorkerError> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM assets WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            )?;
            let rows = st.query_map([now_ms()], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Jobs that have output assets.
    pub fn jobs_with_outputs(&self) -> Result<Vec<String>, WorkerError> {
        self.db.with(|c| {
            let mut st =
                c.prepare_cached("SELECT DISTINCT job_id FROM assets WHERE job_id IS NOT NULL")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Forget keys claimed more than 24 h ago.
    pub fn forget_old_keys(&self) -> Result<(), WorkerError> {
        self.db.with(|c| {
            c.prepare_cached("DELETE FROM idempotency_keys WHERE claimed_at < ?1")?
                .execute([now_ms() - KEY_TTL_MS])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, V2Store) {
        let d = tempfile::tempdir().expect("tmp");
        let s = V2Store::open(&d.path().join("v2.db")).expect("open");
        (d, s)
    }

    #[test]
    fn keys_are_single_use_and_released_only_unbound() {
        let (_d, s) = store();
        assert!(s.claim_key("jobs:k").expect("claim"));
        assert!(!s.claim_key("jobs:k").expect("again"));
        s.release_key("jobs:k").expect("release");
        assert!(s.claim_key("jobs:k").expect("after a release"));
        let job = V2Job {
            id: "j".into(),
            own_graph: false,
            workflow: "{}".into(),
            outputs_ready: false,
        };
        s.insert_job(&job, Some("jobs:k")).expect("bind");
        s.release_key("jobs:k").expect("no-op");
        assert!(!s.claim_key("jobs:k").expect("bound keys stay"));
        assert_eq!(s.job("j").expect("job"), Some(job));
    }

    #[test]
    fn a_job_whose_outputs_were_kept_before_its_record_keeps_both() {
        // A prompt job can end (and its outputs be kept) before the request
        // that submitted it records what v2 adds.
        let (_d, s) = store();
        s.put_outputs("j", &[]).expect("outputs first");
        let job = V2Job {
            id: "j".into(),
            own_graph: true,
            workflow: r#"{"1": {}}"#.into(),
            outputs_ready: false,
        };
        s.insert_job(&job, None).expect("then the record");
        let got = s.job("j").expect("job").expect("there");
        assert!(got.own_graph && got.outputs_ready);
        assert_eq!(got.workflow, job.workflow);
    }

    #[test]
    fn assets_expire_and_the_last_record_of_a_blob_frees_it() {
        let (_d, s) = store();
        let a = |id: &str, expires_at: Option<i64>| AssetRow {
            record: AssetRecord {
                id: id.into(),
                hash: "blake3:h".into(),
                size_bytes: 3,
                content_type: "image/png".into(),
                file_path: Some("p.png".into()),
                created_at: now_ms(),
                expires_at,
                job_id: None,
            },
            node_id: None,
            name: None,
            kind: None,
        };
        s.insert_asset(&a("old", Some(now_ms() - 1))).expect("old");
        s.insert_asset(&a("new", Some(now_ms() + 60_000)))
            .expect("new");
        assert!(
            s.asset("old").expect("get").is_none(),
            "expired assets are gone"
        );
        assert_eq!(
            s.by_hash("blake3:h").expect("hash").map(|r| r.record.id),
            Some("new".into())
        );
        assert_eq!(s.expired_assets().expect("expired"), ["old"]);
        assert_eq!(
            s.delete_asset("old").expect("del"),
            None,
            "another record holds the bytes"
        );
        assert_eq!(s.delete_asset("new").expect("del"), Some("blake3:h".into()));
        assert_eq!(s.delete_asset("new").expect("again"), None);
    }
}
