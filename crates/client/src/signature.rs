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

/// Whether the remote input takes a local value of this type (unknown: yes,
/// the endpoint checks the value itself). The protocol's one rule.
fn compatible(local: Option<&str>, remote: &str) -> bool {
    local.map_or(true, |local| {
        comfy_remote_protocol::types::accepts(remote, local)
    })
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

/// The slot a local input fills: `N` for `valueN`, else its position.
fn slot(position: usize, input: &LocalInput) -> usize {
    input
        .name
        .strip_prefix("value")
        .and_then(|n| n.parse().ok())
        .unwrap_or(position)
}

/// Match local inputs to the remote signature by slot (`valueN` fills the
/// remote workflow's Nth input, so a slot left unconnected keeps that
/// input's remote default) and check count and types. Returns the names to
/// send: the remote names when a signature is known, the local names
/// otherwise.
pub fn plan_inputs(signature: Option<&Signature>, local: &[LocalInput]) -> Result<Vec<String>> {
    let Some(sig) = signature else {
        return Ok(local.iter().map(|l| l.name.clone()).collect());
    };
    let mut names = Vec::with_capacity(local.len());
    let mut filled = vec![false; sig.inputs.len()];
    for (position, l) in local.iter().enumerate() {
        let i = slot(position, l);
        let Some(r) = sig.inputs.get(i) else {
            return Err(ClientError::Signature {
                input: Some(l.name.clone()),
                message: format!(
                    "input {} has no matching Remote Input: the endpoint's workflow takes {}; \
                     disconnect {} or add a Remote Input to the remote workflow",
                    l.name,
                    describe(&sig.inputs),
                    l.name
                ),
            });
        };
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
        filled[i] = true;
        names.push(r.name.clone());
    }
    if let Some((i, missing)) = sig
        .inputs
        .iter()
        .enumerate()
        .find(|(i, r)| !r.optional && !filled[*i])
    {
        return Err(ClientError::Signature {
            input: Some(format!("value{i}")),
            message: format!(
                "the endpoint requires input {:?} ({}, #{}) but value{i} is not connected; \
                 connect it as value{i}",
                missing.name,
                missing.comfy_type,
                i + 1,
            ),
        });
    }
    Ok(names)
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
    fn an_int_fills_a_float_input_and_type_names_are_exact() {
        let float = Signature {
            inputs: vec![SignatureItem {
                name: "sigma".into(),
                comfy_type: "FLOAT".into(),
                optional: false,
            }],
            ..sig()
        };
        plan_inputs(Some(&float), &local(&[Some("INT")])).expect("INT for FLOAT");
        plan_inputs(Some(&float), &local(&[Some("float")])).expect_err("case matters");
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

    #[test]
    fn an_unconnected_slot_keeps_its_remote_input_and_default() {
        let with_sig = Signature {
            inputs: vec![
                SignatureItem {
                    name: "image".into(),
                    comfy_type: "IMAGE".into(),
                    optional: false,
                },
                SignatureItem {
                    name: "prefix".into(),
                    comfy_type: "STRING".into(),
                    optional: true,
                },
                SignatureItem {
                    name: "steps".into(),
                    comfy_type: "INT".into(),
                    optional: false,
                },
            ],
            ..sig()
        };
        let slots = |names: &[(&str, &str)]| -> Vec<LocalInput> {
            names
                .iter()
                .map(|(n, t)| LocalInput {
                    name: (*n).into(),
                    comfy_type: Some((*t).into()),
                })
                .collect()
        };
        // value1 left unconnected: value2 still goes to the third input.
        let names = plan_inputs(
            Some(&with_sig),
            &slots(&[("value0", "IMAGE"), ("value2", "INT")]),
        )
        .expect("optional middle slot omitted");
        assert_eq!(names, ["image", "steps"]);
        // A required slot left unconnected is named.
        let err = plan_inputs(
            Some(&with_sig),
            &slots(&[("value1", "STRING"), ("value2", "INT")]),
        )
        .expect_err("required slot missing");
        assert!(matches!(err, ClientError::Signature { input: Some(ref i), .. } if i == "value0"));
    }
}
