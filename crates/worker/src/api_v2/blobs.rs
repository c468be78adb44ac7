//! Asset bytes in the spool, one file per content (`blobs/<blake3 hex>`):
//! uploads are streamed to a temporary file while they are hashed
//! ([`Spool`]) and renamed into place, so a blob is never seen half written.

use std::path::{Path, PathBuf};

use comfy_remote_protocol::v2::view::ContentHasher;
use tokio::io::AsyncWriteExt;

/// The blob directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

/// A file being written to the spool while it is hashed.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    out: tokio::io::BufWriter<tokio::fs::File>,
    hasher: ContentHasher,
    size: u64,
}

impl Spool {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.size += bytes.len() as u64;
        self.hasher.update(bytes);
        self.out.write_all(bytes).await
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file, its size and `blake3:<hex>`.
    pub async fn finish(mut self) -> std::io::Result<(PathBuf, u64, String)> {
        self.out.flush().await?;
        Ok((self.path, self.size, self.hasher.finish()))
    }

    /// Drop what was written.
    pub async fn discard(self) {
        drop(self.out);
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Blobs {
    pub fn new(spool: &Path, tmp: PathBuf) -> std::io::Result<Blobs> {
        let dir = spool.join("blobs");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(Blobs { dir, tmp })
    }

    /// The file of `hash` (`blake3:<hex>`, checked by the caller).
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash.trim_start_matches("blake3:"))
    }

    pub fn exists(&self, hash: &str) -> bool {
        self.path(hash).is_file()
    }

    /// A new temporary file in the spool.
    pub async fn spool(&self) -> std::io::Result<Spool> {
        let path = self.tmp.join(format!("{}.asset", uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Spool {
            path,
            out: tokio::io::BufWriter::with_capacity(1 << 20, file),
            hasher: ContentHasher::default(),
            size: 0,
        })
    }

    /// Move a spooled file into place as the blob of `hash` (a blob of the
    /// same hash already there is the same bytes: the file is dropped).
    pub async fn keep(&self, spooled: &Path, hash: &str) -> std::io::Result<()> {
        let dest = self.path(hash);
        if dest.is_file() {
            let _ = tokio::fs::remove_file(spooled).await;
            return Ok(());
        }
        tokio::fs::rename(spooled, dest).await
    }

    /// Store `bytes` as the blob of `hash` (blocking: call it off the runtime).
    pub fn put_blocking(&self, bytes: &[u8], hash: &str) -> std::io::Result<()> {
        let dest = self.path(hash);
        if dest.is_file() {
            return Ok(());
        }
        let tmp = self.tmp.join(format!("{}.blob", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dest).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    pub async fn remove(&self, hash: &str) {
        let _ = tokio::fs::remove_file(self.path(hash)).await;
    }
}
