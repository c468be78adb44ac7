//! A job's inputs against the workflow's signature: every name known and
//! given once, every required input present, every value of a type the
//! input takes (`comfy_remote_protocol::types`).

use std::collections::HashSet;
use std::fmt;

use comfy_remote_protocol::api::SignatureItem;
use comfy_remote_protocol::{types, Payload};

/// Why a job's inputs do not fit the signature; `input` names the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub input: String,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InputError {}

/// The candidate closest to `name` when it is close enough to be a typo
/// (an edit distance of at most a third of the name, at least 1), ignoring case.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance by characters where a swap of two neighbours counts as
/// one edit (optimal string alignment): `sigam` is one edit from `sigma`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// "unknown input "x"; this workflow takes: a, b" with a suggestion when
/// `name` looks like a typo of one of them.
pub fn unknown_input_message(name: &str, signature: &[SignatureItem]) -> String {
    let names: Vec<&str> = signature.iter().map(|i| i.name.as_str()).collect();
    let takes = if names.is_empty() {
        "this workflow takes no inputs".to_owned()
    } else {
        format!("this workflow takes: {}", names.join(", "))
    };
    match closest(name, names.iter().copied()) {
        Some(c) => format!("unknown input {name:?} (did you mean {c:?}?); {takes}"),
        None => format!("unknown input {name:?}; {takes}"),
    }
}

/// Check a decoded payload against the workflow's inputs.
pub fn check_inputs(signature: &[SignatureItem], payload: &Payload<'_>) -> Result<(), InputError> {
    let fail = |input: &str, message: String| InputError {
        input: input.to_owned(),
        message,
    };
    let mut seen = HashSet::new();
    for e in &payload.entries {
        if !seen.insert(e.name.as_str()) {
            return Err(fail(&e.name, format!("input {:?} is given twice", e.name)));
        }
        let Some(item) = signature.iter().find(|i| i.name == e.name) else {
            return Err(fail(&e.name, unknown_input_message(&e.name, signature)));
        };
        types::check(&item.comfy_type, e)
            .map_err(|err| fail(&e.name, format!("input {:?} {err}", e.name)))?;
    }
    for item in signature {
        if !item.optional && payload.get(&item.name).is_none() {
            return Err(fail(
                &item.name,
                format!("missing input {:?} ({})", item.name, item.comfy_type),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfy_remote_protocol::{ComfyType, Entry, Value};

    fn sig() -> Vec<SignatureItem> {
        let item = |name: &str, t: &str, optional| SignatureItem {
            name: name.into(),
            comfy_type: t.into(),
            optional,
            node_id: "1".into(),
            default: None,
        };
        vec![
            item("sigma", "FLOAT", false),
            item("prompt", "STRING", true),
        ]
    }

    fn payload(entries: &[(&str, Value<'static>)]) -> Payload<'static> {
        Payload {
            entries: entries
                .iter()
                .map(|(n, v)| Entry {
                    name: (*n).into(),
                    comfy_type: None,
                    value: v.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_int_for_a_float_input_is_taken() {
        check_inputs(&sig(), &payload(&[("sigma", Value::Int(2))])).expect("int for FLOAT");
    }

    #[test]
    fn unknown_names_list_the_inputs_and_suggest_the_closest() {
        let e =
            check_inputs(&sig(), &payload(&[("sigam", Value::Float(1.0))])).expect_err("unknown");
        assert_eq!(e.input, "sigam");
        assert_eq!(
            e.message,
            "unknown input \"sigam\" (did you mean \"sigma\"?); this workflow takes: sigma, prompt"
        );
        let e =
            check_inputs(&sig(), &payload(&[("zzzzzz", Value::Float(1.0))])).expect_err("unknown");
        assert!(!e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn missing_repeated_and_mistyped_inputs_are_named() {
        let e = check_inputs(&sig(), &payload(&[])).expect_err("missing");
        assert_eq!(e.message, "missing input \"sigma\" (FLOAT)");
        let e = check_inputs(
            &sig(),
            &payload(&[("sigma", Value::Int(1)), ("sigma", Value::Int(2))]),
        )
        .expect_err("twice");
        assert!(e.message.contains("given twice"));
        let mut p = payload(&[("sigma", Value::Float(1.0)), ("prompt", Value::Int(3))]);
        let e = check_inputs(&sig(), &p).expect_err("mistyped");
        assert_eq!(e.message, "input \"prompt\" must be STRING but is INT");
        p.entries[1].comfy_type = Some(ComfyType::new("STRING"));
        let e = check_inputs(&sig(), &p).expect_err("declared but not one");
        assert!(e.message.contains("is declared STRING"), "{}", e.message);
    }

    #[test]
    fn closest_ignores_case_and_far_names() {
        assert_eq!(closest("Image", ["image", "mask"]), Some("image"));
        assert_eq!(closest("x", ["image", "mask"]), None);
        assert_eq!(closest("stpes", ["steps", "seed"]), Some("steps"));
    }
}
