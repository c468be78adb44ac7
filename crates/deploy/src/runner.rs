//! The one place external commands run: `modal`, the Python that asks Modal for the URL, `uv`
//! (which resolves the image's packages) and `git` (which says where a local pack comes from).
//!
//! Every command is logged (`$ ENV=.. program args (in dir)`) before it runs,
//! its output lines are streamed to the caller's sink as they come, and
//! failures come back as typed errors carrying the tool's own message.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::error::{DeployError, Result};

/// One command to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    /// The command line as logged.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v} "));
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            if a.contains(' ') || a.is_empty() {
                s.push_str(&format!(" '{a}'"));
            } else {
                s.push(' ');
                s.push_str(a);
            }
        }
        s
    }
}

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The tool's own explanation: the last lines of stderr, else of stdout.
    pub fn message(&self) -> String {
        let src = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = src
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        let start = lines.len().saturating_sub(15);
        lines[start..].join("\n")
    }
}

/// Where log and output lines go (the terminal, the node's progress text, a test's Vec).
pub type Sink<'a> = &'a mut dyn FnMut(&str);

/// Runs the external tools of a deploy.
#[derive(Debug, Clone)]
pub struct Runner {
    pub modal: PathBuf,
    pub python: Option<PathBuf>,
    /// `uv`, from `$COMFY_REMOTE_UV` or PATH.
    pub uv: PathBuf,
    pub git: PathBuf,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::from_env()
    }
}

impl Runner {
    /// `modal` from `$COMFY_REMOTE_MODAL` or PATH; its Python from `$COMFY_REMOTE_MODAL_PYTHON`;
    /// `uv` from `$COMFY_REMOTE_UV` or PATH.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Runner {
            modal: var(comfy_remote_protocol::env::MODAL).unwrap_or_else(|| PathBuf::from("modal")),
            python: var(comfy_remote_protocol::env::MODAL_PYTHON),
            uv: var(comfy_remote_protocol::env::UV).unwrap_or_else(|| PathBuf::from("uv")),
            git: PathBuf::from("git"),
        }
    }

    /// A command of `program` with `args`.
    pub fn cmd(&self, program: &Path, args: &[&str]) -> Cmd {
        Cmd {
            program: program.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// A `modal ...` command.
    pub fn modal(&self, args: &[&str]) -> Cmd {
        Cmd {
            program: self.modal.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// The Python that has the `modal` package: explicit, else the
    /// interpreter in the `modal` script's shebang, else (Windows, where
    /// `modal.exe` is a launcher) the `python.exe` of its environment, else
    /// `python3` (`python` on Windows).
    pub fn python(&self) -> Result<PathBuf> {
        if let Some(p) = &self.python {
            return Ok(p.clone());
        }
        let modal = which(&self.modal).ok_or_else(|| DeployError::ToolMissing {
            program: self.modal.to_string_lossy().into_owned(),
        })?;
        if cfg!(windows) {
            // A venv's Scripts\python.exe, or a base install's python.exe above Scripts\.
            let dir = modal.parent().unwrap_or(Path::new("."));
            let beside = [dir.join("python.exe"), dir.join("..").join("python.exe")];
            if let Some(p) = beside.into_iter().find(|p| p.is_file()) {
                return Ok(p);
            }
            return Ok(PathBuf::from("python"));
        }
        let mut head = [0u8; 256];
        let n = std::fs::File::open(&modal)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let first = String::from_utf8_lossy(&head[..n]);
        let line = first.lines().next().unwrap_or("");
        if let Some(interp) = line.strip_prefix("#!") {
            let interp = interp.trim();
            if !interp.contains(' ') && Path::new(interp).is_absolute() {
                return Ok(PathBuf::from(interp));
            }
        }
        Ok(PathBuf::from("python3"))
    }

    /// Run `cmd`, streaming its lines to `sink`; a non-zero exit is an error with the tool's message.
    pub fn run(&self, cmd: &Cmd, sink: Sink<'_>) -> Result<Output> {
        let out = self.run_unchecked(cmd, sink)?;
        if out.code != 0 {
            return Err(DeployError::CommandFailed {
                command: cmd.display(),
                code: out.code,
                message: out.message(),
            });
        }
        Ok(out)
    }

    /// Run `cmd` and return its output whatever the exit code.
    pub fn run_unchecked(&self, cmd: &Cmd, sink: Sink<'_>) -> Result<Output> {
        let shown = cmd.display();
        match &cmd.cwd {
            Some(d) => sink(&format!("$ {shown}  (in {})", d.display())),
            None => sink(&format!("$ {shown}")),
        }
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Modal's CLI wraps at the terminal width when not on a terminal; keep lines whole.
            .env("COLUMNS", "200")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONIOENCODING", "utf-8");
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        if let Some(d) = &cmd.cwd {
            c.current_dir(d);
        }
        let mut child = c.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DeployError::ToolMissing {
                    program: cmd.program.to_string_lossy().into_owned(),
                }
            } else {
                DeployError::Spawn {
                    command: shown.clone(),
                    source,
                }
            }
        })?;
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || forward(out, false, &tx)));
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || forward(err, true, &tx)));
        }
        drop(tx);
        let (mut stdout, mut stderr) = (String::new(), String::new());
        for (is_err, line) in rx {
            sink(&line);
            let buf = if is_err { &mut stderr } else { &mut stdout };
            buf.push_str(&line);
            buf.push('\n');
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait().map_err(|source| DeployError::Spawn {
            command: shown.clone(),
            source,
        })?;
        Ok(Output {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        })
    }
}

