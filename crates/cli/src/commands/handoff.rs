//! `comfy-remote serve` in a build without the server (the native module of
//! the Python package): hand over to the `comfy-remote-server` executable
//! (the `comfy-remote-server` package), or say in one line how to get it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::exit;

/// The executable that carries `serve`.
pub const SERVER_EXE: &str = "comfy-remote-server";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The arguments of `serve` (see `comfy-remote-server serve --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

fn exe_name() -> String {
    format!("{SERVER_EXE}{}", std::env::consts::EXE_SUFFIX)
}

/// `comfy-remote-server` next to `argv0` (a console script lives in the
/// same `bin/` or `Scripts\` folder as the packages' other scripts), else
/// on PATH.
fn find_server(argv0: Option<&Path>) -> Option<PathBuf> {
    let name = exe_name();
    let beside = argv0
        .and_then(Path::parent)
        .map(|d| d.join(&name))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(&name))
            .find(|p| p.is_file())
    })
}

pub fn execute(argv0: Option<&Path>, args: Args) -> anyhow::Result<i32> {
    let Some(server) = find_server(argv0) else {
        eprintln!(
            "error: `serve` runs the worker, which this installation does not include; install it with `pip install comfy-remote-server=={}` and run `{SERVER_EXE} serve`",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(exit::USAGE);
    };
    let mut cmd = std::process::Command::new(&server);
    cmd.arg("serve").args(&args.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Replaces this process: signals and the exit code are the server's.
        let err = cmd.exec();
        eprintln!("error: could not start {}: {err}", server.display());
        Ok(exit::UNAVAILABLE)
    }
    #[cfg(not(unix))]
    {
        match cmd.status() {
            Ok(status) => Ok(status.code().unwrap_or(exit::FAILED)),
            Err(err) => {
                eprintln!("error: could not start {}: {err}", server.display());
                Ok(exit::UNAVAILABLE)
            }
        }
    }
}
