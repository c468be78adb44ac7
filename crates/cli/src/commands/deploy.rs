//! `comfy-remote deploy`, `stop` and `status`: the Modal lifecycle from the terminal.
//!
//! Results (the service URL, or the project directory when nothing was
//! deployed; JSON with `--json`) go to stdout; every command run and its
//! output stream to stderr.

use std::path::PathBuf;

use anyhow::Context;
use comfy_remote_deploy::{lifecycle, DeployError, Options, Runner};

use crate::{exit, output};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Settings given by flags (--app, --gpu, --pip, --apt, --torch-stack, --source) are saved in the project's modal_config.json, and later runs use them; each one saved is logged.\n\nExit status: 0 ok, 1 Modal failed (deploy, or reading the service URL), 2 bad input (workflow, config, wheel, node check, a flag), 4 `modal` is not installed."
)]
pub struct DeployArgs {
    /// The remote workflow: saved with ComfyUI's Save (UI format; needs --object-info) or Workflow > Export (API).
    pub workflow: PathBuf,
    /// modal_config.json to use (default: the project's own, else all defaults); its relative custom node paths are relative to it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Project directory to generate (default: ./modal/<app name>).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Modal app name (default: comfy-remote-<workflow file stem>, e.g. invert_blur.json -> comfy-remote-invert-blur; the rule is in docs/deploy.md).
    #[arg(long)]
    pub app: Option<String>,
    /// GPU type; repeat for a fallback list (e.g. --gpu H100 --gpu A100-80GB). Default H100. Saved in the project's config.
    #[arg(long)]
    pub gpu: Vec<String>,
    /// Extra pip requirement for the image (repeatable); added to the project's config.
    #[arg(long = "pip")]
    pub pip: Vec<String>,
    /// Extra Debian package for the image (repeatable); added to the project's config.
    #[arg(long = "apt")]
    pub apt: Vec<String>,
    /// Torch stack preset, e.g. torch-2.11 (the default) or seed-2.3 (the table is in docs/deploy.md). Saved in the project's config.
    #[arg(long)]
    pub torch_stack: Option<String>,
    /// Where the image gets comfy-remote (always this version): auto (a --wheel or --sdist given, else target/wheels of the checkout you are in, else the package registry for a release build), registry (comfy-remote==VERSION from PyPI), wheel, or sdist (built inside the image; the registry's sdist without --sdist). Saved in the project's config.
    #[arg(long, value_parser = ["auto", "registry", "wheel", "sdist"])]
    pub source: Option<String>,
    /// The comfy-remote wheel to install in the image: a .whl, a directory of wheels (the one of this version for Linux x86_64 is picked), a glob, or an http(s) URL (the comfy_remote_server wheel is taken from beside it).
    #[arg(long, env = comfy_remote_protocol::env::WHEEL)]
    pub wheel: Option<PathBuf>,
    /// The comfy-remote sdist to build inside the image: a .tar.gz, a directory of sdists, a glob, or an http(s) URL (the comfy_remote_server sdist is taken from beside it).
    #[arg(long)]
    pub sdist: Option<PathBuf>,
    /// The ComfyUI the workflow was made in: its core node types are checked, its custom_nodes/ and models/ searched for the packs and model files the workflow needs (default: $COMFYUI_DIR, else ComfyUI 0.33.0's node list and nothing local).
    #[arg(long, env = comfy_remote_protocol::env::COMFYUI_DIR)]
    pub comfyui: Option<PathBuf>,
    /// Where that ComfyUI keeps custom_nodes/ and models/ when not in its directory (ComfyUI's own --base-directory).
    #[arg(long, value_name = "DIR")]
    pub base_directory: Option<PathBuf>,
    /// The node definitions of that ComfyUI: the URL of it running (e.g. http://127.0.0.1:8188) or a saved copy of its /object_info. Needed for a UI-format workflow; also names the pack of each custom node.
    #[arg(long, value_name = "URL_OR_FILE")]
    pub object_info: Option<String>,
    /// Generate (and check) the project only; print its directory, not a URL.
    #[arg(long)]
    pub no_deploy: bool,
    /// Clean Build: remove the files the generator wrote in the project directory (never your own files, the workflow or the config this run reads), then regenerate them.
    #[arg(long)]
    pub clean: bool,
    /// Rebuild every image layer: a new build nonce and MODAL_IGNORE_CACHE=1.
    #[arg(long)]
    pub force_rebuild: bool,
    /// Stop the remote app (`modal app stop -y`) before anything else.
    #[arg(long)]
    pub delete_remote: bool,
    /// Print the result as JSON on stdout, also on failure: {"status": "ok"|"rejected"|"unavailable"|"failed", ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 stopped (or there was no such app), 1 `modal` failed (no token, no network), 2 a bad app name, 4 `modal` is not installed."
)]
pub struct StopArgs {
    /// The Modal app name.
    pub app: String,
    /// Print the result as JSON on stdout, also on failure: {"status": "ok"|"rejected"|"unavailable"|"failed", ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the app is deployed, 1 it is not deployed (stopped or unknown), 2 a bad app name, 4 `modal` is missing or failed (no token, no network)."
)]
pub struct StatusArgs {
    /// The Modal app name.
    pub app: String,
    /// Print the result as JSON on stdout, also on failure: {"status": "ok"|"rejected"|"unavailable"|"failed", ...}.
    #[arg(long)]
    pub json: bool,
}

