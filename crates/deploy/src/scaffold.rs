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
pub use crate::layout::ProjectState;
use crate::layout::{self, Keep, OWNED_DIRS};
use crate::nodes::{self, CoreSource, NodeResolution};
use crate::stacks::{self, TorchStack};
use crate::workflow::{ModelRef, Workflow};

/// The comfy-remote version every generated project pins (client == image).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// FastAPI version of the web front's image (the one the tests run).
pub const FASTAPI_VERSION: &str = "0.165.0";
/// Environment variable naming the comfy-remote wheel to put in the image.
pub const ENV_WHEEL: &str = "COMFY_REMOTE_WHEEL";
/// Environment variable naming a ComfyUI checkout to read core node names from.
pub const ENV_COMFYUI_DIR: &str = "COMFYUI_DIR";

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
    /// The comfy-remote wheel (else `$COMFY_REMOTE_WHEEL`).
    pub wheel: Option<PathBuf>,
    /// A ComfyUI checkout to read core node names from (else `$COMFYUI_DIR`, else the embedded list).
    pub comfyui_dir: Option<PathBuf>,
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
    pub models: Vec<ModelRef>,
    pub files: Vec<String>,
    pub content_hash: String,
    pub nonce: String,
    pub wheel: PathBuf,
    /// What the user must know before deploying (`warning: ...` lines).
    pub warnings: Vec<String>,
}

/// The rendered files, relative path -> bytes (before writing).
type Files = BTreeMap<String, Vec<u8>>;

/// Check the workflow, render the project and write it to `req.out_dir`.
pub fn scaffold(req: &ScaffoldRequest) -> Result<Project> {
    let workflow = Workflow::load(&req.workflow)?;
    let mut config = req.config.clone();
    if config.app_name.is_empty() {
        config.app_name = workflow.default_app_name();
    }
    config.validate()?;
    let (stack_name, stack) = stacks::resolve(&config.torch)?;
    // The written config names the stack it resolved to (the default included).
    config.torch.stack = Some(stack_name.clone());

    // Node check: core + ours + packs, before anything is written.
    let (core, core_from) = core_nodes(req.comfyui_dir.as_deref())?;
    let mut packs = BTreeMap::new();
    for pack in &config.custom_nodes {
        let mut names: BTreeSet<String> = pack.nodes.iter().cloned().collect();
        if let Some(p) = &pack.path {
            let dir = req.config_dir.join(p);
            if !dir.is_dir() {
                return Err(DeployError::Config {
                    message: format!("custom node pack {} is not a directory", dir.display()),
                });
            }
            names.extend(nodes::scan_pack(&dir)?);
        }
        packs.insert(pack.dir_name(), names);
    }
    let resolution = nodes::resolve(workflow.node_types().into_keys(), &core, &packs);
    if !resolution.missing.is_empty() {
        let source = match &core_from {
            CoreSource::Checkout(p) => format!("the ComfyUI checkout at {}", p.display()),
            CoreSource::Embedded => {
                "ComfyUI 0.33.0 (pass --comfyui DIR to check against your version)".into()
            }
        };
        return Err(DeployError::UnresolvedNodes {
            missing: resolution.missing.clone(),
            hint: format!(
                "checked against {source}, comfy-remote's nodes and {} custom node pack(s); add the pack that provides them to \"custom_nodes\" in modal_config.json (a local \"path\", or \"git\" + \"ref\" with the \"nodes\" it provides)",
                config.custom_nodes.len()
            ),
        });
    }
    // The written config names local packs by absolute path, so regenerating
    // from the project's own modal_config.json (even after a Clean Build) finds them.
    for pack in &mut config.custom_nodes {
        if let Some(p) = &pack.path {
            let abs = req.config_dir.join(p);
            pack.path = Some(std::fs::canonicalize(&abs).unwrap_or(abs));
        }
    }
    let models = workflow.model_files();
    if config.check_models && config.volume.is_none() && !models.is_empty() {
        return Err(DeployError::ModelsWithoutVolume {
            files: models
                .iter()
                .map(|m| format!("{}/{}", m.folder, m.file))
                .collect(),
        });
    }

    let wheel = find_wheel(req.wheel.as_deref())?;
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    prepare_out_dir(&req.out_dir)?;
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
        &models,
        &nonce,
        &wheel_name,
    )?;
    let wheel_bytes = std::fs::read(&wheel).map_err(|source| DeployError::Read {
        path: wheel.clone(),
        source,
    })?;
    files.insert(format!("wheels/{wheel_name}"), wheel_bytes);
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

    let warnings = config.warnings();
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
        models,
        files: files.keys().cloned().collect(),
        content_hash,
        nonce,
        wheel,
        warnings,
    })
}

