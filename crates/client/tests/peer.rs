//! The client against scripted HTTP peers on loopback: retries, idempotency,
//! SSE, polling fallback, the seed's JSON shape, cancel and timeouts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use comfy_remote_client::{
    Client, ClientError, ClientOptions, Job, JobEvent, LocalInput, RetryPolicy, Upload,
};
use serde_json::{json, Value};

#[derive(Default)]
struct Peer {
    /// (idempotency key, content type, body) of every submit attempt.
    submits: Vec<(String, String, Vec<u8>)>,
    /// The `Content-Length` header of every submit attempt.
    lengths: Vec<Option<String>>,
    /// Statuses to answer submits with before succeeding (e.g. 503, 429).
    submit_failures: Vec<u16>,
    polls: usize,
    cancels: usize,
    sse: bool,
    /// Keep the job running until it is canceled.
    never_finish: bool,
}

type Shared = Arc<Mutex<Peer>>;
/// Submitted bodies and the poll count of the seed-shape peer.
type SeedState = Arc<Mutex<(Vec<Value>, usize)>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Peer> {
    s.lock().expect("peer lock")
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    format!("http://{addr}")
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(5),
    }
}

fn options(url: &str) -> ClientOptions {
    let mut o = ClientOptions::new(url);
    o.retry = fast_retry();
    o.poll_interval = Duration::from_millis(20);
    o
}

fn job_view(base: &str, status: &str, fraction: f64, with_result: bool) -> Value {
    let mut v = json!({
        "id": "j1", "status": status,
        "progress": {"value": fraction, "max": 1.0, "fraction": fraction,
                      "phase": if status == "queued" { "queued" } else { "running" }},
        "poll_url": format!("{base}/v1/jobs/j1"),
        "urls": {"self": format!("{base}/v1/jobs/j1"), "events": format!("{base}/v1/jobs/j1/events"),
                 "result": format!("{base}/v1/jobs/j1/result"), "cancel": format!("{base}/v1/jobs/j1/cancel")},
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    });
    if with_result {
        v["result"] =
            json!({"url": format!("{base}/v1/jobs/j1/result"), "outputs": [], "bytes": 6});
    }
    v
}

/// A native peer: info, submit (scripted failures first), SSE or polling, result, cancel.
fn native(state: Shared, base: Arc<Mutex<String>>) -> Router {
    let b = move || base.lock().expect("base").clone();
    let (b1, b2, b3, b4) = (b.clone(), b.clone(), b.clone(), b.clone());
    Router::new()
        .route(
            "/v1/info",
            get(|| async {
                Json(json!({"protocol": "comfy-remote/1", "inputs": [
                    {"name": "image", "type": "IMAGE", "node_id": "1"},
                    {"name": "steps", "type": "INT", "node_id": "2"}], "outputs": []}))
            }),
        )
        .route(
            "/v1/jobs",
            post(move |State(s): State<Shared>, headers: HeaderMap, body: Bytes| {
                let base = b1();
                async move {
                    let mut p = lock(&s);
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    p.lengths.push(
                        headers
                            .get("content-length")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                    p.submits.push((key, ct, body.to_vec()));
                    if !p.submit_failures.is_empty() {
                        let code = p.submit_failures.remove(0);
                        let mut r = (
                            StatusCode::from_u16(code).expect("code"),
                            Json(json!({"error": {"code": "too_many_requests", "message": "busy"}})),
                        )
                            .into_response();
                        if code == 429 {
                            r.headers_mut().insert("retry-after", "1".parse().expect("hv"));
                        }
                        return r;
                    }
                    (StatusCode::ACCEPTED, Json(job_view(&base, "queued", 0.0, false))).into_response()
                }
            }),
        )
        .route(
            "/v1/jobs/j1",
            get(move |State(s): State<Shared>| {
                let base = b2();
                async move {
                    let mut p = lock(&s);
                    p.polls += 1;
                    let v = if p.cancels > 0 {
                        let mut v = job_view(&base, "canceled", 0.5, false);
                        v["status"] = json!("canceled");
                        v
                    } else if p.polls < 3 || p.never_finish {
                        job_view(&base, "running", 0.25 * p.polls as f64, false)
                    } else {
                        job_view(&base, "succeeded", 1.0, true)
                    };
                    Json(v)
                }
            }),
        )
        .route(
            "/v1/jobs/j1/events",
            get(move |State(s): State<Shared>| {
                let base = b3();
                async move {
                    if !lock(&s).sse {
                        return (StatusCode::NOT_FOUND, "no events here").into_response();
                    }
                    let running = job_view(&base, "running", 0.1, false);
                    let done = job_view(&base, "succeeded", 1.0, true);
                    let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG-ish");
                    let body = format!(
                        ": hello\n\nid: 1\nevent: status\ndata: {running}\n\n\
                         id: 2\nevent: progress\ndata: {{\"value\":1,\"max\":2,\"fraction\":0.5,\"phase\":\"running\",\"node\":{{\"id\":\"3\",\"type\":\"KSampler\"}},\"step\":{{\"value\":1,\"max\":2}}}}\n\n\
                         id: 3\nevent: progress\ndata: {{\"value\":0.2,\"max\":1,\"fraction\":0.2,\"phase\":\"running\"}}\n\n\
                         id: 4\nevent: preview\ndata: {{\"mime\":\"image/png\",\"data\":\"{png}\",\"node\":{{\"id\":\"3\"}}}}\n\n\
                         id: 5\nevent: done\ndata: {done}\n\n"
                    );
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from(body))
                        .expect("response")
                }
            }),
        )
        .route("/v1/jobs/j1/result", get(|| async { "OUTPUT" }))
        .route(
            "/v1/jobs/j1/cancel",
            post(move |State(s): State<Shared>| {
                let base = b4();
                async move {
                    lock(&s).cancels += 1;
                    Json(job_view(&base, "canceling", 0.5, false))
                }
            }),
        )
        .with_state(state)
}

