//! Unit tests of the UI -> API conversion on small hand-made graphs; the frontend oracle over
//! real workflows lives in `tests/test_ui_format.py`.

use serde_json::{json, Value};

use super::*;

fn info() -> Value {
    json!({
        "KSampler": {"display_name": "KSampler", "output": ["LATENT"], "input": {"required": {
            "model": ["MODEL"], "seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}],
            "sampler_name": [["euler", "ddim"]], "positive": ["CONDITIONING"]}}},
        "EmptyImage": {"display_name": "EmptyImage", "output": ["IMAGE"], "input": {"required": {
            "width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}]}}},
        "ImageInvert": {"display_name": "Invert Image", "output": ["IMAGE"], "input": {"required": {"image": ["IMAGE"]}}},
    })
}

#[test]
fn widget_values_skip_control_after_generate() {
    let ui = json!({"nodes": [
        {"id": 3, "type": "KSampler", "mode": 0, "inputs": [{"name": "model", "link": null}],
         "widgets_values": [42, "randomize", 30, "ddim"]}
    ], "links": []});
    let api = to_api(&ui, &info()).expect("convert");
    assert_eq!(
        api["3"]["inputs"],
        json!({"seed": 42, "steps": 30, "sampler_name": "ddim"})
    );
    assert_eq!(api["3"]["_meta"]["title"], "KSampler");
}

#[test]
fn links_bypass_and_mute() {
    let ui = json!({"nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "outputs": [{"links": [1]}], "widgets_values": [8, 8]},
        {"id": 2, "type": "ImageInvert", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 1}], "outputs": [{"links": [2]}]},
        {"id": 3, "type": "ImageInvert", "mode": 0, "title": "last", "inputs": [{"name": "image", "type": "IMAGE", "link": 2}]},
        {"id": 4, "type": "ImageInvert", "mode": 2, "inputs": [{"name": "image", "type": "IMAGE", "link": null}]},
        {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["hello"]}
    ], "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]});
    let api = to_api(&ui, &info()).expect("convert");
    assert_eq!(api.keys().collect::<Vec<_>>(), ["1", "3"]);
    assert_eq!(api["3"]["inputs"]["image"], json!(["1", 0]));
    assert_eq!(api["3"]["_meta"]["title"], "last");
}

#[test]
fn missing_types_and_group_nodes_are_refused() {
    let ui = json!({"nodes": [{"id": 7, "type": "FancyNode"}, {"id": 8, "type": "FancyNode"}], "links": []});
    let e = to_api(&ui, &info()).expect_err("missing");
    assert_eq!(
        e,
        UiError::MissingNodeTypes(vec!["FancyNode (nodes 7, 8)".into()])
    );
    let ui = json!({"nodes": [], "links": [], "extra": {"groupNodes": {"My group": {}}}});
    let e = to_api(&ui, &info()).expect_err("group");
    assert!(e.to_string().contains("My group"), "{e}");
}
