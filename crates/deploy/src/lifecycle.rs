//! Deploy, Force Rebuild, Clean Build, Delete Remote App and status: the same operations for the CLI and the node.
//!
//! Unchanged inputs do not redeploy: the project's content hash is compared
//! with the hash of the last successful deploy (and the app must still be
//! deployed). The service URL comes from Modal's API (`get_web_url()` on the
//! app's `web` function), never from `modal deploy`'s wrapped output.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DeployError, Result};
use crate::layout::{self, ProjectState};
use crate::runner::{Cmd, Runner, Sink};
use crate::scaffold::{self, Project, ScaffoldRequest};

/// The lifecycle switches (the node's toggles, the CLI's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Run `modal deploy` (else: generate only, and no URL is returned).
    pub deploy: bool,
    /// Remove the project directory before regenerating it.
    pub clean: bool,
    /// New build nonce + `MODAL_IGNORE_CACHE=1`: rebuild every image layer.
    pub force_rebuild: bool,
    /// `modal app stop -y <app>` first.
    pub delete_remote: bool,
}

/// The result of one lifecycle run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub project: Project,
    /// The service URL; `None` unless this run deployed (or found the same project deployed).
    pub url: Option<String>,
    pub deployed: bool,
    /// The project was unchanged and already deployed: nothing was redeployed.
    pub unchanged: bool,
    /// `Some(true)`: the remote app was stopped; `Some(false)`: there was none.
    pub stopped: Option<bool>,
    /// What the user must know (`warning: ...`), also logged: e.g. a public service.
    pub warnings: Vec<String>,
}

/// One app as `modal app list --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStatus {
    pub name: String,
    /// `deployed`, `stopped`, `ephemeral`, ...; `None` when Modal lists no such app.
    pub state: Option<String>,
    pub app_id: Option<String>,
    pub tasks: Option<u64>,
}

/// Run the lifecycle: delete remote, clean, generate, deploy, in that order.
pub fn run(
    req: &ScaffoldRequest,
    opts: Options,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<Report> {
    // Every path below is handed to child processes that run in the project
    // directory: make it absolute once ([`request`] already does).
    let mut req = req.clone();
    req.out_dir = absolute(&req.out_dir)?;
    req.new_nonce = opts.force_rebuild;
    let mut stopped = None;
    if opts.delete_remote {
        let app = app_name_for(&req)?;
        stopped = Some(stop(runner, &app, sink)?);
    }
    if opts.clean {
        layout::clean(&req.out_dir, &req.keep(), sink)?;
    }
    let project = scaffold::scaffold(&req, runner, sink)?;
    sink(&format!(
        "generated {} ({} files, gpu {}, torch stack {}, content {})",
        project.dir.display(),
        project.files.len(),
        project.config.gpu.display(),
        project.stack_name,
        &project.content_hash[..12]
    ));
    for line in crate::plan::describe(&project.plan, project.config.volume.as_ref()) {
        sink(&line);
    }
    for note in req.notes.iter().chain(&project.plan.notes) {
        sink(note);
    }
    for w in &project.warnings {
        sink(w);
    }
    let report = |project: Project, url: Option<String>, deployed: bool, unchanged: bool| {
        let warnings = project.warnings.clone();
        Report {
            project,
            url,
            deployed,
            unchanged,
            stopped,
            warnings,
        }
    };
    if !opts.deploy {
        sink("generate only: not deployed (no service URL)");
        return Ok(report(project, None, false, false));
    }

    let mut state = ProjectState::load(&project.dir).unwrap_or_default();
    if !opts.force_rebuild
        && stopped != Some(true)
        && state.deployed_hash.as_deref() == Some(&project.content_hash)
    {
        let st = status(runner, &project.app_name, sink)?;
        if st.state.as_deref() == Some("deployed") {
            let url = match state.url.clone() {
                Some(url) => url,
                None => {
                    sink(
                        "deployed before with these inputs: asking Modal for the service URL only",
                    );
                    let url = service_url(runner, &project.dir, &project.app_name, sink)?;
                    state.url = Some(url.clone());
                    state.save(&project.dir)?;
                    url
                }
            };
            sink(&format!("unchanged since the last deploy: {url}"));
            return Ok(report(project, Some(url), false, true));
        }
        sink("unchanged, but the app is not deployed any more: deploying");
    }

    if let Some(volume) = &project.config.volume {
        let synced = crate::models::sync_volume(
            &project.plan.models,
            volume,
            &project.dir.join(".comfy-remote"),
            runner,
            sink,
        )?;
        if !synced.uploaded.is_empty() {
            sink(&format!(
                "uploaded {} model file(s) ({}) to Volume {}",
                synced.uploaded.len(),
                crate::models::human_bytes(synced.bytes_uploaded),
                volume.name
            ));
        }
    }
    let target = format!("{}::app", project.dir.join("workflow.py").display());
    let mut cmd = runner.modal(&["deploy", &target]);
    cmd.cwd = Some(project.dir.clone());
    if opts.force_rebuild {
        cmd.env.push(("MODAL_IGNORE_CACHE".into(), "1".into()));
    }
    runner.run(&cmd, sink)?;
    // Record the deploy before asking for the URL: a retry after a failed
    // URL step must not deploy (and bill) again.
    state.deployed_hash = Some(project.content_hash.clone());
    state.url = None;
    state.save(&project.dir)?;
    let url = service_url(runner, &project.dir, &project.app_name, sink)?;
    state.url = Some(url.clone());
    state.save(&project.dir)?;
    sink(&format!("deployed {}: {url}", project.app_name));
    Ok(report(project, Some(url), true, false))
}

fn app_name_for(req: &ScaffoldRequest) -> Result<String> {
    if !req.config.app_name.is_empty() {
        return Ok(req.config.app_name.clone());
    }
    Ok(default_app_name(&req.workflow))
}

/// The app name a workflow file gets by default (from its file name only).
fn default_app_name(workflow: &Path) -> String {
    let stem = workflow
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::workflow::default_app_name(&stem)
}

/// Ask Modal for the deployed `web` function's URL (through the runner, so tests can fake it).
pub fn service_url(runner: &Runner, project: &Path, app: &str, sink: Sink<'_>) -> Result<String> {
    let cmd = Cmd {
        program: runner.python()?,
        args: vec![
            project
                .join("build")
                .join("get_url.py")
                .to_string_lossy()
                .into_owned(),
            app.to_string(),
        ],
        env: Vec::new(),
        cwd: Some(project.to_path_buf()),
    };
    let out = runner.run(&cmd, sink).map_err(|e| DeployError::NoUrl {
        message: e.to_string(),
    })?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| DeployError::NoUrl {
        message: format!("unexpected output {:?}", out.stdout.trim()),
    })?;
    match v.get("url").and_then(|u| u.as_str()) {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(u.to_string()),
        _ => Err(DeployError::NoUrl {
            message: format!("Modal returned no web URL ({line})"),
        }),
    }
}

