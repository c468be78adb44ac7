//! docs/deploy.md says what the code does: every modal_config.json example, the written defaults, the ranges, the app-name examples, the GPU list and the torch table are checked against the code.

use std::path::Path;

use comfy_remote_deploy::config::{valid_app_name, RANGES};
use comfy_remote_deploy::workflow::default_app_name;
use comfy_remote_deploy::{stacks, DeployConfig};

fn docs() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fenced block: its language, its text, and the line just before its fence.
struct Block {
    lang: String,
    text: String,
    before: String,
    line: usize,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = doc.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].trim_start().strip_prefix("```") {
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                lang: lang.trim().to_string(),
                text,
                before: start
                    .checked_sub(1)
                    .map(|j| lines[j].to_string())
                    .unwrap_or_default(),
                line: start + 1,
            });
        }
        i += 1;
    }
    out
}

/// Read a documented config as a file would be (an empty app name defaults to the workflow's).
fn load(text: &str) -> Result<DeployConfig, String> {
    let mut cfg = DeployConfig::from_json(text).map_err(|e| e.to_string())?;
    if cfg.app_name.is_empty() {
        cfg.app_name = "comfy-remote-invert-blur".into();
    }
    cfg.validate().map_err(|e| e.to_string())?;
    stacks::resolve(&cfg.torch).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Every ```json block is accepted, unless the next block is a ```text
/// `error: ...`, which must then be exactly the message it is refused with.
#[test]
fn every_documented_config_is_accepted_or_refused_as_documented() {
    let doc = docs();
    let all = blocks(&doc);
    let mut accepted = 0;
    let mut refused = 0;
    for (n, b) in all.iter().enumerate().filter(|(_, b)| b.lang == "json") {
        let expected_error = all
            .get(n + 1)
            .filter(|next| next.lang == "text")
            .and_then(|next| next.text.trim().strip_prefix("error: "))
            .map(str::to_string);
        match (load(&b.text), expected_error) {
            (Ok(_), None) => accepted += 1,
            (Err(got), Some(want)) => {
                assert_eq!(got, want, "docs/deploy.md:{}", b.line);
                refused += 1;
            }
            (Ok(cfg), Some(want)) => panic!(
                "docs/deploy.md:{} says this is refused ({want}) but it is accepted: {cfg:?}",
                b.line
            ),
            (Err(got), None) => panic!(
                "docs/deploy.md:{} shows a config that is refused: {got}\n{}",
                b.line, b.text
            ),
        }
    }
    assert!(
        accepted >= 6 && refused >= 4,
        "{accepted} accepted, {refused} refused"
    );
}

/// The block marked as the written defaults is what the generator writes for invert_blur.json.
#[test]
fn the_documented_defaults_are_the_written_file() {
    let doc = docs();
    let b = blocks(&doc)
        .into_iter()
        .find(|b| b.before.contains("docs-check: written defaults"))
        .expect("the defaults block");
    let documented: serde_json::Value = serde_json::from_str(&b.text).expect("json");
    let mut cfg = DeployConfig {
        app_name: default_app_name("invert_blur"),
        ..Default::default()
    };
    cfg.torch.stack = Some(stacks::resolve(&cfg.torch).expect("default").0);
    let written: serde_json::Value =
        serde_json::from_str(&cfg.to_json_pretty()).expect("written json");
    assert_eq!(documented, written);
}

#[test]
fn the_range_table_is_the_code_s() {
    let doc = docs();
    let defaults: serde_json::Value =
        serde_json::from_str(&DeployConfig::default().to_json_pretty()).expect("json");
    for r in RANGES {
        let row = format!("| `{}` | {} | {} |", r.key, defaults[r.key], r.form());
        assert!(doc.contains(&row), "docs/deploy.md lacks the row\n{row}");
    }
}

#[test]
fn the_app_name_examples_are_what_the_code_gives() {
    let doc = docs();
    let section = doc
        .split("## App names")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an App names section");
    let mut n = 0;
    for line in section.lines() {
        let cells: Vec<&str> = line
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        if let [_, file, app, _] = cells[..] {
            if let Some(stem) = file.strip_suffix(".json") {
                assert_eq!(default_app_name(stem), app, "{file}");
                assert!(valid_app_name(app), "{app}");
                n += 1;
            }
        }
    }
    assert!(n >= 4, "{n} examples");
}

#[test]
fn the_gpu_list_is_the_code_s() {
    let doc = docs();
    let line = format!(
        "({}; any",
        comfy_remote_deploy::config::MODAL_GPUS
            .iter()
            .map(|g| format!("`{g}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&line), "docs/deploy.md lacks {line}");
}

#[test]
fn the_torch_table_is_torch_stacks_json() {
    let doc = docs();
    let default = stacks::default_stack_name();
    for (name, s) in stacks::presets() {
        let index = s.index_url.rsplit('/').next().unwrap_or("");
        let mark = if name == default { " (default)" } else { "" };
        let row = format!(
            "| `{name}`{mark} | {} | {} | {} | {} | {index} |",
            s.torch,
            s.torchvision,
            s.torchaudio,
            s.xformers.as_deref().unwrap_or("none")
        );
        assert!(doc.contains(&row), "docs/deploy.md lacks the row\n{row}");
    }
}

#[test]
fn the_documented_public_service_warning_is_the_code_s() {
    let doc = docs();
    let b = blocks(&doc)
        .into_iter()
        .find(|b| b.lang == "text" && b.text.starts_with("warning: "))
        .expect("the warning block");
    let mut cfg = DeployConfig {
        app_name: "comfy-remote-remote".into(),
        ..Default::default()
    };
    cfg.auth.proxy_auth = false;
    assert_eq!(cfg.warnings(), [b.text.trim().to_string()]);
}
