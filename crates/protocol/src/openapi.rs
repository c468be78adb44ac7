//! The OpenAPI 3.1 document of the jobs API, built by one function so it
//! cannot drift from the routes without the snapshot test noticing.

use crate::api::CONTAINER_MEDIA_TYPE;
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
                "payload_too_large", "unsupported_media_type", "method_not_allowed", "too_many_requests", "not_ready", "internal",
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
            "limits": {"type": "object", "properties": {
              "max_body_bytes": {"type": "integer"}, "max_tensors": {"type": "integer"},
              "max_rank": {"type": "integer"}, "max_concurrent_jobs": {"type": "integer"}}}}},
          "SignatureItem": {"type": "object", "required": ["name", "type", "node_id"], "properties": {
            "name": {"type": "string"}, "type": {"type": "string"}, "optional": {"type": "boolean"}, "node_id": {"type": "string"}}}
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
             "description": "Run the job again if the worker restarts while it runs (else it fails with worker_restarted)."}],
          "requestBody": {"required": true, "content": {
            CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/JsonForm"}}}},
          "responses": {
            "202": job_resp("accepted"), "200": job_resp("the job this Idempotency-Key already created"),
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
        "/v1/jobs/{id}/result": {"get": {"summary": "The outputs container of a succeeded job.", "parameters": [id_param.clone()],
          "responses": {"200": {"description": "container", "content": {CONTAINER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            "401": err_resp("bad token"), "404": err_resp("unknown job"), "409": err_resp("not finished, failed or canceled"), "410": err_resp("expired")}}},
        "/v1/jobs/{id}/cancel": {"post": {"summary": "Cancel: a queued job at once; a running one is interrupted in ComfyUI (only that prompt).",
          "parameters": [id_param], "responses": {"202": job_resp("cancel accepted; the job ends canceled"), "401": err_resp("bad token"), "404": err_resp("unknown job")}}}
      }
    })
}
