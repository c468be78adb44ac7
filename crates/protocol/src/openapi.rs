//! The OpenAPI 3.1 document of the jobs API, built by one function so it
//! cannot drift from the routes without the snapshot test noticing.

use crate::api::{
    CONTAINER_MEDIA_TYPE, HEADER_CODECS, HEADER_IMAGES, HEADER_JOB, HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_OFFSET,
};
use serde_json::{json, Value};

fn err_resp(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

fn job_resp(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobView"}}}})
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}});
    let codecs_param = json!({"name": HEADER_CODECS, "in": "header", "schema": {"type": "string"},
        "description": "The packings (§2.7) the client reads, comma-separated; the server packs only with these."});
    let images_param = json!({"name": HEADER_IMAGES, "in": "header", "schema": {"type": "string", "enum": ["8bit"]},
        "description": "8bit: IMAGE and MASK values may be rounded to 8 bits (lossy, with u8-grad-zstd)."});
    let offset_header = json!({HEADER_UPLOAD_OFFSET: {"schema": {"type": "integer"}, "description": "bytes held so far"}});
    let upload_id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}});
    json!({
      "openapi": "3.1.0",
      "info": {
        "title": "comfy-remote",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Jobs API (protocol comfy-remote/1) of a comfy-remote server in front of ComfyUI. See docs/protocol.md."
      },
      "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
          "ErrorBody": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {
              "code": {"type": "string", "enum": [
                "bad_request", "invalid_input", "invalid_payload", "unauthorized", "not_found", "conflict",
                "payload_too_large", "unsupported_media_type", "method_not_allowed", "too_many_requests", "range_not_satisfiable", "not_ready", "internal",
                "validation_failed", "execution_failed", "comfyui_unavailable", "worker_restarted", "canceled", "expired"]},
              "message": {"type": "string"},
              "details": {}
            }}}},
          "Progress": {"type": "object", "required": ["value", "max", "fraction", "phase"], "properties": {
            "value": {"type": "number"}, "max": {"type": "number"},
            "fraction": {"type": "number", "minimum": 0, "maximum": 1},
            "phase": {"type": "string", "enum": ["queued", "starting", "running", "collecting", "done"]},
            "node": {"type": "object", "properties": {"id": {"type": "string"}, "type": {"type": "string"}}},
            "step": {"type": "object", "properties": {"value": {"type": "integer"}, "max": {"type": "integer"}}},
            "queue_position": {"type": "integer"}, "nodes_done": {"type": "integer"}, "nodes_total": {"type": "integer"},
            "text": {"type": "string"}}},
          "JobView": {"type": "object", "required": ["id", "status", "progress", "poll_url", "urls", "created_at", "updated_at"], "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"]},
            "progress": {"$ref": "#/components/schemas/Progress"},
            "poll_url": {"type": "string"},
            "urls": {"type": "object", "properties": {"self": {"type": "string"}, "events": {"type": "string"}, "result": {"type": "string"}, "cancel": {"type": "string"}}},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "result": {"type": "object", "properties": {
              "url": {"type": "string"}, "bytes": {"type": "integer"},
              "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
              "inline": {"$ref": "#/components/schemas/JsonForm"}}},
            "error": {"$ref": "#/components/schemas/ErrorBody/properties/error"}}},
          "JsonForm": {"type": "object", "required": ["format", "data"], "properties": {
            "format": {"const": "comfy-remote/1+base64"}, "data": {"type": "string", "contentEncoding": "base64"}}},
          "Info": {"type": "object", "required": ["protocol", "server_version", "workflow", "inputs", "outputs", "limits"], "properties": {
            "protocol": {"type": "string"}, "server_version": {"type": "string"},
            "workflow": {"type": "object", "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}}},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/SignatureItem"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/SignatureItem"}},
            "codecs": {"type": "array", "items": {"type": "string"}, "description": "packings (§2.7) the server reads in a submit"},
            "features": {"type": "array", "items": {"type": "string", "enum": ["wait", "range", "uploads"]}},
            "limits": {"type": "object", "properties": {
              "max_body_bytes": {"type": "integer"}, "max_tensors": {"type": "integer"},
              "max_rank": {"type": "integer"}, "max_concurrent_jobs": {"type": "integer"}}}}},
          "SignatureItem": {"type": "object", "required": ["name", "type", "node_id"], "properties": {
            "name": {"type": "string"}, "type": {"type": "string"}, "optional": {"type": "boolean"}, "node_id": {"type": "string"},
            "default": {"description": "An optional input's value when omitted, when the workflow gives it as a constant.",
                        "oneOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string"}]}}}
        }
      },
      "security": [{"bearer": []}],
      "paths": {
        "/healthz": {"get": {"summary": "The worker process is alive.", "security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "ComfyUI answers.", "security": [], "responses": {"200": {"description": "ready"}, "503": err_resp("ComfyUI is not answering")}}},
        "/openapi.json": {"get": {"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {"description": "text exposition format"}, "401": err_resp("bad token")}}},
        "/v1/info": {"get": {"summary": "The workflow's inputs, outputs and the limits.", "responses": {
          "200": {"description": "signature", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Info"}}}},
          "401": err_resp("bad token")}}},
        "/v1/jobs": {"post": {
          "summary": "Submit a job: its inputs as a container (streamed to disk) or the JSON form.",
          "parameters": [
            {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200},
             "description": "A retried submit with the same key and body returns the same job; a different body is 409."},
            {"name": "retry", "in": "query", "schema": {"type": "boolean"},
             "description": "Run the job again if the worker restarts while it runs (else it fails with worker_restarted)."},
            {"name": "upload", "in": "query", "schema": {"type": "string", "format": "uuid"},
             "description": "Submit a finished resumable upload (§4.9) as the container; the body is then empty."},
            {"name": "Prefer", "in": "header", "schema": {"type": "string", "example": "wait=5"},
             "description": "wait=N: answer with the result (200, the container) if the job ends within N seconds (at most 60)."},
            codecs_param.clone(), images_param.clone()],
          "requestBody": {"required": false, "content": {
            CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/JsonForm"}}}},
          "responses": {
            "202": job_resp("accepted"),
            "200": {"description": "the job this Idempotency-Key already created (JSON), or with Prefer: wait, the result of a job that succeeded in time (the container)",
              "headers": {HEADER_JOB: {"schema": {"type": "string", "format": "uuid"}, "description": "the job of the result"}},
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobView"}},
                CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            "400": err_resp("bad body or invalid container (invalid_payload)"), "401": err_resp("bad token"),
            "409": err_resp("Idempotency-Key reused with another body"), "413": err_resp("body over max_body_bytes"),
            "415": err_resp("unsupported Content-Type"), "422": err_resp("inputs do not match the signature (invalid_input)"),
            "429": err_resp("too many unfinished jobs; see Retry-After")}}},
        "/v1/jobs/{id}": {"get": {"summary": "Job status and progress.", "parameters": [id_param.clone()],
          "responses": {"200": job_resp("the job"), "401": err_resp("bad token"), "404": err_resp("unknown job")}}},
        "/v1/jobs/{id}/events": {"get": {
          "summary": "Server-sent events: status, progress, preview, done. Each has an `id:`; send Last-Event-ID to resume.",
          "parameters": [id_param.clone(), {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}}],
          "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}, "401": err_resp("bad token"), "404": err_resp("unknown job")}}},
        "/v1/jobs/{id}/result": {"get": {"summary": "The outputs container of a succeeded job; Range and If-Range resume a broken download.",
          "parameters": [id_param.clone(), codecs_param, images_param,
            {"name": "Range", "in": "header", "schema": {"type": "string", "example": "bytes=1048576-"}},
            {"name": "If-Range", "in": "header", "schema": {"type": "string"}, "description": "the ETag of the bytes held"}],
          "responses": {"200": {"description": "container", "headers": {"ETag": {"schema": {"type": "string"}}},
              "content": {CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            "206": {"description": "the range asked for", "content": {CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            "416": err_resp("range outside the result; details.length is its size"),
            "401": err_resp("bad token"), "404": err_resp("unknown job"), "409": err_resp("not finished, failed or canceled"), "410": err_resp("expired")}}},
        "/v1/jobs/{id}/cancel": {"post": {"summary": "Cancel: a queued job at once; a running one is interrupted in ComfyUI (only that prompt).",
          "parameters": [id_param], "responses": {"202": job_resp("cancel accepted; the job ends canceled"), "401": err_resp("bad token"), "404": err_resp("unknown job")}}},
        "/v1/uploads": {"post": {"summary": "Start a resumable upload of a container (§4.9).",
          "parameters": [{"name": HEADER_UPLOAD_LENGTH, "in": "header", "schema": {"type": "integer"}, "description": "the total size, when known"}],
          "responses": {"201": {"description": "created: {id, offset, url}; Location is its URL", "headers": offset_header.clone(),
              "content": {"application/json": {"schema": {"type": "object", "required": ["id", "offset", "url"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "offset": {"type": "integer"}, "url": {"type": "string"}}}}}},
            "401": err_resp("bad token"), "413": err_resp("Upload-Length over max_body_bytes")}}},
        "/v1/uploads/{id}": {
          "head": {"summary": "The bytes the upload holds: resume from there.", "parameters": [upload_id.clone()],
            "responses": {"200": {"description": "held", "headers": offset_header.clone()}, "404": {"description": "unknown upload"}}},
          "patch": {"summary": "Append a piece that starts at Upload-Offset; what arrives stays even if the connection breaks.",
            "parameters": [upload_id, {"name": HEADER_UPLOAD_OFFSET, "in": "header", "required": true, "schema": {"type": "integer"}}],
            "requestBody": {"required": true, "content": {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"204": {"description": "appended", "headers": offset_header},
              "400": err_resp("no Upload-Offset, or the piece broke off"), "401": err_resp("bad token"), "404": err_resp("unknown upload"),
              "409": err_resp("the piece does not start where the upload ends; details.offset is where it does"), "413": err_resp("over max_body_bytes")}}}
      }
    })
}
