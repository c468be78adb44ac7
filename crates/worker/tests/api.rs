//! Router tests without ComfyUI: auth, body checks, signature checks,
//! idempotency, cancel of a queued job, limits, and the OpenAPI snapshot.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use comfy_remote_protocol::api::CONTAINER_MEDIA_TYPE;
use comfy_remote_protocol::{encode, DType, Entry, Payload, Tensor, Value};
use comfy_remote_worker::comfyui::{self, ComfyMode};
use comfy_remote_worker::store::Store;
use comfy_remote_worker::{router, AppState, Engine, EngineConfig, Workflow};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WF: &str = r#"{
  "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
  "2": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["9", 0]}},
  "3": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["1", 0]}},
  "9": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
}"#;
const TOKEN: &str = "s3cret";

struct App {
    router: axum::Router,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn app_with(f: impl FnOnce(&mut EngineConfig)) -> App {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = EngineConfig::new(dir.path().to_path_buf());
    config.max_body_bytes = 1 << 20;
    config.limits.max_total_bytes = 1 << 20;
    f(&mut config);
    let shutdown = CancellationToken::new();
    // Nothing listens on port 9: ComfyUI is never ready, jobs stay queued.
    let (comfy, _tasks) = comfyui::start(
        ComfyMode::Attach {
            url: "http://127.0.0.1:9".into(),
        },
        shutdown.clone(),
    );
    let store = Store::open(&dir.path().join("jobs.db")).expect("store");
    let wf = Workflow::parse("wf.json", WF).expect("workflow");
    let engine = Engine::new(config, store, wf, comfy, shutdown.clone());
    engine.recover().expect("recover");
    App {
        router: router(AppState::new(engine, Some(TOKEN), None)),
        _dir: dir,
        shutdown,
    }
}

fn app() -> App {
    app_with(|_| {})
}

fn image(h: usize) -> Value<'static> {
    let data = vec![0u8; h * 4 * 3 * 4];
    Value::Tensor(Tensor::new(DType::F32, vec![1, h, 4, 3], data).expect("tensor"))
}

fn container(entries: Vec<(&str, Option<&str>, Value<'static>)>) -> Vec<u8> {
    let entries = entries
        .into_iter()
        .map(|(n, t, v)| Entry {
            name: n.into(),
            comfy_type: t.map(comfy_remote_protocol::ComfyType::new),
            value: v,
        })
        .collect();
    encode(&Payload { entries }).expect("encode")
}

async fn call(
    app: &App,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let resp = app.router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn post(path: &str, ctype: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, ctype)
        .body(Body::from(body))
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request")
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn health_ready_and_auth() {
    let app = app();
    let (s, h, _) = call(
        &app,
        Request::get("/healthz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["comfy-remote-protocol"], "comfy-remote/1");
    let (s, _, b) = call(
        &app,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    let (s, _, b) = call(
        &app,
        Request::get("/v1/info").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!((s, code(&b)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let wrong = Request::get("/v1/info")
        .header(header::AUTHORIZATION, "Bearer s3creT")
        .body(Body::empty())
        .expect("req");
    assert_eq!(call(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let (s, _, b) = call(&app, get("/v1/info")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["inputs"][0]["name"], "image");
    assert_eq!(b["inputs"][1]["optional"], true);
    let (s, _, b) = call(&app, get("/nope")).await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn bad_submissions_get_stable_4xx() {
    let app = app();
    let good = container(vec![("image", Some("IMAGE"), image(2))]);
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "media type",
            post("/v1/jobs", "text/plain", good.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "bad json",
            post("/v1/jobs", "application/json", b"{".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "garbage container",
            post(
                "/v1/jobs",
                CONTAINER_MEDIA_TYPE,
                b"garbage!garbage!".to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "truncated",
            post(
                "/v1/jobs",
                CONTAINER_MEDIA_TYPE,
                good[..good.len() - 5].to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "oversize",
            post("/v1/jobs", CONTAINER_MEDIA_TYPE, vec![0; (1 << 20) + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "unknown name",
            post(
                "/v1/jobs",
                CONTAINER_MEDIA_TYPE,
                container(vec![("img", None, image(2))]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "missing",
            post(
                "/v1/jobs",
                CONTAINER_MEDIA_TYPE,
                container(vec![("steps", None, Value::Int(3))]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "wrong type",
            post(
                "/v1/jobs",
                CONTAINER_MEDIA_TYPE,
                container(vec![("image", None, Value::Str("x".into()))]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "json inputs wrong type",
            post(
                "/v1/jobs",
                "application/json",
                br#"{"inputs": {"image": 3}}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "bad job id",
            get("/v1/jobs/not-a-uuid"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, req, status, want) in cases {
        let (s, _, b) = call(&app, req).await;
        assert_eq!((s, code(&b)), (status, want), "{what}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // Lying Content-Length larger than the cap is refused before reading.
    let req = Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, CONTAINER_MEDIA_TYPE)
        .header(header::CONTENT_LENGTH, "99999999999")
        .body(Body::from(good))
        .expect("req");
    assert_eq!(call(&app, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn submit_idempotency_cancel_and_result() {
    let app = app();
    let body = container(vec![
        ("image", Some("IMAGE"), image(2)),
        ("steps", None, Value::Int(5)),
    ]);
    let with_key = |b: Vec<u8>| {
        let mut r = post("/v1/jobs", CONTAINER_MEDIA_TYPE, b);
        r.headers_mut()
            .insert("idempotency-key", "key-1".parse().expect("hv"));
        r
    };
    let (s, h, job) = call(&app, with_key(body.clone())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["progress"]["queue_position"], 0);
    assert_eq!(
        h[header::LOCATION],
        job["poll_url"].as_str().expect("poll_url")
    );
    assert!(job["poll_url"]
        .as_str()
        .expect("url")
        .ends_with(&format!("/v1/jobs/{id}")));
    let (s, _, again) = call(&app, with_key(body.clone())).await;
    assert_eq!(
        (s, again["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let other = container(vec![("image", Some("IMAGE"), image(3))]);
    let (s, _, b) = call(&app, with_key(other)).await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"));
    let (s, _, b) = call(&app, get(&format!("/v1/jobs/{id}/result"))).await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"));
    let (s, _, b) = call(
        &app,
        post(&format!("/v1/jobs/{id}/cancel"), "application/json", vec![]),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(b["status"], "canceled");
    assert_eq!(b["error"]["code"], "canceled");
    let (_, _, b) = call(&app, get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(b["status"], "canceled");
}

#[tokio::test]
async fn too_many_unfinished_jobs_is_429_with_retry_after() {
    let app = app_with(|c| c.max_active_jobs = 1);
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    assert_eq!(
        call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body.clone()))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let (s, h, b) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body)).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
    );
    assert!(h.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn events_of_a_queued_job_start_with_its_status() {
    let app = app();
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    let (_, _, job) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body)).await;
    let id = job["id"].as_str().expect("id");
    let resp = app
        .router
        .clone()
        .oneshot(get(&format!("/v1/jobs/{id}/events")))
        .await
        .expect("resp");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an event")
        .expect("frame")
        .expect("ok");
    let text = String::from_utf8(frame.into_data().expect("data").to_vec()).expect("utf8");
    assert!(
        text.contains("event: status") && text.contains("id: 1"),
        "{text}"
    );
}

#[test]
fn openapi_document_snapshot() {
    insta::assert_json_snapshot!("openapi", comfy_remote_worker::openapi::document());
}