fn log_line(line: &str) {
    eprintln!("{line}");
}

/// Map the typed deploy errors onto exit codes; the message is printed here
/// (and, with `--json`, a `{"status", "error": {"message"}}` report on stdout).
fn fail(err: DeployError, json: bool) -> anyhow::Result<i32> {
    let code = match err {
        DeployError::ToolMissing { .. } => exit::UNAVAILABLE,
        DeployError::CommandFailed { .. }
        | DeployError::NoUrl { .. }
        | DeployError::Spawn { .. }
        | DeployError::Fetch { .. } => exit::FAILED,
        _ => exit::USAGE,
    };
    report_failure(&err.to_string(), code, json)
}

fn report_failure(message: &str, code: i32, json: bool) -> anyhow::Result<i32> {
    eprintln!("error: {message}");
    if json {
        let status = match code {
            exit::UNAVAILABLE => "unavailable",
            exit::USAGE => "rejected",
            _ => "failed",
        };
        output::line(
            serde_json::to_string_pretty(&serde_json::json!({
                "status": status,
                "error": {"message": message},
            }))
            .context("serialize the report")?,
        )?;
    }
    Ok(code)
}

/// A success report: `{"status": "ok", ...fields}`.
fn ok_json(value: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("status".into(), "ok".into());
    if let serde_json::Value::Object(fields) = value {
        out.extend(fields);
    }
    serde_json::Value::Object(out)
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<i32> {
    let overrides = lifecycle::Overrides {
        app_name: args.app.clone(),
        gpu: args.gpu.clone(),
        pip: args.pip.clone(),
        apt: args.apt.clone(),
        torch_stack: args.torch_stack.clone(),
        source: args.source.clone(),
    };
    let base = args.base_directory.clone().or_else(|| args.comfyui.clone());
    let mut local = base
        .as_deref()
        .map(comfy_remote_deploy::LocalComfy::from_base)
        .unwrap_or_default();
    if let Some(source) = &args.object_info {
        local = match local.with_object_info(source) {
            Ok(l) => l,
            Err(e) => return fail(e, args.json),
        };
    }
    let req = match lifecycle::request(
        &args.workflow,
        args.config.as_deref(),
        args.out.as_deref(),
        &overrides,
        comfy_remote_deploy::install::Given {
            wheel: args.wheel.clone(),
            sdist: args.sdist.clone(),
        },
        args.comfyui.clone(),
        local,
    ) {
        Ok(r) => r,
        Err(e) => return fail(e, args.json),
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
        Err(e) => return fail(e, args.json),
    };
    if args.json {
        let value = serde_json::to_value(&report).context("serialize the report")?;
        output::line(
            serde_json::to_string_pretty(&ok_json(value)).context("serialize the report")?,
        )?;
    } else {
        match &report.url {
            Some(url) => output::line(url)?,
            None => output::line(report.project.dir.display())?,
        }
    }
    Ok(exit::OK)
}

pub fn stop(args: StopArgs) -> anyhow::Result<i32> {
    if let Err(e) = lifecycle::check_app_flag("app name", &args.app) {
        return fail(e, args.json);
    }
    let runner = Runner::from_env();
    match lifecycle::stop(&runner, &args.app, &mut log_line) {
        Ok(stopped) => {
            if args.json {
                output::line(ok_json(
                    serde_json::json!({"app": args.app, "stopped": stopped}),
                ))?;
            } else if stopped {
                output::line(format_args!("stopped {}", args.app))?;
            } else {
                output::line(format_args!("{} was not deployed", args.app))?;
            }
            Ok(exit::OK)
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    if let Err(e) = lifecycle::check_app_flag("app name", &args.app) {
        return fail(e, args.json);
    }
    let runner = Runner::from_env();
    match lifecycle::status(&runner, &args.app, &mut log_line) {
        Ok(st) => {
            if args.json {
                output::line(ok_json(
                    serde_json::to_value(&st).context("serialize the status")?,
                ))?;
            } else {
                output::line(format_args!(
                    "{}: {}",
                    st.name,
                    st.state.as_deref().unwrap_or("not deployed")
                ))?;
            }
            Ok(if st.state.as_deref() == Some("deployed") {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        // `modal` itself failing (no token, no network) means the state is unknown.
        Err(e @ DeployError::CommandFailed { .. }) => {
            report_failure(&e.to_string(), exit::UNAVAILABLE, args.json)
        }
        Err(e) => fail(e, args.json),
    }
}
