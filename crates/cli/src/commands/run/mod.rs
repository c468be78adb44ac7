//! `comfy-remote run`: submit a job from files and literals (or follow one
//! submitted earlier), follow it with a progress bar (terminal) or plain
//! lines, and write its outputs to a folder.
//!
//! Everything that can be checked before the job costs GPU time is: the
//! output folder is writable, every input name is one the endpoint takes,
//! every value is of the input's type (with the worker's own check), and
//! literals are converted to the declared type first.

mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use comfy_remote_client::{Client, ClientError, ClientOptions, JobEvent, Signature, Upload};
use comfy_remote_contract::inputs::unknown_input_message;
use comfy_remote_protocol::api::{Phase, SignatureItem};
use comfy_remote_protocol::env;
use comfy_remote_protocol::{types, Limits, PackOptions, Payload};

use crate::commands::io::inputs::{self, InputSpec};
use crate::commands::io::outputs;
use crate::exit;
use report::Reporter;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The worker (or deployed service) URL, e.g. http://127.0.0.1:8189.
    pub url: String,
    /// An input: name=path of an existing file (.png/.jpg/.jpeg -> IMAGE, .wav
    /// -> AUDIO, .safetensors -> tensors), name=json:VALUE, name=text:STRING,
    /// or name=literal (converted to the input's declared type: 7 for a FLOAT
    /// is 7.0, 42 for a STRING is "42"). Each name once.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Folder for the outputs (IMAGE/MASK -> PNG, AUDIO -> WAV, STRING -> .txt,
    /// tensors -> .safetensors, other values -> .json).
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Environment variable holding the bearer token.
    #[arg(long, default_value = env::TOKEN, value_name = "VAR")]
    pub token_env: String,
    /// Environment variables holding a Modal proxy auth token's key and
    /// secret, sent as `Modal-Key`/`Modal-Secret` when set (deployed services
    /// require them by default).
    #[arg(long, default_value = env::MODAL_KEY, value_name = "VAR")]
    pub modal_key_env: String,
    #[arg(long, default_value = env::MODAL_SECRET, value_name = "VAR")]
    pub modal_secret_env: String,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Give up (and cancel the job) after this many seconds (0: no limit).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Follow a job submitted earlier (its id, as `run` printed it) to its end
    /// and write its outputs, instead of submitting a new one.
    #[arg(long, value_name = "ID", conflicts_with = "inputs")]
    pub job: Option<String>,
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

    fn client(err: &ClientError, job_id: Option<String>, args: &Args) -> Self {
        let (status, code) = match err {
            // The job ended canceled, by us (Ctrl-C, --timeout) or someone else.
            ClientError::Canceled { .. } | ClientError::Timeout { .. } => {
                ("canceled", exit::CANCELED)
            }
            ClientError::InvalidUrl { .. }
            | ClientError::InvalidSetting { .. }
            | ClientError::Signature { .. } => ("rejected", exit::USAGE),
            ClientError::Unreachable { .. } => ("unavailable", exit::UNAVAILABLE),
            // The worker could not reach its ComfyUI for longer than its queue timeout.
            ClientError::JobFailed { code: Some(c), .. } if c == "comfyui_unavailable" => {
                ("unavailable", exit::UNAVAILABLE)
            }
            ClientError::Http { status, .. } if (400..500).contains(status) => {
                ("rejected", exit::USAGE)
            }
            _ => ("failed", exit::FAILED),
        };
        let mut message = err.to_string();
        if let ClientError::Http {
            status: 401, code, ..
        } = err
        {
            message.push_str(&auth_hint(code.as_deref(), args));
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

/// What to do about a 401: our own error body asks for the bearer token;
/// anything else in front of the service (Modal's proxy auth) for the Modal
/// token pair.
fn auth_hint(code: Option<&str>, args: &Args) -> String {
    let set = |var: &str| env_value(var).is_some();
    if code == Some("unauthorized") {
        return if set(&args.token_env) {
            format!("; check the token in {}", args.token_env)
        } else {
            format!(
                "; set {} to the service's bearer token (or name another variable with --token-env)",
                args.token_env
            )
        };
    }
    if set(&args.modal_key_env) && set(&args.modal_secret_env) {
        format!(
            "; the service refused the Modal proxy auth token in {} and {}: check them",
            args.modal_key_env, args.modal_secret_env
        )
    } else {
        format!(
            "; the service is behind Modal proxy auth: set {} and {} to a proxy auth token (Modal: Settings > Proxy Auth Tokens)",
            args.modal_key_env, args.modal_secret_env
        )
    }
}

/// A credential from the environment, trimmed; unset or blank is none.
fn env_value(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
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
            if let (Some(id), true) = (&f.job_id, f.code == exit::FAILED) {
                eprintln!(
                    "(job {id}; `comfy-remote run {} --job {id}` follows it again)",
                    args.url
                );
            }
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
fn parse_specs(specs: &[String]) -> Result<Vec<InputSpec>, Failure> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for spec in specs {
        if let Some(name) = inputs::input_name(spec) {
            if !seen.insert(name.to_owned()) {
                return Err(Failure::rejected(
                    "input",
                    format!("--input {name} is given more than once"),
                ));
            }
        }
        out.push(
            inputs::parse_spec(spec).map_err(|e| Failure::rejected("input", format!("{e:#}")))?,
        );
    }
    Ok(out)
}

/// The output folder exists (created if need be) and takes a file, so a
/// job is never run for outputs that cannot be written.
fn check_out_dir(out: &Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::rejected(
            "output",
            format!(
                "--out {}: {e}; give a folder the outputs can be written to",
                out.display()
            ),
        )
    };
    if out.exists() && !out.is_dir() {
        return Err(Failure::rejected(
            "output",
            format!("--out {} is not a folder", out.display()),
        ));
    }
    std::fs::create_dir_all(out).map_err(fail)?;
    tempfile::Builder::new()
        .prefix(".comfy-remote-write-check-")
        .tempfile_in(out)
        .map(drop)
        .map_err(fail)
}

/// The inputs as entries of the types the endpoint declares, checked with
/// the worker's own rule (unknown names with the closest one, missing
/// required inputs, types) before anything is uploaded.
fn entries_for(
    specs: &[InputSpec],
    signature: Option<&Signature>,
) -> Result<Payload<'static>, Failure> {
    let Some(sig) = signature else {
        let entries = specs
            .iter()
            .map(|s| inputs::to_entry(s, None))
            .collect::<anyhow::Result<_>>()
            .map_err(|e| Failure::rejected("input", format!("{e:#}")))?;
        return Ok(Payload { entries });
    };
    let items: Vec<SignatureItem> = sig
        .inputs
        .iter()
        .map(|i| SignatureItem {
            name: i.name.clone(),
            comfy_type: i.comfy_type.clone(),
            optional: i.optional,
            node_id: String::new(),
            default: i.default.clone(),
        })
        .collect();
    let mut entries = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some(item) = items.iter().find(|i| i.name == spec.name) else {
            return Err(Failure::rejected(
                "input",
                format!("--input {}", unknown_input_message(&spec.name, &items)),
            ));
        };
        let entry = inputs::to_entry(spec, Some(&item.comfy_type))
            .map_err(|e| Failure::rejected("input", format!("{e:#}")))?;
        entries.push(entry);
    }
    let payload = Payload { entries };
    comfy_remote_contract::check_inputs(&items, &payload).map_err(|e| {
        Failure::rejected(
            "input",
            format!("{e}; pass it with --input {}=...", e.input),
        )
    })?;
    Ok(payload)
}

