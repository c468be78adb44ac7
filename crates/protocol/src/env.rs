//! Every environment variable comfy-remote reads, named once.
//!
//! Rust code reads them through these constants; the Python package gets
//! the same names from the native module (`comfy_remote._native.ENV`), and
//! the README's table of environment variables is checked against [`ALL`].

/// One environment variable: its name, who reads it and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// The constant's name in this module (`TOKEN`), the key the Python
    /// package looks the variable up by (`_native.ENV["TOKEN"]`).
    pub key: &'static str,
    pub name: &'static str,
    /// Where it is read (`serve`, `run`, `deploy`, the nodes, ...).
    pub read_by: &'static str,
    pub meaning: &'static str,
}

/// The bearer token: required by `serve` beyond loopback, sent by `run`.
pub const TOKEN: &str = "COMFY_REMOTE_TOKEN";
/// Modal proxy auth: the token id and secret `run` sends as `Modal-Key`/`Modal-Secret`.
pub const MODAL_KEY: &str = "MODAL_KEY";
pub const MODAL_SECRET: &str = "MODAL_SECRET";
/// A ComfyUI checkout: what `serve` starts, what `deploy` checks node types against.
pub const COMFYUI_DIR: &str = "COMFYUI_DIR";
/// An older ComfyUI checkout (0.3.64) the node tests also run on.
pub const COMFYUI_OLD_DIR: &str = "COMFYUI_OLD_DIR";
/// The cache root (job store default, ComfyUI environments); default `~/.cache/comfy-remote`.
pub const CACHE: &str = "COMFY_REMOTE_CACHE";
/// The comfy-remote wheel `deploy` copies into the image.
pub const WHEEL: &str = "COMFY_REMOTE_WHEEL";
/// The `modal` executable `deploy` runs (default: `modal` on PATH).
pub const MODAL: &str = "COMFY_REMOTE_MODAL";
/// The Python that runs the generated project's helper scripts (default: the one next to `modal`).
pub const MODAL_PYTHON: &str = "COMFY_REMOTE_MODAL_PYTHON";
/// The `uv` executable `deploy` resolves the image's packages with (default: `uv` on PATH).
pub const UV: &str = "COMFY_REMOTE_UV";
/// The secrets file the nodes read `secrets:<name>` references from.
pub const SECRETS_FILE: &str = "COMFY_REMOTE_SECRETS_FILE";
/// `auto`, `always` or `never`: whether tensors travel packed (§2.7).
pub const PACK: &str = "COMFY_REMOTE_PACK";
/// `1`: the Remote API node logs the timing of each phase of a call to stderr.
pub const TRACE: &str = "COMFY_REMOTE_TRACE";
/// Where a Modal GPU container keeps its job store and logs.
pub const HOME: &str = "COMFY_REMOTE_HOME";
/// Log filter of `serve`, `run` and `deploy` (`info` by default).
pub const LOG: &str = "RUST_LOG";
/// Set: no colours in logs.
pub const NO_COLOR: &str = "NO_COLOR";
/// `1` when `deploy --force-rebuild` runs `modal deploy`: rebuild every image layer.
pub const MODAL_IGNORE_CACHE: &str = "MODAL_IGNORE_CACHE";

/// Set at build time by the release workflow: this build's version is on
/// the package registry, so `deploy` installs it from there by default.
pub const RELEASE: &str = "COMFY_REMOTE_RELEASE";

