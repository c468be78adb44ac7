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
    /// What an omitted optional input takes, when the endpoint says (a
    /// constant in its workflow).
    #[serde(default)]
    pub default: Option<serde_json::Value>,
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
    /// The packings the endpoint reads in a submit (§2.7).
    #[serde(default)]
    pub codecs: Vec<String>,
    /// What it serves beyond the core protocol (`wait`, `range`, `uploads`).
    #[serde(default)]
    pub features: Vec<String>,
}

/// A local input: its name (`value0`, ..., or `input:<remote name>`) and
/// inferred Comfy type, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInput {
    pub name: String,
    pub comfy_type: Option<String>,
}

/// The prefix of a local input that names the remote input it fills
/// (`input:image` fills the Remote Input `image`): how the Remote API node
/// calls the inputs it shows after the endpoint's signature. Any other name
/// is positional: `valueN` fills the Nth remote input.
pub const NAMED_INPUT_PREFIX: &str = "input:";

/// Which remote input a local input fills.
enum Target<'a> {
    /// `valueN`, or the position of an input without a slot number.
    Slot(usize),
    /// `input:<name>`.
    Name(&'a str),
}

fn target(position: usize, input: &LocalInput) -> Target<'_> {
    if let Some(name) = input.name.strip_prefix(NAMED_INPUT_PREFIX) {
        return Target::Name(name);
    }
    Target::Slot(
        input
            .name
            .strip_prefix("value")
            .and_then(|n| n.parse().ok())
            .unwrap_or(position),
    )
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

fn signature_error(input: &str, message: String) -> ClientError {
    ClientError::Signature {
        input: Some(input.to_owned()),
        message,
    }
}

