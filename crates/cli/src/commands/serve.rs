//! `comfy-remote serve`: the worker gateway in front of a supervised (or attached) ComfyUI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use comfy_remote_protocol::api::DEFAULT_LISTEN;
use comfy_remote_protocol::env::{COMFYUI_DIR, TOKEN as ENV_TOKEN};
use comfy_remote_protocol::Limits;
use comfy_remote_worker::api_v2::{self, V2Config, V2};
use comfy_remote_worker::jobs::defaults;
use comfy_remote_worker::{AppState, ComfyMode, EngineConfig, Worker, WorkerError, WorkflowFile};
use tokio_util::sync::CancellationToken;

use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The remote workflow, with Remote Input/Output nodes: ComfyUI's API format, or the UI format
    /// its Save writes (converted with this ComfyUI's node definitions).
    #[arg(long, value_name = "FILE")]
    pub workflow: PathBuf,
    /// ComfyUI checkout to start and supervise (runs `python main.py` there).
    #[arg(long, value_name = "DIR", env = COMFYUI_DIR)]
    pub comfyui: Option<PathBuf>,
    /// Python that runs ComfyUI [default: DIR/venv or DIR/.venv, on Windows also the portable build's python_embeded, else python3 (python on Windows)].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Extra argument for ComfyUI's main.py (repeat), e.g. --comfyui-arg=--cpu.
    #[arg(long = "comfyui-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub comfyui_args: Vec<String>,
    /// Attach to a ComfyUI that is already running instead of starting one.
    #[arg(long, value_name = "URL", value_parser = http_url)]
    pub comfyui_url: Option<String>,
    /// That ComfyUI's output directory, when this machine sees it: outputs are read from there
    /// instead of through ComfyUI's /view (a ComfyUI the worker starts is read so always).
    #[arg(long, value_name = "DIR", requires = "comfyui_url")]
    pub comfyui_output_dir: Option<PathBuf>,
    /// Address to listen on. Beyond loopback a token is required.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// File holding the bearer token (else $COMFY_REMOTE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Directory for the job store and spooled payloads [default: ~/.cache/comfy-remote/worker].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Base URL clients reach this worker at (for poll_url); default: from the Host header.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = defaults::MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// Most tensors in one payload.
    #[arg(long, default_value_t = Limits::default().max_tensors)]
    pub max_tensors: usize,
    /// Highest tensor rank.
    #[arg(long, default_value_t = Limits::default().max_rank)]
    pub max_rank: usize,
    /// Unfinished (queued + running) jobs accepted at once; beyond: 429.
    #[arg(long, default_value_t = defaults::MAX_ACTIVE_JOBS)]
    pub max_jobs: u64,
    /// Prompts handed to ComfyUI's queue at once.
    #[arg(long, default_value_t = defaults::COMFY_QUEUE_DEPTH)]
    pub comfyui_queue_depth: usize,
    /// Seconds a finished job's result stays downloadable.
    #[arg(long, default_value_t = defaults::RETENTION_SECS)]
    pub retention_secs: u64,
    /// Total bytes of kept results; the oldest expire beyond it.
    #[arg(long, default_value_t = defaults::MAX_RESULT_BYTES)]
    pub max_result_bytes: u64,
    /// Results up to this size are also inlined (base64) in the job view.
    #[arg(long, default_value_t = defaults::INLINE_RESULT_BYTES)]
    pub inline_result_bytes: u64,
    /// Seconds a queued job waits while ComfyUI is unreachable before it
    /// fails with comfyui_unavailable (0: wait forever).
    #[arg(long, default_value_t = defaults::QUEUE_TIMEOUT_SECS)]
    pub queue_timeout_secs: u64,
    /// Seconds to wait for ComfyUI to answer at start.
    #[arg(long, default_value_t = 600)]
    pub startup_timeout: u64,
    /// Comfy API v2 (/api/v2): run any API-format workflow a job submits,
    /// not only the served one (as comfy-api-proxy does), behind the token.
    #[arg(long)]
    pub allow_any_workflow: bool,
    /// Largest asset upload (Comfy API v2), in bytes.
    #[arg(long, default_value_t = api_v2::defaults::MAX_ASSET_BYTES)]
    pub max_asset_bytes: u64,
    /// Comfy API v2 event streams open at once; beyond: 429 too_many_streams.
    #[arg(long, default_value_t = api_v2::defaults::MAX_EVENT_STREAMS)]
    pub max_event_streams: usize,
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// ComfyUI's own Python: its venv (`bin/python`, on Windows
/// `Scripts\python.exe`), on Windows also the portable build's
/// `python_embeded\python.exe` beside the ComfyUI folder; else the
/// Python on PATH.
fn default_python(dir: &std::path::Path) -> PathBuf {
    let (bin, exe) = if cfg!(windows) {
        ("Scripts", "python.exe")
    } else {
        ("bin", "python")
    };
    let mut candidates: Vec<PathBuf> = ["venv", ".venv"]
        .iter()
        .map(|v| dir.join(v).join(bin).join(exe))
        .collect();
    if cfg!(windows) {
        candidates.push(dir.join("..").join("python_embeded").join(exe));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(if cfg!(windows) { "python" } else { "python3" }))
}