fn core_nodes(explicit: Option<&Path>) -> Result<(BTreeSet<String>, CoreSource)> {
    let dir = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ENV_COMFYUI_DIR).map(PathBuf::from));
    match dir {
        Some(d) => Ok((nodes::scan_comfyui(&d)?, CoreSource::Checkout(d))),
        None => Ok((nodes::embedded_core_nodes(), CoreSource::Embedded)),
    }
}

const WHEEL_HOW: &str = "build one with `maturin build --release --out target/wheels` in a comfy-remote checkout, then pass --wheel PATH (a wheel, a directory of wheels or a glob) or set COMFY_REMOTE_WHEEL";

fn wheel_err(message: String) -> DeployError {
    DeployError::Wheel {
        version: VERSION.into(),
        message,
    }
}

/// `target/wheels` of the comfy-remote source checkout the current directory is in, if any.
fn checkout_wheels() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("target").join("wheels").is_dir())
        .map(|d| d.join("target").join("wheels"))
}

/// `*` and `?` matching of one file name.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Files of `dir` whose name matches `pattern`.
fn glob_files(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| glob_match(pattern.as_bytes(), n.to_string_lossy().as_bytes()))
        })
        .collect();
    out.sort();
    out
}

/// What a wheel's file name says is wrong with it for this image, if anything.
fn wheel_name_problem(name: &str) -> Option<String> {
    let mut parts = name.trim_end_matches(".whl").split('-');
    let (dist, ver) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !name.ends_with(".whl") || dist != "comfy_remote" {
        return Some(format!("{name} is not a comfy_remote wheel"));
    }
    if ver != VERSION {
        return Some(format!(
            "{name} is version {ver}; the image must run the client's version {VERSION} (the protocol and nodes must match)"
        ));
    }
    let platform = name.rsplit('-').next().unwrap_or("");
    if !(platform.contains("x86_64") && platform.contains("linux")) {
        return Some(format!(
            "{name} is not built for Linux x86_64, which Modal runs; build it on Linux or with `maturin build --release --zig --target x86_64-unknown-linux-gnu`"
        ));
    }
    None
}

/// Open the wheel as a zip: its METADATA must name comfy_remote at this
/// version and it must carry the native module.
fn check_wheel_contents(path: &Path) -> Result<()> {
    let bad = |why: String| {
        wheel_err(format!(
            "{} is not a usable comfy_remote wheel: {why}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive ({e})")))?;
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    let metadata = names
        .iter()
        .find(|n| {
            n.strip_suffix("/METADATA")
                .is_some_and(|d| d.ends_with(".dist-info") && !d.contains('/'))
        })
        .ok_or_else(|| bad("it has no *.dist-info/METADATA".into()))?;
    let mut text = String::new();
    {
        use std::io::Read;
        zip.by_name(metadata)
            .map_err(|e| bad(format!("cannot read {metadata} ({e})")))?
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("cannot read {metadata} ({e})")))?;
    }
    let field = |key: &str| {
        text.lines()
            .take_while(|l| !l.trim().is_empty())
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let dist = field("Name:").unwrap_or_default();
    if dist.to_ascii_lowercase().replace(['-', '.'], "_") != "comfy_remote" {
        return Err(bad(format!(
            "its METADATA names the package {dist:?}, not comfy-remote"
        )));
    }
    let ver = field("Version:").unwrap_or_default();
    if ver != VERSION {
        return Err(bad(format!(
            "its METADATA says version {ver:?}; the image must run the client's version {VERSION}"
        )));
    }
    let native = names.iter().any(|n| {
        n.strip_prefix("comfy_remote/_native")
            .is_some_and(|rest| rest.ends_with(".so") && !rest.contains('/'))
    });
    if !native {
        return Err(bad(
            "it has no comfy_remote/_native*.so (the Linux native module)".into(),
        ));
    }
    Ok(())
}

