//! The table of coherent torch stacks (`torch_stacks.json`) and the guard that refuses incoherent overrides.
//!
//! Why: an unpinned install moved torchvision under torch (the seed's
//! `operator torchvision::nms does not exist`) and moved torch away from
//! torchaudio (ComfyUI dying at import). Only rows of this table reach an
//! image; a user may name a row or spell its versions, never mix rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{DeployError, Result};

const TABLE_JSON: &str = include_str!("../torch_stacks.json");

/// One coherent set of the torch packages and the wheel index they come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchStack {
    pub torch: String,
    pub torchvision: String,
    pub torchaudio: String,
    /// `None` when the stack is used without xformers.
    pub xformers: Option<String>,
    pub index_url: String,
    /// Requirements the stack needs beside its own versions, resolved with the image's packages
    /// (torch 2.3 was built against numpy 1.x: `numpy<2`).
    #[serde(default)]
    pub pins: Vec<String>,
    #[serde(default, skip_serializing)]
    pub note: String,
}

#[derive(Debug, Deserialize)]
struct Table {
    default: String,
    stacks: BTreeMap<String, TorchStack>,
}

fn table() -> Table {
    // The table is part of the binary and checked by the tests below.
    serde_json::from_str(TABLE_JSON).unwrap_or_else(|e| panic!("torch_stacks.json: {e}"))
}

/// Name of the default stack.
pub fn default_stack_name() -> String {
    table().default
}

/// All presets, by name.
pub fn presets() -> BTreeMap<String, TorchStack> {
    table().stacks
}

/// A user's torch choice (`"torch"` in modal_config.json): a preset name and/or explicit versions.
/// (Read by `config::read`, which also takes the string shorthand.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TorchChoice {
    /// Preset name from the table; default: the table's default.
    pub stack: Option<String>,
    pub torch: Option<String>,
    pub torchvision: Option<String>,
    pub torchaudio: Option<String>,
    /// A version, or `"none"` to leave xformers out.
    pub xformers: Option<String>,
    /// Wheel index (e.g. another CUDA build of the same versions).
    pub index_url: Option<String>,
}

impl TorchChoice {
    /// The string form of `"torch"`: a preset name (`"torch-2.9"`) or a torch
    /// version (`"2.9.1"`, which picks its row). `None` for anything else.
    pub fn shorthand(s: &str) -> Option<Self> {
        if presets().contains_key(s) {
            return Some(TorchChoice {
                stack: Some(s.to_string()),
                ..Default::default()
            });
        }
        let version = s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '+');
        version.then(|| TorchChoice {
            torch: Some(s.to_string()),
            ..Default::default()
        })
    }
}

/// Resolve a choice to one coherent stack, or refuse it naming the coherent sets.
pub fn resolve(choice: &TorchChoice) -> Result<(String, TorchStack)> {
    let t = table();
    let explicit = choice.torch.is_some()
        || choice.torchvision.is_some()
        || choice.torchaudio.is_some()
        || choice.xformers.as_deref().is_some_and(|x| x != "none");
    let (name, mut stack) = match (&choice.stack, explicit) {
        (Some(name), _) => {
            let stack = t
                .stacks
                .get(name)
                .cloned()
                .ok_or_else(|| DeployError::UnknownStack {
                    name: name.clone(),
                    presets: t.stacks.keys().cloned().collect(),
                })?;
            (name.clone(), stack)
        }
        (None, false) => {
            let stack =
                t.stacks
                    .get(&t.default)
                    .cloned()
                    .ok_or_else(|| DeployError::TorchStack {
                        message: format!("default preset `{}` missing from the table", t.default),
                    })?;
            (t.default.clone(), stack)
        }
        (None, true) => {
            // The row matching every version given; torch decides when only it is given.
            let found = t.stacks.iter().find(|(_, s)| matches(choice, s));
            match found {
                Some((n, s)) => (n.clone(), s.clone()),
                None => return Err(incoherent(choice, &t)),
            }
        }
    };
    if !matches(choice, &stack) {
        return Err(incoherent(choice, &t));
    }
    if choice.xformers.as_deref() == Some("none") {
        stack.xformers = None;
    }
    if let Some(url) = &choice.index_url {
        stack.index_url = url.clone();
    }
    Ok((name, stack))
}