fn forward(stream: impl Read, is_err: bool, tx: &mpsc::Sender<(bool, String)>) {
    let reader = BufReader::new(stream);
    for line in reader.split(b'\n').map_while(std::result::Result::ok) {
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_string();
        if tx.send((is_err, text)).is_err() {
            break;
        }
    }
}

/// Find `program` the way the OS would (absolute/relative paths as they
/// are, bare names on PATH; on Windows also with the extensions of
/// `PATHEXT`, so `modal` finds `modal.exe`).
pub fn which(program: &Path) -> Option<PathBuf> {
    let candidates = |p: &Path| -> Vec<PathBuf> {
        let mut out = vec![p.to_path_buf()];
        if cfg!(windows) && p.extension().is_none() {
            let exts = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into());
            out.extend(
                exts.split(';')
                    .filter(|e| !e.is_empty())
                    .map(|e| p.with_extension(e.trim_start_matches('.').to_ascii_lowercase())),
            );
        }
        out
    };
    if program.components().count() > 1 {
        return candidates(program).into_iter().find(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| candidates(&d.join(program)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn streams_lines_and_reports_failure_with_the_tools_message() {
        let r = Runner {
            modal: "sh".into(),
            python: None,
            uv: "uv".into(),
            git: "git".into(),
        };
        let cmd = Cmd {
            program: "sh".into(),
            args: vec!["-c".into(), "echo one; echo two >&2; exit 3".into()],
            env: vec![("A".into(), "1".into())],
            cwd: None,
        };
        let mut lines = Vec::new();
        let err = r
            .run(&cmd, &mut |l: &str| lines.push(l.to_string()))
            .expect_err("exit 3");
        assert_eq!(lines[0], "$ A=1 sh -c 'echo one; echo two >&2; exit 3'");
        assert!(lines.contains(&"one".to_string()) && lines.contains(&"two".to_string()));
        match err {
            DeployError::CommandFailed { code, message, .. } => {
                assert_eq!(code, 3);
                assert_eq!(message, "two");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_tool_says_how_to_install_it() {
        let r = Runner {
            modal: "/nonexistent/modal".into(),
            python: None,
            uv: "uv".into(),
            git: "git".into(),
        };
        let err = r
            .run(&r.modal(&["--version"]), &mut |_| {})
            .expect_err("missing");
        assert!(err.to_string().contains("pip install modal"), "{err}");
    }
}
