//! The client against a real worker on loopback, through a relay that
//! breaks connections: a large submit goes as a resumable upload and
//! arrives whole although its connections were cut.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use comfy_remote_client::{Client, ClientOptions, RetryPolicy, Upload};
use comfy_remote_contract::layout;
use comfy_remote_netsim::{serve, Cuts, Link, Stats};
use comfy_remote_protocol::api::{JobStatus, UPLOAD_MIN_BYTES};
use comfy_remote_protocol::{encode, DType, Entry, Payload, Tensor, Value};
use tokio::net::TcpListener;

mod common;
use common::{app_with, TOKEN};

/// Serve `router` on a loopback port.
async fn serve_router(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

/// A relay to `target` whose first `cuts` connections break once they
/// have carried `after` bytes towards the server: a link that breaks
/// mid-upload.
async fn cutting_relay(target: SocketAddr, after: u64, cuts: u64) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(Stats::default());
    let cuts = Cuts {
        up: Some(after),
        down: None,
        count: cuts,
    };
    tokio::spawn(serve(
        listener,
        target,
        Link::default(),
        cuts,
        stats.clone(),
    ));
    (addr, stats)
}

/// A container past [`UPLOAD_MIN_BYTES`] that does not compress.
fn big_container() -> Vec<u8> {
    let (h, w) = (1200usize, 1200usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..h * w * 3)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes()
        })
        .collect();
    let image = Tensor::new(DType::F32, vec![1, h, w, 3], data).expect("tensor");
    let payload = Payload {
        entries: vec![Entry {
            name: "image".into(),
            comfy_type: Some(comfy_remote_protocol::ComfyType::new("IMAGE")),
            value: Value::Tensor(image),
        }],
    };
    let body = encode(&payload).expect("encode");
    assert!(body.len() as u64 > UPLOAD_MIN_BYTES, "{} bytes", body.len());
    body
}

#[tokio::test]
async fn a_large_submit_survives_broken_connections_and_arrives_whole() {
    let app = app_with(|c| {
        c.max_body_bytes = 64 << 20;
        c.limits.max_total_bytes = 64 << 20;
    });
    let worker = serve_router(app.router.clone()).await;
    // The first three connections break after 3 MiB: within a piece.
    let (relay, stats) = cutting_relay(worker, 3 << 20, 3).await;
    let mut opts = ClientOptions::new(format!("http://{relay}"));
    opts.headers
        .push(("Authorization".into(), format!("Bearer {TOKEN}")));
    opts.retry = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(1),
    };
    opts.submit_wait = None;
    let client = Client::new(opts).expect("client");
    let body = big_container();
    let (_, doc) = client
        .submit_upload(Upload::Bytes(body.clone().into()), "big-1")
        .await
        .expect("submit");
    assert_eq!(doc.status, Some(JobStatus::Queued));
    assert_eq!(
        stats.cuts.load(Ordering::SeqCst),
        3,
        "the relay cut connections"
    );
    // What arrived before each cut was kept: the body crossed about once.
    let carried = stats.up_bytes.load(Ordering::SeqCst) as usize;
    assert!(
        carried < body.len() + (1 << 20),
        "{carried} bytes carried for a {}-byte body",
        body.len()
    );
    let id = doc.id.expect("job id");
    let inputs = std::fs::read(layout::inputs_file(&app.engine.job_dir(&id))).expect("inputs");
    assert!(inputs == body, "the job's inputs differ from the body sent");
    // Nothing is left over in the upload area.
    let leftovers = std::fs::read_dir(app.engine.config.spool_dir.join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
}