fn matches(choice: &TorchChoice, s: &TorchStack) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().map_or(true, |w| w == have);
    let xf_ok = match choice.xformers.as_deref() {
        None | Some("none") => true,
        Some(v) => s.xformers.as_deref() == Some(v),
    };
    eq(&choice.torch, &s.torch)
        && eq(&choice.torchvision, &s.torchvision)
        && eq(&choice.torchaudio, &s.torchaudio)
        && xf_ok
}

fn incoherent(choice: &TorchChoice, t: &Table) -> DeployError {
    let asked = [
        ("torch", &choice.torch),
        ("torchvision", &choice.torchvision),
        ("torchaudio", &choice.torchaudio),
        ("xformers", &choice.xformers),
    ]
    .iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}=={v}")))
    .collect::<Vec<_>>()
    .join(" ");
    let sets = t
        .stacks
        .iter()
        .map(|(n, s)| {
            format!(
                "  {n}: torch=={} torchvision=={} torchaudio=={} xformers=={}",
                s.torch,
                s.torchvision,
                s.torchaudio,
                s.xformers.as_deref().unwrap_or("none")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let preset = choice
        .stack
        .as_deref()
        .map(|n| format!(" with preset `{n}`"))
        .unwrap_or_default();
    DeployError::TorchStack {
        message: format!(
            "{asked}{preset} is not a tested combination (mixed versions break torchvision::nms or torchaudio at import); use one of:\n{sets}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(torch: &str, tv: &str) -> TorchChoice {
        TorchChoice {
            torch: Some(torch.into()),
            torchvision: Some(tv.into()),
            ..Default::default()
        }
    }

    #[test]
    fn table_parses_and_has_its_default_and_the_seed_preset() {
        let p = presets();
        assert!(p.contains_key(&default_stack_name()));
        let seed = &p["seed-2.3"];
        assert_eq!(
            (&*seed.torch, &*seed.torchvision, &*seed.torchaudio),
            ("2.3.0", "0.18.0", "2.3.0")
        );
        assert_eq!(seed.xformers.as_deref(), Some("0.0.26.post1"));
    }

    #[test]
    fn default_is_torch_2_11() {
        let (name, s) = resolve(&TorchChoice::default()).expect("default");
        assert_eq!(name, "torch-2.11");
        assert_eq!((&*s.torch, &*s.torchvision), ("2.11.0", "0.26.0"));
    }

    #[test]
    fn explicit_versions_resolve_to_their_row() {
        let (name, _) = resolve(&choice("2.3.0", "0.18.0")).expect("seed");
        assert_eq!(name, "seed-2.3");
    }

    #[test]
    fn incoherent_override_is_refused() {
        let err = resolve(&choice("2.11.0", "0.18.0")).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("torch==2.11.0 torchvision==0.18.0"), "{msg}");
        assert!(
            msg.contains("torch-2.11: torch==2.11.0 torchvision==0.26.0"),
            "{msg}"
        );
        let err = resolve(&TorchChoice {
            stack: Some("torch-2.11".into()),
            torchvision: Some("0.18.0".into()),
            ..Default::default()
        })
        .expect_err("preset plus a foreign version");
        assert!(err.to_string().contains("preset `torch-2.11`"));
    }

    #[test]
    fn xformers_can_be_left_out_and_index_overridden() {
        let (_, s) = resolve(&TorchChoice {
            xformers: Some("none".into()),
            index_url: Some("https://download.pytorch.org/whl/cu126".into()),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(s.xformers, None);
        assert!(s.index_url.ends_with("cu126"));
    }

    #[test]
    fn unknown_preset_lists_presets() {
        let err = resolve(&TorchChoice {
            stack: Some("torch-9".into()),
            ..Default::default()
        })
        .expect_err("unknown");
        assert!(err.to_string().contains("seed-2.3"));
    }
}
