//! ComfyUI's answers as job outcomes: its `/prompt` validation errors, the
//! history of a finished prompt and a node's failure, turned into job
//! errors a user can act on. What names the server's internals (tracebacks,
//! ComfyUI's full validation body, which can list its model files) is
//! logged, never sent.

use comfy_remote_protocol::api::{ErrorCode, ErrorInfo};
use serde_json::{json, Value};

/// Outcome of a prompt in ComfyUI.
pub(super) enum Outcome {
    /// With the outputs ComfyUI showed for each node (`{node id: output}`,
    /// as in its history), when the job reads them.
    Success(Option<Value>),
    Failed(ErrorInfo),
    Canceled,
    /// The prompt vanished (ComfyUI restarted). `started`: it had begun executing.
    Lost {
        started: bool,
    },
    Shutdown,
}

pub(super) fn canceled_error() -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::Canceled,
        message: "canceled on request".into(),
        details: Value::Null,
    }
}

pub(super) fn internal_error(e: impl std::fmt::Display) -> ErrorInfo {
    tracing::error!("internal: {e}");
    ErrorInfo {
        code: ErrorCode::Internal,
        message: "internal error while collecting outputs; see the worker's log".into(),
        details: Value::Null,
    }
}
/// Turn ComfyUI's `/prompt` 400 body into one readable error: for each
/// failed node its id and type, the input and ComfyUI's message. The body
/// itself is logged, not sent: its details can list the server's model
/// files (`value_not_in_list` names every allowed value).
pub(super) fn validation_error(body: &Value, prompt: &serde_json::Map<String, Value>) -> ErrorInfo {
    tracing::warn!(body = %body, "ComfyUI rejected the prompt");
    let mut errors = Vec::new();
    if let Some(nodes) = body.get("node_errors").and_then(Value::as_object) {
        for (node, e) in nodes {
            let class = e
                .get("class_type")
                .and_then(Value::as_str)
                .or_else(|| {
                    prompt
                        .get(node)
                        .and_then(|n| n.get("class_type"))
                        .and_then(Value::as_str)
                })
                .unwrap_or_default();
            for x in e
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut message = x
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("invalid")
                    .to_owned();
                let extra = x.get("extra_info");
                let input = extra
                    .and_then(|i| i.get("input_name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if x.get("type").and_then(Value::as_str) == Some("value_not_in_list") {
                    // The value given, not the list of what the server has.
                    if let Some(v) = extra.and_then(|i| i.get("received_value")) {
                        message = format!("{message} ({v})");
                    }
                }
                errors.push(json!({
                    "node": {"id": node, "type": class},
                    "input": input,
                    "message": message,
                }));
            }
        }
    }
    let mut parts: Vec<String> = errors
        .iter()
        .map(|e| {
            let node = format!(
                "node {} ({})",
                e["node"]["id"].as_str().unwrap_or_default(),
                e["node"]["type"].as_str().unwrap_or_default()
            );
            match e["input"].as_str() {
                Some(i) => format!(
                    "{node} input {i}: {}",
                    e["message"].as_str().unwrap_or_default()
                ),
                None => format!("{node}: {}", e["message"].as_str().unwrap_or_default()),
            }
        })
        .collect();
    if parts.is_empty() {
        parts.push(
            body.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("prompt rejected")
                .to_owned(),
        );
    }
    parts.sort();
    ErrorInfo {
        code: ErrorCode::ValidationFailed,
        message: format!("ComfyUI rejected the workflow: {}", parts.join(" | ")),
        details: json!({ "errors": errors }),
    }
}

