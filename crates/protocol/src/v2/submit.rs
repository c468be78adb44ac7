//! `POST /api/v2/jobs`: the body and its checks, `core/ASSET` references,
//! the `Idempotency-Key` rule, and how a value a graph carries becomes a
//! job input (a literal by the input's declared type, a file by its format).

use serde_json::{Map, Value as Json};

use super::errors::{Code, Refusal};
use crate::media::InputFormat;
use crate::types;
use crate::value::{ComfyType, Entry, Value};
use crate::Limits;

/// Largest JSON body of a v2 request (it is parsed in memory).
pub const MAX_SUBMIT_BODY: u64 = crate::http::MAX_JSON_BODY;

/// The tag of an asset reference inside a workflow.
pub const ASSET_TYPE: &str = "core/ASSET";

/// A checked submit body.
#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    /// The graph, as sent: the API format, or the UI (editor) format when
    /// [`Submit::ui_format`].
    pub workflow: Map<String, Json>,
    /// The graph is ComfyUI's UI format: a server converts it with its
    /// ComfyUI's node definitions, or refuses it ([`Submit::api_only`]).
    pub ui_format: bool,
    /// Per-prompt `extra_data` (only `api_key_comfy_org`); never stored.
    pub extra_data: Option<Map<String, Json>>,
}

/// Is this graph ComfyUI's UI (editor) format (`nodes` and `links` lists)
/// rather than the API format? The one test, wherever a workflow is taken.
pub fn is_ui_format(graph: &Map<String, Json>) -> bool {
    matches!(graph.get("nodes"), Some(Json::Array(_)))
        && matches!(graph.get("links"), Some(Json::Array(_)))
}

/// The refusal of a UI-format graph by a server that cannot convert it.
pub fn ui_format_refusal() -> Refusal {
    Refusal::new(
        Code::WorkflowFormatUi,
        "this is ComfyUI's UI (editor) format, which this server does not convert; open it in \
         ComfyUI and use Workflow > Export (API) to save the API format, then submit that",
    )
}

/// The refusal of a graph with no nodes.
pub fn no_nodes_refusal() -> Refusal {
    Refusal::new(Code::InvalidWorkflow, "the workflow has no nodes")
}

impl Submit {
    /// This submit, refused when its graph is in the UI format (for a server
    /// without a ComfyUI to convert it with).
    pub fn api_only(self) -> Result<Submit, Refusal> {
        if self.ui_format {
            return Err(ui_format_refusal());
        }
        Ok(self)
    }
}

/// Parse and check a submit body: a JSON object with a `workflow` object,
/// no reserved fields, a closed `extra_data`.
pub fn parse_submit(body: &[u8]) -> Result<Submit, Refusal> {
    let value: Json = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            Code::InvalidRequest,
            format!("the body is not JSON ({e}); send {{\"workflow\": {{...}}}}"),
        )
    })?;
    let Json::Object(mut body) = value else {
        return Err(Refusal::new(
            Code::InvalidRequest,
            "the body must be a JSON object: {\"workflow\": {...}}",
        ));
    };
    for reserved in ["inputs", "webhook_url"] {
        if body.get(reserved).is_some_and(|v| !v.is_null()) {
            return Err(Refusal::new(
                Code::InvalidWorkflow,
                format!("`{reserved}` is reserved by Comfy API v2 and not accepted; set input values in the workflow itself"),
            ));
        }
    }
    if body.get("metadata").is_some_and(|v| !v.is_null()) {
        return Err(Refusal::new(
            Code::MetadataNotSupported,
            "job labels (`metadata`) are not supported by this server; submit without them",
        ));
    }
    let workflow = match body.remove("workflow") {
        Some(Json::Object(w)) => w,
        Some(_) => {
            return Err(Refusal::new(
                Code::InvalidWorkflow,
                "`workflow` must be a JSON object: the API-format graph (node id -> {class_type, inputs})",
            ))
        }
        None => {
            return Err(Refusal::new(
                Code::InvalidWorkflow,
                "the body has no `workflow`: send {\"workflow\": <the API-format graph>}",
            ))
        }
    };
    let ui_format = is_ui_format(&workflow);
    if !ui_format && workflow.is_empty() {
        return Err(no_nodes_refusal());
    }
    let extra_data = match body.remove("extra_data") {
        None | Some(Json::Null) => None,
        Some(Json::Object(e)) => {
            if let Some(k) = e.keys().find(|k| *k != "api_key_comfy_org") {
                return Err(Refusal::new(
                    Code::InvalidRequest,
                    format!("`extra_data` takes only `api_key_comfy_org`, not `{k}`"),
                ));
            }
            if e.get("api_key_comfy_org").is_some_and(|v| !v.is_string()) {
                return Err(Refusal::new(
                    Code::InvalidRequest,
                    "`extra_data.api_key_comfy_org` must be a string",
                ));
            }
            Some(e)
        }
        Some(_) => {
            return Err(Refusal::new(
                Code::InvalidRequest,
                "`extra_data` must be an object",
            ))
        }
    };
    Ok(Submit {
        workflow,
        ui_format,
        extra_data,
    })
}

