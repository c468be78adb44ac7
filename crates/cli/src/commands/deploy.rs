//! `comfy-remote deploy`, `stop` and `status`: the Modal lifecycle from the terminal.
//!
//! Results (the service URL, or the project directory when nothing was
//! deployed; JSON with `--json`) go to stdout; every command run and its
//! output stream to stderr.

use std::path::PathBuf;

use anyhow::Context;
use comfy_remote_deploy::{lifecycle, DeployError, Options, Runner};

use crate::exit;

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The remote workflow, in API format (ComfyUI: Workflow > Export (API)).
    pub workflow: PathBuf,
    /// modal_config.json to use (default: the project's own, else all defaults).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Project directory to generate (default: ./modal/<app name>).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Modal app name (default: comfy-remote-<workflow file name>).
    #[arg(long)]
    pub app: Option<String>,
    /// GPU type; repeat for a fallback list (e.g. --gpu H100 --gpu A100-80GB). Default H100.
    #[arg(long)]
    pub gpu: Vec<String>,
    /// Extra pip requirement for the image (repeatable).
    #[arg(long = "pip")]
    pub pip: Vec<String>,
    /// Extra Debian package for the image (repeatable).
    #[arg(long = "apt")]
    pub apt: Vec<String>,
    /// Torch stack preset (see docs/deploy.md), e.g. torch-2.11 or seed-2.3.
    #[arg(long)]
    pub torch_stack: Option<String>,
    /// The comfy-remote wheel to install in the image (default: $COMFY_REMOTE_WHEEL).
    #[arg(long, env = "COMFY_REMOTE_WHEEL")]
    pub wheel: Option<PathBuf>,
    /// A ComfyUI checkout whose core node types the check uses (default: $COMFYUI_DIR, else ComfyUI 0.33.0's list).
    #[arg(long, env = "COMFYUI_DIR")]
    pub comfyui: Option<PathBuf>,
    /// Generate (and check) the project only; print its directory, not a URL.
    #[arg(long)]
    pub no_deploy: bool,
    /// Remove the project directory first, then regenerate it.
    #[arg(long)]
    pub clean: bool,
    /// Rebuild every image layer: a new build nonce and MODAL_IGNORE_CACHE=1.
    #[arg(long)]
    pub force_rebuild: bool,
    /// Stop the remote app (`modal app stop -y`) before anything else.
    #[arg(long)]
    pub delete_remote: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The Modal app name.
    pub app: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The Modal app name.
    pub app: String,
    #[arg(long)]
    pub json: bool,
}

fn log_line(line: &str) {
    eprintln!("{line}");
}

/// Map the typed deploy errors onto exit codes; the message is printed here.
fn fail(err: DeployError) -> anyhow::Result<i32> {
    eprintln!("error: {err}");
    Ok(match err {
        DeployError::ToolMissing { .. } => exit::UNAVAILABLE,
        DeployError::CommandFailed { .. }
        | DeployError::NoUrl { .. }
        | DeployError::Spawn { .. } => exit::FAILED,
        _ => exit::USAGE,
    })
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<i32> {
    let overrides = lifecycle::Overrides {
        app_name: args.app.clone(),
        gpu: args.gpu.clone(),
        pip: args.pip.clone(),
        apt: args.apt.clone(),
        torch_stack: args.torch_stack.clone(),
    };
    let req = match lifecycle::request(
        &args.workflow,
        args.config.as_deref(),
        args.out.as_deref(),
        &overrides,
        args.wheel.clone(),
        args.comfyui.clone(),
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let opts = Options {
        deploy: !args.no_deploy,
        clean: args.clean,
        force_rebuild: args.force_rebuild,
        delete_remote: args.delete_remote,
    };
    let runner = Runner::from_env();
    let report = match lifecycle::run(&req, opts, &runner, &mut log_line) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialize the report")?
        );
    } else {
        match &report.url {
            Some(url) => println!("{url}"),
            None => println!("{}", report.project.dir.display()),
        }
    }
    Ok(exit::OK)
}

pub fn stop(args: StopArgs) -> anyhow::Result<i32> {
    let runner = Runner::from_env();
    match lifecycle::stop(&runner, &args.app, &mut log_line) {
        Ok(stopped) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"app": args.app, "stopped": stopped})
                );
            } else if stopped {
                println!("stopped {}", args.app);
            } else {
                println!("{} was not deployed", args.app);
            }
            Ok(exit::OK)
        }
        Err(e) => fail(e),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let runner = Runner::from_env();
    match lifecycle::status(&runner, &args.app, &mut log_line) {
        Ok(st) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&st).context("serialize the status")?
                );
            } else {
                println!(
                    "{}: {}",
                    st.name,
                    st.state.as_deref().unwrap_or("not deployed")
                );
            }
            Ok(if st.state.as_deref() == Some("deployed") {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        Err(e) => fail(e),
    }
}