async fn start_native(peer: Peer) -> (String, Shared) {
    let state = Arc::new(Mutex::new(peer));
    let base = Arc::new(Mutex::new(String::new()));
    let url = serve(native(state.clone(), base.clone())).await;
    *base.lock().expect("base") = url.clone();
    (url, state)
}

async fn drain(job: &mut Job) -> (Vec<JobEvent>, Result<Vec<u8>, ClientError>) {
    let mut events = Vec::new();
    while let Some(ev) = job.next().await {
        match ev {
            JobEvent::Done(b) => return (events, Ok(b)),
            JobEvent::Error(e) => return (events, Err(e)),
            other => events.push(other),
        }
    }
    panic!("job ended without a last event");
}

#[tokio::test]
async fn native_sse_job_reports_monotonic_progress_previews_and_result() {
    let (url, state) = start_native(Peer {
        sse: true,
        ..Peer::default()
    })
    .await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let names = client
        .plan_inputs(&[
            LocalInput {
                name: "value0".into(),
                comfy_type: Some("IMAGE".into()),
            },
            LocalInput {
                name: "value1".into(),
                comfy_type: Some("INT".into()),
            },
        ])
        .await
        .expect("signature fits");
    assert_eq!(names, ["image", "steps"]);
    let mut job = client.spawn_job(Bytes::from_static(b"CONTAINER"));
    let (events, result) = drain(&mut job).await;
    assert_eq!(result.expect("succeeds"), b"OUTPUT");
    let p = lock(&state);
    assert_eq!(p.submits.len(), 1);
    assert_eq!(p.submits[0].1, "application/vnd.comfy-remote.container");
    assert_eq!(
        p.submits[0].2, b"CONTAINER",
        "the body is exactly the container"
    );
    assert_eq!(p.polls, 0, "SSE was followed, not polling");
    let fractions: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress(p) => Some(p.fraction),
            _ => None,
        })
        .collect();
    assert!(
        fractions.windows(2).all(|w| w[0] <= w[1]),
        "monotonic: {fractions:?}"
    );
    assert_eq!(fractions.last(), Some(&1.0));
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress(p) => Some(p.text.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        texts.contains(&"running KSampler (#3) step 1/2 50%"),
        "{texts:?}"
    );
    assert!(events.iter().any(|e| matches!(e,
        JobEvent::Preview { mime, data, node } if mime == "image/png" && data == b"\x89PNG-ish" && node.as_deref() == Some("3"))));
}

