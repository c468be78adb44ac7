//! Where a prompt job's outputs go when it succeeds. The v2 surface keeps
//! them as output assets (blobs and their records) while the job collects
//! them, so they are ready when its end is published and no result
//! container is written, read back and split. Without a sink (or when one
//! fails, or a job's outputs were too large to hold in memory) a prompt
//! job writes its result container as a job of the served workflow does.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use comfy_remote_protocol::v2::outputs::OutputFile;

use crate::error::WorkerError;

/// A boxed future of a sink.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, WorkerError>> + Send + 'a>>;

/// Keeps the output files of succeeded prompt jobs.
pub trait OutputSink: Send + Sync + std::fmt::Debug {
    /// Keep `files`, the outputs of job `job`, before its end is recorded.
    fn keep<'a>(&'a self, job: &'a str, files: Vec<OutputFile>) -> SinkFuture<'a, ()>;

    /// The files kept for `job`, in order: `<node id>/<file name>` and where
    /// its bytes are (to build the job's result container when a protocol
    /// v1 client asks for it).
    fn files<'a>(&'a self, job: &'a str) -> SinkFuture<'a, Vec<(String, PathBuf)>>;
}