/// A `core/ASSET` reference: `{"__type": "core/ASSET", "info": {"id", "hash"?, "file_path"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRef {
    /// The asset id (authoritative when present).
    pub id: Option<String>,
    /// `blake3:<hex>`, a lookup hint when there is no id.
    pub hash: Option<String>,
    pub file_path: Option<String>,
}

impl AssetRef {
    /// What names the asset, for messages.
    pub fn label(&self) -> String {
        self.id
            .clone()
            .or_else(|| self.hash.clone())
            .unwrap_or_else(|| "<no id>".into())
    }
}

/// `Some` when `v` is tagged as an asset reference (`Err` with the reason
/// when it is tagged but malformed); `None` for any other value.
pub fn asset_ref(v: &Json) -> Option<Result<AssetRef, String>> {
    let obj = v.as_object()?;
    if obj.get("__type").and_then(Json::as_str) != Some(ASSET_TYPE) {
        return None;
    }
    let Some(info) = obj.get("info").and_then(Json::as_object) else {
        return Some(Err("a core/ASSET reference without an `info` object".into()));
    };
    let text = |k: &str| info.get(k).and_then(Json::as_str).map(str::to_owned);
    let r = AssetRef {
        id: text("id"),
        hash: text("hash"),
        file_path: text("file_path"),
    };
    if r.id.is_none() && r.hash.is_none() {
        return Some(Err(
            "a core/ASSET reference with neither `info.id` nor `info.hash`".into(),
        ));
    }
    Some(Ok(r))
}

/// Every asset reference in a graph (node id, input name, reference), in
/// node order; malformed ones refused with `missing_asset`.
pub fn asset_refs(graph: &Map<String, Json>) -> Result<Vec<(String, String, AssetRef)>, Refusal> {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for (id, node) in graph {
        let Some(inputs) = node.get("inputs").and_then(Json::as_object) else {
            continue;
        };
        for (field, v) in inputs {
            match asset_ref(v) {
                Some(Ok(r)) => found.push((id.clone(), field.clone(), r)),
                Some(Err(why)) => bad.push(format!("node {id} input {field}: {why}")),
                None => {}
            }
        }
    }
    if !bad.is_empty() {
        return Err(Refusal::new(Code::MissingAsset, bad.join("; "))
            .with_details(serde_json::json!({"missing_ids": []})));
    }
    Ok(found)
}

/// The refusal of references to assets this server does not hold.
pub fn missing_assets(missing: &[String]) -> Refusal {
    Refusal::new(
        Code::MissingAsset,
        format!(
            "unknown or expired asset(s): {}; upload them first (POST /api/v2/assets) and reference the ids it returns",
            missing.join(", ")
        ),
    )
    .with_details(serde_json::json!({ "missing_ids": missing }))
}