#[tokio::test]
async fn polling_fallback_when_the_event_stream_is_missing() {
    let (url, state) = start_native(Peer::default()).await;
    let client = Arc::new(Client::new(options(&format!("{url}/v1/jobs"))).expect("client"));
    let mut job = client.spawn_job(Bytes::from_static(b"C"));
    let (events, result) = drain(&mut job).await;
    assert_eq!(result.expect("succeeds"), b"OUTPUT");
    assert!(lock(&state).polls >= 3);
    assert!(events
        .iter()
        .any(|e| matches!(e, JobEvent::Status { status } if status.as_str() == "running")));
}

#[tokio::test]
async fn submit_retries_429_and_503_with_one_idempotency_key_honouring_retry_after() {
    let (url, state) = start_native(Peer {
        submit_failures: vec![503, 429],
        ..Peer::default()
    })
    .await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let t0 = Instant::now();
    let mut job = client.spawn_job(Bytes::from_static(b"C"));
    let (_, result) = drain(&mut job).await;
    result.expect("succeeds after retries");
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    let mut job2 = client.spawn_job(Bytes::from_static(b"C"));
    drain(&mut job2).await.1.expect("second job");
    let p = lock(&state);
    assert_eq!(p.submits.len(), 4, "3 attempts + 1");
    let keys: Vec<&str> = p.submits.iter().map(|s| s.0.as_str()).collect();
    assert!(!keys[0].is_empty());
    assert!(
        keys[0] == keys[1] && keys[1] == keys[2],
        "one key across retries: {keys:?}"
    );
    assert_ne!(keys[2], keys[3], "a new submit gets a new key");
}

