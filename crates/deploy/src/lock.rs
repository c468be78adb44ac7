//! The image resolves before it builds: its whole pip set (ComfyUI's requirements, each pack's,
//! the extra `pip` packages, comfy-remote's own dependencies and the torch stack) is resolved for
//! the image's platform (Linux x86_64, CPython 3.11) at scaffold time, with
//! `uv pip compile --python-platform`, into `build/requirements.lock`, which the image installs
//! with `--require-hashes`. A conflict stops the scaffold with the resolver's message, instead of
//! failing minutes into Modal's build.
//!
//! The torch stack's own wheels (torch, torchvision, torchaudio, xformers and the CUDA runtime
//! wheels torch brings) are resolved with the rest but installed from the stack's CUDA index at
//! the pinned versions, so the lock leaves them out. A resolution is cached by its inputs under
//! `$COMFY_REMOTE_CACHE/locks/`: the same inputs give the same lock, without a resolver run.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::DEFAULT_COMFYUI_REF;
use crate::error::{DeployError, Result};
use crate::runner::{Runner, Sink};
use crate::stacks::TorchStack;

/// The image's Python and platform, as `uv` names them.
pub const PYTHON_VERSION: &str = "3.11";
pub const PYTHON_PLATFORM: &str = "x86_64-manylinux_2_28";

const EMBEDDED_REQUIREMENTS: &str = include_str!("../data/comfyui-requirements.txt");

/// Packages the torch step installs from the stack's index, left out of the lock.
pub fn from_torch_index(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    [
        "torch",
        "torchvision",
        "torchaudio",
        "xformers",
        "triton",
        "pytorch-triton",
    ]
    .contains(&n.as_str())
        || n.starts_with("nvidia-")
        || n.starts_with("cuda-")
}

/// One named source of requirements (`ComfyUI v0.33.0`, `custom node pack Foo`, `"pip"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub source: String,
    pub lines: Vec<String>,
}

/// The requirement lines of a requirements file a resolver can take: options (`-r`, `--index-url`,
/// `-e`) and comments are dropped.
pub fn requirement_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

/// ComfyUI's requirements for `git_ref`: the checkout's when it is that version, else the
/// embedded ones of the default ref.
pub fn comfyui_requirements(git_ref: &str, checkout: Option<&Path>) -> Result<Requirements> {
    let want = git_ref.trim_start_matches('v');
    if let Some(dir) = checkout {
        let version = std::fs::read_to_string(dir.join("comfyui_version.py"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("__version__"))
                    .map(|v| {
                        v.trim_start_matches([' ', '='])
                            .trim()
                            .trim_matches('"')
                            .to_owned()
                    })
            });
        if version.as_deref() == Some(want) {
            let path = dir.join("requirements.txt");
            let text = std::fs::read_to_string(&path)
                .map_err(|source| DeployError::Read { path, source })?;
            return Ok(Requirements {
                source: format!("ComfyUI {git_ref} ({})", dir.display()),
                lines: requirement_lines(&text),
            });
        }
    }
    if git_ref == DEFAULT_COMFYUI_REF {
        return Ok(Requirements {
            source: format!("ComfyUI {git_ref}"),
            lines: requirement_lines(EMBEDDED_REQUIREMENTS),
        });
    }
    Err(DeployError::Config {
        message: format!(
            "\"comfyui\" is at ref {git_ref}, whose requirements this comfy-remote does not carry; pass --comfyui DIR, a checkout of ComfyUI {git_ref}, so the image's packages can be resolved before it builds"
        ),
    })
}

/// What goes into one resolution.
#[derive(Debug, Clone)]
pub struct LockInputs {
    pub requirements: Vec<Requirements>,
    pub stack: TorchStack,
}

impl LockInputs {
    /// `requirements.in`: every source's lines under a comment naming it, the stack last.
    pub fn requirements_in(&self) -> String {
        let mut s = String::new();
        for r in &self.requirements {
            s.push_str(&format!("# {}\n", r.source));
            for l in &r.lines {
                s.push_str(l);
                s.push('\n');
            }
        }
        s.push_str("# the torch stack\n");
        s.push_str(&format!(
            "torch=={}\ntorchvision=={}\ntorchaudio=={}\n",
            self.stack.torch, self.stack.torchvision, self.stack.torchaudio
        ));
        if let Some(x) = &self.stack.xformers {
            s.push_str(&format!("xformers=={x}\n"));
        }
        s
    }

    /// The constraints of the resolution: the image's (the stack's versions and its pins).
    pub fn constraints(&self) -> String {
        crate::scaffold::constraints(&self.stack)
    }
}

/// The resolved lock: what the image installs with `--require-hashes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// `build/requirements.lock`.
    pub text: String,
    /// How many packages it pins.
    pub packages: usize,
    /// Whether it came from the cache (no resolver run).
    pub cached: bool,
}

/// The lock text without the packages the torch step installs.
fn without_torch_index(resolved: &str, stack: &TorchStack) -> (String, usize) {
    let mut out = format!(
        "# Resolved by comfy-remote with uv for Linux x86_64, CPython {PYTHON_VERSION}, together with the torch stack\n\
         # torch=={} torchvision=={} torchaudio=={}{}.\n\
         # The stack's own wheels (torch, torchvision, torchaudio, xformers, triton, nvidia-*) come from\n\
         # {} in the step before this one; everything else is installed from here, with hashes.\n",
        stack.torch,
        stack.torchvision,
        stack.torchaudio,
        stack.xformers.as_ref().map(|x| format!(" xformers=={x}")).unwrap_or_default(),
        stack.index_url
    );
    let mut keep = false;
    let mut packages = 0;
    for line in resolved.lines() {
        let starts_package =
            !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty();
        if starts_package {
            let name = line
                .split(['=', '<', '>', '!', '~', ' ', '[', ';', '@'])
                .next()
                .unwrap_or_default();
            keep = !from_torch_index(name);
            if keep {
                packages += 1;
            }
        }
        if keep && !line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, packages)
}