/// The test command's virtualenv (default `.venv`; `.ci/run` keeps it in the cache).
pub const VENV: &str = "COMFY_REMOTE_VENV";
/// The ComfyUI `scripts/demo.sh` clones when `COMFYUI_DIR` is unset: its git URL and tag.
pub const COMFYUI_REPO: &str = "COMFY_REMOTE_COMFYUI_REPO";
pub const COMFYUI_TAG: &str = "COMFY_REMOTE_COMFYUI_TAG";
/// The `comfy-remote` binary the end-to-end tests run (`scripts/test.sh` sets it).
pub const BIN: &str = "COMFY_REMOTE_BIN";
/// Seconds an end-to-end test waits for anything before it fails (default 600).
pub const TEST_DEADLINE: &str = "COMFY_REMOTE_TEST_DEADLINE";
/// Set: the golden-vector test rewrites `tests/vectors/` instead of comparing.
pub const WRITE_VECTORS: &str = "COMFY_REMOTE_WRITE_VECTORS";
/// Set: the core-node test rewrites the embedded ComfyUI node list from `COMFYUI_DIR`.
pub const UPDATE_CORE_NODES: &str = "UPDATE_CORE_NODES";
/// A file the test node pack appends its step times to (the Modal-path benchmark).
pub const TEST_NODES_TRACE: &str = "CR_TEST_NODES_TRACE";

/// The cache root: `$COMFY_REMOTE_CACHE`, else `~/.cache/comfy-remote` (the one place its
/// default is written).
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os(CACHE).filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    home.join(".cache").join("comfy-remote")
}

