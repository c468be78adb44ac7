//! In-memory state of active jobs: the current progress and the ordered
//! event log that SSE subscribers replay (`Last-Event-ID`) and follow.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use comfy_remote_protocol::api::{JobView, PreviewEvent, Progress};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for replay per job (previews are never kept).
const LOG_CAP: usize = 1024;
/// Events a follower may fall behind by before it misses some.
const FOLLOW_CAP: usize = 256;

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
    /// The highest sequence number dropped from the log (0: none).
    trimmed: u64,
    done: bool,
    /// The latest preview (a Comfy API v2 stream sends it on connect).
    last_preview: Option<PreviewEvent>,
    /// The latest status published: the same one again is not an event
    /// (the queue moving on often leaves a job's place as it was).
    last_status: Option<Box<JobView>>,
}

/// What a subscriber gets on connect.
#[derive(Debug)]
pub struct Subscription {
    /// Begin with a `status` snapshot: the reader missed events this log
    /// no longer holds (or holds none yet), or its id is not one of ours.
    pub snapshot: bool,
    /// The id to give that snapshot: below every replayed event.
    pub snapshot_seq: u64,
    /// Held events the reader has not seen, in order.
    pub replay: Vec<JobEvent>,
    /// Live events follow; those at or below `after` are already covered.
    pub rx: broadcast::Receiver<JobEvent>,
    pub after: u64,
}

/// Live state of one job.
#[derive(Debug)]
pub struct LiveJob {
    inner: Mutex<Inner>,
    /// Made for the first follower: most jobs have none, and the channel
    /// holds [`FOLLOW_CAP`] slots.
    tx: OnceLock<broadcast::Sender<JobEvent>>,
    /// Fired by `POST /cancel` while the job is running.
    pub cancel: CancellationToken,
    base: u64,
}

impl LiveJob {
    /// A live job whose event ids start after `base`: every id of this
    /// process is above `base`, and `base` is above every id an earlier
    /// process gave (see [`crate::store::Store::next_boot`]).
    pub fn new(progress: Progress, base: u64) -> Self {
        LiveJob {
            inner: Mutex::new(Inner {
                progress,
                log: VecDeque::new(),
                next_seq: base + 1,
                trimmed: 0,
                done: false,
                last_preview: None,
                last_status: None,
            }),
            tx: OnceLock::new(),
            cancel: CancellationToken::new(),
            base,
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

    /// Whether anyone follows the job's events now.
    pub fn is_watched(&self) -> bool {
        self.tx.get().is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// The latest preview the job sent, if any.
    pub fn last_preview(&self) -> Option<PreviewEvent> {
        self.lock().last_preview.clone()
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
        if let EventData::Preview(p) = &data {
            inner.last_preview = Some(p.clone());
        }
        if let EventData::Status(v) = &data {
            if inner.last_status.as_ref() == Some(v) {
                return;
            }
            inner.last_status = Some(v.clone());
        }
        let ev = JobEvent {
            seq: inner.next_seq,
            data,
        };
        inner.next_seq += 1;
        if !matches!(ev.data, EventData::Preview(_)) {
            if inner.log.len() >= LOG_CAP {
                // Drop the oldest progress; status and done events stay
                // (there are few: one per status or queue-position change).
                if let Some(i) = inner
                    .log
                    .iter()
                    .position(|e| matches!(e.data, EventData::Progress(_)))
                {
                    if let Some(old) = inner.log.remove(i) {
                        inner.trimmed = inner.trimmed.max(old.seq);
                    }
                }
            }
            inner.log.push_back(ev.clone());
        }
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(ev);
        }
    }

    /// Events after `after` (all when `None`) and a receiver for what follows,
    /// taken atomically so nothing is missed or repeated. An `after` that is
    /// not an id of this process (from before a restart, or unknown) replays
    /// everything held after a snapshot; one older than what the log dropped
    /// replays what is left after a snapshot.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let inner = self.lock();
        let issued = inner.next_seq - 1;
        let (after, snapshot) = match after {
            None => (self.base, inner.log.is_empty()),
            Some(a) if a <= self.base || a > issued => (self.base, true),
            Some(a) => (a, a < inner.trimmed),
        };
        let replay: Vec<JobEvent> = inner
            .log
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let snapshot_seq = replay.first().map_or(issued, |e| e.seq - 1).max(after);
        Subscription {
            snapshot,
            snapshot_seq,
            replay,
            rx: self
                .tx
                .get_or_init(|| broadcast::channel(FOLLOW_CAP).0)
                .subscribe(),
            after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfy_remote_protocol::api::Phase;

    fn progress(f: f64) -> EventData {
        let mut p = Progress::start(Phase::Running);
        p.fraction = f;
        EventData::Progress(p)
    }

    fn status() -> EventData {
        status_at("")
    }

    fn status_at(updated_at: &str) -> EventData {
        EventData::Status(Box::new(JobView {
            id: "j".into(),
            status: comfy_remote_protocol::api::JobStatus::Running,
            progress: Progress::start(Phase::Running),
            poll_url: String::new(),
            urls: comfy_remote_protocol::api::JobUrls::under("", "j"),
            created_at: String::new(),
            updated_at: updated_at.into(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
        }))
    }

    #[test]
    fn trimming_keeps_every_status_and_replay_after_a_gap_starts_with_a_snapshot() {
        let job = LiveJob::new(Progress::start(Phase::Queued), 0);
        job.publish(status_at("1"));
        for i in 0..LOG_CAP + 10 {
            job.publish(progress(i as f64 / 10_000.0));
            if i == 500 {
                job.publish(status_at("2"));
            }
        }
        job.publish(status_at("3"));
        let all = job.subscribe(None);
        assert!(!all.snapshot);
        assert_eq!(all.replay.len(), LOG_CAP);
        let statuses = all
            .replay
            .iter()
            .filter(|e| matches!(e.data, EventData::Status(_)))
            .count();
        assert_eq!(statuses, 3, "status events are never trimmed");
        // The reader saw event 2 only; 3.. were partly dropped: snapshot first.
        let gap = job.subscribe(Some(2));
        assert!(gap.snapshot);
        assert!(gap.replay.iter().all(|e| e.seq > 2));
        assert!(gap.snapshot_seq < gap.replay[0].seq);
        // A reader that saw everything held needs no snapshot.
        let last = all.replay.last().map(|e| e.seq).unwrap_or(0);
        let tail = job.subscribe(Some(last - 1));
        assert!(!tail.snapshot);
        assert_eq!(tail.replay.len(), 1);
    }

    #[test]
    fn the_same_status_again_is_not_an_event() {
        let job = LiveJob::new(Progress::start(Phase::Queued), 0);
        let sub = job.subscribe(None);
        for s in ["1", "1", "2", "2", "1"] {
            job.publish(status_at(s));
        }
        let mut rx = sub.rx;
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let EventData::Status(v) = ev.data {
                got.push(v.updated_at);
            }
        }
        assert_eq!(got, ["1", "2", "1"]);
        assert_eq!(job.subscribe(None).replay.len(), 3);
    }

    #[test]
    fn ids_of_an_earlier_process_or_unknown_ids_replay_everything_after_a_snapshot() {
        let base = 7 << 32;
        let job = LiveJob::new(Progress::start(Phase::Queued), base);
        job.publish(status());
        job.publish(progress(0.5));
        for stale in [3, base, base + 99] {
            let s = job.subscribe(Some(stale));
            assert!(s.snapshot, "{stale}");
            assert_eq!(
                s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [base + 1, base + 2]
            );
            assert_eq!(s.after, base);
        }
    }
}
