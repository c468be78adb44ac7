//! Comfy API v2 router tests without ComfyUI (jobs stay queued): auth,
//! submit of the served workflow with other input values and the refusal
//! of other graphs, the body checks, single-use keys, the queue limit,
//! assets (upload, dedup, from-hash, by-hash, Range, delete), cancel,
//! the event stream of a finished job and the stream limit.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use comfy_remote_worker::api_v2::{self, V2Config, V2};
use comfy_remote_worker::comfyui::{self, ComfyMode};
use comfy_remote_worker::store::Store;
use comfy_remote_worker::{router, AppState, Engine, EngineConfig, Workflow};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WF: &str = r#"{
  "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE", "default": ["8", 0]}},
  "2": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["9", 0]}},
  "3": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["1", 0]}},
  "8": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
  "9": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
}"#;
const TOKEN: &str = "s3cret";

struct App {
    router: axum::Router,
    engine: Arc<Engine>,
    _dir: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn app_with(f: impl FnOnce(&mut EngineConfig, &mut V2Config)) -> App {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = app_in(dir.path(), f);
    app._dir = Some(dir);
    app
}

/// A worker on the spool `dir` (a restart when one ran there before).
fn app_in(dir: &std::path::Path, f: impl FnOnce(&mut EngineConfig, &mut V2Config)) -> App {
    let mut config = EngineConfig::new(dir.to_path_buf());
    let mut v2config = V2Config {
        max_asset_bytes: 1 << 16,
        ..V2Config::default()
    };
    f(&mut config, &mut v2config);
    let shutdown = CancellationToken::new();
    // Nothing listens on port 9: ComfyUI is never ready, jobs stay queued.
    let (comfy, _tasks) = comfyui::start(
        ComfyMode::Attach {
            url: "http://127.0.0.1:9".into(),
            output_dir: None,
        },
        shutdown.clone(),
    );
    let store = Store::open(&dir.join("jobs.db")).expect("store");
    let wf = Workflow::parse("wf.json", WF).expect("workflow");
    let engine = Engine::new(config, store, wf, comfy, shutdown.clone());
    engine.recover().expect("recover");
    let v2 = V2::open(engine.clone(), v2config, Some(TOKEN), None).expect("v2");
    App {
        router: router(AppState::new(engine.clone(), Some(TOKEN), None)).merge(api_v2::router(v2)),
        engine,
        _dir: None,
        shutdown,
    }
}

fn app() -> App {
    app_with(|_, _| {})
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }
}

async fn call(app: &App, req: Request<Body>) -> Answer {
    let resp = app.router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn req(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "w.test:8189")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

/// Submit `graph`, which must be accepted: the new job's id.
async fn created(app: &App, graph: &Value) -> String {
    let r = call(app, submit_req(&json!({"workflow": graph}), None)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["id"].as_str().expect("id").to_owned()
}

/// A request without a body.
fn bare(method: &str, path: &str) -> Request<Body> {
    req(method, path).body(Body::empty()).expect("request")
}

fn submit_req(body: &Value, key: Option<&str>) -> Request<Body> {
    let mut r = req("POST", "/api/v2/jobs").header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    r.body(Body::from(body.to_string())).expect("request")
}

fn served() -> Value {
    serde_json::from_str(WF).expect("graph")
}

fn with_steps(n: i64) -> Value {
    let mut g = served();
    g["9"]["inputs"]["value"] = json!(n);
    g
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &px,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .expect("png");
    out
}

fn upload_req(bytes: &[u8], file_path: &str, expected_hash: Option<&str>) -> Request<Body> {
    let b = "XyZboundary";
    let mut body = Vec::new();
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    };
    field("content_type", "image/png");
    field("file_path", file_path);
    if let Some(h) = expected_hash {
        field("expected_hash", h);
    }
    body.extend_from_slice(
        format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_path}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    req("POST", "/api/v2/assets")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={b}"),
        )
        .body(Body::from(body))
        .expect("request")
}

fn asset_ref(id: &str) -> Value {
    json!({"__type": "core/ASSET", "info": {"id": id}})
}

