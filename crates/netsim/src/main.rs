//! `wan-relay --target 127.0.0.1:8189 --mbit 100 --rtt-ms 40`: a link on
//! loopback (see the library). Prints `listening <addr>` once bound, then
//! its counters as one JSON line per connection that ends; exits on
//! SIGTERM or when stdin closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use comfy_remote_netsim::{serve, Cuts, Link, Stats};
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser)]
#[command(about = "A TCP relay shaped like a link: bandwidth, round-trip time, broken connections")]
struct Args {
    /// Where to relay to (host:port).
    #[arg(long)]
    target: SocketAddr,
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Bandwidth each way in Mbit/s (default: unshaped).
    #[arg(long)]
    mbit: Option<f64>,
    /// Round-trip time in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Cut a connection once it has carried this many bytes towards the server.
    #[arg(long)]
    cut_up: Option<u64>,
    /// Cut a connection once it has carried this many bytes towards the client.
    #[arg(long)]
    cut_down: Option<u64>,
    /// How many connections to cut, at most.
    #[arg(long, default_value_t = 1)]
    cuts: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let stats = Arc::new(Stats::default());
    let cuts = Cuts {
        up: a.cut_up,
        down: a.cut_down,
        count: if a.cut_up.is_some() || a.cut_down.is_some() {
            a.cuts
        } else {
            0
        },
    };
    let relay = serve(
        listener,
        a.target,
        Link::new(a.mbit, a.rtt_ms),
        cuts,
        stats.clone(),
    );
    let report = async {
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = stats.snapshot().to_string();
            if now != last {
                println!("{now}");
                last = now;
            }
        }
    };
    let stdin_closed = async {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {}
    };
    tokio::select! {
        r = relay => r,
        () = report => Ok(()),
        () = stdin_closed => Ok(()),
    }
}
