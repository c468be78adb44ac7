//! Plain JSON results (simple endpoints) as protocol values.

use comfy_remote_protocol::Value;
use serde_json::Value as Json;

/// Map JSON onto the value model: numbers keep int vs float, objects keep order.
pub fn json_to_value(j: &Json) -> Value<'static> {
    match j {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::List(a.iter().map(json_to_value).collect()),
        Json::Object(o) => Value::Dict(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(json_to_value(&json!(3)), Value::Int(3));
        assert_eq!(json_to_value(&json!(3.5)), Value::Float(3.5));
        assert_eq!(
            json_to_value(&json!({"b": [1, "x"], "a": null})),
            Value::Dict(vec![
                (
                    "b".into(),
                    Value::List(vec![Value::Int(1), Value::Str("x".into())])
                ),
                ("a".into(), Value::None),
            ])
        );
    }
}
