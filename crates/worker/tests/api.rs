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
    engine: std::sync::Arc<Engine>,
    _dir: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn app_with(f: impl FnOnce(&mut EngineConfig)) -> App {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = app_in(dir.path(), f);
    app._dir = Some(dir);
    app
}

/// A worker on the spool `dir` (a restart when one ran there before).
fn app_in(dir: &std::path::Path, f: impl FnOnce(&mut EngineConfig)) -> App {
    let mut config = EngineConfig::new(dir.to_path_buf());
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
    let store = Store::open(&dir.join("jobs.db")).expect("store");
    let wf = Workflow::parse("wf.json", WF).expect("workflow");
    let engine = Engine::new(config, store, wf, comfy, shutdown.clone());
    engine.recover().expect("recover");
    App {
        router: router(AppState::new(engine.clone(), Some(TOKEN), None)),
        engine,
        _dir: None,
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
    // Public: ready and a reason only, never ComfyUI's address or pid.
    let details = b["error"]["details"].as_object().expect("details");
    let mut keys: Vec<_> = details.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ready", "reason"], "{b}");
    assert!(!b.to_string().contains("127.0.0.1"), "{b}");
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
            "json inputs with a bad tree",
            post(
                "/v1/jobs",
                "application/json",
                br#"{"inputs": {"image": {"$nope": 1}}}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "json inputs with a blob reference",
            post(
                "/v1/jobs",
                "application/json",
                br#"{"inputs": {"image": {"$t": "t0"}}}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
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
        if want == "invalid_payload" {
            assert!(b["error"]["details"]["kind"].is_string(), "{what}: {b}");
        }
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
async fn a_new_idempotency_key_does_not_get_past_the_job_limit() {
    let app = app_with(|c| c.max_active_jobs = 1);
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    let keyed = |k: &str| {
        let mut r = post("/v1/jobs", CONTAINER_MEDIA_TYPE, body.clone());
        r.headers_mut()
            .insert("idempotency-key", k.parse().expect("hv"));
        r
    };
    let (s, _, first) = call(&app, keyed("k-1")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, h, b) = call(&app, keyed("k-2")).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    // A replay of the known key still answers with its job.
    let (s, _, again) = call(&app, keyed("k-1")).await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &first["id"]));
}

#[tokio::test]
async fn framework_errors_carry_the_error_body() {
    let app = app();
    for (req, status, want) in [
        (
            get("/v1/jobs"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            post("/v1/info", "application/json", vec![]),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Request::delete("/healthz")
                .body(Body::empty())
                .expect("req"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (get("/v1/jobs/a/b/c"), StatusCode::NOT_FOUND, "not_found"),
        (get("/v2/whatever"), StatusCode::NOT_FOUND, "not_found"),
    ] {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, h, b) = call(&app, req).await;
        assert_eq!((s, code(&b)), (status, want), "{what}: {b}");
        assert!(b["error"]["message"].is_string(), "{what}: {b}");
        assert_eq!(h["comfy-remote-protocol"], "comfy-remote/1");
    }
}

#[tokio::test]
async fn a_job_waiting_past_the_queue_timeout_fails_with_comfyui_unavailable() {
    let app = app_with(|c| c.queue_timeout = Duration::from_millis(300));
    tokio::spawn(app.engine.clone().dispatch());
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    let (s, _, job) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let url = format!("/v1/jobs/{}", job["id"].as_str().expect("id"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let (_, _, b) = call(&app, get(&url)).await;
        if b["status"] != "queued" {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "still queued: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "comfyui_unavailable");
    let msg = failed["error"]["message"].as_str().expect("message");
    assert!(msg.contains("has not been reachable since"), "{msg}");
}

#[tokio::test]
async fn no_queue_timeout_waits_forever() {
    let app = app_with(|c| {
        c.queue_timeout = Duration::ZERO;
    });
    tokio::spawn(app.engine.clone().dispatch());
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    let (_, _, job) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body)).await;
    // The dispatcher checks at least once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _, b) = call(
        &app,
        get(&format!("/v1/jobs/{}", job["id"].as_str().expect("id"))),
    )
    .await;
    assert_eq!(b["status"], "queued", "{b}");
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
        text.contains("event: status") && text.contains("id: "),
        "{text}"
    );
}

/// Read SSE events (`(id, name)`) from `body` until `n` arrived.
async fn sse_events(body: &mut Body, n: usize) -> Vec<(u64, String)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an event")
            .expect("frame")
            .expect("ok");
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).expect("utf8"));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |k: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(str::to_owned))
            };
            if let (Some(id), Some(ev)) = (field("id: "), field("event: ")) {
                out.push((id.parse().expect("numeric id"), ev));
            }
        }
    }
    out
}

async fn open_events(app: &App, id: &str, last: Option<u64>) -> Body {
    let mut req = get(&format!("/v1/jobs/{id}/events"));
    if let Some(l) = last {
        req.headers_mut()
            .insert("last-event-id", l.to_string().parse().expect("hv"));
    }
    let resp = app.router.clone().oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

#[tokio::test]
async fn event_ids_keep_growing_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let body = container(vec![("image", Some("IMAGE"), image(2))]);
    let (id, old_last) = {
        let app = app_in(dir.path(), |_| {});
        let (_, _, job) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body.clone())).await;
        let id = job["id"].as_str().expect("id").to_owned();
        // A second job and its cancel: more events, higher ids for the first.
        let (_, _, other) = call(&app, post("/v1/jobs", CONTAINER_MEDIA_TYPE, body.clone())).await;
        let mut events = open_events(&app, &id, None).await;
        let first = sse_events(&mut events, 1).await;
        let other = other["id"].as_str().expect("id");
        call(
            &app,
            post(
                &format!("/v1/jobs/{other}/cancel"),
                "application/json",
                vec![],
            ),
        )
        .await;
        (id, first.last().expect("event").0)
    };
    // The worker restarts; the client reconnects with the id it saw last.
    let app = app_in(dir.path(), |_| {});
    let mut events = open_events(&app, &id, Some(old_last)).await;
    let got = sse_events(&mut events, 1).await;
    assert_eq!(got[0].1, "status", "{got:?}");
    assert!(got[0].0 > old_last, "{got:?} after {old_last}");
    // What happens next reaches the reader: nothing is filtered as old.
    call(
        &app,
        post(&format!("/v1/jobs/{id}/cancel"), "application/json", vec![]),
    )
    .await;
    let mut got = Vec::new();
    while !got.iter().any(|(_, e): &(u64, String)| e == "done") {
        got.extend(sse_events(&mut events, 1).await);
    }
    assert!(got.iter().all(|(i, _)| *i > old_last), "{got:?}");
    let ids: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // A reader that saw everything of this process gets no snapshot again.
    let last = *ids.last().expect("id");
    let (_, _, b) = call(&app, get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(b["status"], "canceled");
    let mut events = open_events(&app, &id, Some(last - 1)).await;
    assert_eq!(
        sse_events(&mut events, 1).await,
        [(last, "done".to_owned())]
    );
}

#[test]
fn openapi_document_snapshot() {
    insta::assert_json_snapshot!("openapi", comfy_remote_protocol::openapi::document());
}
