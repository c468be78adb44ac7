//! The comfy-remote wheels a Modal image installs: `comfy_remote` (the
//! nodes, the native module, the Modal runtime) in both images, and
//! `comfy_remote_server` (the `comfy-remote-server` executable, whose
//! `serve` runs the worker) in the GPU image. Both are of exactly the
//! client's version and built for Linux x86_64, which Modal runs.

use std::path::{Path, PathBuf};

use crate::error::{DeployError, Result};
use crate::scaffold::VERSION;

/// One of the two distributions an image installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    /// `comfy_remote`: must carry `comfy_remote/_native*.so`.
    Package,
    /// `comfy_remote_server`: must carry the `comfy-remote-server` script.
    Server,
}

impl Dist {
    /// The distribution's name in wheel file names.
    pub fn name(self) -> &'static str {
        match self {
            Dist::Package => "comfy_remote",
            Dist::Server => "comfy_remote_server",
        }
    }

    fn how(self) -> &'static str {
        match self {
            Dist::Package => "build one with `maturin build --release --out target/wheels` in a comfy-remote checkout, then pass --wheel PATH (a wheel, a directory of wheels or a glob) or set COMFY_REMOTE_WHEEL",
            Dist::Server => "build it next to the comfy_remote wheel with `maturin build --release -m crates/server/Cargo.toml --out target/wheels` in a comfy-remote checkout",
        }
    }

    /// What the wheel must contain, as a test on its file names.
    fn has_payload(self, names: &[String]) -> bool {
        match self {
            Dist::Package => names.iter().any(|n| {
                n.strip_prefix("comfy_remote/_native")
                    .is_some_and(|rest| rest.ends_with(".so") && !rest.contains('/'))
            }),
            Dist::Server => names.iter().any(|n| {
                n.strip_suffix("/scripts/comfy-remote-server")
                    .is_some_and(|d| d.ends_with(".data") && !d.contains('/'))
            }),
        }
    }

    fn payload(self) -> &'static str {
        match self {
            Dist::Package => "comfy_remote/_native*.so (the Linux native module)",
            Dist::Server => "the comfy-remote-server executable",
        }
    }
}

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
fn wheel_name_problem(dist: Dist, name: &str) -> Option<String> {
    let mut parts = name.trim_end_matches(".whl").split('-');
    let (found, ver) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !name.ends_with(".whl") || found != dist.name() {
        return Some(format!("{name} is not a {} wheel", dist.name()));
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

/// Open the wheel as a zip: its METADATA must name the distribution at
/// this version, and it must carry its payload.
fn check_wheel_contents(dist: Dist, path: &Path) -> Result<()> {
    let bad = |why: String| {
        wheel_err(format!(
            "{} is not a usable {} wheel: {why}",
            path.display(),
            dist.name()
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
    let found = field("Name:").unwrap_or_default();
    if found.to_ascii_lowercase().replace(['-', '.'], "_") != dist.name() {
        return Err(bad(format!(
            "its METADATA names the package {found:?}, not {}",
            dist.name()
        )));
    }
    let ver = field("Version:").unwrap_or_default();
    if ver != VERSION {
        return Err(bad(format!(
            "its METADATA says version {ver:?}; the image must run the client's version {VERSION}"
        )));
    }
    if !dist.has_payload(&names) {
        return Err(bad(format!("it has no {}", dist.payload())));
    }
    Ok(())
}

/// The newest fitting, checked wheel of `dist` among `candidates`.
fn pick(dist: Dist, candidates: &[PathBuf], from: &Path) -> Result<PathBuf> {
    let fitting = candidates.iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| wheel_name_problem(dist, &n.to_string_lossy()).is_none())
    });
    let newest = fitting.max_by_key(|p| {
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
            "{} holds no {} {VERSION} wheel for Linux x86_64 (found: {}); {}",
            from.display(),
            dist.name(),
            if seen.is_empty() {
                "nothing".to_owned()
            } else {
                seen.join(", ")
            },
            dist.how()
        )));
    };
    check_wheel_contents(dist, wheel)?;
    Ok(wheel.clone())
}

/// Locate the comfy-remote wheel of exactly this version, for Linux x86_64.
///
/// `explicit` (else `$COMFY_REMOTE_WHEEL`, else `target/wheels` of the source
/// checkout the current directory is in) is a wheel file, a directory of
/// wheels, or a glob such as `target/wheels/comfy_remote-*.whl`; of several
/// fitting wheels the newest is used. The wheel is opened and checked.
pub fn find_wheel(explicit: Option<&Path>) -> Result<PathBuf> {
    let dist = Dist::Package;
    let how = dist.how();
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(comfy_remote_protocol::env::WHEEL)
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
    if name.contains(['*', '?']) {
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
        pick(dist, &found, &path)
    } else if path.is_dir() {
        let found = glob_files(&path, "*.whl");
        if found.is_empty() {
            return Err(wheel_err(format!(
                "{} has no wheels; {how}",
                path.display()
            )));
        }
        pick(dist, &found, &path)
    } else if path.is_file() {
        if let Some(problem) = wheel_name_problem(dist, &name) {
            return Err(wheel_err(format!("{problem}; {how}")));
        }
        check_wheel_contents(dist, &path)?;
        Ok(path)
    } else {
        Err(wheel_err(format!(
            "{} does not exist; {how}",
            path.display()
        )))
    }
}

/// The `comfy_remote_server` wheel of this version beside the
/// `comfy_remote` wheel the image installs (the GPU container runs the
/// worker from it).
pub fn find_server_wheel(package_wheel: &Path) -> Result<PathBuf> {
    let dir = package_wheel
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let found = glob_files(dir, &format!("{}-*.whl", Dist::Server.name()));
    pick(Dist::Server, &found, dir)
}