#[tokio::test]
async fn health_is_open_and_everything_else_needs_the_token() {
    let app = app();
    let r = call(
        &app,
        Request::get("/api/v2/health")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(
        &app,
        Request::post("/api/v2/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"workflow": served()}).to_string()))
            .expect("req"),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = call(
        &app,
        req("PUT", "/api/v2/jobs").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = call(&app, bare("GET", "/api/v2/jobs/not-a-uuid")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn the_served_workflow_with_other_inputs_is_a_job_of_it() {
    let app = app();
    let r = call(&app, submit_req(&json!({"workflow": with_steps(7)}), None)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let job = r.json();
    let id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["urls"]["self"],
        format!("http://w.test:8189/api/v2/jobs/{id}")
    );
    assert_eq!(
        r.headers[header::LOCATION],
        job["urls"]["self"].as_str().expect("self")
    );
    for field in ["started_at", "completed_at", "queue_position", "error"] {
        assert!(job.get(field).is_some(), "{field} is required (nullable)");
    }
    assert_eq!(job["outputs"], json!([]));
    assert!(job["expires_at"].is_string() && job["created_at"].is_string());
    assert_eq!(job["progress"]["nodes_done"], 0);
    // The same job in protocol v1, with the value the graph gave.
    let v1 = call(&app, bare("GET", &format!("/v1/jobs/{id}"))).await;
    assert_eq!(v1.status, StatusCode::OK);
    let inputs = std::fs::read(app.engine.job_dir(&id).join("inputs.crc")).expect("inputs");
    let payload = comfy_remote_protocol::decode(&inputs, &Default::default()).expect("decode");
    assert_eq!(
        payload.get("steps").map(|e| e.value.clone()),
        Some(comfy_remote_protocol::Value::Int(7))
    );
    // Its workflow is the graph as submitted.
    let w = call(&app, bare("GET", &format!("/api/v2/jobs/{id}/workflow"))).await;
    assert_eq!(
        (w.json()["format"].as_str(), &w.json()["workflow"]),
        (Some("api"), &with_steps(7))
    );
    // Listed, newest first.
    let l = call(&app, bare("GET", "/api/v2/jobs?limit=5")).await;
    assert_eq!(l.json()["jobs"][0]["id"], id);
}

#[tokio::test]
async fn another_graph_is_refused_by_node_unless_any_workflow_is_allowed() {
    let app = app();
    let mut g = served();
    g["7"] = json!({"class_type": "SaveImage", "inputs": {"images": ["1", 0]}});
    let r = call(&app, submit_req(&json!({"workflow": g}), None)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow")
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        msg.contains("node 7 (SaveImage) is not in it") && msg.contains("--allow-any-workflow"),
        "{msg}"
    );
    let any = app_with(|_, v| v.allow_any_workflow = true);
    let id = created(&any, &g).await;
    // Kept in its record, so it runs after a restart; no directory is made for it.
    let kept = any.engine.store.unfinished_prompts().expect("store");
    let (_, record) = kept.iter().find(|(j, _)| *j == id).expect("its graph");
    let kept: serde_json::Value = serde_json::from_str(record).expect("json");
    assert_eq!(kept["prompt"]["7"]["class_type"], "SaveImage", "{kept}");
    assert!(!any.engine.job_dir(&id).exists());
}

#[tokio::test]
async fn a_graph_of_its_own_and_the_asset_it_reads_survive_a_restart_until_the_job_ends() {
    let spool = tempfile::tempdir().expect("tmp");
    let any = |_: &mut EngineConfig, v: &mut V2Config| v.allow_any_workflow = true;
    let first = app_in(spool.path(), any);
    let bytes = b"not really a png".to_vec();
    let asset = call(&first, upload_req(&bytes, "photo.png", None)).await;
    assert_eq!(asset.status, StatusCode::CREATED);
    let asset_id = asset.json()["id"].as_str().expect("id").to_owned();
    let g = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset_id}}}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
    });
    let id = created(&first, &g).await;
    // Its input is kept in the spool (the asset may be deleted meanwhile), not in a directory of its own.
    let kept = spool.path().join("inputs").join(format!("{id}.0"));
    assert_eq!(std::fs::read(&kept).expect("its input"), bytes);
    assert!(!first.engine.job_dir(&id).exists());
    drop(first);

    // A file no unfinished job reads (its job ended while the worker was stopped) goes at start.
    let stray = spool.path().join("inputs").join("ended-job.0");
    std::fs::write(&stray, b"x").expect("stray");
    let second = app_in(spool.path(), any);
    let job = call(&second, bare("GET", &format!("/api/v2/jobs/{id}"))).await;
    assert_eq!(
        (job.status, job.json()["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    assert_eq!(std::fs::read(&kept).expect("its input, still"), bytes);
    assert!(!stray.exists());
    // Its end takes its input with it.
    let canceled = call(&second, bare("POST", &format!("/api/v2/jobs/{id}/cancel"))).await;
    assert_eq!(
        canceled.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&canceled.body)
    );
    assert!(!kept.exists());
}

#[tokio::test]
async fn bodies_are_checked_before_anything_is_stored() {
    let app = app();
    for (body, status, code) in [
        // A UI graph is converted with ComfyUI's node definitions: not before it answers.
        (
            json!({"workflow": {"nodes": [], "links": []}}),
            429,
            "deployment_not_ready",
        ),
        (
            json!({"workflow": served(), "inputs": {"steps": 3}}),
            422,
            "invalid_workflow",
        ),
        (json!({"nothing": 1}), 422, "invalid_workflow"),
        (
            json!({"workflow": served(), "extra_data": {"x": 1}}),
            400,
            "invalid_request",
        ),
    ] {
        let r = call(&app, submit_req(&body, None)).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{body}"
        );
    }
    let r = call(
        &app,
        req("POST", "/api/v2/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{nope"))
            .expect("req"),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let r = call(
        &app,
        req("POST", "/api/v2/jobs")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("x"))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut g = served();
    g["9"]["inputs"]["value"] = json!("three");
    let r = call(&app, submit_req(&json!({"workflow": g}), None)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow")
    );
    assert_eq!(r.json()["error"]["details"]["input"], "steps");
    assert_eq!(
        app.engine
            .store
            .run(|s| s.active_count())
            .await
            .expect("count"),
        0
    );
}

#[tokio::test]
async fn keys_are_single_use_and_free_again_after_a_refusal() {
    let app = app_with(|c, _| c.max_active_jobs = 1);
    let body = json!({"workflow": with_steps(4)});
    let r = call(&app, submit_req(&body, Some("k-1"))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let again = call(&app, submit_req(&body, Some("k-1"))).await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reuse")
    );
    // The queue is full: 429 with Retry-After, and that key is not spent.
    let full = call(&app, submit_req(&body, Some("k-2"))).await;
    assert_eq!(
        (full.status, full.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "queue_full")
    );
    assert_eq!(full.headers[header::RETRY_AFTER], "5");
    let first = r.json()["id"].as_str().expect("id").to_owned();
    let c = call(&app, bare("POST", &format!("/api/v2/jobs/{first}/cancel"))).await;
    assert_eq!(
        (c.status, c.json()["status"].as_str()),
        (StatusCode::OK, Some("canceled"))
    );
    let retried = call(&app, submit_req(&body, Some("k-2"))).await;
    assert_eq!(
        retried.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    let bad = call(&app, submit_req(&body, Some("tab\tkey"))).await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn assets_are_content_addressed_ranged_and_become_inputs() {
    let app = app();
    let bytes = png(4, 3);
    let hash = comfy_remote_protocol::v2::view::blake3_hash(&bytes);
    let r = call(&app, upload_req(&bytes, "photo.png", Some(&hash))).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let a = r.json();
    assert_eq!(
        (
            a["hash"].as_str(),
            a["size_bytes"].as_u64(),
            a["created_new"].as_bool()
        ),
        (Some(hash.as_str()), Some(bytes.len() as u64), Some(true))
    );
    let id = a["id"].as_str().expect("id").to_owned();
    assert_eq!(
        a["url"],
        format!("http://w.test:8189/api/v2/assets/{id}/content")
    );
    // The same bytes again: a new record over the bytes the server has.
    let again = call(&app, upload_req(&bytes, "photo.png", None)).await;
    assert_eq!(
        (again.status, again.json()["created_new"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let head = call(
        &app,
        bare("HEAD", &format!("/api/v2/assets/by-hash/{hash}")),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    let unknown = format!("blake3:{}", "0".repeat(64));
    let head = call(
        &app,
        bare("HEAD", &format!("/api/v2/assets/by-hash/{unknown}")),
    )
    .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let minted = call(
        &app,
        req("POST", "/api/v2/assets/from-hash")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"hash": hash, "file_path": "again.png"}).to_string(),
            ))
            .expect("req"),
    )
    .await;
    assert_eq!(
        (minted.status, minted.json()["file_path"].as_str()),
        (StatusCode::CREATED, Some("again.png"))
    );
    let missing = call(
        &app,
        req("POST", "/api/v2/assets/from-hash")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"hash": unknown}).to_string()))
            .expect("req"),
    )
    .await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (StatusCode::NOT_FOUND, "blob_not_found")
    );
    // The bytes, whole and in a range.
    let full = call(&app, bare("GET", &format!("/api/v2/assets/{id}/content"))).await;
    assert_eq!(
        (
            full.status,
            full.body.as_slice(),
            full.headers[header::CONTENT_TYPE].to_str().ok()
        ),
        (StatusCode::OK, bytes.as_slice(), Some("image/png"))
    );
    let part = call(
        &app,
        req("GET", &format!("/api/v2/assets/{id}/content"))
            .header(header::RANGE, "bytes=1-4")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(
        (part.status, part.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &bytes[1..5])
    );
    assert_eq!(
        part.headers[header::CONTENT_RANGE],
        format!("bytes 1-4/{}", bytes.len())
    );
    let past = call(
        &app,
        req("GET", &format!("/api/v2/assets/{id}/content"))
            .header(header::RANGE, "bytes=999999-")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // Wrong declared hash, too large: nothing stored.
    let wrong = call(&app, upload_req(&bytes, "x.png", Some(&unknown))).await;
    assert_eq!(
        (wrong.status, wrong.code().as_str()),
        (StatusCode::CONFLICT, "hash_mismatch")
    );
    let big = call(&app, upload_req(&vec![7u8; 70_000], "big.bin", None)).await;
    assert_eq!(
        (big.status, big.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // The asset as the image input.
    let mut g = served();
    g["1"]["inputs"]["default"] = asset_ref(&id);
    let r = call(&app, submit_req(&json!({"workflow": g}), None)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let job = r.json()["id"].as_str().expect("id").to_owned();
    let inputs = std::fs::read(app.engine.job_dir(&job).join("inputs.crc")).expect("inputs");
    let payload = comfy_remote_protocol::decode(&inputs, &Default::default()).expect("decode");
    let Some(comfy_remote_protocol::Value::Tensor(t)) = payload.get("image").map(|e| &e.value)
    else {
        panic!("an IMAGE")
    };
    assert_eq!(t.shape, vec![1, 3, 4, 3]);
    g["1"]["inputs"]["default"] = asset_ref("7b6e0b5e-2f7b-4bb4-9c4a-1d2b3c4d5e6f");
    let r = call(&app, submit_req(&json!({"workflow": g}), None)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "missing_asset")
    );
    // Deleted: gone.
    let d = call(&app, bare("DELETE", &format!("/api/v2/assets/{id}"))).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let d = call(&app, bare("DELETE", &format!("/api/v2/assets/{id}"))).await;
    assert_eq!(d.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_canceled_jobs_stream_is_its_status_and_streams_are_limited() {
    let app = app_with(|_, v| v.max_event_streams = 1);
    let r = call(&app, submit_req(&json!({"workflow": with_steps(2)}), None)).await;
    let id = r.json()["id"].as_str().expect("id").to_owned();
    // A queued job's stream stays open: it takes the one slot.
    let open = app
        .router
        .clone()
        .oneshot(bare("GET", &format!("/api/v2/jobs/{id}/events")))
        .await
        .expect("stream");
    assert_eq!(open.status(), StatusCode::OK);
    let second = call(&app, bare("GET", &format!("/api/v2/jobs/{id}/events"))).await;
    assert_eq!(
        (second.status, second.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_streams")
    );
    assert!(second.headers.contains_key(header::RETRY_AFTER));
    call(&app, bare("POST", &format!("/api/v2/jobs/{id}/cancel"))).await;
    // The open stream ends with the terminal status; then its slot is free.
    let text = String::from_utf8(
        open.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    assert!(text.starts_with("event: "), "{text}");
    assert!(
        text.trim_end()
            .ends_with("data: {\"status\":\"canceled\",\"queue_position\":null}"),
        "{text}"
    );
    assert!(!text.contains("id:"), "v2 streams carry no ids: {text}");
    let done = call(&app, bare("GET", &format!("/api/v2/jobs/{id}/events"))).await;
    let text = String::from_utf8_lossy(&done.body).into_owned();
    assert_eq!(done.status, StatusCode::OK);
    assert!(text.contains("\"status\":\"canceled\""), "{text}");
}