fn submit_and_write(args: &Args) -> Result<Success, Failure> {
    let mut opts = ClientOptions::new(args.url.clone());
    if let Some(token) = env_value(&args.token_env) {
        opts.headers
            .push(("Authorization".into(), format!("Bearer {token}")));
    }
    for (header, var) in [
        ("Modal-Key", &args.modal_key_env),
        ("Modal-Secret", &args.modal_secret_env),
    ] {
        if let Some(value) = env_value(var) {
            opts.headers.push((header.into(), value));
        }
    }
    // 0 means no limit, as on the Remote API node.
    opts.job_timeout = args.timeout.filter(|&t| t > 0).map(Duration::from_secs);
    // Images are written as 8-bit PNGs, rounded as `packed::quantize`
    // rounds: results may travel rounded, the files are the same.
    opts.images_8bit = true;
    // A bad URL is a usage error, found before any input file is read.
    let client = Client::new(opts)
        .map(Arc::new)
        .map_err(|e| Failure::client(&e, None, args))?;
    let specs = parse_specs(&args.inputs)?;
    check_out_dir(&args.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(|e| Failure::local(e, None))?;
    let outcome = match &args.job {
        Some(id) => {
            let job = {
                let _guard = rt.enter();
                client.spawn_attach(id)
            };
            rt.block_on(follow(job, Some(id.clone())))
        }
        None => {
            let signature = rt
                .block_on(client.signature())
                .map_err(|e| Failure::client(&e, None, args))?;
            let payload = entries_for(&specs, signature.as_ref())?;
            // Packed as far as the endpoint reads packed tensors, where
            // tensors travel packed (§2.7, `COMFY_REMOTE_PACK`).
            let codecs = rt
                .block_on(client.upload_codecs())
                .map_err(|e| Failure::client(&e, None, args))?;
            let packing = PackOptions::for_codecs(codecs.iter().map(String::as_str));
            // The inputs are streamed into a temporary container file and
            // dropped before anything is sent: the upload then streams from
            // disk, so the container is never held in memory (the file goes
            // when `upload` does).
            let upload = write_inputs(payload, &packing).map_err(|e| Failure::local(e, None))?;
            let job = {
                let _guard = rt.enter();
                client.spawn_upload(Upload::File(upload.path().to_path_buf()))
            };
            let outcome = rt.block_on(follow(job, None));
            drop(upload);
            outcome
        }
    };
    let (job_id, bytes) = match outcome {
        Ok((job_id, Ok(bytes))) => (job_id, bytes),
        Ok((job_id, Err(err))) => return Err(Failure::client(&err, job_id, args)),
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
        let files = outputs::write_output(&args.out, e)
            .with_context(|| format!("writing output {}", e.name))?;
        if !args.json {
            for f in &files {
                crate::output::line(f.display()).context("writing to stdout")?;
            }
        }
        summary.push(
            serde_json::json!({"name": e.name, "type": types::type_of(e).as_str(), "files": files}),
        );
    }
    Ok(summary)
}

/// Encode the inputs into a new temporary file (deleted on drop), consuming
/// them: tensors are written straight from the decoded inputs, which are
/// freed before the upload starts.
fn write_inputs(
    payload: Payload<'_>,
    packing: &PackOptions,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("comfy-remote-inputs-")
        .suffix(".crc")
        .tempfile()
        .context("creating a temporary file for the inputs")?;
    let mut w = std::io::BufWriter::with_capacity(64 << 10, file);
    comfy_remote_protocol::encode_to_writer_with(&payload, &mut w, packing)
        .context("encoding the inputs")?;
    drop(payload);
    w.into_inner()
        .map_err(|e| e.into_error())
        .context("writing the inputs to a temporary file")
}

type Followed = (Option<String>, Result<Vec<u8>, ClientError>);

async fn follow(
    mut job: comfy_remote_client::Job,
    known_id: Option<String>,
) -> anyhow::Result<Followed> {
    let mut reporter = Reporter::new();
    let mut job_id = known_id;
    let mut last_phase = None;
    let mut fraction = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let ev = tokio::select! {
            ev = job.next() => ev,
            _ = tick.tick() => {
                reporter.tick();
                continue;
            }
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