/// Resolve `inputs` with uv (or take the resolution of the same inputs cached in `cache`/locks).
pub fn resolve(inputs: &LockInputs, cache: &Path, runner: &Runner, sink: Sink<'_>) -> Result<Lock> {
    let req_in = inputs.requirements_in();
    let constraints = inputs.constraints();
    let mut h = Sha256::new();
    for part in [PYTHON_VERSION, PYTHON_PLATFORM, &req_in, &constraints] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key = hex::encode(h.finalize());
    let cached = cache.join("locks").join(format!("{}.lock", &key[..32]));
    if let Ok(text) = std::fs::read_to_string(&cached) {
        let (text, packages) = without_torch_index(&text, &inputs.stack);
        sink(&format!(
            "image packages: resolved before with the same inputs ({packages} packages; {})",
            cached.display()
        ));
        return Ok(Lock {
            text,
            packages,
            cached: true,
        });
    }
    // The resolver's files live in the cache, never in the project (a failed resolution must
    // leave no project behind).
    let work = cache.join("resolve").join(&key[..32]);
    std::fs::create_dir_all(&work).map_err(|source| DeployError::Write {
        path: work.clone(),
        source,
    })?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = work.join(name);
        std::fs::write(&p, text).map_err(|source| DeployError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    };
    let req_path = write("requirements.in", &req_in)?;
    let con_path = write("resolve-constraints.txt", &constraints)?;
    let out_path = work.join("requirements.resolved");
    let (r, c, o) = (
        req_path.to_string_lossy().into_owned(),
        con_path.to_string_lossy().into_owned(),
        out_path.to_string_lossy().into_owned(),
    );
    let cmd = runner.cmd(
        &runner.uv,
        &[
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--generate-hashes",
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PYTHON_PLATFORM,
            "-c",
            &c,
            "-o",
            &o,
            &r,
        ],
    );
    sink("image packages: resolving them for Linux x86_64, CPython 3.11 (uv pip compile)");
    let out = runner.run_unchecked(&cmd, sink)?;
    if out.code != 0 {
        return Err(DeployError::Unresolvable {
            message: out.message(),
            hint: "change the conflicting \"pip\" entry, custom node pack or \"torch\" stack in modal_config.json (the packs' requirements are in their requirements.txt)".into(),
        });
    }
    let resolved = std::fs::read_to_string(&out_path).map_err(|source| DeployError::Read {
        path: out_path.clone(),
        source,
    })?;
    if let Some(dir) = cached.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&cached, &resolved);
    let (text, packages) = without_torch_index(&resolved, &inputs.stack);
    sink(&format!(
        "image packages: {packages} resolved and locked (with hashes)"
    ));
    Ok(Lock {
        text,
        packages,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lines_drop_options_and_comments() {
        let text = "# c\nnumpy>=1.25 # why\n-r other.txt\n--extra-index-url https://x\n\ntorch\n";
        assert_eq!(requirement_lines(text), ["numpy>=1.25", "torch"]);
    }

    #[test]
    fn the_lock_leaves_the_torch_index_wheels_out() {
        let stack = crate::stacks::resolve(&Default::default())
            .expect("stack")
            .1;
        let resolved = "numpy==1.26.4 \\\n    --hash=sha256:aa\n    # via -r r.in\ntorch==2.11.0 \\\n    --hash=sha256:bb\nnvidia-cublas-cu12==12.8 \\\n    --hash=sha256:cc\npillow==11.0.0 \\\n    --hash=sha256:dd\n";
        let (text, n) = without_torch_index(resolved, &stack);
        assert_eq!(n, 2);
        assert!(
            text.contains("numpy==1.26.4 \\\n    --hash=sha256:aa\n"),
            "{text}"
        );
        assert!(text.contains("pillow==11.0.0"));
        let pinned: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(['#', ' ']))
            .collect();
        assert_eq!(pinned, ["numpy==1.26.4 \\", "pillow==11.0.0 \\"], "{text}");
        assert!(!text.contains("# via"), "{text}");
    }

    /// With COMFYUI_DIR at the default ref, the embedded requirements are the checkout's.
    #[test]
    fn embedded_requirements_match_a_checkout_of_the_default_ref() {
        let Some(dir) = std::env::var_os(comfy_remote_protocol::env::COMFYUI_DIR) else {
            eprintln!("SKIPPED embedded_requirements_match_a_checkout_of_the_default_ref: set COMFYUI_DIR");
            return;
        };
        let from_checkout =
            comfyui_requirements(DEFAULT_COMFYUI_REF, Some(Path::new(&dir))).expect("requirements");
        if !from_checkout.source.contains('(') {
            eprintln!(
                "SKIPPED: {} is not ComfyUI {DEFAULT_COMFYUI_REF}",
                Path::new(&dir).display()
            );
            return;
        }
        assert_eq!(
            from_checkout.lines,
            requirement_lines(EMBEDDED_REQUIREMENTS)
        );
    }
}
