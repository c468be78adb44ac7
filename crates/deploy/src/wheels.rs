//! The comfy-remote distribution files a Modal image may install:
//! `comfy_remote` (the nodes, the native module, the Modal runtime) in both
//! images, and `comfy_remote_server` (the `comfy-remote-server` executable,
//! whose `serve` runs the worker) in the GPU image; as wheels (built for
//! Linux x86_64, which Modal runs) or sdists, local files or URLs, always of
//! exactly the client's version. Which source is used is [`crate::install`]'s.

use std::path::{Path, PathBuf};

use crate::error::{DeployError, Result};
use crate::scaffold::VERSION;

/// How to build the two Linux wheels in a checkout, on any OS (zig links for Linux).
pub const BUILD_WHEELS: &str = "`maturin build --release --zig --target x86_64-unknown-linux-gnu --compatibility manylinux_2_28 --out target/wheels` and the same with `-m crates/server/Cargo.toml` in a comfy-remote checkout";

/// The two forms a distribution comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Wheel,
    Sdist,
}

impl Format {
    /// The file name's ending.
    fn ext(self) -> &'static str {
        match self {
            Format::Wheel => ".whl",
            Format::Sdist => ".tar.gz",
        }
    }

    /// Where the project keeps copied files of this form.
    pub fn project_dir(self) -> &'static str {
        match self {
            Format::Wheel => "wheels",
            Format::Sdist => "sdist",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Format::Wheel => "wheel",
            Format::Sdist => "sdist",
        }
    }
}

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

    fn how(self, format: Format) -> String {
        match (self, format) {
            (Dist::Package, Format::Wheel) => format!("build the wheels with {BUILD_WHEELS}, then pass --wheel PATH (a wheel, a directory of wheels or a glob) or set COMFY_REMOTE_WHEEL; or deploy without a wheel: --source registry or --sdist PATH"),
            (Dist::Server, Format::Wheel) => "build it next to the comfy_remote wheel with `maturin build --release --zig --target x86_64-unknown-linux-gnu --compatibility manylinux_2_28 -m crates/server/Cargo.toml --out target/wheels` in a comfy-remote checkout".to_owned(),
            (Dist::Package, Format::Sdist) => "make one with `maturin sdist --out target/dist` in a comfy-remote checkout, then pass --sdist PATH (an sdist, a directory of sdists or a glob)".to_owned(),
            (Dist::Server, Format::Sdist) => "make it next to the comfy_remote sdist with `maturin sdist -m crates/server/Cargo.toml --out target/dist` in a comfy-remote checkout".to_owned(),
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
pub fn checkout_wheels() -> Option<PathBuf> {
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

/// What a file name says is wrong with it for this image, if anything.
fn name_problem(dist: Dist, format: Format, name: &str) -> Option<String> {
    let what = format!("{} {}", dist.name(), format.noun());
    let Some(stem) = name.strip_suffix(format.ext()) else {
        return Some(format!("{name} is not a {what} (*{})", format.ext()));
    };
    let mut parts = stem.split('-');
    let (found, ver) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if found != dist.name() {
        return Some(format!("{name} is not a {what}"));
    }
    if ver != VERSION {
        return Some(format!(
            "{name} is version {ver}; the image must run the client's version {VERSION} (the protocol and nodes must match)"
        ));
    }
    if format == Format::Sdist {
        return (parts.next().is_some()).then(|| format!("{name} is not a {what}"));
    }
    let platform = stem.rsplit('-').next().unwrap_or("");
    if !(platform.contains("x86_64") && platform.contains("linux")) {
        return Some(format!(
            "{name} is not built for Linux x86_64, which Modal runs; build it on any OS with {BUILD_WHEELS}"
        ));
    }
    None
}

/// Look inside the file: a wheel's METADATA must name the distribution
/// at this version and it must carry its payload; an sdist must be gzip.
fn check_contents(dist: Dist, format: Format, path: &Path) -> Result<()> {
    match format {
        Format::Wheel => check_wheel_contents(dist, path),
        Format::Sdist => {
            let mut magic = [0u8; 2];
            let read = std::fs::File::open(path).and_then(|mut f| {
                use std::io::Read;
                f.read_exact(&mut magic)
            });
            if read.is_err() || magic != [0x1f, 0x8b] {
                return Err(wheel_err(format!(
                    "{} is not a usable {} sdist: it is not a gzip archive",
                    path.display(),
                    dist.name()
                )));
            }
            Ok(())
        }
    }
}

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

/// The newest fitting, checked file of `dist` among `candidates`.
fn pick(dist: Dist, format: Format, candidates: &[PathBuf], from: &Path) -> Result<PathBuf> {
    let fitting = candidates.iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| name_problem(dist, format, &n.to_string_lossy()).is_none())
    });
    let newest = fitting.max_by_key(|p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    });
    let Some(file) = newest else {
        let seen: Vec<String> = candidates
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let platform = match format {
            Format::Wheel => " for Linux x86_64",
            Format::Sdist => "",
        };
        return Err(wheel_err(format!(
            "{} holds no {} {VERSION} {}{platform} (found: {}); {}",
            from.display(),
            dist.name(),
            format.noun(),
            if seen.is_empty() {
                "nothing".to_owned()
            } else {
                seen.join(", ")
            },
            dist.how(format)
        )));
    };
    check_contents(dist, format, file)?;
    Ok(file.clone())
}

