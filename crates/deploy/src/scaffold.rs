//! The project generator: checks a workflow against a config and writes a Modal project directory.
//!
//! Layout of a project:
//! `workflow.py` (the Modal app), `modal_config.json` (resolved, every
//! default written), the workflow file, `utils/` (the shim), `build/`
//! (constraints, stack check, model paths), `wheels/` (comfy-remote itself),
//! `custom_nodes/` (local packs), and `.comfy-remote/state.json` (build
//! nonce, content hash, last deploy, the files written; not part of the
//! hash). What the generator owns there is defined in [`crate::layout`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{context, Environment};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::DeployConfig;
use crate::error::{DeployError, Result};
use crate::install::{Given, Install};
pub use crate::layout::ProjectState;
use crate::layout::{self, Keep, OWNED_DIRS};
use crate::local::LocalComfy;
use crate::models::{ModelPlan, Origin};
use crate::nodes::{self, CoreSource, NodeResolution};
use crate::plan::{self, Plan};
use crate::runner::{Runner, Sink};
use crate::stacks::{self, TorchStack};
use crate::wheels;
use crate::workflow::Workflow;

/// The comfy-remote version every generated project pins (client == image).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// FastAPI version of the web front's image (the one the tests run).
pub const FASTAPI_VERSION: &str = "0.165.0";

const T_WORKFLOW: &str = include_str!("../templates/workflow.py.j2");
const T_CHECK: &str = include_str!("../templates/check_stack.py.j2");
const T_MODEL_PATHS: &str = include_str!("../templates/extra_model_paths.yaml.j2");
const T_README: &str = include_str!("../templates/README.md.j2");
/// Static files, copied as they are.
pub const UTILS_SHIM: &str = include_str!("../templates/utils_init.py");
pub const GET_URL_PY: &str = include_str!("../templates/get_url.py");

/// What to generate.
#[derive(Debug, Clone)]
pub struct ScaffoldRequest {
    pub workflow: PathBuf,
    pub config: DeployConfig,
    /// The config file `config` was read from, if any (never deleted by a run).
    pub config_file: Option<PathBuf>,
    /// Directory relative custom node `path`s are resolved against.
    pub config_dir: PathBuf,
    pub out_dir: PathBuf,
    /// The comfy-remote wheel: a file, a directory, a glob or a URL (else `$COMFY_REMOTE_WHEEL`).
    pub wheel: Option<PathBuf>,
    /// The comfy-remote sdist: a file, a directory, a glob or a URL.
    pub sdist: Option<PathBuf>,
    /// A ComfyUI checkout to read core node names from (else `$COMFYUI_DIR`, else the embedded list).
    pub comfyui_dir: Option<PathBuf>,
    /// The ComfyUI the workflow was made in: node definitions, custom node packs, model folders.
    pub local: LocalComfy,
    /// Where model hashes and resolved locks are cached (`$COMFY_REMOTE_CACHE`).
    pub cache_dir: PathBuf,
    /// Draw a new build nonce (Force Rebuild) instead of keeping the project's.
    pub new_nonce: bool,
    /// Lines the run logs before generating (which flags were saved into the project's config).
    pub notes: Vec<String>,
}

impl ScaffoldRequest {
    /// What a run reads and so must never delete: the workflow, the config file, local packs.
    pub fn keep(&self) -> Keep {
        let packs = self
            .config
            .custom_nodes
            .iter()
            .filter_map(|p| p.path.as_ref().map(|p| self.config_dir.join(p)));
        Keep::new(
            [self.workflow.clone()]
                .into_iter()
                .chain(self.config_file.clone())
                .chain(packs),
        )
    }
}

/// What the generator did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub dir: PathBuf,
    pub app_name: String,
    pub config: DeployConfig,
    pub stack_name: String,
    pub stack: TorchStack,
    pub nodes: NodeResolution,
    /// `core` node names came from this checkout (`None`: the embedded 0.33.0 list).
    pub core_nodes_from: Option<PathBuf>,
    /// The workflow was in the UI format; the project holds its API form.
    pub converted: bool,
    /// Each pack and model file, where it comes from; the lock.
    pub plan: Plan,
    pub files: Vec<String>,
    pub content_hash: String,
    pub nonce: String,
    /// The comfy_remote wheel copied into the project, when that is the source.
    pub wheel: Option<PathBuf>,
    /// Where the images get comfy-remote.
    pub install: Install,
    /// What the user must know before deploying (`warning: ...` lines).
    pub warnings: Vec<String>,
}