/// The table, in the order the README lists it.
pub const ALL: &[EnvVar] = &[
    EnvVar {
        key: "TOKEN",
        name: TOKEN,
        read_by: "serve, run, Modal web front",
        meaning: "Bearer token: required by `serve` when it listens beyond loopback; sent by `run` (`--token-env` names another variable); the Modal web front's token secret holds it",
    },
    EnvVar {
        key: "MODAL_KEY",
        name: MODAL_KEY,
        read_by: "run",
        meaning: "Modal proxy auth token id, sent as `Modal-Key` (`--modal-key-env` names another variable)",
    },
    EnvVar {
        key: "MODAL_SECRET",
        name: MODAL_SECRET,
        read_by: "run",
        meaning: "Modal proxy auth token secret, sent as `Modal-Secret` (`--modal-secret-env`)",
    },
    EnvVar {
        key: "COMFYUI_DIR",
        name: COMFYUI_DIR,
        read_by: "serve, deploy, tests",
        meaning: "A ComfyUI checkout: the one `serve` starts (`--comfyui`), the one `deploy` checks node types against; the end-to-end tests run against it",
    },
    EnvVar {
        key: "COMFYUI_OLD_DIR",
        name: COMFYUI_OLD_DIR,
        read_by: "tests",
        meaning: "An older ComfyUI checkout (0.3.64, before Autogrow and `accept_all_inputs`) the node tests also run on; `.ci/run` sets it to `/opt/comfyui-0.3.64` when present; unset, those cases are skipped",
    },
    EnvVar {
        key: "CACHE",
        name: CACHE,
        read_by: "serve, deploy, scripts",
        meaning: "Cache root (default `~/.cache/comfy-remote`): the default job store `worker/`, ComfyUI environments, `deploy`'s model hashes and resolved lock files",
    },
    EnvVar {
        key: "WHEEL",
        name: WHEEL,
        read_by: "deploy",
        meaning: "The comfy-remote wheel the Modal image installs: a wheel, a directory of wheels, a glob or a URL (`--wheel`)",
    },
    EnvVar {
        key: "MODAL",
        name: MODAL,
        read_by: "deploy, stop, status",
        meaning: "The `modal` executable to run (default: `modal` on PATH)",
    },
    EnvVar {
        key: "MODAL_PYTHON",
        name: MODAL_PYTHON,
        read_by: "deploy",
        meaning: "The Python that has the `modal` package, for reading the service URL (default: the one next to `modal`)",
    },
    EnvVar {
        key: "UV",
        name: UV,
        read_by: "deploy",
        meaning: "The `uv` executable that resolves the image's packages into its lock file (default: `uv` on PATH; the comfy-remote package depends on `uv`, so ComfyUI's Python has one)",
    },
    EnvVar {
        key: "SECRETS_FILE",
        name: SECRETS_FILE,
        read_by: "nodes",
        meaning: "The secrets file of `secrets:<name>` references (default `<ComfyUI user dir>/comfy-remote/secrets.json`)",
    },
    EnvVar {
        key: "PACK",
        name: PACK,
        read_by: "run, nodes",
        meaning: "`auto` (default): tensors travel packed (lossless, §2.7) unless the endpoint is on this machine, where the link is faster than the packer; `always`; `never`",
    },
    EnvVar {
        key: "TRACE",
        name: TRACE,
        read_by: "nodes",
        meaning: "`1`: the Remote API node logs each phase of a call with its time to stderr",
    },
    EnvVar {
        key: "HOME",
        name: HOME,
        read_by: "Modal GPU container",
        meaning: "Where the GPU container keeps its job store and worker log (default `/tmp/comfy-remote`)",
    },
    EnvVar {
        key: "LOG",
        name: LOG,
        read_by: "serve, run, deploy",
        meaning: "Log filter (default `info`), e.g. `RUST_LOG=debug`",
    },
    EnvVar {
        key: "NO_COLOR",
        name: NO_COLOR,
        read_by: "serve, run, deploy",
        meaning: "Set: no colours in logs",
    },
    EnvVar {
        key: "MODAL_IGNORE_CACHE",
        name: MODAL_IGNORE_CACHE,
        read_by: "modal (set by deploy)",
        meaning: "Set to `1` by `deploy --force-rebuild` for `modal deploy`: every image layer is rebuilt",
    },
    EnvVar {
        key: "RELEASE",
        name: RELEASE,
        read_by: "the build (release workflow)",
        meaning: "Set to `1` when the release workflow compiles the wheels it publishes: `deploy` of such a build installs `comfy-remote==<version>` from the package registry by default",
    },
    EnvVar {
        key: "VENV",
        name: VENV,
        read_by: "scripts",
        meaning: "The virtualenv `scripts/test.sh` and `scripts/demo.sh` install into (default `.venv`)",
    },
    EnvVar {
        key: "COMFYUI_REPO",
        name: COMFYUI_REPO,
        read_by: "scripts",
        meaning: "The git URL `scripts/demo.sh` clones ComfyUI from when `COMFYUI_DIR` is unset (default upstream)",
    },
    EnvVar {
        key: "COMFYUI_TAG",
        name: COMFYUI_TAG,
        read_by: "scripts",
        meaning: "The ComfyUI tag `scripts/demo.sh` clones (default `v0.33.0`)",
    },
    EnvVar {
        key: "BIN",
        name: BIN,
        read_by: "tests",
        meaning: "The `comfy-remote` binary the end-to-end tests run (`scripts/test.sh` sets it)",
    },
    EnvVar {
        key: "TEST_DEADLINE",
        name: TEST_DEADLINE,
        read_by: "tests",
        meaning: "Seconds an end-to-end test waits for anything before it fails (default 600)",
    },
    EnvVar {
        key: "WRITE_VECTORS",
        name: WRITE_VECTORS,
        read_by: "tests",
        meaning: "Set: the golden-vector test rewrites `tests/vectors/` instead of comparing",
    },
    EnvVar {
        key: "UPDATE_CORE_NODES",
        name: UPDATE_CORE_NODES,
        read_by: "tests",
        meaning: "Set: the core-node test rewrites the embedded ComfyUI node list from `COMFYUI_DIR`",
    },
    EnvVar {
        key: "TEST_NODES_TRACE",
        name: TEST_NODES_TRACE,
        read_by: "tests, scripts",
        meaning: "A file the test node pack appends its step times to (the Modal-path benchmark)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table lists exactly these variables, in this order.
    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("## Environment variables")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an Environment variables section");
        let listed: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let ours: Vec<&str> = ALL.iter().map(|v| v.name).collect();
        assert_eq!(listed, ours);
    }

    #[test]
    fn names_are_unique_and_upper_case() {
        let mut seen = std::collections::HashSet::new();
        for v in ALL {
            assert!(seen.insert(v.name), "{} twice", v.name);
            assert!(
                v.name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{}",
                v.name
            );
        }
    }
}