/// Locate the `dist` file of exactly this version in `given`: a file, a
/// directory, or a glob such as `target/wheels/comfy_remote-*.whl`; of
/// several fitting files the newest is used. The file is opened and checked.
pub fn find(dist: Dist, format: Format, given: &Path) -> Result<PathBuf> {
    let how = dist.how(format);
    let name = given
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains(['*', '?']) {
        let dir = given
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let found = glob_files(dir, &name);
        if found.is_empty() {
            return Err(wheel_err(format!(
                "no file matches {}; {how}",
                given.display()
            )));
        }
        pick(dist, format, &found, given)
    } else if given.is_dir() {
        let found = glob_files(given, &format!("*{}", format.ext()));
        if found.is_empty() {
            return Err(wheel_err(format!(
                "{} has no {}s; {how}",
                given.display(),
                format.noun()
            )));
        }
        pick(dist, format, &found, given)
    } else if given.is_file() {
        if let Some(problem) = name_problem(dist, format, &name) {
            return Err(wheel_err(format!("{problem}; {how}")));
        }
        check_contents(dist, format, given)?;
        Ok(given.to_path_buf())
    } else {
        Err(wheel_err(format!(
            "{} does not exist; {how}",
            given.display()
        )))
    }
}

/// The `dist` file of this version beside `other` (the server's wheel
/// beside the package's: the GPU container runs the worker from it).
pub fn find_beside(dist: Dist, format: Format, other: &Path) -> Result<PathBuf> {
    let dir = other
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let found = glob_files(dir, &format!("{}-*{}", dist.name(), format.ext()));
    pick(dist, format, &found, dir)
}

/// An `http://` or `https://` URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// The file name a URL ends in (before any query or fragment).
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// The package's URL (checked by its file name) and the server's beside
/// it: the same folder, the same platform tag (the two are built together).
pub fn urls(url: &str, format: Format) -> Result<(String, String)> {
    let name = url_file_name(url);
    if let Some(problem) = name_problem(Dist::Package, format, name) {
        return Err(wheel_err(format!(
            "{url}: {problem}; a URL must name the comfy_remote {} itself (the comfy_remote_server one is taken from the same folder)",
            format.noun()
        )));
    }
    let server_name = match format {
        Format::Wheel => {
            let platform = name
                .trim_end_matches(".whl")
                .rsplit('-')
                .next()
                .unwrap_or("");
            format!("{}-{VERSION}-py3-none-{platform}.whl", Dist::Server.name())
        }
        Format::Sdist => format!("{}-{VERSION}.tar.gz", Dist::Server.name()),
    };
    let base = url.split(['?', '#']).next().unwrap_or(url);
    let folder = &base[..base.len() - name.len()];
    Ok((url.to_owned(), format!("{folder}{server_name}")))
}