/// Match local inputs to the remote signature and check count and types.
/// `input:<name>` fills the remote input of that name, so a saved workflow
/// keeps working when the remote workflow reorders its inputs, and a name
/// the endpoint no longer has is named. `valueN` fills the remote
/// workflow's Nth input (a slot left unconnected keeps that input's remote
/// default). Returns the names to send: the remote names when a signature
/// is known, the local names otherwise (without the `input:` prefix).
pub fn plan_inputs(signature: Option<&Signature>, local: &[LocalInput]) -> Result<Vec<String>> {
    let Some(sig) = signature else {
        return Ok(local
            .iter()
            .map(|l| {
                l.name
                    .strip_prefix(NAMED_INPUT_PREFIX)
                    .unwrap_or(&l.name)
                    .to_owned()
            })
            .collect());
    };
    let mut names = Vec::with_capacity(local.len());
    // The local input that filled each remote input.
    let mut filled: Vec<Option<&str>> = vec![None; sig.inputs.len()];
    let mut positional = false;
    for (position, l) in local.iter().enumerate() {
        let i = match target(position, l) {
            Target::Slot(i) => {
                positional = true;
                if i >= sig.inputs.len() {
                    return Err(signature_error(
                        &l.name,
                        format!(
                            "input {} has no matching Remote Input: the endpoint's workflow takes {}; \
                             disconnect {} or add a Remote Input to the remote workflow",
                            l.name,
                            describe(&sig.inputs),
                            l.name
                        ),
                    ));
                }
                i
            }
            Target::Name(name) => sig.inputs.iter().position(|r| r.name == name).ok_or_else(|| {
                signature_error(
                    &l.name,
                    format!(
                        "input {name:?} is not an input of the endpoint's workflow, which takes {}; \
                         the remote workflow changed: set the node's endpoint again to show its \
                         inputs, or disconnect {name:?}",
                        describe(&sig.inputs)
                    ),
                )
            })?,
        };
        let r = &sig.inputs[i];
        let shown = match target(position, l) {
            Target::Name(name) => format!("{name:?}"),
            Target::Slot(_) => l.name.clone(),
        };
        if let Some(first) = filled[i] {
            return Err(signature_error(
                &l.name,
                format!(
                    "inputs {first} and {} both fill the endpoint's input {:?}; disconnect one",
                    l.name, r.name
                ),
            ));
        }
        if !compatible(l.comfy_type.as_deref(), &r.comfy_type) {
            let what = match target(position, l) {
                Target::Name(_) => String::new(),
                Target::Slot(_) => format!(" for its input {:?} (#{})", r.name, i + 1),
            };
            return Err(signature_error(
                &l.name,
                format!(
                    "input {shown} is {} but the endpoint expects {}{what}; connect a {} value to {shown}",
                    l.comfy_type.as_deref().unwrap_or("*"),
                    r.comfy_type,
                    r.comfy_type,
                ),
            ));
        }
        filled[i] = Some(&l.name);
        names.push(r.name.clone());
    }
    if let Some((i, missing)) = sig
        .inputs
        .iter()
        .enumerate()
        .find(|(i, r)| !r.optional && filled[*i].is_none())
    {
        return Err(if positional {
            signature_error(
                &format!("value{i}"),
                format!(
                    "the endpoint requires input {:?} ({}, #{}) but value{i} is not connected; \
                     connect it as value{i}",
                    missing.name,
                    missing.comfy_type,
                    i + 1,
                ),
            )
        } else {
            signature_error(
                &format!("{NAMED_INPUT_PREFIX}{}", missing.name),
                format!(
                    "the endpoint requires input {:?} ({}) but nothing is connected to it; connect a {} value",
                    missing.name, missing.comfy_type, missing.comfy_type,
                ),
            )
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
            default: None,
        };
        Signature {
            protocol: "comfy-remote/1".into(),
            inputs: vec![
                item("image", "IMAGE", false),
                item("steps", "INT", false),
                item("prefix", "STRING", true),
            ],
            outputs: vec![],
            codecs: vec![],
            features: vec![],
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
                default: None,
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
                    default: None,
                },
                SignatureItem {
                    name: "prefix".into(),
                    comfy_type: "STRING".into(),
                    optional: true,
                    default: None,
                },
                SignatureItem {
                    name: "steps".into(),
                    comfy_type: "INT".into(),
                    optional: false,
                    default: None,
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

    fn named(items: &[(&str, &str)]) -> Vec<LocalInput> {
        items
            .iter()
            .map(|(n, t)| LocalInput {
                name: format!("{NAMED_INPUT_PREFIX}{n}"),
                comfy_type: Some((*t).into()),
            })
            .collect()
    }

    #[test]
    fn named_inputs_fill_the_remote_input_of_their_name_in_any_order() {
        let names = plan_inputs(
            Some(&sig()),
            &named(&[("steps", "INT"), ("image", "IMAGE")]),
        )
        .expect("fits");
        assert_eq!(names, ["steps", "image"]);
        // Without a signature the prefix is dropped: the endpoint gets the remote names.
        let names = plan_inputs(None, &named(&[("image", "IMAGE")])).expect("no signature");
        assert_eq!(names, ["image"]);
    }

    #[test]
    fn a_named_input_the_endpoint_no_longer_has_is_named() {
        let err = plan_inputs(
            Some(&sig()),
            &named(&[("image", "IMAGE"), ("steps", "INT"), ("sigma", "FLOAT")]),
        )
        .expect_err("unknown name");
        let msg = err.to_string();
        assert!(
            msg.contains("\"sigma\" is not an input") && msg.contains("image (IMAGE)"),
            "{msg}"
        );
        assert!(
            matches!(err, ClientError::Signature { input: Some(ref i), .. } if i == "input:sigma")
        );
    }

    #[test]
    fn named_type_mismatch_and_missing_required_are_named() {
        let err = plan_inputs(
            Some(&sig()),
            &named(&[("image", "IMAGE"), ("steps", "STRING")]),
        )
        .expect_err("mismatch");
        assert!(
            err.to_string()
                .contains("input \"steps\" is STRING but the endpoint expects INT"),
            "{err}"
        );
        let err = plan_inputs(Some(&sig()), &named(&[("image", "IMAGE")])).expect_err("missing");
        assert!(
            err.to_string()
                .contains("requires input \"steps\" (INT) but nothing is connected"),
            "{err}"
        );
        assert!(
            matches!(err, ClientError::Signature { input: Some(ref i), .. } if i == "input:steps")
        );
        // The optional one may be left out; an INT fills a FLOAT.
        plan_inputs(
            Some(&sig()),
            &named(&[("image", "IMAGE"), ("steps", "INT")]),
        )
        .expect("fits");
    }

    #[test]
    fn one_remote_input_filled_twice_is_refused() {
        let mut both = local(&[Some("IMAGE")]);
        both.extend(named(&[("image", "IMAGE"), ("steps", "INT")]));
        let err = plan_inputs(Some(&sig()), &both).expect_err("twice");
        assert!(
            err.to_string()
                .contains("value0 and input:image both fill the endpoint's input \"image\""),
            "{err}"
        );
    }
}
