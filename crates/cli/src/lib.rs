//! The `comfy-remote` command line: clap types and command dispatch.
//!
//! Kept as a library so the Python package runs the very same CLI
//! (`python -m comfy_remote`, the `comfy-remote` console script) from its
//! native module. Each command lives in `commands/<name>.rs` and returns an
//! exit code; results go to stdout, logs and progress to stderr.

use clap::{Parser, Subcommand};

mod commands;
mod logging;
pub mod output;

/// Run any part of a ComfyUI workflow on a remote GPU, and deploy workflows as services.
#[derive(Debug, Parser)]
#[command(name = "comfy-remote", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a remote workflow: a worker gateway in front of a real ComfyUI.
    #[cfg(feature = "serve")]
    Serve(commands::serve::Args),
    /// Serve a remote workflow (runs `comfy-remote-server serve`, the worker gateway).
    #[cfg(not(feature = "serve"))]
    #[command(disable_help_flag = true)]
    Serve(commands::handoff::Args),
    /// Submit a job to a worker and write its outputs.
    Run(commands::run::Args),
    /// Generate a Modal project for a remote workflow and deploy it (--no-deploy: generate and check only).
    Deploy(commands::deploy::DeployArgs),
    /// Stop (delete) a deployed Modal app.
    Stop(commands::deploy::StopArgs),
    /// Show whether a Modal app is deployed (exit 0 deployed, 1 not deployed, 4 `modal` failed).
    Status(commands::deploy::StatusArgs),
}

/// Exit codes shared by all commands.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The job or operation failed (remote failure, deploy failure).
    pub const FAILED: i32 = 1;
    /// Bad command line or bad input file.
    pub const USAGE: i32 = 2;
    /// The job was canceled.
    pub const CANCELED: i32 = 3;
    /// Could not reach the server or a required tool.
    pub const UNAVAILABLE: i32 = 4;
}

/// Parse `args` (including the program name) and run the command; returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    #[cfg(not(feature = "serve"))]
    let argv0 = args.first().map(std::path::PathBuf::from);
    let wants_json = args.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return exit::OK;
            }
            // `--json` promises a summary on every exit, usage errors included.
            if wants_json {
                let message = e
                    .render()
                    .to_string()
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid command line")
                    .trim_start_matches("error: ")
                    .to_owned();
                let _ = output::line(serde_json::json!({
                    "status": "rejected",
                    "error": {"kind": "usage", "message": message},
                }));
            }
            return exit::USAGE;
        }
    };
    logging::init();
    let result = match cli.command {
        #[cfg(feature = "serve")]
        Command::Serve(args) => commands::serve::execute(args),
        #[cfg(not(feature = "serve"))]
        Command::Serve(args) => commands::handoff::execute(argv0.as_deref(), args),
        Command::Run(args) => commands::run::execute(args),
        Command::Deploy(args) => commands::deploy::deploy(args),
        Command::Stop(args) => commands::deploy::stop(args),
        Command::Status(args) => commands::deploy::status(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::FAILED
        }
    }
}