pub(super) fn outcome_from_history(h: &Value, cancel_requested: bool) -> Outcome {
    let status = h.get("status");
    let completed = status
        .and_then(|s| s.get("completed"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if completed {
        return Outcome::Success(h.get("outputs").cloned());
    }
    let messages = status
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for m in &messages {
        let kind = m.get(0).and_then(Value::as_str).unwrap_or_default();
        let data = m.get(1).cloned().unwrap_or(Value::Null);
        if kind == "execution_error" {
            let s = |k: &str| {
                data.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            return Outcome::Failed(execution_error(
                "",
                &s("node_id"),
                &s("node_type"),
                &s("exception_message"),
                &data,
            ));
        }
        if kind == "execution_interrupted" {
            return if cancel_requested {
                Outcome::Canceled
            } else {
                Outcome::Failed(ErrorInfo {
                    code: ErrorCode::ExecutionFailed,
                    message: "ComfyUI interrupted the prompt".into(),
                    details: Value::Null,
                })
            };
        }
    }
    // ComfyUI's status messages may carry tracebacks: logged, not sent.
    let status_text = h.get("status").map(Value::to_string).unwrap_or_default();
    tracing::warn!(status = %status_text, "prompt ended without success");
    Outcome::Failed(ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message: "ComfyUI finished the prompt without success; see the worker's log".into(),
        details: Value::Null,
    })
}

/// A node's failure: its id, type, and ComfyUI's exception type and
/// message. The traceback (with the server's paths) goes to the log only.
pub(super) fn execution_error(
    job: &str,
    node_id: &str,
    node_type: &str,
    message: &str,
    comfyui: &Value,
) -> ErrorInfo {
    let traceback = match comfyui.get("traceback") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .concat(),
        Some(Value::String(t)) => t.clone(),
        _ => String::new(),
    };
    tracing::warn!(
        job,
        node = node_id,
        node_type,
        "node failed: {message}\n{traceback}"
    );
    let exception_type = comfyui
        .get("exception_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message: format!("node {node_id} ({node_type}) failed: {message}"),
        details: json!({
            "node": {"id": node_id, "type": node_type},
            "comfyui": {"exception_type": exception_type, "exception_message": message},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_errors_keep_the_exception_but_not_the_traceback() {
        let data = json!({"node_id": "2", "node_type": "ImageInvert",
            "exception_type": "TypeError", "exception_message": "bad operand",
            "traceback": ["  File \"/srv/comfy/nodes.py\", line 1\n", "TypeError\n"]});
        let h = json!({"status": {"completed": false, "messages": [["execution_error", data]]}});
        let Outcome::Failed(e) = outcome_from_history(&h, false) else {
            panic!("not a failure")
        };
        assert_eq!(e.code, ErrorCode::ExecutionFailed);
        assert_eq!(e.details["node"], json!({"id": "2", "type": "ImageInvert"}));
        assert_eq!(e.details["comfyui"]["exception_type"], "TypeError");
        let text = serde_json::to_string(&e).expect("json");
        assert!(
            !text.contains("traceback") && !text.contains("/srv/comfy"),
            "{text}"
        );
        let odd = json!({"status": {"completed": false, "messages": [["odd", data]]}});
        let Outcome::Failed(e) = outcome_from_history(&odd, false) else {
            panic!("not a failure")
        };
        assert!(!serde_json::to_string(&e)
            .expect("json")
            .contains("/srv/comfy"));
    }

    use comfy_remote_contract::Workflow;

    fn wf() -> Workflow {
        Workflow::parse(
            "w",
            r#"{"1": {"class_type": "RemoteOutput", "inputs": {"name": "o", "value": ["2", 0]}},
            "2": {"class_type": "ImageBlur", "inputs": {}},
            "3": {"class_type": "CheckpointLoaderSimple", "inputs": {}}}"#,
        )
        .expect("wf")
    }

    #[test]
    fn validation_errors_name_node_type_input_and_message() {
        let body = json!({"error": {"message": "Prompt outputs failed validation"},
            "node_errors": {"2": {"errors": [{"type": "value_bigger_than_max",
                "message": "Value 500 bigger than max of 31", "details": "blur_radius",
                "extra_info": {"input_name": "blur_radius", "received_value": 500}}],
                "class_type": "ImageBlur"}}});
        let e = validation_error(&body, &wf().prompt);
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert_eq!(
            e.message,
            "ComfyUI rejected the workflow: node 2 (ImageBlur) input blur_radius: Value 500 bigger than max of 31"
        );
        assert_eq!(
            e.details,
            json!({"errors": [{"node": {"id": "2", "type": "ImageBlur"}, "input": "blur_radius",
                "message": "Value 500 bigger than max of 31"}]})
        );
    }

    #[test]
    fn validation_errors_never_list_the_servers_files() {
        let body = json!({"error": {"message": "Prompt outputs failed validation"},
            "node_errors": {"3": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'mine.safetensors' not in ['secret-a.safetensors', 'secret-b.ckpt']",
                "extra_info": {"input_name": "ckpt_name", "received_value": "mine.safetensors",
                    "input_config": [["secret-a.safetensors", "secret-b.ckpt"], {}]}}],
                "class_type": "CheckpointLoaderSimple"}}});
        let e = validation_error(&body, &wf().prompt);
        let text = serde_json::to_string(&e).expect("json");
        assert!(!text.contains("secret"), "{text}");
        assert!(
            e.message.contains(
                "node 3 (CheckpointLoaderSimple) input ckpt_name: Value not in list (\"mine.safetensors\")"
            ),
            "{}",
            e.message
        );
    }
}
