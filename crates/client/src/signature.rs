//! The endpoint's published signature (`GET /v1/info`) and the check that
//! the local inputs fit it before anything is sent.

use serde::Deserialize;

use crate::error::{ClientError, Result};

/// One input or output of the remote workflow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SignatureItem {
    pub name: String,
    #[serde(rename = "type", default = "any_type")]
    pub comfy_type: String,
    #[serde(default)]
    pub optional: bool,
}

fn any_type() -> String {
    "*".to_owned()
}

/// What a native endpoint takes and returns, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Signature {
    pub protocol: String,
    #[serde(default)]
    pub inputs: Vec<SignatureItem>,
    #[serde(default)]
    pub outputs: Vec<SignatureItem>,
}

/// A local input: its name (`value0`, ...) and inferred Comfy type, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInput {
    pub name: String,
    pub comfy_type: Option<String>,
}

fn compatible(local: Option<&str>, remote: &str) -> bool {
    let Some(local) = local else { return true };
    remote == "*"
        || local == "*"
        || local.eq_ignore_ascii_case(remote)
        // An integer is a fine float (Comfy's own widgets convert).
        || (local.eq_ignore_ascii_case("INT") && remote.eq_ignore_ascii_case("FLOAT"))
}

fn describe(items: &[SignatureItem]) -> String {
    if items.is_empty() {
        return "no inputs".to_owned();
    }
    let list: Vec<String> = items
        .iter()
        .map(|i| {
            let opt = if i.optional { ", optional" } else { "" };
            format!("{} ({}{opt})", i.name, i.comfy_type)
        })
        .collect();
    format!("{} input(s): {}", items.len(), list.join(", "))
}

/// Match local inputs to the remote signature by order and check count and
/// types. Returns the names to send: the remote names when a signature is
/// known, the local names otherwise.
pub fn plan_inputs(signature: Option<&Signature>, local: &[LocalInput]) -> Result<Vec<String>> {
    let Some(sig) = signature else {
        return Ok(local.iter().map(|l| l.name.clone()).collect());
    };
    if local.len() > sig.inputs.len() {
        let extra = &local[sig.inputs.len()];
        return Err(ClientError::Signature {
            input: Some(extra.name.clone()),
            message: format!(
                "input {} has no matching Remote Input: the endpoint's workflow takes {}; \
                 disconnect {} or add a Remote Input to the remote workflow",
                extra.name,
                describe(&sig.inputs),
                extra.name
            ),
        });
    }
    for (i, (l, r)) in local.iter().zip(&sig.inputs).enumerate() {
        if !compatible(l.comfy_type.as_deref(), &r.comfy_type) {
            return Err(ClientError::Signature {
                input: Some(l.name.clone()),
                message: format!(
                    "input {} is {} but the endpoint expects {} for its input {:?} (#{}); \
                     connect a {} value to {}",
                    l.name,
                    l.comfy_type.as_deref().unwrap_or("*"),
                    r.comfy_type,
                    r.name,
                    i + 1,
                    r.comfy_type,
                    l.name
                ),
            });
        }
    }
    if let Some((i, missing)) = sig
        .inputs
        .iter()
        .enumerate()
        .skip(local.len())
        .find(|(_, r)| !r.optional)
    {
        return Err(ClientError::Signature {
            input: Some(format!("value{i}")),
            message: format!(
                "the endpoint requires input {:?} ({}, #{}) but only {} input(s) are connected; \
                 connect it as value{i}",
                missing.name,
                missing.comfy_type,
                i + 1,
                local.len()
            ),
        });
    }
    Ok(sig.inputs[..local.len()]
        .iter()
        .map(|r| r.name.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        let item = |name: &str, t: &str, optional| SignatureItem {
            name: name.into(),
            comfy_type: t.into(),
            optional,
        };
        Signature {
            protocol: "comfy-remote/1".into(),
            inputs: vec![
                item("image", "IMAGE", false),
                item("steps", "INT", false),
                item("prefix", "STRING", true),
            ],
            outputs: vec![],
        }
    }

    fn local(types: &[Option<&str>]) -> Vec<LocalInput> {
        types
            .iter()
            .enumerate()
            .map(|(i, t)| LocalInput {
                name: format!("value{i}"),
                comfy_type: t.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn maps_by_order_to_remote_names() {
        let names = plan_inputs(Some(&sig()), &local(&[Some("IMAGE"), Some("INT")])).expect("fits");
        assert_eq!(names, ["image", "steps"]);
        let names = plan_inputs(None, &local(&[Some("IMAGE")])).expect("no signature");
        assert_eq!(names, ["value0"]);
    }

    #[test]
    fn type_mismatch_names_the_input() {
        let err = plan_inputs(Some(&sig()), &local(&[Some("IMAGE"), Some("STRING")]))
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(msg.contains("value1") && msg.contains("\"steps\""), "{msg}");
        assert!(matches!(err, ClientError::Signature { input: Some(ref i), .. } if i == "value1"));
    }

    #[test]
    fn too_many_and_too_few() {
        let err = plan_inputs(
            Some(&sig()),
            &local(&[Some("IMAGE"), Some("INT"), Some("STRING"), Some("INT")]),
        )
        .expect_err("too many");
        assert!(
            err.to_string()
                .contains("input value3 has no matching Remote Input"),
            "{err}"
        );
        let err = plan_inputs(Some(&sig()), &local(&[Some("IMAGE")])).expect_err("too few");
        assert!(err.to_string().contains("\"steps\""), "{err}");
        // The optional third input may be left out.
        plan_inputs(Some(&sig()), &local(&[None, Some("INT")])).expect("optional omitted");
    }
}