/// The rendered files, relative path -> bytes (before writing).
type Files = BTreeMap<String, Vec<u8>>;

/// Check the workflow, plan the image, render the project and write it to `req.out_dir`. The
/// tools a plan needs (`git` for local packs, `uv` for the lock) run through `runner`; what they
/// do is logged to `sink`.
pub fn scaffold(req: &ScaffoldRequest, runner: &Runner, sink: Sink<'_>) -> Result<Project> {
    let workflow = Workflow::load(&req.workflow, req.local.object_info.as_ref())?;
    let mut config = req.config.clone();
    if config.app_name.is_empty() {
        config.app_name = workflow.default_app_name();
    }
    config.validate()?;
    let (stack_name, stack) = stacks::resolve(&config.torch)?;
    // The written config names the stack it resolved to (the default included).
    config.torch.stack = Some(stack_name.clone());
    if workflow.converted {
        sink(&format!(
            "{}: converted from the UI format with the node definitions of {}",
            workflow.file_name(),
            req.local
                .object_info_from
                .as_deref()
                .unwrap_or("the local ComfyUI")
        ));
    }

    // Node check: core + ours + declared packs + the local ComfyUI's packs, before anything is written.
    let (core, core_from) = core_nodes(req.comfyui_dir.as_deref())?;
    let (resolution, found) =
        plan::resolve_nodes(&workflow, &mut config, req, &core, &core_from, runner, sink)?;
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let own_config = req.out_dir.join("modal_config.json");
    for p in &found {
        let from = match &p.git {
            Some(g) => format!("git {} @ {}", g.url, g.commit),
            None => format!("copied from {}", p.dir.display()),
        };
        notes.push(format!(
            "custom node pack {} provides {}: found in the local ComfyUI ({from}); saved in \"custom_nodes\" of {}",
            p.name,
            p.nodes.join(", "),
            own_config.display()
        ));
        warnings.extend(p.warnings.iter().cloned());
    }
    // The written config names local packs by absolute path, so regenerating
    // from the project's own modal_config.json (even after a Clean Build) finds them.
    for pack in &mut config.custom_nodes {
        if let Some(p) = &pack.path {
            let abs = req.config_dir.join(p);
            pack.path = Some(std::fs::canonicalize(&abs).unwrap_or(abs));
        }
    }
    let models = plan::models(&workflow, &mut config, req, &mut notes)?;

    let install = Install::resolve(
        &config.comfy_remote,
        &Given::from_env(req.wheel.clone(), req.sdist.clone()),
        crate::install::RELEASE_BUILD,
        wheels::checkout_wheels(),
    )?;

    let requires = plan::package_requires(install.local_wheel().as_deref())?;
    let lock = plan::lock(&config, &stack, req, requires, runner, sink)?;
    prepare_out_dir(&req.out_dir)?;
    let (fetch_bytes, fetch_size_unknown) = crate::models::fetch_bytes(&models);
    let plan = Plan {
        packs: plan::packs(&config, &found, req),
        upload_bytes: crate::models::upload_bytes(&models),
        fetch_bytes,
        fetch_size_unknown,
        models,
        locked_packages: lock.packages,
        lock,
        notes,
        warnings,
    };
    let previous = ProjectState::load(&req.out_dir);
    let nonce = match (&previous, req.new_nonce) {
        (Some(s), false) if !s.nonce.is_empty() => s.nonce.clone(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    };

    let mut files = render(
        &config,
        &workflow,
        &stack_name,
        &stack,
        &plan,
        &nonce,
        &install,
    )?;
    for (path, rel) in install.files_to_copy() {
        let bytes = std::fs::read(&path).map_err(|source| DeployError::Read {
            path: path.clone(),
            source,
        })?;
        files.insert(rel, bytes);
    }
    for pack in config.custom_nodes.iter().filter(|p| p.path.is_some()) {
        if let Some(p) = &pack.path {
            copy_tree(p, &format!("custom_nodes/{}", pack.dir_name()), &mut files)?;
        }
    }

    let keep = req.keep();
    for d in OWNED_DIRS {
        layout::remove(&req.out_dir, d, &keep)?;
    }
    for (rel, bytes) in &files {
        write_file(&req.out_dir.join(rel), bytes)?;
    }
    let content_hash = hash_files(&files);
    let state = ProjectState {
        nonce: nonce.clone(),
        content_hash: content_hash.clone(),
        deployed_hash: previous.as_ref().and_then(|s| s.deployed_hash.clone()),
        url: previous.as_ref().and_then(|s| s.url.clone()),
        app_name: config.app_name.clone(),
        files: files.keys().cloned().collect(),
    };
    state.save(&req.out_dir)?;

    let mut warnings = config.warnings();
    warnings.extend(plan.warnings.iter().cloned());
    Ok(Project {
        dir: req.out_dir.clone(),
        app_name: config.app_name.clone(),
        config,
        stack_name,
        stack,
        nodes: resolution,
        core_nodes_from: match core_from {
            CoreSource::Checkout(p) => Some(p),
            CoreSource::Embedded => None,
        },
        converted: workflow.converted,
        plan,
        files: files.keys().cloned().collect(),
        content_hash,
        nonce,
        wheel: install.local_wheel(),
        install,
        warnings,
    })
}

fn core_nodes(explicit: Option<&Path>) -> Result<(BTreeSet<String>, CoreSource)> {
    let dir = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(comfy_remote_protocol::env::COMFYUI_DIR).map(PathBuf::from));
    match dir {
        Some(d) => Ok((nodes::scan_comfyui(&d)?, CoreSource::Checkout(d))),
        None => Ok((nodes::embedded_core_nodes(), CoreSource::Embedded)),
    }
}

