//! Where the Modal images get comfy-remote from, at exactly the client's
//! version: the package registry, wheel files or URLs, or an sdist built
//! inside the image.
//!
//! `"comfy_remote": {"source": ...}` in modal_config.json (or `--source`)
//! chooses; `auto`, the default, takes a wheel or sdist given to this run
//! (`--wheel`, `--sdist`, `$COMFY_REMOTE_WHEEL`), else the wheels of the
//! comfy-remote checkout the current directory is in, else the registry
//! when this comfy-remote is a release build. A release build is one
//! compiled with `COMFY_REMOTE_RELEASE=1` (the release workflow sets it when
//! it builds the wheels it publishes): only then is this exact version known
//! to be on the registry, so only then is the registry a safe default.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DeployError, Result};
use crate::scaffold::VERSION;
use crate::wheels::{self, Dist, Format};

/// This build was made by the release workflow: its version is on the registry.
pub const RELEASE_BUILD: bool =
    matches!(option_env!("COMFY_REMOTE_RELEASE"), Some(v) if !v.is_empty());

/// The Rust toolchain an sdist build stage installs (one that builds this
/// workspace and its Cargo.lock).
pub const RUST_TOOLCHAIN: &str = "1.95.0";

/// The registry's distribution names.
pub const PACKAGE: &str = "comfy-remote";
pub const SERVER: &str = "comfy-remote-server";

/// Where the images get comfy-remote from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A wheel or sdist given to the run, else the checkout's wheels, else
    /// the registry for a release build.
    #[default]
    Auto,
    /// `comfy-remote==VERSION` (and `comfy-remote-server==VERSION`) from
    /// PyPI, or also from `index_url`.
    Registry,
    /// Wheel files (copied into the project) or URLs (fetched by pip).
    Wheel,
    /// Built from the sdist inside the image, by a Rust toolchain that
    /// lives only for that build step: an sdist file or URL given to the
    /// run, else the registry's sdist of this version.
    Sdist,
}

