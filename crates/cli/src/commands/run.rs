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
    /// An input: name=path (.png/.jpg -> IMAGE, .wav -> AUDIO, .safetensors ->
    /// tensors), name=json:VALUE, or name=literal (int, float, true/false, text).
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
    /// Give up (and cancel the job) after this many seconds.
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

pub fn execute(args: Args) -> anyhow::Result<i32> {
    let mut entries = Vec::new();
    for spec in &args.inputs {
        match io::parse_input(spec) {
            Ok(e) => entries.push(e),
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(exit::USAGE);
            }
        }
    }
    // The inputs are streamed into a temporary container file and dropped
    // before anything is sent: the upload then streams from disk, so the
    // container is never held in memory (the file goes when `upload` does).
    let upload = write_inputs(Payload { entries })?;
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
    opts.job_timeout = args.timeout.map(Duration::from_secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let outcome = rt.block_on(follow(opts, upload.path().to_path_buf()));
    drop(upload);
    let elapsed = started.elapsed().as_secs_f64();
    let (job_id, result) = outcome?;
    match result {
        Ok(bytes) => {
            let payload = comfy_remote_protocol::decode(&bytes, &Limits::default())
                .context("decoding the result")?;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let mut summary = Vec::new();
            for e in &payload.entries {
                let files = io::write_output(&args.out, e)
                    .with_context(|| format!("writing output {}", e.name))?;
                let ty = e
                    .comfy_type
                    .clone()
                    .unwrap_or_else(|| ComfyType::infer(&e.value));
                if !args.json {
                    for f in &files {
                        println!("{}", f.display());
                    }
                }
                summary
                    .push(serde_json::json!({"name": e.name, "type": ty.as_str(), "files": files}));
            }
            eprintln!(
                "job {} succeeded in {elapsed:.2}s; outputs in {}",
                job_id.as_deref().unwrap_or("?"),
                args.out.display()
            );
            if args.json {
                let doc = serde_json::json!({"job_id": job_id, "status": "succeeded", "seconds": elapsed, "outputs": summary});
                println!("{doc}");
            }
            Ok(exit::OK)
        }
        Err(err) => {
            let (status, code) = match &err {
                ClientError::Canceled { .. } => ("canceled", exit::CANCELED),
                ClientError::Unreachable { .. } | ClientError::InvalidUrl { .. } => {
                    ("unavailable", exit::UNAVAILABLE)
                }
                ClientError::Http { status, .. } if (400..500).contains(status) => {
                    ("rejected", exit::USAGE)
                }
                _ => ("failed", exit::FAILED),
            };
            eprintln!("error: {err}");
            if args.json {
                let doc = serde_json::json!({"job_id": job_id, "status": status, "seconds": elapsed,
                    "error": {"kind": err.kind(), "message": err.to_string()}});
                println!("{doc}");
            }
            Ok(code)
        }
    }
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

async fn follow(opts: ClientOptions, inputs: PathBuf) -> anyhow::Result<Followed> {
    let client = Arc::new(Client::new(opts)?);
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