#[tokio::test]
async fn non_retryable_errors_surface_the_servers_message() {
    let router = Router::new()
        .route("/v1/info", get(|| async { Json(json!({"protocol": "comfy-remote/1"})) }))
        .route(
            "/v1/jobs",
            post(|| async {
                (StatusCode::UNPROCESSABLE_ENTITY,
                 Json(json!({"error": {"code": "invalid_input", "message": "input \"steps\" must be INT"}})))
            }),
        );
    let url = serve(router).await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    let err = result.expect_err("422");
    let msg = err.to_string();
    assert!(
        msg.contains("422") && msg.contains("invalid_input") && msg.contains("must be INT"),
        "{msg}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_fails_after_the_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = Client::new(options(&format!("http://{addr}"))).expect("client");
    let err = client.signature().await.expect_err("refused");
    assert!(
        matches!(err, ClientError::Unreachable { attempts: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancel_sends_the_remote_cancel_and_ends_canceled() {
    let (url, state) = start_native(Peer {
        never_finish: true,
        ..Peer::default()
    })
    .await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let mut job = client.spawn_job(Bytes::from_static(b"C"));
    // Wait until the job is known remotely, then cancel.
    loop {
        if let Some(JobEvent::Submitted { .. }) = job.next().await {
            break;
        }
    }
    let t0 = Instant::now();
    job.cancel();
    let (_, result) = drain(&mut job).await;
    assert!(
        matches!(result, Err(ClientError::Canceled { ref job_id }) if job_id == "j1"),
        "{result:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(lock(&state).cancels, 1);
}

#[tokio::test]
async fn job_timeout_cancels_remotely() {
    let (url, state) = start_native(Peer {
        never_finish: true,
        ..Peer::default()
    })
    .await;
    let mut o = options(&url);
    o.job_timeout = Some(Duration::from_millis(300));
    let client = Arc::new(Client::new(o).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    assert!(
        matches!(result, Err(ClientError::Timeout { .. })),
        "{result:?}"
    );
    assert_eq!(lock(&state).cancels, 1);
}

#[tokio::test]
async fn job_timeout_reports_the_configured_limit_and_zero_means_none() {
    let (url, _state) = start_native(Peer {
        never_finish: true,
        ..Peer::default()
    })
    .await;
    let mut o = options(&url);
    o.job_timeout = Some(Duration::from_millis(300));
    let client = Arc::new(Client::new(o).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    match result {
        Err(ClientError::Timeout { timeout, .. }) => {
            assert_eq!(timeout, Duration::from_millis(300))
        }
        other => panic!("{other:?}"),
    }

    // 0: no limit; the job runs until something else ends it.
    let (url, _state) = start_native(Peer::default()).await;
    let mut o = options(&url);
    o.job_timeout = Some(Duration::ZERO);
    let client = Arc::new(Client::new(o).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn job_timeout_before_any_submit_reports_the_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut o = options(&format!("http://{addr}"));
    // Retries outlast the timeout: the job times out while connecting.
    o.retry = RetryPolicy {
        max_attempts: 1000,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(1),
    };
    o.job_timeout = Some(Duration::from_millis(200));
    let client = Arc::new(Client::new(o).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    assert!(
        matches!(result, Err(ClientError::Unreachable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_plain_web_server_is_not_a_comfy_remote_endpoint() {
    let page = format!(
        "<!DOCTYPE html><html><head><title>Error</title><style>body{{}}</style></head><body><h1>Error response</h1><p>Unsupported method ('POST')</p>{}</body></html>",
        "x".repeat(1000)
    );
    let router = Router::new()
        .route(
            "/v1/info",
            get(|| async { (StatusCode::NOT_FOUND, "<html><body>nope</body></html>") }),
        )
        .route(
            "/",
            post(move || {
                let page = page.clone();
                async move { (StatusCode::NOT_IMPLEMENTED, page) }
            }),
        );
    let url = serve(router).await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    let msg = result.expect_err("not an endpoint").to_string();
    assert!(
        msg.contains("not a comfy-remote endpoint (GET /v1/info -> 404, POST / -> 501)"),
        "{msg}"
    );
    assert!(msg.contains("Unsupported method"), "{msg}");
    assert!(!msg.contains('<') && !msg.contains("body{"), "{msg}");
    assert!(msg.len() < 400, "{msg}");
}

/// An endpoint of the seed's shape: no /v1/info, JSON submit, synonyms, polling.
#[tokio::test]
async fn seed_shape_endpoint_with_synonyms_and_polling() {
    let state: SeedState = Arc::default();
    let router = Router::new()
        .route(
            "/run",
            post(
                |State(s): State<SeedState>, Json(body): Json<Value>| async move {
                    s.lock().expect("lock").0.push(body);
                    Json(json!({"status": "IN_QUEUE", "poll_url": "/status/abc", "progress": 0}))
                },
            ),
        )
        .route(
            "/status/abc",
            get(|State(s): State<SeedState>| async move {
                let mut g = s.lock().expect("lock");
                g.1 += 1;
                let data = base64::engine::general_purpose::STANDARD.encode(b"RESULT");
                match g.1 {
                    1 => Json(json!({"status": "processing", "progress": 40})),
                    2 => Json(json!({"status": "in_progress", "progress": {"value": 3, "max": 4}})),
                    _ => Json(json!({"status": "completed",
                        "result": {"format": "comfy-remote/1+base64", "data": data}})),
                }
            }),
        )
        .with_state(state.clone());
    let url = serve(router).await;
    let client = Arc::new(Client::new(options(&format!("{url}/run"))).expect("client"));
    assert!(client.signature().await.expect("resolves").is_none());
    let (events, result) = drain(&mut client.spawn_job(Bytes::from_static(b"CONTAINER"))).await;
    assert_eq!(result.expect("succeeds"), b"RESULT");
    let body = &state.lock().expect("lock").0[0];
    assert_eq!(body["format"], "comfy-remote/1+base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(body["data"].as_str().expect("data"))
            .expect("b64"),
        b"CONTAINER"
    );
    let fractions: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress(p) => Some(p.fraction),
            _ => None,
        })
        .collect();
    assert_eq!(fractions, [0.0, 0.4, 0.75, 1.0]);
}

#[tokio::test]
async fn failed_job_carries_the_remote_message() {
    let router = Router::new().route(
        "/",
        post(|| async {
            Json(json!({"status": "error", "error": "CUDA out of memory", "id": "x9"}))
        }),
    );
    let url = serve(router).await;
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let (_, result) = drain(&mut client.spawn_job(Bytes::from_static(b"C"))).await;
    let err = result.expect_err("failed");
    assert_eq!(err.to_string(), "remote job x9 failed: CUDA out of memory");
}

/// A peer whose signature changes: counts `GET /v1/info`, refuses submits with 400.
async fn start_counting_info() -> (String, Arc<Mutex<usize>>) {
    let hits = Arc::new(Mutex::new(0usize));
    let h = hits.clone();
    let router = Router::new()
        .route(
            "/v1/info",
            get(move || {
                let h = h.clone();
                async move {
                    *h.lock().expect("hits") += 1;
                    Json(json!({"protocol": "comfy-remote/1", "inputs": [
                        {"name": "image", "type": "IMAGE", "node_id": "1"}], "outputs": []}))
                }
            }),
        )
        .route(
            "/v1/jobs",
            post(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"code": "invalid_payload", "message": "no input named image"}})),
                )
            }),
        );
    (serve(router).await, hits)
}

#[tokio::test]
async fn signature_is_cached_for_its_ttl_and_forgotten_after_a_refused_submit() {
    let (url, hits) = start_counting_info().await;
    let image = [LocalInput {
        name: "value0".into(),
        comfy_type: Some("IMAGE".into()),
    }];
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    for _ in 0..3 {
        client.plan_inputs(&image).await.expect("fits");
    }
    assert_eq!(*hits.lock().expect("hits"), 1, "asked once within the TTL");

    let mut job = client.spawn_job(Bytes::from_static(b"CONTAINER"));
    let (_, result) = drain(&mut job).await;
    assert!(matches!(result, Err(ClientError::Http { status: 400, .. })));
    client.plan_inputs(&image).await.expect("fits");
    assert_eq!(
        *hits.lock().expect("hits"),
        2,
        "a refused payload makes the next call ask again"
    );

    let mut o = options(&url);
    o.signature_ttl = Duration::ZERO;
    let client = Client::new(o).expect("client");
    client.plan_inputs(&image).await.expect("fits");
    client.plan_inputs(&image).await.expect("fits");
    assert_eq!(*hits.lock().expect("hits"), 4, "a zero TTL asks every time");
}

#[tokio::test]
async fn file_upload_is_streamed_whole_again_on_each_retry() {
    let (url, state) = start_native(Peer {
        submit_failures: vec![503],
        ..Peer::default()
    })
    .await;
    // Several read chunks and an odd tail, so chunking and the length both matter.
    let data: Vec<u8> = (0..(600 << 10) + 13)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let dir = std::env::temp_dir().join(format!("cr-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("inputs.crc");
    std::fs::write(&path, &data).expect("write");
    let client = Arc::new(Client::new(options(&url)).expect("client"));
    let (_, result) = drain(&mut client.spawn_upload(Upload::File(path.clone()))).await;
    result.expect("job succeeds after the retry");
    {
        let p = lock(&state);
        assert_eq!(p.submits.len(), 2, "one 503, then accepted");
        let expected_len = data.len().to_string();
        for ((key, ct, body), len) in p.submits.iter().zip(&p.lengths) {
            assert_eq!(key, &p.submits[0].0, "one idempotency key across retries");
            assert_eq!(ct, "application/vnd.comfy-remote.container");
            assert_eq!(len.as_deref(), Some(expected_len.as_str()));
            assert!(body == &data, "body of {} bytes differs", body.len());
        }
    }

    // A missing file fails the job with a local error, before anything is sent.
    let missing = dir.join("missing.crc");
    let (_, result) = drain(&mut client.spawn_upload(Upload::File(missing))).await;
    assert!(
        matches!(result, Err(ClientError::Upload { .. })),
        "{result:?}"
    );
    assert_eq!(lock(&state).submits.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
