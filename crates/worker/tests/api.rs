//! Router tests without ComfyUI: auth, body checks, signature checks,
//! idempotency, cancel of a queued job, limits, and the OpenAPI snapshot.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use comfy_remote_protocol::api::CONTAINER_MEDIA_TYPE;
use comfy_remote_protocol::{encode, DType, Entry, Payload, Tensor, Value};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;
use common::{app, app_in, app_with, App, TOKEN};

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

fn patch(path: &str, offset: u64, body: Vec<u8>) -> Request<Body> {
    Request::patch(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header("upload-offset", offset.to_string())
        .body(Body::from(body))
        .expect("request")
}

#[tokio::test]
async fn a_resumable_upload_takes_pieces_in_order_and_submits_once() {
    let app = app();
    let body = container(vec![
        ("image", Some("IMAGE"), image(8)),
        ("steps", None, Value::Int(5)),
    ]);
    let (s, h, up) = call(&app, post("/v1/uploads", "application/json", vec![])).await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    let url = up["url"].as_str().expect("url").to_owned();
    assert_eq!(h[header::LOCATION], url.as_str());
    assert_eq!(up["offset"], 0);

    let (first, rest) = body.split_at(body.len() / 3);
    let (s, h, _) = call(&app, patch(&url, 0, first.to_vec())).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h["upload-offset"], first.len().to_string().as_str());
    // A piece that does not start where the upload ends is refused with
    // the offset to resume from, and nothing is appended.
    let (s, _, b) = call(&app, patch(&url, 0, first.to_vec())).await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"), "{b}");
    assert_eq!(b["error"]["details"]["offset"], first.len());
    let head = Request::head(&url)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let (s, h, _) = call(&app, head).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["upload-offset"], first.len().to_string().as_str());
    let (s, _, _) = call(&app, patch(&url, first.len() as u64, rest.to_vec())).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let id = up["id"].as_str().expect("id");
    let submit = || {
        let mut r = post(
            &format!("/v1/jobs?upload={id}"),
            CONTAINER_MEDIA_TYPE,
            vec![],
        );
        r.headers_mut()
            .insert("idempotency-key", "up-1".parse().expect("hv"));
        r
    };
    let (s, _, job) = call(&app, submit()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    // A retry of that submit (its answer lost) gets the same job.
    let (s, _, again) = call(&app, submit()).await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &job["id"]), "{again}");
    // The upload was hashed as its pieces came: the same bytes sent whole
    // under that key are the same job, other bytes are refused.
    let whole = |bytes: Vec<u8>| {
        let mut r = post("/v1/jobs", CONTAINER_MEDIA_TYPE, bytes);
        r.headers_mut()
            .insert("idempotency-key", "up-1".parse().expect("hv"));
        r
    };
    let (s, _, same) = call(&app, whole(body.clone())).await;
    assert_eq!((s, &same["id"]), (StatusCode::OK, &job["id"]), "{same}");
    let other = container(vec![("image", Some("IMAGE"), image(4))]);
    let (s, _, b) = call(&app, whole(other)).await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"), "{b}");
    // The upload became the job's inputs: it is gone.
    let (s, _, b) = call(
        &app,
        post(
            &format!("/v1/jobs?upload={id}"),
            CONTAINER_MEDIA_TYPE,
            vec![],
        ),
    )
    .await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"), "{b}");
    let (s, _, b) = call(&app, patch("/v1/uploads/not-a-uuid", 0, vec![1])).await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"), "{b}");
    // Auth holds on uploads as on jobs.
    let anon = Request::post("/v1/uploads")
        .body(Body::empty())
        .expect("request");
    let (s, _, _) = call(&app, anon).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_upload_past_the_body_limit_is_refused() {
    let app = app();
    let mut big = post("/v1/uploads", "application/json", vec![]);
    big.headers_mut().insert(
        "upload-length",
        ((1u64 << 20) + 1).to_string().parse().expect("hv"),
    );
    let (s, _, b) = call(&app, big).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{b}"
    );
    let (_, _, up) = call(&app, post("/v1/uploads", "application/json", vec![])).await;
    let url = up["url"].as_str().expect("url").to_owned();
    let (s, _, b) = call(&app, patch(&url, 0, vec![0; (1 << 20) + 10])).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{b}"
    );
}
