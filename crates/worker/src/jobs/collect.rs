//! The result of a finished prompt: each Remote Output's file, in
//! signature order, as the one outputs container the worker serves.

use std::path::Path;

use comfy_remote_contract::layout;
use comfy_remote_protocol::api::{ErrorCode, ErrorInfo, SignatureItem, ValueInfo};
use comfy_remote_protocol::{types, Entry, Limits, Payload};
use serde_json::Value;

/// Read each Remote Output's file in signature order into one result container.
pub(super) fn collect_outputs(
    dir: &Path,
    sig: &[SignatureItem],
    limits: &Limits,
) -> Result<(Vec<ValueInfo>, u64), ErrorInfo> {
    let fail = |message: String| ErrorInfo {
        code: ErrorCode::ExecutionFailed,
        message,
        details: Value::Null,
    };
    let mut maps = Vec::with_capacity(sig.len());
    for item in sig {
        let path = layout::output_file(dir, &item.name);
        let bytes = crate::fsutil::map(&path).map_err(|_| {
            fail(format!(
                "Remote Output {:?} (node {}) produced nothing; is it connected and did it run?",
                item.name, item.node_id
            ))
        })?;
        maps.push(bytes);
    }
    // One output: its file already is the result container (one entry with
    // that name and type), so it is checked and renamed, never copied.
    if let ([item], [bytes]) = (sig, maps.as_slice()) {
        let payload = comfy_remote_protocol::decode(bytes, limits).map_err(|e| {
            fail(format!(
                "Remote Output {:?} wrote an unreadable value: {e}",
                item.name
            ))
        })?;
        if let [entry] = payload.entries.as_slice() {
            if entry.name == item.name {
                let infos = vec![ValueInfo {
                    name: item.name.clone(),
                    comfy_type: types::type_of(entry).0,
                }];
                let len = bytes.len() as u64;
                let src = layout::output_file(dir, &item.name);
                std::fs::rename(&src, layout::result_file(dir))
                    .map_err(|e| fail(format!("storing the result: {e}")))?;
                return Ok((infos, len));
            }
        }
    }
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(sig.len());
    for (item, bytes) in sig.iter().zip(&maps) {
        let payload = comfy_remote_protocol::decode(bytes, limits).map_err(|e| {
            fail(format!(
                "Remote Output {:?} wrote an unreadable value: {e}",
                item.name
            ))
        })?;
        let entry = payload.entries.into_iter().next().ok_or_else(|| {
            fail(format!(
                "Remote Output {:?} wrote an empty container",
                item.name
            ))
        })?;
        entries.push(Entry {
            name: item.name.clone(),
            comfy_type: entry.comfy_type,
            value: entry.value,
        });
    }
    write_container(dir, entries).map_err(|e| match e {
        comfy_remote_protocol::WriteError::Codec(e) => fail(format!("encoding the result: {e}")),
        e => fail(format!("writing the result: {e}")),
    })
}

/// The names and types of a job's outputs.
pub(super) fn infos_of(entries: &[Entry<'_>]) -> Vec<ValueInfo> {
    entries
        .iter()
        .map(|e| ValueInfo {
            name: e.name.clone(),
            comfy_type: types::type_of(e).0,
        })
        .collect()
}

/// `entries` as the job's result container, streamed into a temporary
/// file and renamed into place (the combined result is never held in
/// memory); the outputs' names and types, and the container's size.
pub(super) fn write_container(
    dir: &Path,
    entries: Vec<Entry<'_>>,
) -> Result<(Vec<ValueInfo>, u64), comfy_remote_protocol::WriteError> {
    let infos = infos_of(&entries);
    let tmp = dir.join(format!("{}.tmp", layout::RESULT_FILE));
    let written = (|| -> Result<u64, comfy_remote_protocol::WriteError> {
        let mut w = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&tmp)?);
        let n = comfy_remote_protocol::encode_to_writer(&Payload { entries }, &mut w)?;
        std::io::Write::flush(&mut w)?;
        std::fs::rename(&tmp, layout::result_file(dir))?;
        Ok(n)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok((infos, written?))
}
