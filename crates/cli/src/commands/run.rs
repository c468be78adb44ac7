//! `comfy-remote run`: submit a job from files and literals, follow it with a
//! progress bar (terminal) or plain lines, and write its outputs to a folder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use comfy_remote_client::{Client, ClientError, ClientOptions, JobEvent, Upload};
use comfy_remote_protocol::api::Phase;
use comfy_remote_protocol::{ComfyType, Limits, Payload};

use crate::commands::io;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The worker (or deployed service) URL, e.g. http://127.0.0.1:8189.
    pub url: String,
    /// An input: name=path of an existing file (.png/.jpg/.jpeg -> IMAGE, .wav
    /// -> AUDIO, .safetensors -> tensors), name=json:VALUE, name=text:STRING,
    /// or name=literal (int, float, true/false, text). Each name once.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Folder for the outputs (IMAGE/MASK -> PNG, AUDIO -> WAV, STRING -> .txt,
    /// tensors -> .safetensors, other values -> .json).
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Environment variable holding the bearer token.
    #[arg(long, default_value = "COMFY_REMOTE_TOKEN", value_name = "VAR")]
    pub token_env: String,
    /// Environment variables holding a Modal proxy auth token's key and
    /// secret, sent as `Modal-Key`/`Modal-Secret` when set (deployed services
    /// require them by default).
    #[arg(long, default_value = "MODAL_KEY", value_name = "VAR")]
    pub modal_key_env: String,
    #[arg(long, default_value = "MODAL_SECRET", value_name = "VAR")]
    pub modal_secret_env: String,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Give up (and cancel the job) after this many seconds (0: no limit).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Where progress goes: a bar on a terminal, plain lines otherwise.
enum Reporter {
    Bar(indicatif::ProgressBar),
    Lines { last: String, at: Instant },
}

impl Reporter {
    fn new() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(1000),
                indicatif::ProgressDrawTarget::stderr(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Reporter::Bar(bar)
        } else {
            Reporter::Lines {
                last: String::new(),
                at: Instant::now() - Duration::from_secs(10),
            }
        }
    }

    fn update(&mut self, fraction: f64, text: &str, force: bool) {
        match self {
            Reporter::Bar(bar) => {
                bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
                bar.set_message(text.to_owned());
            }
            Reporter::Lines { last, at } => {
                // At most two lines a second, unless the text changes phase.
                if text != last && (force || at.elapsed() >= Duration::from_millis(500)) {
                    eprintln!("[{:>3.0}%] {text}", fraction * 100.0);
                    *last = text.to_owned();
                    *at = Instant::now();
                }
            }
        }
    }

    fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// How `run` ended when it did not succeed: the summary's `status`, the
/// exit code and the error (`kind`, `message`).
#[derive(Debug)]
struct Failure {
    status: &'static str,
    code: i32,
    kind: &'static str,
    message: String,
    job_id: Option<String>,
}

impl Failure {
    fn rejected(kind: &'static str, message: String) -> Self {
        Failure {
            status: "rejected",
            code: exit::USAGE,
            kind,
            message,
            job_id: None,
        }
    }

    /// A local step (decoding the result, writing files) failed.
    fn local(err: anyhow::Error, job_id: Option<String>) -> Self {
        Failure {
            status: "failed",
            code: exit::FAILED,
            kind: "local",
            message: format!("{err:#}"),
            job_id,
        }
    }

    fn client(err: &ClientError, job_id: Option<String>, token_env: &str) -> Self {
        let (status, code) = match err {
            ClientError::Canceled { .. } => ("canceled", exit::CANCELED),
            ClientError::InvalidUrl { .. } => ("rejected", exit::USAGE),
            ClientError::Unreachable { .. } => ("unavailable", exit::UNAVAILABLE),
            ClientError::Http { status, .. } if (400..500).contains(status) => {
                ("rejected", exit::USAGE)
            }
            _ => ("failed", exit::FAILED),
        };
        let mut message = err.to_string();
        if let ClientError::Http { status: 401, .. } = err {
            if std::env::var_os(token_env).is_some() {
                message.push_str(&format!("; check the token in {token_env}"));
            } else if token_env == "COMFY_REMOTE_TOKEN" {
                message.push_str("; set COMFY_REMOTE_TOKEN (or --token-env VAR)");
            } else {
                message.push_str(&format!("; set {token_env}"));
            }
        }
        Failure {
            status,
            code,
            kind: err.kind(),
            message,
            job_id,
        }
    }
}

/// What a successful run wrote.
struct Success {
    job_id: Option<String>,
    outputs: Vec<serde_json::Value>,
}

pub fn execute(args: Args) -> anyhow::Result<i32> {
    let started = Instant::now();
    let outcome = submit_and_write(&args);
    let seconds = started.elapsed().as_secs_f64();
    let (code, doc) = match outcome {
        Ok(done) => {
            eprintln!(
                "job {} succeeded in {seconds:.2}s; outputs in {}",
                done.job_id.as_deref().unwrap_or("?"),
                args.out.display()
            );
            let doc = serde_json::json!({"job_id": done.job_id, "status": "succeeded",
                "seconds": seconds, "outputs": done.outputs});
            (exit::OK, doc)
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            let doc = serde_json::json!({"job_id": f.job_id, "status": f.status, "seconds": seconds,
                "error": {"kind": f.kind, "message": f.message}});
            (f.code, doc)
        }
    };
    if args.json {
        crate::output::line(doc).context("writing the summary")?;
    }
    Ok(code)
}