/// `Idempotency-Key` of v2: 1 to 255 printable ASCII characters (spaces
/// allowed, as comfy-sdk allows them), else 400.
pub fn idempotency_key(raw: &[u8]) -> Result<String, Refusal> {
    if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(Refusal::new(
            Code::InvalidRequest,
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// The refusal of a key already used.
pub fn key_reused() -> Refusal {
    Refusal::new(
        Code::IdempotencyKeyReuse,
        "this Idempotency-Key was already used (keys are single-use for 24 h); \
         poll the job the first request created, or use a new key for a new job",
    )
}

/// A file an asset holds, for [`input_entry`].
#[derive(Debug, Clone, Copy)]
pub struct AssetFile<'a> {
    pub file_path: Option<&'a str>,
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// What a graph gives an input: a JSON literal or an asset's file.
#[derive(Debug, Clone, Copy)]
pub enum Given<'a> {
    Literal(&'a Json),
    File(AssetFile<'a>),
}

/// The job input `name` (declared `declared`) a graph value becomes: a
/// literal by the protocol's value encoding (an int for a FLOAT is
/// widened, §1.2), a file by its format (PNG/JPEG an IMAGE, WAV an AUDIO,
/// safetensors its tensors). `where_` names the node and field for
/// messages. Refused with `invalid_workflow` when it is not of the type.
pub fn input_entry(
    name: &str,
    declared: &str,
    given: Given<'_>,
    where_: &str,
    limits: &Limits,
) -> Result<Entry<'static>, Refusal> {
    let bad = |message: String| {
        Refusal::new(Code::InvalidWorkflow, message)
            .with_details(serde_json::json!({ "input": name }))
    };
    let entry = match given {
        Given::Literal(json) => {
            if asset_ref(json).is_some() {
                return Err(bad(format!(
                    "{where_}: an asset reference here is not resolved"
                )));
            }
            let text = serde_json::to_vec(json).map_err(|e| bad(e.to_string()))?;
            let value =
                crate::parse_value(&text, limits).map_err(|e| bad(format!("{where_}: {e}")))?;
            if matches!(value, Value::List(_))
                && json
                    .as_array()
                    .is_some_and(|a| a.len() == 2 && a[0].is_string())
            {
                return Err(bad(format!(
                    "{where_} is a link; give the value of input {name:?} itself (a literal or an asset)"
                )));
            }
            Entry {
                name: name.to_owned(),
                comfy_type: None,
                value,
            }
        }
        Given::File(f) => {
            let format = InputFormat::detect(f.file_path, Some(f.content_type), f.bytes)
                .ok_or_else(|| {
                    bad(format!(
                        "{where_}: the asset {} ({}) is not a file this input can take; give a PNG or JPEG image, a WAV or a safetensors file",
                        f.file_path.unwrap_or("?"),
                        f.content_type
                    ))
                })?;
            let value = format
                .read(f.bytes)
                .map_err(|e| bad(format!("{where_}: the asset is {e}")))?;
            Entry {
                name: name.to_owned(),
                comfy_type: format.comfy_type().map(ComfyType::new),
                value,
            }
        }
    };
    types::conform(declared, entry).map_err(|e| bad(format!("{where_}: input {name:?} {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(body: Json) -> Code {
        parse_submit(body.to_string().as_bytes())
            .expect_err("refused")
            .code
    }

    #[test]
    fn bodies_are_checked_as_the_contract_says() {
        let ok = parse_submit(br#"{"workflow": {"1": {"class_type": "X", "inputs": {}}}, "extra_data": {"api_key_comfy_org": "k"}}"#)
            .expect("ok");
        assert_eq!(ok.workflow.len(), 1);
        assert!(ok.extra_data.is_some());
        assert_eq!(
            parse_submit(b"nope").expect_err("json").code,
            Code::InvalidRequest
        );
        assert_eq!(code(json!([1])), Code::InvalidRequest);
        assert_eq!(code(json!({})), Code::InvalidWorkflow);
        assert_eq!(code(json!({"workflow": 3})), Code::InvalidWorkflow);
        // A UI-format graph is taken as such, for a server to convert or refuse.
        let ui = parse_submit(br#"{"workflow": {"nodes": [], "links": []}}"#).expect("ui");
        assert!(ui.ui_format);
        assert_eq!(ui.api_only().expect_err("ui").code, Code::WorkflowFormatUi);
        assert!(!ok.ui_format);
        assert!(
            !parse_submit(
                br#"{"workflow": {"nodes": {"class_type": "X", "inputs": {}}, "links": 1}}"#
            )
            .expect("api")
            .ui_format
        );
        assert_eq!(
            code(json!({"workflow": {"1": {}}, "inputs": {"a": 1}})),
            Code::InvalidWorkflow
        );
        assert_eq!(
            code(json!({"workflow": {"1": {}}, "webhook_url": "http://x"})),
            Code::InvalidWorkflow
        );
        assert_eq!(
            code(json!({"workflow": {"1": {}}, "extra_data": {"other": 1}})),
            Code::InvalidRequest
        );
        assert_eq!(
            code(json!({"workflow": {"1": {}}, "metadata": {"a": "b"}})),
            Code::MetadataNotSupported
        );
    }

    #[test]
    fn asset_references_are_found_and_malformed_ones_refused() {
        let g = json!({"5": {"class_type": "LoadImage", "inputs": {
            "image": {"__type": "core/ASSET", "info": {"id": "a1", "file_path": "p.png"}}, "upload": "image"}}});
        let refs = asset_refs(g.as_object().expect("obj")).expect("refs");
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (
                refs[0].0.as_str(),
                refs[0].1.as_str(),
                refs[0].2.id.as_deref()
            ),
            ("5", "image", Some("a1"))
        );
        let bad = json!({"5": {"inputs": {"image": {"__type": "core/ASSET"}}}});
        assert_eq!(
            asset_refs(bad.as_object().expect("obj"))
                .expect_err("bad")
                .code,
            Code::MissingAsset
        );
        assert!(asset_ref(&json!({"__type": "other"})).is_none());
    }

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(idempotency_key(b"a key 1").is_ok());
        assert!(idempotency_key(&[b'k'; 255]).is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"tab\t", "é".as_bytes()] {
            assert_eq!(
                idempotency_key(bad).expect_err("bad").code,
                Code::InvalidRequest
            );
        }
    }

    #[test]
    fn literals_take_the_declared_type_and_files_their_format() {
        let l = Limits::default();
        let e = input_entry("steps", "INT", Given::Literal(&json!(5)), "node 3", &l).expect("int");
        assert_eq!(e.value, Value::Int(5));
        let e =
            input_entry("cfg", "FLOAT", Given::Literal(&json!(7)), "node 4", &l).expect("widened");
        assert_eq!(e.value, Value::Float(7.0));
        let r = input_entry("steps", "INT", Given::Literal(&json!("five")), "node 3", &l)
            .expect_err("type");
        assert_eq!(
            (r.code, r.details["input"].as_str()),
            (Code::InvalidWorkflow, Some("steps"))
        );
        let r = input_entry(
            "steps",
            "INT",
            Given::Literal(&json!(["9", 0])),
            "node 3",
            &l,
        )
        .expect_err("link");
        assert!(r.message.contains("is a link"), "{}", r.message);
        let file = AssetFile {
            file_path: Some("x.txt"),
            content_type: "text/plain",
            bytes: b"hi",
        };
        let r =
            input_entry("image", "IMAGE", Given::File(file), "node 1", &l).expect_err("not media");
        assert!(r.message.contains("PNG or JPEG"), "{}", r.message);
    }
}
