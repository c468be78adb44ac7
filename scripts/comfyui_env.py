#!/usr/bin/env python3
"""Prepare (and cache) the Python environment a ComfyUI checkout needs.

Given only ComfyUI's files, this creates a virtual environment with ComfyUI's
requirements, a coherent torch/torchvision/torchaudio set (pinned through a
constraints file so no later requirement can move it) and, optionally, the
comfy-remote package. The environment is cached under
``$COMFY_REMOTE_CACHE`` (default ``~/.cache/comfy-remote``), keyed by the
content of ComfyUI's requirements and the torch set, so a warm run costs one
``import`` check.

Usage: comfyui_env.py --comfyui DIR [--install-wheel WHEEL] [--stack NAME]
Prints the environment's python executable on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

# The one table of coherent torch/torchvision/torchaudio sets, shared with the
# Modal scaffold. Here only the three PyPI pins matter (the CUDA index URL and
# xformers are for the GPU image).
_TABLE = json.loads(
    (Path(__file__).resolve().parent.parent / "crates" / "deploy" / "torch_stacks.json").read_text()
)
STACKS = {
    name: {k: row[k] for k in ("torch", "torchvision", "torchaudio")}
    for name, row in _TABLE["stacks"].items()
}
DEFAULT_STACK = _TABLE["default"]

# Heavy optional requirements ComfyUI lists as "non essential"; weight-free
# nodes do not need them and some have no wheel here.
SKIP = {"comfy-angle", "pyopengl"}

# Modules ComfyUI imports at start-up without listing them in every release:
# 0.3.64's server imports `requests` (app/frontend_management.py) but its
# requirements.txt omits it. Added when a checkout's requirements lack them.
UNLISTED = ["requests"]


def log(msg: str) -> None:
    print(f"comfyui-env: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("COMFY_REMOTE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "comfy-remote"
    )
    return Path(base)


def requirement_lines(comfyui: Path) -> list[str]:
    req = comfyui / "requirements.txt"
    if not req.is_file():
        raise SystemExit(
            f"comfyui-env: {req} not found: COMFYUI_DIR must point at a ComfyUI checkout"
        )
    out = []
    for raw in req.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if _name(line) in SKIP:
            continue
        out.append(line)
    listed = {_name(line) for line in out}
    out += [extra for extra in UNLISTED if extra not in listed]
    return out


def _name(requirement: str) -> str:
    """The distribution name a requirement line starts with, lower-cased."""
    name = requirement.split(";")[0]
    for sep in "=<>~![ ":
        name = name.split(sep)[0]
    return name.lower()


def run(cmd: list[str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def ensure_env(comfyui: Path, stack_name: str) -> Path:
    stack = STACKS[stack_name]
    reqs = requirement_lines(comfyui)
    key = hashlib.sha256(
        json.dumps({"reqs": reqs, "stack": stack, "py": sys.version_info[:2]}).encode()
    ).hexdigest()[:16]
    env_dir = cache_root() / "envs" / f"comfyui-{key}"
    py = env_dir / "bin" / "python"
    marker = env_dir / ".complete"
    if marker.is_file() and py.exists():
        return py
    log(f"creating {env_dir} (first run downloads torch; later runs reuse it)")
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    constraints = env_dir / "constraints.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in stack.items()))
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # The torch set first, then everything else under the same constraints so
    # a requirement that asks for another torch fails instead of moving it.
    run(pip + [f"{k}=={v}" for k, v in stack.items()])
    run(pip + ["-c", str(constraints)] + reqs)
    run(
        [
            str(py),
            "-c",
            "import torch, torchvision, torchaudio; "
            "torch.ops.torchvision.nms; print(torch.__version__)",
        ]
    )
    marker.write_text(json.dumps(stack))
    return py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"))
    ap.add_argument("--stack", default=DEFAULT_STACK, choices=sorted(STACKS))
    ap.add_argument("--install-wheel", help="install this comfy-remote wheel into the env")
    args = ap.parse_args()
    if not args.comfyui:
        raise SystemExit("comfyui-env: set COMFYUI_DIR or pass --comfyui DIR")
    py = ensure_env(Path(args.comfyui).resolve(), args.stack)
    if args.install_wheel:
        run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--no-deps", "--force-reinstall", args.install_wheel]
        )
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