fn prepare_out_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|source| DeployError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .next()
            .is_none();
        if !empty && !layout::is_project(dir) {
            return Err(DeployError::NotAProjectOut {
                path: dir.to_path_buf(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DeployError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    // Generated Python/YAML must not be HTML- or JSON-escaped.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

fn render_one(
    env: &Environment<'_>,
    name: &str,
    source: &str,
    ctx: minijinja::Value,
) -> Result<String> {
    let tmpl_err = |e: minijinja::Error| DeployError::Template {
        name: name.into(),
        message: format!("{e:#}"),
    };
    let t = env
        .template_from_named_str(name, source)
        .map_err(tmpl_err)?;
    t.render(ctx).map_err(tmpl_err)
}

/// Render every generated text file (no wheel, no pack copies).
fn render(
    config: &DeployConfig,
    workflow: &Workflow,
    stack_name: &str,
    stack: &TorchStack,
    plan: &Plan,
    nonce: &str,
    install: &Install,
) -> Result<Files> {
    let models = &plan.models;
    let env = env();
    let workflow_file = workflow.file_name();
    let gpu = serde_json::to_value(&config.gpu).unwrap_or_default();
    let mut apt: Vec<String> = ["git", "ffmpeg", "libgl1", "libglib2.0-0"]
        .map(String::from)
        .into();
    if install.source == crate::install::Source::Sdist {
        // The build stage fetches rustup.
        apt.push("curl".into());
    }
    apt.extend(config.apt.iter().cloned());
    let packs: Vec<_> = config
        .custom_nodes
        .iter()
        .map(|p| {
            let locked = plan
                .packs
                .iter()
                .any(|pp| pp.name == p.dir_name() && pp.locked);
            context! {
                name => p.dir_name(),
                local => p.path.is_some(),
                git => p.git.clone(),
                ref => p.git_ref.clone(),
                locked => locked,
            }
        })
        .collect();
    let fetched: Vec<crate::fetch::Wanted> = models
        .iter()
        .filter_map(|m| match &m.origin {
            Origin::Url { url } => Some(crate::fetch::Wanted {
                path: m.key(),
                url: url.clone(),
                sha256: m.sha256.clone().unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    let ctx = context! {
        app_name => config.app_name,
        version => VERSION,
        nonce => nonce,
        workflow_file => workflow_file,
        install => install.context(),
        gpu => gpu,
        stack => stack,
        stack_name => stack_name,
        apt => apt,
        pip => config.pip,
        env => config.env,
        comfyui => context! { repo => config.comfyui.repo, ref => config.comfyui.git_ref },
        packs => packs,
        volume => config.volume,
        token_secret => config.auth.token_secret,
        proxy_auth => config.auth.proxy_auth,
        timeout_s => config.timeout_s,
        startup_timeout_s => config.startup_timeout_s,
        scaledown_window_s => config.scaledown_window_s,
        min_containers => config.min_containers,
        max_containers_py => config.max_containers.map_or("None".to_string(), |m| m.to_string()),
        max_concurrent_jobs => config.max_concurrent_jobs,
        memory_snapshot => config.memory_snapshot,
        fastapi_version => FASTAPI_VERSION,
        models => models,
        fetch_models => !fetched.is_empty(),
        models_plan => crate::fetch::PLAN_FILE,
    };
    let mut files = Files::new();
    files.insert(
        "workflow.py".into(),
        render_one(&env, "workflow.py.j2", T_WORKFLOW, ctx.clone())?.into_bytes(),
    );
    files.insert(
        "README.md".into(),
        render_one(&env, "README.md.j2", T_README, ctx)?.into_bytes(),
    );
    files.insert(
        "modal_config.json".into(),
        config.to_json_pretty().into_bytes(),
    );
    files.insert(workflow_file, workflow.text.clone().into_bytes());
    files.insert(
        "build/requirements.lock".into(),
        plan.lock.text.clone().into_bytes(),
    );
    if !fetched.is_empty() {
        let mut text = serde_json::to_string_pretty(&fetched).unwrap_or_default();
        text.push('\n');
        files.insert(crate::fetch::PLAN_FILE.into(), text.into_bytes());
    }
    files.insert("utils/__init__.py".into(), UTILS_SHIM.as_bytes().to_vec());
    files.insert("build/get_url.py".into(), GET_URL_PY.as_bytes().to_vec());
    files.insert(
        "build/constraints.txt".into(),
        constraints(stack).into_bytes(),
    );
    let mut expected = serde_json::Map::new();
    for (k, v) in [
        ("torch", &stack.torch),
        ("torchvision", &stack.torchvision),
        ("torchaudio", &stack.torchaudio),
    ] {
        expected.insert(k.into(), v.clone().into());
    }
    if let Some(x) = &stack.xformers {
        expected.insert("xformers".into(), x.clone().into());
    }
    files.insert(
        "build/check_stack.py".into(),
        render_one(
            &env,
            "check_stack.py.j2",
            T_CHECK,
            context! { expected => expected },
        )?
        .into_bytes(),
    );
    if let Some(volume) = &config.volume {
        let folders: BTreeSet<&str> = crate::workflow::MODEL_INPUTS
            .iter()
            .map(|(_, f)| *f)
            .chain(
                models
                    .iter()
                    .map(|m: &ModelPlan| m.folder.as_str())
                    .filter(|f| !f.is_empty()),
            )
            .chain([
                "clip_vision",
                "checkpoints",
                "embeddings",
                "unet",
                "clip",
                "upscale_models",
            ])
            .collect();
        files.insert(
            "build/extra_model_paths.yaml".into(),
            render_one(
                &env,
                "extra_model_paths.yaml.j2",
                T_MODEL_PATHS,
                context! { volume => volume, folders => folders },
            )?
            .into_bytes(),
        );
    }
    Ok(files)
}

/// The pip constraints file: the torch stack, exact.
pub fn constraints(stack: &TorchStack) -> String {
    let mut s = format!(
        "# The torch stack of this image; every pip install runs under these pins.\ntorch=={}\ntorchvision=={}\ntorchaudio=={}\n",
        stack.torch, stack.torchvision, stack.torchaudio
    );
    if let Some(x) = &stack.xformers {
        s.push_str(&format!("xformers=={x}\n"));
    }
    for p in &stack.pins {
        s.push_str(p);
        s.push('\n');
    }
    s
}

fn copy_tree(src: &Path, rel: &str, files: &mut Files) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|source| DeployError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "__pycache__" || name == ".git" {
            continue;
        }
        let p = e.path();
        let r = format!("{rel}/{name}");
        if p.is_dir() {
            copy_tree(&p, &r, files)?;
        } else {
            let bytes = std::fs::read(&p).map_err(|source| DeployError::Read {
                path: p.clone(),
                source,
            })?;
            files.insert(r, bytes);
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DeployError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, bytes).map_err(|source| DeployError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// SHA-256 over the sorted (path, bytes) pairs of the generated files.
pub fn hash_files(files: &Files) -> String {
    let mut h = Sha256::new();
    for (rel, bytes) in files {
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}