impl Source {
    pub const NAMES: &'static [&'static str] = &["auto", "registry", "wheel", "sdist"];

    pub fn parse(name: &str) -> Option<Source> {
        Some(match name {
            "auto" => Source::Auto,
            "registry" => Source::Registry,
            "wheel" => Source::Wheel,
            "sdist" => Source::Sdist,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Registry => "registry",
            Source::Wheel => "wheel",
            Source::Sdist => "sdist",
        }
    }

    /// What `"source"` accepts, in an error's words.
    pub fn form() -> String {
        format!(
            "one of {}",
            Source::NAMES
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `"comfy_remote"` in modal_config.json.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallConfig {
    pub source: Source,
    /// A package index searched besides PyPI (`--extra-index-url`), for
    /// the registry and registry-sdist sources.
    pub index_url: Option<String>,
}

/// What a run was given (`--wheel`, `--sdist`; `$COMFY_REMOTE_WHEEL`).
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// A wheel, a directory of wheels, a glob, or a URL of the comfy_remote wheel.
    pub wheel: Option<PathBuf>,
    /// An sdist, a directory of sdists, a glob, or a URL of the comfy_remote sdist.
    pub sdist: Option<PathBuf>,
}

impl Given {
    /// `explicit` else `$COMFY_REMOTE_WHEEL` for the wheel.
    pub fn from_env(wheel: Option<PathBuf>, sdist: Option<PathBuf>) -> Given {
        let wheel = wheel.or_else(|| {
            std::env::var_os(comfy_remote_protocol::env::WHEEL)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Given { wheel, sdist }
    }
}

/// One distribution file an image installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Artifact {
    /// A local file, copied into the project under `dir/`.
    File { path: PathBuf, dir: String },
    /// An http(s) URL pip fetches in the build.
    Url { url: String },
}

impl Artifact {
    fn file_name(&self) -> String {
        match self {
            Artifact::File { path, .. } => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Artifact::Url { url } => wheels::url_file_name(url).to_owned(),
        }
    }

    /// The project-relative path of a copied file.
    pub fn project_path(&self) -> Option<String> {
        match self {
            Artifact::File { dir, .. } => Some(format!("{dir}/{}", self.file_name())),
            Artifact::Url { .. } => None,
        }
    }

    /// What pip is given in the image.
    fn pip_arg(&self) -> String {
        match self {
            Artifact::File { .. } => {
                format!("/workspace/{}", self.project_path().unwrap_or_default())
            }
            Artifact::Url { url } => url.clone(),
        }
    }
}

/// Where the images get comfy-remote from, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Install {
    /// Never `Auto`.
    pub source: Source,
    /// The comfy_remote distribution (both images); `None`: the registry's.
    pub package: Option<Artifact>,
    /// The comfy_remote_server distribution (the GPU image); `None`: the registry's.
    pub server: Option<Artifact>,
    pub index_url: Option<String>,
}

impl Install {
    /// Decide where the images get comfy-remote from. `released`: this
    /// build's version is on the registry ([`RELEASE_BUILD`]); `checkout`:
    /// `target/wheels` of the comfy-remote checkout the run is in
    /// ([`wheels::checkout_wheels`]).
    pub fn resolve(
        config: &InstallConfig,
        given: &Given,
        released: bool,
        checkout: Option<PathBuf>,
    ) -> Result<Install> {
        let registry = |source| Install {
            source,
            package: None,
            server: None,
            index_url: config.index_url.clone(),
        };
        match config.source {
            Source::Registry => Ok(registry(Source::Registry)),
            Source::Wheel => match &given.wheel {
                Some(w) => Install::wheels(w),
                None => match checkout {
                    Some(dir) => Install::wheels(&dir),
                    None => Err(nothing_given(Source::Wheel, released)),
                },
            },
            Source::Sdist => match &given.sdist {
                Some(s) => Install::sdists(s),
                None => Ok(registry(Source::Sdist)),
            },
            Source::Auto => {
                if let Some(w) = &given.wheel {
                    return Install::wheels(w);
                }
                if let Some(s) = &given.sdist {
                    return Install::sdists(s);
                }
                if let Some(dir) = checkout {
                    return Install::wheels(&dir);
                }
                if released {
                    return Ok(registry(Source::Registry));
                }
                Err(nothing_given(Source::Auto, released))
            }
        }
    }

    fn wheels(given: &Path) -> Result<Install> {
        Install::files(given, Format::Wheel, Source::Wheel)
    }

    fn sdists(given: &Path) -> Result<Install> {
        Install::files(given, Format::Sdist, Source::Sdist)
    }

    fn files(given: &Path, format: Format, source: Source) -> Result<Install> {
        let (package, server) = match given.to_str().filter(|s| wheels::is_url(s)) {
            Some(url) => {
                let (package, server) = wheels::urls(url, format)?;
                (
                    Artifact::Url { url: package },
                    Artifact::Url { url: server },
                )
            }
            None => {
                let package = wheels::find(Dist::Package, format, given)?;
                let server = wheels::find_beside(Dist::Server, format, &package)?;
                let dir = format.project_dir().to_owned();
                (
                    Artifact::File {
                        path: package,
                        dir: dir.clone(),
                    },
                    Artifact::File { path: server, dir },
                )
            }
        };
        Ok(Install {
            source,
            package: Some(package),
            server: Some(server),
            index_url: None,
        })
    }

    /// The local files to copy into the project: (source path, project path).
    pub fn files_to_copy(&self) -> Vec<(PathBuf, String)> {
        [&self.package, &self.server]
            .into_iter()
            .flatten()
            .filter_map(|a| match a {
                Artifact::File { path, .. } => Some((path.clone(), a.project_path()?)),
                Artifact::Url { .. } => None,
            })
            .collect()
    }

    /// The comfy_remote wheel copied into the project, if that is the source.
    pub fn local_wheel(&self) -> Option<PathBuf> {
        match (&self.source, &self.package) {
            (Source::Wheel, Some(Artifact::File { path, .. })) => Some(path.clone()),
            _ => None,
        }
    }

    /// pip's arguments for the GPU image (package and server) or the web image (package only).
    fn pip_args(&self, with_server: bool) -> String {
        let mut args = Vec::new();
        if let Some(url) = &self.index_url {
            args.push(format!("--extra-index-url {url}"));
        }
        let pinned = |name: &str| format!("{name}=={VERSION}");
        if self.source == Source::Sdist && self.package.is_none() {
            let names = if with_server {
                format!("{PACKAGE},{SERVER}")
            } else {
                PACKAGE.to_owned()
            };
            args.push(format!("--no-binary {names}"));
        }
        args.push(
            self.package
                .as_ref()
                .map_or_else(|| pinned(PACKAGE), Artifact::pip_arg),
        );
        if with_server {
            args.push(
                self.server
                    .as_ref()
                    .map_or_else(|| pinned(SERVER), Artifact::pip_arg),
            );
        }
        args.join(" ")
    }

    /// One line for logs and the project's README.
    pub fn describe(&self) -> String {
        let what = |a: &Option<Artifact>, name: &str| match a {
            Some(Artifact::File { path, .. }) => path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            Some(Artifact::Url { url }) => url.clone(),
            None => format!("{name}=={VERSION}"),
        };
        let from = match (&self.index_url, self.source) {
            (Some(url), _) => format!(" from PyPI and {url}"),
            (None, Source::Registry | Source::Sdist) if self.package.is_none() => {
                " from PyPI".to_owned()
            }
            _ => String::new(),
        };
        let how = match self.source {
            Source::Sdist => "built in the image from the sdists",
            Source::Wheel => "the wheels",
            _ => "the packages",
        };
        format!(
            "{how} {} and {}{from}",
            what(&self.package, PACKAGE),
            what(&self.server, SERVER)
        )
    }

    /// The template's `install` context.
    pub fn context(&self) -> minijinja::Value {
        let files: Vec<_> = self
            .files_to_copy()
            .into_iter()
            .map(|(_, rel)| rel)
            .collect();
        let web_files: Vec<_> = self
            .package
            .as_ref()
            .and_then(Artifact::project_path)
            .into_iter()
            .collect();
        minijinja::context! {
            source => self.source.name(),
            build => self.source == Source::Sdist,
            files => files,
            web_files => web_files,
            gpu => self.pip_args(true),
            web => self.pip_args(false),
            describe => self.describe(),
            rust_toolchain => RUST_TOOLCHAIN,
        }
    }
}

/// Nothing says where the image gets comfy-remote: say every way.
fn nothing_given(source: Source, released: bool) -> DeployError {
    let why = match (source, released) {
        (Source::Wheel, _) => "\"source\" is \"wheel\" and no wheel was given".to_owned(),
        _ => format!(
            "this comfy-remote is not a release build, so {PACKAGE}=={VERSION} may not be on the package registry"
        ),
    };
    DeployError::Wheel {
        version: VERSION.into(),
        message: format!(
            "{why}; give the image comfy-remote in one of these ways: --wheel PATH|URL (or COMFY_REMOTE_WHEEL; the comfy_remote wheel for Linux x86_64, with the comfy_remote_server wheel beside it: {}), --sdist PATH|URL (built inside the image; `maturin sdist` and `maturin sdist -m crates/server/Cargo.toml` in a checkout), or --source registry (\"source\": \"registry\" in modal_config.json: {PACKAGE}=={VERSION} from PyPI, or also from \"index_url\")",
            wheels::BUILD_WHEELS
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(source: Source) -> InstallConfig {
        InstallConfig {
            source,
            index_url: None,
        }
    }

    #[test]
    fn the_release_flag_is_the_protocols_variable() {
        // `option_env!` needs a literal: it must be the one of the table.
        assert_eq!(comfy_remote_protocol::env::RELEASE, "COMFY_REMOTE_RELEASE");
    }

    #[test]
    fn a_release_build_defaults_to_the_registry_at_its_own_version() {
        let plan =
            Install::resolve(&cfg(Source::Auto), &Given::default(), true, None).expect("registry");
        assert_eq!(plan.source, Source::Registry);
        assert_eq!(
            plan.pip_args(true),
            format!("comfy-remote=={VERSION} comfy-remote-server=={VERSION}")
        );
        assert_eq!(plan.pip_args(false), format!("comfy-remote=={VERSION}"));
        assert!(plan.files_to_copy().is_empty());
        let err = Install::resolve(&cfg(Source::Auto), &Given::default(), false, None)
            .expect_err("a development build names the ways");
        let msg = err.to_string();
        for words in [
            "not a release build",
            "--wheel PATH|URL",
            "--sdist PATH|URL",
            "--source registry",
        ] {
            assert!(msg.contains(words), "{msg}");
        }
        // Asked for, the registry is used by any build.
        let plan = Install::resolve(&cfg(Source::Registry), &Given::default(), false, None)
            .expect("registry");
        assert_eq!(plan.source, Source::Registry);
    }

    #[test]
    fn the_registry_sdist_is_built_from_source_and_an_index_is_searched_too() {
        let plan = Install::resolve(
            &InstallConfig {
                source: Source::Sdist,
                index_url: Some("https://pypi.example/simple".into()),
            },
            &Given::default(),
            false,
            None,
        )
        .expect("sdist");
        assert!(plan.context().get_attr("build").is_ok_and(|b| b.is_true()));
        assert_eq!(
            plan.pip_args(true),
            format!("--extra-index-url https://pypi.example/simple --no-binary comfy-remote,comfy-remote-server comfy-remote=={VERSION} comfy-remote-server=={VERSION}")
        );
        assert_eq!(
            plan.pip_args(false),
            format!("--extra-index-url https://pypi.example/simple --no-binary comfy-remote comfy-remote=={VERSION}")
        );
    }

    #[test]
    fn wheel_urls_name_both_distributions_and_are_checked_by_name() {
        let url = format!("https://example.com/v{VERSION}/comfy_remote-{VERSION}-cp310-abi3-manylinux_2_28_x86_64.whl");
        let given = Given {
            wheel: Some(PathBuf::from(&url)),
            sdist: None,
        };
        let plan = Install::resolve(&cfg(Source::Auto), &given, false, None).expect("url");
        assert_eq!(plan.source, Source::Wheel);
        assert_eq!(
            plan.pip_args(true),
            format!("{url} https://example.com/v{VERSION}/comfy_remote_server-{VERSION}-py3-none-manylinux_2_28_x86_64.whl")
        );
        assert!(plan.files_to_copy().is_empty());
        let mac = Given {
            wheel: Some(PathBuf::from(format!(
                "https://example.com/comfy_remote-{VERSION}-cp310-abi3-macosx_11_0_arm64.whl"
            ))),
            sdist: None,
        };
        let err = Install::resolve(&cfg(Source::Auto), &mac, false, None).expect_err("mac");
        assert!(err.to_string().contains("Linux x86_64"), "{err}");
    }
}