/// An `http://` or `https://` URL with a host (`--comfyui-url`).
fn http_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{raw:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || url.chars().any(char::is_whitespace) {
        return Err(format!("{raw:?} is not an http(s) URL with a host"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The bearer token from `--token-file` or `$COMFY_REMOTE_TOKEN`; the error
/// names the source.
fn read_token(args: &Args) -> Result<Option<String>, String> {
    match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            match text.trim() {
                "" => Err(format!(
                    "--token-file {}: the bearer token is empty",
                    path.display()
                )),
                t => Ok(Some(t.to_owned())),
            }
        }
        None => match std::env::var(ENV_TOKEN) {
            Ok(t) if t.trim().is_empty() => Err(format!(
                "{ENV_TOKEN} is set but empty; set a token or unset it"
            )),
            Ok(t) => Ok(Some(t.trim().to_owned())),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{ENV_TOKEN} is not valid UTF-8"))
            }
        },
    }
}

/// The exit code and message for a worker that could not start: only an
/// unreachable ComfyUI is `UNAVAILABLE`.
fn start_error(err: &WorkerError) -> (i32, String) {
    match err {
        WorkerError::Comfy(_) => (exit::UNAVAILABLE, err.to_string()),
        WorkerError::Workflow(_) | WorkerError::Config(_) => (exit::USAGE, err.to_string()),
        WorkerError::SpoolInUse { .. } => (exit::USAGE, format!("{err}; pass --spool DIR")),
        WorkerError::Io { .. } => (exit::USAGE, format!("{err} (--spool)")),
        _ => (exit::FAILED, err.to_string()),
    }
}

pub fn execute(args: Args) -> anyhow::Result<i32> {
    let workflow = match WorkflowFile::load(&args.workflow) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let token = match read_token(&args) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(exit::USAGE);
        }
    };
    if token.is_none() && !args.listen.ip().is_loopback() {
        eprintln!(
            "error: refusing to listen on {} without a token: set {ENV_TOKEN} or pass --token-file \
             (or listen on 127.0.0.1)",
            args.listen
        );
        return Ok(exit::USAGE);
    }
    if let Some(dir) = args.comfyui_output_dir.as_deref().filter(|d| !d.is_dir()) {
        eprintln!(
            "error: --comfyui-output-dir {}: not a directory; pass the output directory of the \
             ComfyUI at --comfyui-url (its `output` folder, or its --output-directory), or leave \
             the flag out to read outputs through ComfyUI",
            dir.display()
        );
        return Ok(exit::USAGE);
    }
    let mode = match (&args.comfyui, &args.comfyui_url) {
        (_, Some(url)) => ComfyMode::Attach {
            url: url.clone(),
            output_dir: args.comfyui_output_dir.as_deref().map(absolute),
        },
        (Some(dir), None) => {
            if !dir.join("main.py").is_file() {
                eprintln!(
                    "error: {} has no main.py; --comfyui must point at a ComfyUI checkout",
                    dir.display()
                );
                return Ok(exit::USAGE);
            }
            // ComfyUI runs in its own directory: every path it is given
            // (its directory, its Python) is absolute, or it would be read
            // against that directory instead of ours.
            let dir = absolute(dir);
            let python = match &args.python {
                Some(p) if p.components().count() > 1 => absolute(p),
                Some(p) => p.clone(),
                None => default_python(&dir),
            };
            ComfyMode::Spawn {
                dir,
                python,
                args: args.comfyui_args.clone(),
            }
        }
        (None, None) => {
            eprintln!("error: pass --comfyui DIR (or set COMFYUI_DIR) to start ComfyUI, or --comfyui-url URL to attach to one");
            return Ok(exit::USAGE);
        }
    };
    let spool = args
        .spool
        .clone()
        .unwrap_or_else(|| comfy_remote_protocol::env::cache_dir().join("worker"));
    let mut config = EngineConfig::new(spool);
    config.max_body_bytes = args.max_body_bytes;
    config.limits = Limits {
        max_total_bytes: args.max_body_bytes,
        max_tensors: args.max_tensors,
        max_rank: args.max_rank,
        ..Limits::default()
    };
    config.max_active_jobs = args.max_jobs;
    config.comfy_queue_depth = args.comfyui_queue_depth.max(1);
    config.retention = Duration::from_secs(args.retention_secs);
    config.max_result_bytes = args.max_result_bytes;
    config.inline_result_bytes = args.inline_result_bytes;
    config.queue_timeout = Duration::from_secs(args.queue_timeout_secs);

    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let worker = match Worker::start(
            mode,
            workflow,
            config,
            Duration::from_secs(args.startup_timeout),
            shutdown.clone(),
        )
        .await
        {
            Ok(w) => w,
            Err(e) => {
                let (code, msg) = start_error(&e);
                eprintln!("error: {msg}");
                return Ok(code);
            }
        };
        let state = AppState::new(
            worker.engine.clone(),
            token.as_deref(),
            args.public_url.clone(),
        );
        let v2 = match V2::open(
            worker.engine.clone(),
            V2Config {
                allow_any_workflow: args.allow_any_workflow,
                max_asset_bytes: args.max_asset_bytes,
                max_event_streams: args.max_event_streams.max(1),
            },
            token.as_deref(),
            args.public_url.clone(),
        ) {
            Ok(v) => v,
            Err(e) => {
                worker.stop().await;
                let (code, msg) = start_error(&e);
                eprintln!("error: {msg}");
                return Ok(code);
            }
        };
        let v2_janitor = tokio::spawn(v2.clone().janitor());
        let info = comfy_remote_worker::api::info_document(&worker.engine);
        let names = |v: &[comfy_remote_protocol::api::SignatureItem]| {
            v.iter()
                .map(|i| format!("{}:{}", i.name, i.comfy_type))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(
            inputs = %names(&info.inputs),
            outputs = %names(&info.outputs),
            auth = token.is_some(),
            any_workflow = args.allow_any_workflow,
            "comfy-remote worker listening on http://{addr} (protocol v1 at /v1, Comfy API v2 at /api/v2)"
        );
        let served = comfy_remote_worker::serve(
            listener,
            comfy_remote_worker::router(state).merge(api_v2::router(v2)),
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        worker.stop().await;
        let _ = v2_janitor.await;
        tracing::info!("worker stopped");
        served.context("serving HTTP")?;
        Ok(exit::OK)
    })
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    shutdown.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}