/// Locate the comfy-remote wheel of exactly this version, for Linux x86_64.
///
/// `explicit` (else `$COMFY_REMOTE_WHEEL`, else `target/wheels` of the source
/// checkout the current directory is in) is a wheel file, a directory of
/// wheels, or a glob such as `target/wheels/comfy_remote-*.whl`; of several
/// fitting wheels the newest is used. The wheel is opened and checked.
pub fn find_wheel(explicit: Option<&Path>) -> Result<PathBuf> {
    let how = WHEEL_HOW;
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ENV_WHEEL)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let path = match given.or_else(checkout_wheels) {
        Some(p) => p,
        None => {
            return Err(wheel_err(format!(
                "the image installs comfy-remote from a wheel and none was given; {how}"
            )))
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let candidates = if name.contains(['*', '?']) {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let found = glob_files(dir, &name);
        if found.is_empty() {
            return Err(wheel_err(format!(
                "no file matches {}; {how}",
                path.display()
            )));
        }
        found
    } else if path.is_dir() {
        let found = glob_files(&path, "*.whl");
        if found.is_empty() {
            return Err(wheel_err(format!(
                "{} has no wheels; {how}",
                path.display()
            )));
        }
        found
    } else if path.is_file() {
        if let Some(problem) = wheel_name_problem(&name) {
            return Err(wheel_err(format!("{problem}; {how}")));
        }
        check_wheel_contents(&path)?;
        return Ok(path);
    } else {
        return Err(wheel_err(format!(
            "{} does not exist; {how}",
            path.display()
        )));
    };
    let fitting: Vec<&PathBuf> = candidates
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| wheel_name_problem(&n.to_string_lossy()).is_none())
        })
        .collect();
    let newest = fitting.into_iter().max_by_key(|p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    });
    let Some(wheel) = newest else {
        let seen: Vec<String> = candidates
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        return Err(wheel_err(format!(
            "{} holds no comfy_remote {VERSION} wheel for Linux x86_64 (found: {}); {how}",
            path.display(),
            seen.join(", ")
        )));
    };
    check_wheel_contents(wheel)?;
    Ok(wheel.clone())
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
    models: &[ModelRef],
    nonce: &str,
    wheel_file: &str,
) -> Result<Files> {
    let env = env();
    let workflow_file = workflow.file_name();
    let gpu = serde_json::to_value(&config.gpu).unwrap_or_default();
    let mut apt: Vec<String> = ["git", "ffmpeg", "libgl1", "libglib2.0-0"]
        .map(String::from)
        .into();
    apt.extend(config.apt.iter().cloned());
    let packs: Vec<_> = config
        .custom_nodes
        .iter()
        .map(|p| {
            context! {
                name => p.dir_name(),
                local => p.path.is_some(),
                git => p.git.clone(),
                ref => p.git_ref.clone(),
            }
        })
        .collect();
    let ctx = context! {
        app_name => config.app_name,
        version => VERSION,
        nonce => nonce,
        workflow_file => workflow_file,
        wheel_file => wheel_file,
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
