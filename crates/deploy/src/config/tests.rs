//! Tests of `modal_config.json`: parsing, defaults, ranges and messages.

use super::*;

fn err(doc: &str) -> String {
    match DeployConfig::from_json(doc).and_then(|mut c| {
        if c.app_name.is_empty() {
            c.app_name = "x".into();
        }
        c.validate().map(|()| c)
    }) {
        Ok(c) => panic!("{doc} was accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(doc: &str) -> DeployConfig {
    let mut c = DeployConfig::from_json(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
    c.app_name = "x".into();
    c.validate().unwrap_or_else(|e| panic!("{doc}: {e}"));
    c
}

#[test]
fn minimal_document_gets_defaults() {
    let cfg = DeployConfig::from_json(r#"{"version": 1}"#).expect("parse");
    assert_eq!(cfg.gpu, Gpu::One("H100".into()));
    assert_eq!(cfg.scaledown_window_s, 300);
    assert!(cfg.auth.proxy_auth);
}

#[test]
fn unknown_keys_are_named() {
    let err = DeployConfig::from_json(r#"{"version": 1, "gpus": "A10G"}"#).expect_err("unknown");
    assert!(err.to_string().contains("unknown key `gpus`"), "{err}");
    let err = DeployConfig::from_json(r#"{"version": 1, "volume": {"name": "m", "size": 3}}"#)
        .expect_err("nested unknown");
    assert!(
        err.to_string()
            .contains("unknown key `volume.size`; expected one of `name`"),
        "{err}"
    );
}

#[test]
fn version_is_required_and_checked() {
    assert!(DeployConfig::from_json("{}")
        .expect_err("missing")
        .to_string()
        .contains("version"));
    assert!(DeployConfig::from_json(r#"{"version": 2}"#).is_err());
    assert!(DeployConfig::from_json("[]")
        .expect_err("a list")
        .to_string()
        .contains("must be a JSON object"));
}

#[test]
fn gpu_strings_and_lists_are_validated() {
    let mut cfg = DeployConfig {
        app_name: "x".into(),
        ..Default::default()
    };
    cfg.gpu = Gpu::Fallback(vec!["H100".into(), "A100-80GB".into(), "l4:2".into()]);
    cfg.validate().expect("valid");
    cfg.gpu = Gpu::One("RTX4090".into());
    assert!(cfg
        .validate()
        .expect_err("bad gpu")
        .to_string()
        .contains("RTX4090"));
}

/// The forms docs/deploy.md gives for `"torch"`: a preset, a version, null, an object.
#[test]
fn torch_takes_a_preset_a_version_null_or_an_object() {
    let stack = |doc: &str| crate::stacks::resolve(&ok(doc).torch).expect(doc).0;
    assert_eq!(stack(r#"{"version": 1, "torch": "2.9.1"}"#), "torch-2.9");
    assert_eq!(stack(r#"{"version": 1, "torch": "seed-2.3"}"#), "seed-2.3");
    assert_eq!(stack(r#"{"version": 1, "torch": null}"#), "torch-2.11");
    assert_eq!(
        stack(r#"{"version": 1, "torch": {"stack": "torch-2.8"}}"#),
        "torch-2.8"
    );
    assert_eq!(
        stack(r#"{"version": 1, "torch": {"torch": "2.3.0", "torchvision": "0.18.0"}}"#),
        "seed-2.3"
    );
    let e = err(r#"{"version": 1, "torch": "latest"}"#);
    assert!(
        e.starts_with("modal_config.json: \"torch\" must be a preset name (")
            && e.contains("torch-2.11")
            && e.ends_with("; got \"latest\""),
        "{e}"
    );
    let e = err(r#"{"version": 1, "torch": {"torch": 2.9}}"#);
    assert!(
        e.starts_with("modal_config.json: \"torch.torch\" must be null or a version string"),
        "{e}"
    );
}

/// Modal refuses these at deploy time; we refuse them when the file is read.
#[test]
fn numbers_modal_would_refuse_are_refused_naming_the_key_and_range() {
    for (doc, words) in [
        (r#""scaledown_window_s": 1"#, "\"scaledown_window_s\" must be a whole number of seconds from 2 to 3600 (Modal's limit); got 1"),
        (r#""scaledown_window_s": 3601"#, "from 2 to 3600"),
        (r#""startup_timeout_s": 0"#, "\"startup_timeout_s\" must be a whole number of seconds from 1 to 86400 (Modal's limit: 24 hours); got 0"),
        (r#""timeout_s": 0"#, "\"timeout_s\" must be a whole number of seconds from 1 to 86400"),
        (r#""timeout_s": 86401"#, "got 86401"),
        (r#""timeout_s": "600""#, "\"timeout_s\" must be a whole number of seconds from 1 to 86400 (Modal's limit: 24 hours); got \"600\""),
        (r#""timeout_s": 60.5"#, "got 60.5"),
        (r#""min_containers": -1"#, "\"min_containers\" must be a whole number of 0 or more; got -1"),
        (r#""max_containers": 0"#, "\"max_containers\" must be null (no limit) or a whole number of 1 or more; got 0"),
        (r#""min_containers": 3, "max_containers": 2"#, "\"max_containers\" (2) must be at least \"min_containers\" (3)"),
        (r#""max_concurrent_jobs": 0"#, "\"max_concurrent_jobs\" must be a whole number of 1 or more; got 0"),
    ] {
        let e = err(&format!("{{\"version\": 1, {doc}}}"));
        assert!(e.contains(words), "{doc}: {e}");
    }
    for doc in [
        r#""scaledown_window_s": 2"#,
        r#""scaledown_window_s": 3600"#,
        r#""startup_timeout_s": 1"#,
        r#""timeout_s": 86400"#,
        r#""max_containers": null"#,
    ] {
        ok(&format!("{{\"version\": 1, {doc}}}"));
    }
}

/// Every kind of wrong value is named by its path and form, never by a type of ours.
#[test]
fn errors_name_the_path_and_form_never_a_rust_type() {
    for (doc, path) in [
        (r#""torch": 3"#, "\"torch\""),
        (r#""gpu": 3"#, "\"gpu\""),
        (r#""gpu": ["H100", 3]"#, "\"gpu[1]\""),
        (r#""comfyui": "v0.33.0""#, "\"comfyui\""),
        (r#""comfyui": {"ref": 33}"#, "\"comfyui.ref\""),
        (r#""pip": "einops""#, "\"pip\""),
        (r#""pip": [1]"#, "\"pip[0]\""),
        (r#""env": {"A": 1}"#, "\"env.A\""),
        (
            r#""custom_nodes": [{"git": "u", "ref": 1}]"#,
            "\"custom_nodes[0].ref\"",
        ),
        (r#""custom_nodes": {"path": "x"}"#, "\"custom_nodes\""),
        (r#""volume": "comfy-models""#, "\"volume\""),
        (
            r#""volume": {"name": "m", "create": "yes"}"#,
            "\"volume.create\"",
        ),
        (
            r#""volume": {"mount": "/m"}"#,
            "\"volume\" needs a \"name\"",
        ),
        (
            r#""auth": {"proxy_auth": "no"}"#,
            "\"auth.proxy_auth\" must be true or false",
        ),
        (
            r#""memory_snapshot": 1"#,
            "\"memory_snapshot\" must be true or false",
        ),
        (r#""app_name": 7"#, "\"app_name\""),
        (
            r#""app_name": "Bad App!""#,
            "\"app_name\" must be 1-63 characters",
        ),
    ] {
        let e = err(&format!("{{\"version\": 1, {doc}}}"));
        assert!(e.contains(path), "{doc}: {e}");
        for word in [
            "struct",
            "enum",
            "variant",
            "u32",
            "Choice",
            "Config",
            "invalid type",
        ] {
            assert!(!e.contains(word), "{doc}: {e}");
        }
    }
}

#[test]
fn round_trips_with_all_defaults_written() {
    let cfg = DeployConfig {
        app_name: "demo".into(),
        ..Default::default()
    };
    let text = cfg.to_json_pretty();
    assert!(text.contains("\"scaledown_window_s\": 300"));
    assert_eq!(DeployConfig::from_json(&text).expect("reparse"), cfg);
}

/// Every setting is written, unset ones as null, and the file reads back.
#[test]
fn every_setting_is_written_and_the_file_reads_back() {
    let cfg = DeployConfig {
        app_name: "demo".into(),
        ..Default::default()
    };
    let text = cfg.to_json_pretty();
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["max_containers"], serde_json::Value::Null);
    assert_eq!(v["volume"], serde_json::Value::Null);
    assert_eq!(v["auth"]["token_secret"], serde_json::Value::Null);
    for key in [
        "stack",
        "torch",
        "torchvision",
        "torchaudio",
        "xformers",
        "index_url",
    ] {
        assert!(v["torch"].get(key).is_some(), "torch.{key} missing: {text}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("modal_config.json");
    std::fs::write(&p, &text).expect("write");
    assert_eq!(DeployConfig::load(&p).expect("reload"), cfg);
}

#[test]
fn a_bad_value_in_a_named_file_names_that_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("badcfg.json");
    std::fs::write(&p, r#"{"version": 1, "gpu": "H1000"}"#).expect("write");
    let err = DeployConfig::load(&p).expect_err("bad gpu").to_string();
    assert!(
        err.starts_with(&format!("{}: \"gpu\"", p.display())),
        "{err}"
    );
    std::fs::write(&p, r#"{"version": 1, "gpus": "A10G"}"#).expect("write");
    let err = DeployConfig::load(&p).expect_err("unknown").to_string();
    assert!(err.contains("badcfg.json: unknown key `gpus`"), "{err}");
    std::fs::write(&p, r#"{"version": 1, "scaledown_window_s": 1}"#).expect("write");
    let err = DeployConfig::load(&p).expect_err("range").to_string();
    assert!(
        err.starts_with(&format!("{}: \"scaledown_window_s\" must be", p.display())),
        "{err}"
    );
}

#[test]
fn a_public_service_is_warned_about() {
    let mut cfg = DeployConfig {
        app_name: "svc".into(),
        ..Default::default()
    };
    assert!(cfg.warnings().is_empty());
    cfg.auth.proxy_auth = false;
    let w = cfg.warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with("warning: app svc is public") && w[0].contains("anyone with"),
        "{w:?}"
    );
    cfg.auth.token_secret = Some("tok".into());
    assert!(cfg.warnings().is_empty());
}

#[test]
fn model_sources_read_with_their_size_and_a_hugging_face_file_maps_to_its_resolve_url() {
    let sha = "ab".repeat(32);
    let cfg = ok(&format!(
        r#"{{"version": 1, "models": {{
            "checkpoints/sd15.safetensors": {{"hf": "org/sd15", "file": "weights/sd15.safetensors", "revision": "v2", "sha256": "{sha}", "size": 4265146304}},
            "loras/detail.safetensors": {{"hf": "org/loras", "file": "detail.safetensors", "sha256": "{sha}"}},
            "vae/x.safetensors": {{"url": "https://example.com/x.safetensors", "sha256": "{sha}"}}
        }}}}"#
    ));
    let sd15 = &cfg.models["checkpoints/sd15.safetensors"];
    assert_eq!(
        sd15.fetch_url(),
        "https://huggingface.co/org/sd15/resolve/v2/weights/sd15.safetensors"
    );
    assert_eq!(sd15.size, Some(4_265_146_304));
    let lora = &cfg.models["loras/detail.safetensors"];
    assert_eq!(
        lora.fetch_url(),
        "https://huggingface.co/org/loras/resolve/main/detail.safetensors",
        "the revision defaults to main"
    );
    assert_eq!(lora.size, None);
    assert_eq!(
        cfg.models["vae/x.safetensors"].fetch_url(),
        "https://example.com/x.safetensors"
    );
    let text = cfg.to_json_pretty();
    assert_eq!(
        DeployConfig::from_json(&text).expect("reparse").models,
        cfg.models
    );
    let e = err(&format!(
        r#"{{"version": 1, "models": {{"vae/x.safetensors": {{"url": "https://example.com/x", "sha256": "{sha}", "size": "2 GB"}}}}}}"#
    ));
    assert!(
        e.contains("\"models.vae/x.safetensors.size\" must be the file's size in bytes"),
        "{e}"
    );
}