/// Parse the inputs (a name given twice is refused here, before any file
/// is read twice or anything is sent).
fn parse_inputs(specs: &[String]) -> Result<Vec<comfy_remote_protocol::Entry<'static>>, Failure> {
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::new();
    for spec in specs {
        if let Some(name) = io::input_name(spec) {
            if !seen.insert(name.to_owned()) {
                return Err(Failure::rejected(
                    "input",
                    format!("--input {name} is given more than once"),
                ));
            }
        }
        let entry =
            io::parse_input(spec).map_err(|e| Failure::rejected("input", format!("{e:#}")))?;
        entries.push(entry);
    }
    Ok(entries)
}

fn submit_and_write(args: &Args) -> Result<Success, Failure> {
    let mut opts = ClientOptions::new(args.url.clone());
    if let Ok(token) = std::env::var(&args.token_env) {
        opts.headers
            .push(("Authorization".into(), format!("Bearer {}", token.trim())));
    }
    for (header, var) in [
        ("Modal-Key", &args.modal_key_env),
        ("Modal-Secret", &args.modal_secret_env),
    ] {
        if let Ok(value) = std::env::var(var) {
            opts.headers.push((header.into(), value.trim().to_owned()));
        }
    }
    // 0 means no limit, as on the Remote API node.
    opts.job_timeout = args.timeout.filter(|&t| t > 0).map(Duration::from_secs);
    // A bad URL is a usage error, found before any input file is read.
    let client = Client::new(opts)
        .map(Arc::new)
        .map_err(|e| Failure::client(&e, None, &args.token_env))?;
    let entries = parse_inputs(&args.inputs)?;
    // The inputs are streamed into a temporary container file and dropped
    // before anything is sent: the upload then streams from disk, so the
    // container is never held in memory (the file goes when `upload` does).
    let upload = write_inputs(Payload { entries }).map_err(|e| Failure::local(e, None))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(|e| Failure::local(e, None))?;
    let outcome = rt.block_on(follow(client, upload.path().to_path_buf()));
    drop(upload);
    let (job_id, bytes) = match outcome {
        Ok((job_id, Ok(bytes))) => (job_id, bytes),
        Ok((job_id, Err(err))) => return Err(Failure::client(&err, job_id, &args.token_env)),
        Err(e) => return Err(Failure::local(e, None)),
    };
    let outputs = write_outputs(args, &bytes).map_err(|e| Failure::local(e, job_id.clone()))?;
    Ok(Success { job_id, outputs })
}

/// Decode the result and write each output under `--out`; the files are
/// listed on stdout unless `--json` (whose summary lists them instead).
fn write_outputs(args: &Args, bytes: &[u8]) -> anyhow::Result<Vec<serde_json::Value>> {
    let payload =
        comfy_remote_protocol::decode(bytes, &Limits::default()).context("decoding the result")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut summary = Vec::new();
    for e in &payload.entries {
        let files =
            io::write_output(&args.out, e).with_context(|| format!("writing output {}", e.name))?;
        let ty = e
            .comfy_type
            .clone()
            .unwrap_or_else(|| ComfyType::infer(&e.value));
        if !args.json {
            for f in &files {
                crate::output::line(f.display()).context("writing to stdout")?;
            }
        }
        summary.push(serde_json::json!({"name": e.name, "type": ty.as_str(), "files": files}));
    }
    Ok(summary)
}

/// Encode the inputs into a new temporary file (deleted on drop), consuming
/// them: tensors are written straight from the decoded inputs, which are
/// freed before the upload starts.
fn write_inputs(payload: Payload<'_>) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("comfy-remote-inputs-")
        .suffix(".crc")
        .tempfile()
        .context("creating a temporary file for the inputs")?;
    let mut w = std::io::BufWriter::with_capacity(64 << 10, file);
    comfy_remote_protocol::encode_to_writer(&payload, &mut w).context("encoding the inputs")?;
    drop(payload);
    w.into_inner()
        .map_err(|e| e.into_error())
        .context("writing the inputs to a temporary file")
}

type Followed = (Option<String>, Result<Vec<u8>, ClientError>);

async fn follow(client: Arc<Client>, inputs: PathBuf) -> anyhow::Result<Followed> {
    let mut job = client.spawn_upload(Upload::File(inputs));
    let mut reporter = Reporter::new();
    let mut job_id = None;
    let mut last_phase = None;
    let mut fraction = 0.0;
    loop {
        let ev = tokio::select! {
            ev = job.next() => ev,
            _ = tokio::signal::ctrl_c() => {
                reporter.finish();
                eprintln!("canceling the remote job...");
                job.cancel();
                // Let the client send the cancel and report the outcome.
                continue;
            }
        };
        let Some(ev) = ev else {
            reporter.finish();
            anyhow::bail!("the job ended without a result");
        };
        match ev {
            JobEvent::Submitted { id, .. } => {
                reporter.update(fraction, &format!("submitted job {id}"), true);
                job_id = Some(id);
            }
            JobEvent::Status { status } => reporter.update(fraction, status.as_str(), true),
            JobEvent::Progress(p) => {
                fraction = p.fraction;
                let phase_changed = last_phase != Some(p.phase);
                last_phase = Some(p.phase);
                let text = if p.text.is_empty() {
                    format!("{:?}", p.phase).to_lowercase()
                } else {
                    p.text.clone()
                };
                reporter.update(p.fraction, &text, phase_changed || p.phase == Phase::Done);
            }
            JobEvent::Preview { .. } => {}
            JobEvent::Done(bytes) => {
                reporter.update(1.0, "done", true);
                reporter.finish();
                return Ok((job_id, Ok(bytes)));
            }
            JobEvent::Error(e) => {
                reporter.finish();
                return Ok((job_id, Err(e)));
            }
        }
    }
}
