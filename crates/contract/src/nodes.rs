//! The node types of the comfy-remote pack and the rules of its Remote
//! Input/Output nodes, which the Python nodes take from here (through the
//! native module) rather than restating.

/// `class_type` of the ingress node of a remote workflow.
pub const REMOTE_INPUT: &str = "RemoteInput";
/// `class_type` of the egress node of a remote workflow.
pub const REMOTE_OUTPUT: &str = "RemoteOutput";
/// `class_type` of the node that runs a remote workflow.
pub const REMOTE_API: &str = "RemoteAPI";
/// `class_type` of the node that picks one output of a multi-output result.
pub const REMOTE_RESULT_PICK: &str = "RemoteResultPick";
/// `class_type` of the node that deploys a workflow to Modal.
pub const MODAL_DEPLOYMENT: &str = "ModalDeployment";

/// The key the worker sets in the `inputs` of every Remote Input and Remote
/// Output node of a job's prompt: the absolute path of the job's input
/// container (Remote Input) or of its job directory (Remote Output). The
/// nodes do not declare it, so it is no widget and never saved into a
/// workflow; they read it from their own entry of the prompt. ComfyUI's
/// cache signature covers every key of a node's `inputs`, so a node of one
/// job is never served the cached value of another (`docs/protocol.md` §6).
pub const JOB_KEY: &str = "remote_job";

/// Every node type the pack registers.
pub const NODE_TYPES: &[&str] = &[
    REMOTE_API,
    REMOTE_RESULT_PICK,
    REMOTE_INPUT,
    REMOTE_OUTPUT,
    MODAL_DEPLOYMENT,
];

/// Types a Remote Input may declare (`*`: any value).
pub const INPUT_TYPES: &[&str] = &[
    "*", "IMAGE", "MASK", "LATENT", "AUDIO", "STRING", "INT", "FLOAT", "BOOLEAN",
];

/// The name of a Remote Input or Output, trimmed, or why it is unusable:
/// it names a file in the job directory, so it is not empty, has no path
/// separator and does not start with a dot.
pub fn io_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("needs a non-empty name".into());
    }
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!(
            "has the name {name:?}, which may not contain '/' or '\\' or start with '.'"
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_never_paths() {
        assert_eq!(io_name("  image "), Ok("image".to_owned()));
        for bad in ["", "  ", "a/b", "a\\b", ".hidden", "../x"] {
            assert!(io_name(bad).is_err(), "{bad:?}");
        }
    }
}
