//! The one error type of the deploy crate: what went wrong, with the context a user needs to fix it.

use std::path::PathBuf;

/// Everything that can stop a scaffold, a check or a Modal command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("modal_config.json: {message}")]
    Config { message: String },
    /// A settings file other than the project's own, named by its real path.
    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    /// A command-line flag (or the node's matching input) with an unusable value.
    #[error("{message}")]
    Flag { message: String },
    /// The worker's own workflow check (`comfy-remote serve` refuses the same file with the same words).
    #[error("{message}")]
    Workflow { message: String },
    #[error("modal_config.json: unknown key `{key}`{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("incoherent torch stack: {message}")]
    TorchStack { message: String },
    #[error("unknown torch stack `{name}`; presets: {}", .presets.join(", "))]
    UnknownStack { name: String, presets: Vec<String> },
    #[error("no comfy-remote wheel of version {version}: {message}")]
    Wheel { version: String, message: String },
    #[error("the workflow uses node types this deployment would not have: {}\n{hint}", .missing.join(", "))]
    UnresolvedNodes { missing: Vec<String>, hint: String },
    #[error("the workflow names model files but the deployment has no model Volume: {}\nadd \"volume\": {{\"name\": \"comfy-models\"}} to modal_config.json and upload them with `modal volume put`, or set \"check_models\": false", .files.join(", "))]
    ModelsWithoutVolume { files: Vec<String> },
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("`{program}` was not found on PATH; {}", tool_hint(.program))]
    ToolMissing { program: String },
    /// The image's packages do not resolve together (the resolver's own explanation).
    #[error("the image's Python packages do not resolve together (for Linux x86_64, Python 3.11):\n{message}\n{hint}")]
    Unresolvable { message: String, hint: String },
    /// A model file the workflow names is neither local nor given a URL.
    #[error("the workflow names model files that are neither in the local ComfyUI's model folders ({searched}) nor given a source in \"models\" of modal_config.json: {}\nput them in ComfyUI's models folders (pass --comfyui DIR, or --base-directory DIR, for the ComfyUI they are in), or add {{\"models\": {{\"<folder>/<file>\": {{\"url\": URL, \"sha256\": HEX}}}}}}, or set \"check_models\": false when they are on the Volume already", .files.join(", "))]
    ModelsNotFound {
        files: Vec<String>,
        searched: String,
    },
    /// A model download failed or did not match its hash.
    #[error("model {file}: {message}")]
    Fetch { file: String, message: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed (exit {code}): {message}")]
    CommandFailed {
        command: String,
        code: i32,
        message: String,
    },
    #[error("deployed, but could not read the service URL: {message}\nthe deploy is recorded: run the same command again to only ask Modal for the URL (no new deploy)")]
    NoUrl { message: String },
    #[error("refusing to clean {path}: comfy-remote did not create it (no .comfy-remote/state.json); nothing was removed")]
    NotAProject { path: PathBuf },
    #[error("refusing to write into {path}: it exists and is not a comfy-remote project (no .comfy-remote/state.json); choose another --out (a new or empty directory)")]
    NotAProjectOut { path: PathBuf },
}

/// How to get a missing external tool.
fn tool_hint(program: &str) -> &'static str {
    let name = std::path::Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("uv") {
        "the image's packages are resolved with uv before it builds: `pip install uv` (the comfy-remote package depends on it), or set COMFY_REMOTE_UV to its path"
    } else if name.starts_with("git") {
        "install git"
    } else {
        "install the Modal client (`pip install modal`) and run `modal token new`"
    }
}

/// Result alias of the deploy crate.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;
