//! The two JSON forms of a payload: the base64 wrapper of a container
//! (`{"format":"comfy-remote/1+base64","data":...}`) and the plain inputs
//! form for small tensor-free payloads (`{"inputs":{"name":<node>,...}}`).

use base64::Engine as _;

use crate::api::{JsonForm, JSON_FORM_FORMAT};
use crate::container::{decode, encode, Limits};
use crate::error::CodecError;
use crate::tree::{check_unique_keys, parse_json, Json, Node, Path, TreeParser};
use crate::value::{Entry, Payload, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl JsonForm {
    /// Wrap container bytes.
    pub fn from_container(bytes: &[u8]) -> JsonForm {
        JsonForm {
            format: JSON_FORM_FORMAT.to_owned(),
            data: B64.encode(bytes),
        }
    }

    /// Encode a payload straight into the JSON form.
    pub fn encode(payload: &Payload<'_>) -> Result<JsonForm, CodecError> {
        Ok(JsonForm::from_container(&encode(payload)?))
    }

    /// The container bytes, checked against `limits.max_total_bytes`
    /// before decoding the base64.
    pub fn container_bytes(&self, limits: &Limits) -> Result<Vec<u8>, CodecError> {
        if self.format != JSON_FORM_FORMAT {
            return Err(CodecError::InvalidJsonBody {
                reason: format!(
                    "`format` is `{}`, expected `{JSON_FORM_FORMAT}`",
                    self.format
                ),
            });
        }
        let decoded_len = (self.data.len() as u64 / 4) * 3;
        if decoded_len > limits.max_total_bytes.saturating_add(3) {
            return Err(CodecError::TooLarge {
                size: decoded_len,
                limit: limits.max_total_bytes,
            });
        }
        B64.decode(self.data.as_bytes())
            .map_err(|e| CodecError::InvalidJsonBody {
                reason: format!("`data` is not standard base64: {e}"),
            })
    }
}

/// A JSON request or response body, parsed but not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonBody {
    /// `{"format":..., "data":...}`: the container bytes; decode them with
    /// [`crate::decode`] (tensors then borrow from this vector).
    Container(Vec<u8>),
    /// `{"inputs":{...}}`: a tensor-free payload whose types are inferred.
    Inputs(Payload<'static>),
}

impl JsonBody {
    /// Decode into an owned payload (tensors of the container form are
    /// copied out once; use [`JsonBody::Container`] directly to avoid that).
    pub fn into_payload(self, limits: &Limits) -> Result<Payload<'static>, CodecError> {
        match self {
            JsonBody::Container(bytes) => Ok(decode(&bytes, limits)?.into_owned()),
            JsonBody::Inputs(p) => Ok(p),
        }
    }
}

/// Parse a JSON body in either form. The body is at most a few levels deep
/// besides the value trees, which are bounded by `limits.max_depth`.
pub fn parse_json_body(body: &[u8], limits: &Limits) -> Result<JsonBody, CodecError> {
    if body.len() as u64 > limits.max_total_bytes.saturating_mul(2) {
        return Err(CodecError::TooLarge {
            size: body.len() as u64,
            limit: limits.max_total_bytes,
        });
    }
    let json = parse_json(
        body,
        limits.max_depth.saturating_mul(2).saturating_add(4),
        "JSON body",
    )
    .map_err(|e| match e {
        CodecError::InvalidHeader { message } => CodecError::InvalidJsonBody { reason: message },
        other => other,
    })?;
    let Json::Object(members) = &json else {
        return Err(CodecError::InvalidJsonBody {
            reason: "expected an object with `inputs`, or with `format` and `data`".into(),
        });
    };
    check_unique_keys(members, &Path::root("body"))?;
    let get = |k: &str| members.iter().find(|(m, _)| m == k).map(|(_, v)| v);
    if let Some(inputs) = get("inputs") {
        if members.len() != 1 {
            return Err(CodecError::InvalidJsonBody {
                reason: "the inputs form has exactly one key, `inputs`".into(),
            });
        }
        return parse_inputs(inputs, limits).map(JsonBody::Inputs);
    }
    match (get("format"), get("data"), members.len()) {
        (Some(Json::Str(format)), Some(Json::Str(data)), 2) => {
            let form = JsonForm {
                format: format.clone(),
                data: data.clone(),
            };
            Ok(JsonBody::Container(form.container_bytes(limits)?))
        }
        _ => Err(CodecError::InvalidJsonBody {
            reason: "expected {\"inputs\": {...}} or {\"format\": \"comfy-remote/1+base64\", \"data\": \"...\"}".into(),
        }),
    }
}

/// Parse and decode a JSON body into an owned payload.
pub fn decode_json_body(body: &[u8], limits: &Limits) -> Result<Payload<'static>, CodecError> {
    parse_json_body(body, limits)?.into_payload(limits)
}