/// `modal app stop -y <app>`. `Ok(false)` when there was no such (running) app.
pub fn stop(runner: &Runner, app: &str, sink: Sink<'_>) -> Result<bool> {
    let cmd = runner.modal(&["app", "stop", "-y", app]);
    let out = runner.run_unchecked(&cmd, sink)?;
    if out.code == 0 {
        sink(&format!("stopped app {app}"));
        return Ok(true);
    }
    let all = format!("{}{}", out.stdout, out.stderr);
    if all.contains("No App with name") || all.contains("already stopped") {
        sink(&format!("app {app} was not deployed: nothing to stop"));
        return Ok(false);
    }
    Err(DeployError::CommandFailed {
        command: cmd.display(),
        code: out.code,
        message: out.message(),
    })
}

/// `modal app list --json`, reduced to one app (a live entry wins over stopped ones).
pub fn status(runner: &Runner, app: &str, sink: Sink<'_>) -> Result<AppStatus> {
    let cmd = runner.modal(&["app", "list", "--json"]);
    let out = runner.run(&cmd, sink)?;
    let start = out.stdout.find('[').unwrap_or(0);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(out.stdout[start..].trim()).map_err(|e| {
            DeployError::CommandFailed {
                command: cmd.display(),
                code: 0,
                message: format!("unexpected `modal app list --json` output ({e})"),
            }
        })?;
    let mut best: Option<&serde_json::Value> = None;
    for row in rows
        .iter()
        .filter(|r| r.get("description").and_then(|d| d.as_str()) == Some(app))
    {
        let live = row.get("state").and_then(|s| s.as_str()) != Some("stopped");
        if best.is_none() || live {
            best = Some(row);
            if live {
                break;
            }
        }
    }
    let field = |k: &str| {
        best.and_then(|r| r.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    Ok(AppStatus {
        name: app.to_string(),
        state: field("state"),
        app_id: field("app_id"),
        tasks: field("tasks").and_then(|t| t.parse().ok()),
    })
}

/// Refuse an app name given on the command line (`--app`, `stop`, `status`), naming the flag.
/// `what` names where it came from (`--app`, `app name`).
pub fn check_app_flag(what: &str, app: &str) -> Result<()> {
    if crate::config::valid_app_name(app) {
        return Ok(());
    }
    Err(DeployError::Flag {
        message: format!(
            "{what} {app:?} is not a Modal app name: use 1-63 characters of letters, digits, '-', '_' or '.'"
        ),
    })
}

/// Command-line / node overrides applied on top of a config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub app_name: Option<String>,
    /// One GPU, or several for a fallback list.
    pub gpu: Vec<String>,
    pub pip: Vec<String>,
    pub apt: Vec<String>,
    pub torch_stack: Option<String>,
    /// Where the images get comfy-remote (`auto`, `registry`, `wheel`, `sdist`).
    pub source: Option<String>,
}

/// Build a request the way the CLI and the node both do: `config` if given, else the
/// project's own `modal_config.json`, else defaults; then the overrides.
/// `out_dir` defaults to `./modal/<app name>`. Every path in the request is
/// absolute (resolved here, once, against the current directory). Overrides
/// are saved into the project's config: `notes` says which, and where.
pub fn request(
    workflow: &Path,
    config: Option<&Path>,
    out_dir: Option<&Path>,
    overrides: &Overrides,
    given: crate::install::Given,
    comfyui_dir: Option<PathBuf>,
    local: crate::local::LocalComfy,
) -> Result<ScaffoldRequest> {
    let workflow = absolute(workflow)?;
    let config_file = config.map(absolute).transpose()?;
    if let Some(a) = overrides.app_name.as_ref().filter(|a| !a.is_empty()) {
        check_app_flag("--app", a)?;
    }
    if let Some(src) = &overrides.source {
        if crate::install::Source::parse(src).is_none() {
            return Err(DeployError::Flag {
                message: format!(
                    "--source {src} is not a source of comfy-remote; use {}",
                    crate::install::Source::NAMES.join(", ")
                ),
            });
        }
    }
    for g in &overrides.gpu {
        if !crate::config::valid_gpu(g) {
            return Err(DeployError::Flag {
                message: format!(
                    "--gpu {g} is not a Modal GPU type; use one of {} (optionally with :N for N GPUs)",
                    crate::config::MODAL_GPUS.join(", ")
                ),
            });
        }
    }
    let mut cfg = match &config_file {
        Some(p) => crate::DeployConfig::load(p)?,
        None => crate::DeployConfig::default(),
    };
    if !workflow.is_file() {
        return Err(DeployError::Read {
            path: workflow.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let derived = || -> Result<String> { Ok(default_app_name(&workflow)) };
    let app_name = match (&overrides.app_name, cfg.app_name.is_empty()) {
        (Some(a), _) if !a.is_empty() => a.clone(),
        (_, false) => cfg.app_name.clone(),
        _ => derived()?,
    };
    let out =
        absolute(&out_dir.map_or_else(|| Path::new("modal").join(&app_name), Path::to_path_buf))?;
    let own = out.join("modal_config.json");
    let (config_file, config_dir) = match config_file {
        Some(p) => {
            let dir = p.parent().map_or_else(|| out.clone(), Path::to_path_buf);
            (Some(p), dir)
        }
        None if own.is_file() => {
            cfg = crate::DeployConfig::load(&own)?;
            (Some(own.clone()), out.clone())
        }
        None => (None, absolute(Path::new("."))?),
    };

    let notes = apply(overrides, &mut cfg, derived, &own)?;
    Ok(ScaffoldRequest {
        workflow,
        config: cfg,
        config_file,
        config_dir,
        out_dir: out,
        wheel: given.wheel,
        sdist: given.sdist,
        comfyui_dir,
        local,
        cache_dir: comfy_remote_protocol::env::cache_dir(),
        new_nonce: false,
        notes,
    })
}

/// `path` made absolute against the current directory (links are not resolved).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Apply the overrides to `cfg`; returns one log line per setting that
/// changed, naming the file it is saved in (`saved_in`, the project's config).
fn apply(
    overrides: &Overrides,
    cfg: &mut crate::DeployConfig,
    derived_app: impl Fn() -> Result<String>,
    saved_in: &Path,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut saved = |flag: String, setting: String| {
        notes.push(format!(
            "{flag}: saved as {setting} in {}; later runs use it (change it there, or pass the flag again)",
            saved_in.display()
        ));
    };
    if let Some(a) = overrides.app_name.as_ref().filter(|a| !a.is_empty()) {
        let before = if cfg.app_name.is_empty() {
            derived_app()?
        } else {
            cfg.app_name.clone()
        };
        if *a != before {
            saved(format!("--app {a}"), format!("\"app_name\": {a:?}"));
        }
        cfg.app_name = a.clone();
    }
    let gpu = match overrides.gpu.len() {
        0 => None,
        1 => Some(crate::config::Gpu::One(overrides.gpu[0].clone())),
        _ => Some(crate::config::Gpu::Fallback(overrides.gpu.clone())),
    };
    if let Some(gpu) = gpu {
        if gpu != cfg.gpu {
            let flags: Vec<String> = overrides.gpu.iter().map(|g| format!("--gpu {g}")).collect();
            let value = serde_json::to_string(&gpu).unwrap_or_default();
            saved(flags.join(" "), format!("\"gpu\": {value}"));
        }
        cfg.gpu = gpu;
    }
    for (flag, key, list, extra) in [
        ("--pip", "pip", &mut cfg.pip, &overrides.pip),
        ("--apt", "apt", &mut cfg.apt, &overrides.apt),
    ] {
        for p in extra {
            if !list.contains(p) {
                list.push(p.clone());
                saved(format!("{flag} {p}"), format!("an entry of \"{key}\""));
            }
        }
    }
    if let Some(s) = &overrides.torch_stack {
        // A preset replaces the version pins (they belong to its row);
        // leaving xformers out still holds.
        let choice = crate::stacks::TorchChoice {
            stack: Some(s.clone()),
            xformers: cfg.torch.xformers.clone().filter(|x| x == "none"),
            ..Default::default()
        };
        if cfg.torch != choice {
            saved(
                format!("--torch-stack {s}"),
                format!("\"torch\": {{\"stack\": {s:?}}}"),
            );
        }
        cfg.torch = choice;
    }
    if let Some(source) = overrides
        .source
        .as_deref()
        .and_then(crate::install::Source::parse)
    {
        if cfg.comfy_remote.source != source {
            saved(
                format!("--source {}", source.name()),
                format!("\"comfy_remote\": {{\"source\": \"{}\"}}", source.name()),
            );
        }
        cfg.comfy_remote.source = source;
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Child processes run in the project directory: a relative path would
    /// resolve against it (`modal/<app>/modal/<app>/build/get_url.py`).
    #[test]
    fn every_path_of_a_request_is_absolute() {
        let req = request(
            Path::new("tests/fixtures/remote_invert.json"),
            None,
            None,
            &Overrides::default(),
            crate::install::Given::default(),
            None,
            Default::default(),
        )
        .expect("request");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(req.out_dir, cwd.join("modal/comfy-remote-remote-invert"));
        assert_eq!(req.workflow, cwd.join("tests/fixtures/remote_invert.json"));
        assert!(req.config_dir.is_absolute());
        assert!(req.notes.is_empty());
    }

    #[test]
    fn a_flag_that_changes_a_setting_says_where_it_is_saved() {
        let overrides = Overrides {
            gpu: vec!["T4".into()],
            torch_stack: Some("seed-2.3".into()),
            ..Default::default()
        };
        let req = request(
            Path::new("tests/fixtures/remote_invert.json"),
            None,
            Some(Path::new("somewhere")),
            &overrides,
            crate::install::Given::default(),
            None,
            Default::default(),
        )
        .expect("request");
        let file = std::env::current_dir()
            .expect("cwd")
            .join("somewhere/modal_config.json");
        assert_eq!(
            req.notes,
            [
                format!("--gpu T4: saved as \"gpu\": \"T4\" in {}; later runs use it (change it there, or pass the flag again)", file.display()),
                format!("--torch-stack seed-2.3: saved as \"torch\": {{\"stack\": \"seed-2.3\"}} in {}; later runs use it (change it there, or pass the flag again)", file.display()),
            ]
        );
        let same = Overrides {
            gpu: vec!["H100".into()],
            ..Default::default()
        };
        let req = request(
            Path::new("tests/fixtures/remote_invert.json"),
            None,
            None,
            &same,
            crate::install::Given::default(),
            None,
            Default::default(),
        )
        .expect("request");
        assert!(
            req.notes.is_empty(),
            "the default is not news: {:?}",
            req.notes
        );
    }
}
