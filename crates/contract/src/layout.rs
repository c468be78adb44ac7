//! The job directory: where the worker puts a job's inputs and where the
//! Remote Output nodes put its outputs (`docs/protocol.md` §6).
//!
//! ```text
//! <job dir>/inputs.crc            the submitted inputs container (Remote Inputs read it)
//! <job dir>/outputs/<name>.crc    one container per Remote Output, written by the node
//! <job dir>/result.crc            the outputs container the worker serves
//! ```
//!
//! Every path handed to ComfyUI is absolute: ComfyUI resolves relative
//! paths against its own directory, not the worker's.

use std::path::{Path, PathBuf};

/// File name of a job's input container inside its job directory.
pub const INPUTS_FILE: &str = "inputs.crc";
/// Folder of a job directory where Remote Outputs write `<name>.crc`.
pub const OUTPUTS_DIR: &str = "outputs";
/// The result container the worker serves, in the job directory.
pub const RESULT_FILE: &str = "result.crc";
/// Extension of container files.
pub const CONTAINER_EXT: &str = "crc";

/// The input container of the job directory `dir`.
pub fn inputs_file(dir: &Path) -> PathBuf {
    dir.join(INPUTS_FILE)
}

/// The folder Remote Outputs write into.
pub fn outputs_dir(dir: &Path) -> PathBuf {
    dir.join(OUTPUTS_DIR)
}

/// The file the Remote Output named `name` writes.
pub fn output_file(dir: &Path, name: &str) -> PathBuf {
    outputs_dir(dir).join(format!("{name}.{CONTAINER_EXT}"))
}

/// The result container of the job.
pub fn result_file(dir: &Path) -> PathBuf {
    dir.join(RESULT_FILE)
}
