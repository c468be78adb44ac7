//! A TCP relay on loopback that behaves like a link: bytes cross at a set
//! bandwidth, one after another as on a wire, and arrive half a round trip
//! after they left, in each direction; optionally the first connections
//! break after some bytes. This kernel has no netem: the WAN benchmark and
//! the tests of resumed transfers run through this instead.
//!
//! At most one bandwidth-delay product (at least 256 KiB) is in flight per
//! direction, so the sender's TCP flow control sees a link, not an endless
//! buffer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

const CHUNK: usize = 64 << 10;

/// The link's shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Bandwidth in bytes per second each way; `None`: as fast as loopback.
    pub bytes_per_sec: Option<f64>,
    /// Round-trip time; each direction adds half.
    pub rtt: Duration,
}

impl Link {
    /// A link of `mbit` megabits per second and `rtt_ms` round trip.
    pub fn new(mbit: Option<f64>, rtt_ms: f64) -> Link {
        Link {
            bytes_per_sec: mbit.map(|m| m * 1e6 / 8.0),
            rtt: Duration::from_secs_f64(rtt_ms.max(0.0) / 1000.0),
        }
    }

    fn in_flight(&self) -> usize {
        let bdp = self.bytes_per_sec.unwrap_or(0.0) * self.rtt.as_secs_f64();
        (bdp as usize).max(256 << 10)
    }
}

/// Connections that break: a connection that has carried `up` bytes
/// towards the server or `down` towards the client is cut, until `count`
/// have been cut.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cuts {
    pub up: Option<u64>,
    pub down: Option<u64>,
    pub count: u64,
}

/// What the relay carried.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub up_bytes: AtomicU64,
    pub down_bytes: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Ordering::SeqCst),
            "cuts": self.cuts.load(Ordering::SeqCst),
            "up_bytes": self.up_bytes.load(Ordering::SeqCst),
            "down_bytes": self.down_bytes.load(Ordering::SeqCst),
        })
    }
}

/// Relay every connection accepted on `listener` to `target` through `link`.
pub async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    link: Link,
    cuts: Cuts,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    loop {
        let (down, _) = listener.accept().await?;
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let stats = stats.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let broken = Arc::new(Notify::new());
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            let upstream = pump(dr, uw, link, cuts, Way::Up, stats.clone(), broken.clone());
            let downstream = pump(ur, dw, link, cuts, Way::Down, stats, broken.clone());
            tokio::select! {
                _ = async { tokio::join!(upstream, downstream) } => {}
                // A cut: both ends lose the connection at once.
                _ = broken.notified() => {}
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Way {
    Up,
    Down,
}

/// Carry one direction: read as the sender sends, deliver each chunk once
/// the link has serialised it and the one-way delay has passed.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Link,
    cuts: Cuts,
    way: Way,
    stats: Arc<Stats>,
    broken: Arc<Notify>,
) {
    let slots = (link.in_flight() / CHUNK).max(1);
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(slots);
    let cut_after = match way {
        Way::Up => cuts.up,
        Way::Down => cuts.down,
    };
    // Claim one of the cuts left, if any.
    let claim = || {
        stats
            .cuts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cuts.count).then_some(n + 1)
            })
            .is_ok()
    };
    let reader = async move {
        let mut carried = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            buf.truncate(n);
            if let Some(limit) = cut_after {
                if carried + n as u64 >= limit && claim() {
                    buf.truncate((limit - carried) as usize);
                    let _ = tx.send((Instant::now(), buf)).await;
                    return true;
                }
            }
            carried += n as u64;
            if tx.send((Instant::now(), buf)).await.is_err() {
                return false;
            }
        }
    };
    let half = link.rtt / 2;
    let writer = async {
        let mut free_at = Instant::now();
        while let Some((sent_at, data)) = rx.recv().await {
            let wire = link.bytes_per_sec.map_or(Duration::ZERO, |r| {
                Duration::from_secs_f64(data.len() as f64 / r)
            });
            free_at = free_at.max(sent_at) + wire;
            tokio::time::sleep_until(free_at + half).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
            let counter = match way {
                Way::Up => &stats.up_bytes,
                Way::Down => &stats.down_bytes,
            };
            counter.fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    };
    let (cut, ()) = tokio::join!(reader, writer);
    if cut {
        broken.notify_waiters();
        broken.notify_one();
    } else {
        let _ = to.shutdown().await;
    }
}
