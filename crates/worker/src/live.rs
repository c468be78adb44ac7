//! In-memory state of active jobs: the current progress and the ordered
//! event log that SSE subscribers replay (`Last-Event-ID`) and follow.

use std::collections::VecDeque;
use std::sync::Mutex;

use comfy_remote_protocol::api::{JobView, PreviewEvent, Progress};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for replay per job (previews are never kept).
const LOG_CAP: usize = 1024;

/// What an SSE event carries.
#[derive(Debug, Clone)]
pub enum EventData {
    Status(Box<JobView>),
    Progress(Progress),
    Preview(PreviewEvent),
    Done(Box<JobView>),
}

impl EventData {
    pub fn name(&self) -> &'static str {
        match self {
            EventData::Status(_) => "status",
            EventData::Progress(_) => "progress",
            EventData::Preview(_) => "preview",
            EventData::Done(_) => "done",
        }
    }
}

/// One numbered event of a job.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub seq: u64,
    pub data: EventData,
}

#[derive(Debug)]
struct Inner {
    progress: Progress,
    log: VecDeque<JobEvent>,
    next_seq: u64,
    done: bool,
}

/// Live state of one job.
#[derive(Debug)]
pub struct LiveJob {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<JobEvent>,
    /// Fired by `POST /cancel` while the job is running.
    pub cancel: CancellationToken,
}

impl LiveJob {
    pub fn new(progress: Progress) -> Self {
        let (tx, _) = broadcast::channel(256);
        LiveJob {
            inner: Mutex::new(Inner {
                progress,
                log: VecDeque::new(),
                next_seq: 1,
                done: false,
            }),
            tx,
            cancel: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn progress(&self) -> Progress {
        self.lock().progress.clone()
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Publish an event; progress snapshots become the current progress,
    /// with a fraction that never goes down.
    pub fn publish(&self, mut data: EventData) {
        let mut inner = self.lock();
        if inner.done {
            return;
        }
        if let EventData::Progress(p) = &mut data {
            p.fraction = p.fraction.clamp(0.0, 1.0).max(inner.progress.fraction);
            p.value = p.fraction;
            p.max = 1.0;
            if *p == inner.progress {
                return;
            }
            inner.progress = p.clone();
        }
        if matches!(data, EventData::Done(_)) {
            inner.done = true;
        }
        let ev = JobEvent {
            seq: inner.next_seq,
            data,
        };
        inner.next_seq += 1;
        if !matches!(ev.data, EventData::Preview(_)) {
            if inner.log.len() >= LOG_CAP {
                // Keep the first status; drop the oldest progress.
                inner.log.remove(1);
            }
            inner.log.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    /// Events after `after` (all when `None`) and a receiver for what follows,
    /// taken atomically so nothing is missed or repeated.
    pub fn subscribe(&self, after: Option<u64>) -> (Vec<JobEvent>, broadcast::Receiver<JobEvent>) {
        let inner = self.lock();
        let after = after.unwrap_or(0);
        let replay = inner
            .log
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        (replay, self.tx.subscribe())
    }
}