/// A JSON text as one value, in the tree encoding of §2.3 without blobs:
/// objects are dicts, `{"$tuple": [...]}` a tuple, `{"$f": "nan"}` a NaN,
/// integer literals ints and other numbers floats. The one JSON-to-value
/// conversion: the inputs form, `comfy-remote run`'s `json:` inputs and
/// plain results of simple endpoints all read values with it.
pub fn parse_value(text: &[u8], limits: &Limits) -> Result<Value<'static>, CodecError> {
    let json =
        parse_json(text, limits.max_depth.saturating_add(4), "JSON value").map_err(
            |e| match e {
                CodecError::InvalidHeader { message } => {
                    CodecError::InvalidJsonBody { reason: message }
                }
                other => other,
            },
        )?;
    let mut parser = TreeParser::new(&[], limits.max_depth);
    Ok(node_to_value(parser.value("value", &json)?))
}

fn parse_inputs(inputs: &Json, limits: &Limits) -> Result<Payload<'static>, CodecError> {
    let Json::Object(members) = inputs else {
        return Err(CodecError::InvalidJsonBody {
            reason: "`inputs` must be an object of name -> value".into(),
        });
    };
    check_unique_keys(members, &Path::root("inputs"))?;
    // No blobs: any reference is dangling, which is the right error for a
    // tensor sent in the plain form.
    let mut parser = TreeParser::new(&[], limits.max_depth);
    let mut entries = Vec::with_capacity(members.len());
    for (name, value) in members {
        let node = parser.value(name, value)?;
        entries.push(Entry {
            name: name.clone(),
            comfy_type: None,
            value: node_to_value(node),
        });
    }
    Ok(Payload { entries })
}

/// A blob-free node as a value.
fn node_to_value(node: Node) -> Value<'static> {
    match node {
        Node::Null => Value::None,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Int(i),
        Node::Float(f) => Value::Float(f),
        Node::Str(s) => Value::Str(s),
        Node::List(items) => Value::List(items.into_iter().map(node_to_value).collect()),
        Node::Tuple(items) => Value::Tuple(items.into_iter().map(node_to_value).collect()),
        Node::Dict(m) => Value::Dict(m.into_iter().map(|(k, v)| (k, node_to_value(v))).collect()),
        // The parser was given no blobs, so it never produces references.
        Node::Tensor(_)
        | Node::Bytes(_)
        | Node::LongStr(_)
        | Node::Pickle { .. }
        | Node::Packed { .. } => Value::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_form_reads_primitives_like_a_curl_user_writes_them() {
        let body = br#"{"inputs":{"prompt":"a cat","steps":20,"cfg":7.5,"flip":true,"size":{"$tuple":[512,512]}}}"#;
        let p = decode_json_body(body, &Limits::default()).expect("parse");
        assert_eq!(
            p.get("prompt").map(|e| &e.value),
            Some(&Value::Str("a cat".into()))
        );
        assert_eq!(p.get("steps").map(|e| &e.value), Some(&Value::Int(20)));
        assert_eq!(p.get("cfg").map(|e| &e.value), Some(&Value::Float(7.5)));
        assert_eq!(p.get("flip").map(|e| &e.value), Some(&Value::Bool(true)));
        assert_eq!(
            p.get("size").map(|e| &e.value),
            Some(&Value::Tuple(vec![Value::Int(512), Value::Int(512)]))
        );
    }

    #[test]
    fn inputs_form_refuses_tensor_references() {
        let body = br#"{"inputs":{"image":{"$t":"t0"}}}"#;
        let err = decode_json_body(body, &Limits::default()).expect_err("dangling");
        assert!(matches!(err, CodecError::DanglingRef { .. }), "{err}");
    }

    #[test]
    fn one_json_value_reads_tags_like_the_inputs_form() {
        let v = parse_value(br#"{"$tuple": [1, 2.5]}"#, &Limits::default()).expect("tuple");
        assert_eq!(v, Value::Tuple(vec![Value::Int(1), Value::Float(2.5)]));
        let v = parse_value(br#"{"b": [1, "x"], "a": null}"#, &Limits::default()).expect("dict");
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    "b".into(),
                    Value::List(vec![Value::Int(1), Value::Str("x".into())])
                ),
                ("a".into(), Value::None),
            ])
        );
        let e = parse_value(b"18446744073709551615", &Limits::default()).expect_err("u64");
        assert_eq!(e.kind(), "invalid_node", "{e}");
        let e = parse_value(b"{\"a\": ", &Limits::default()).expect_err("not JSON");
        assert_eq!(e.kind(), "invalid_json_body", "{e}");
    }

    #[test]
    fn an_integer_beyond_i64_in_the_inputs_form_is_a_value_error() {
        let body = br#"{"inputs":{"n":9223372036854775808}}"#;
        let err = decode_json_body(body, &Limits::default()).expect_err("overflow");
        assert_eq!(err.kind(), "invalid_node", "{err}");
    }

    #[test]
    fn base64_form_round_trips() {
        let payload = Payload {
            entries: vec![Entry {
                name: "n".into(),
                comfy_type: None,
                value: Value::Int(3),
            }],
        };
        let form = JsonForm::encode(&payload).expect("encode");
        let body = serde_json::to_vec(&form).expect("json");
        let back = decode_json_body(&body, &Limits::default()).expect("decode");
        assert_eq!(back, payload);
    }
}
