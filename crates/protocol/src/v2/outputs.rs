//! A job's result container as v2 output files. A job of the served
//! workflow has one entry per Remote Output, which becomes files by the
//! media rule (`media::files_of`: an IMAGE batch one PNG per item, ...);
//! a job that ran its own graph has one entry per file its nodes wrote,
//! named `<node id>/<file name>`, which is that file as it was.

use crate::api::SignatureItem;
use crate::media::{self, FileKind, MediaError};
use crate::value::{Payload, Value};

/// One output file of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The node that produced it ("" when unknown).
    pub node_id: String,
    pub name: String,
    pub kind: FileKind,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// How a result container's entries are named.
#[derive(Debug, Clone, Copy)]
pub enum Naming<'a> {
    /// After the served workflow's Remote Outputs.
    Signature(&'a [SignatureItem]),
    /// `<node id>/<file name>`, by a job that ran its own graph.
    NodeFiles,
}

/// The entry name of a file a job's own graph wrote ([`Naming::NodeFiles`]).
pub fn node_file_entry(node_id: &str, file_name: &str) -> String {
    format!("{node_id}/{file_name}")
}

/// The kind and media type of a file by its name's extension.
pub fn kind_of_name(name: &str) -> (FileKind, &'static str) {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => (FileKind::Image, "image/png"),
        "jpg" | "jpeg" => (FileKind::Image, "image/jpeg"),
        "webp" => (FileKind::Image, "image/webp"),
        "gif" => (FileKind::Image, "image/gif"),
        "mp4" => (FileKind::Video, "video/mp4"),
        "webm" => (FileKind::Video, "video/webm"),
        "mov" => (FileKind::Video, "video/quicktime"),
        "wav" => (FileKind::Audio, "audio/wav"),
        "mp3" => (FileKind::Audio, "audio/mpeg"),
        "flac" => (FileKind::Audio, "audio/flac"),
        "ogg" | "opus" => (FileKind::Audio, "audio/ogg"),
        "txt" => (FileKind::Text, "text/plain; charset=utf-8"),
        "latent" => (FileKind::Latent, "application/octet-stream"),
        "safetensors" => (FileKind::File, media::SAFETENSORS_MEDIA_TYPE),
        "json" => (FileKind::File, "application/json"),
        _ => (FileKind::File, "application/octet-stream"),
    }
}

/// The output files of a result container, in its order.
pub fn split(payload: &Payload<'_>, naming: Naming<'_>) -> Result<Vec<OutputFile>, MediaError> {
    let mut out = Vec::new();
    for entry in &payload.entries {
        let (node_id, file_name) = match naming {
            Naming::Signature(sig) => (
                sig.iter()
                    .find(|s| s.name == entry.name)
                    .map(|s| s.node_id.clone())
                    .unwrap_or_default(),
                entry.name.clone(),
            ),
            Naming::NodeFiles => match entry.name.split_once('/') {
                Some((node, file)) => (node.to_owned(), file.to_owned()),
                None => (String::new(), entry.name.clone()),
            },
        };
        if let (Naming::NodeFiles, Value::Bytes(b)) = (naming, &entry.value) {
            let (kind, content_type) = kind_of_name(&file_name);
            out.push(OutputFile {
                node_id,
                name: file_name,
                kind,
                content_type: content_type.to_owned(),
                bytes: b.to_vec(),
            });
            continue;
        }
        let renamed = crate::value::Entry {
            name: file_name,
            comfy_type: entry.comfy_type.clone(),
            value: entry.value.clone(),
        };
        for f in media::files_of(&renamed)? {
            out.push(OutputFile {
                node_id: node_id.clone(),
                name: f.name,
                kind: f.kind,
                content_type: f.content_type.to_owned(),
                bytes: f.bytes,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{ComfyType, Entry};
    use std::borrow::Cow;

    #[test]
    fn served_outputs_take_their_node_from_the_signature() {
        let img = media::f32_tensor(vec![2, 1, 1, 3], &[0.0; 6]).expect("t");
        let p = Payload {
            entries: vec![Entry {
                name: "image".into(),
                comfy_type: Some(ComfyType::new("IMAGE")),
                value: img,
            }],
        };
        let sig = [SignatureItem {
            name: "image".into(),
            comfy_type: "IMAGE".into(),
            optional: false,
            node_id: "10".into(),
            default: None,
        }];
        let files = split(&p, Naming::Signature(&sig)).expect("split");
        let got: Vec<_> = files
            .iter()
            .map(|f| (f.node_id.as_str(), f.name.as_str(), f.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("10", "image_000.png", FileKind::Image),
                ("10", "image_001.png", FileKind::Image)
            ]
        );
    }

    #[test]
    fn files_of_a_graph_are_passed_through_by_node() {
        let p = Payload {
            entries: vec![
                Entry {
                    name: "9/ComfyUI_00001_.png".into(),
                    comfy_type: None,
                    value: Value::Bytes(Cow::Borrowed(b"\x89PNG")),
                },
                Entry {
                    name: "12/text".into(),
                    comfy_type: None,
                    value: Value::Str("hi".into()),
                },
            ],
        };
        let files = split(&p, Naming::NodeFiles).expect("split");
        assert_eq!(
            (
                files[0].node_id.as_str(),
                files[0].name.as_str(),
                files[0].kind,
                files[0].bytes.as_slice()
            ),
            ("9", "ComfyUI_00001_.png", FileKind::Image, &b"\x89PNG"[..])
        );
        assert_eq!(
            (
                files[1].node_id.as_str(),
                files[1].name.as_str(),
                files[1].kind
            ),
            ("12", "text.txt", FileKind::Text)
        );
        assert_eq!(kind_of_name("clip.MP4"), (FileKind::Video, "video/mp4"));
    }
}
