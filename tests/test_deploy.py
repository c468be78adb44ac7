"""Modal deployment: generated projects imported with the real `modal` package (offline), and the lifecycle
commands run against a recording `modal` executable (tests/fake_modal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, binary

FIXTURES = REPO / "crates" / "deploy" / "tests" / "fixtures"
FAKE = REPO / "tests" / "fake_modal"

INSPECT = r"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
spec = importlib.util.spec_from_file_location("workflow", "workflow.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
gpu = m.Worker._get_class_service_function().info()
web = m.web.info()
print(json.dumps({
    "app": m.app.name,
    "gpus": gpu.gpus, "timeout": gpu.timeout, "startup_timeout": gpu.startup_timeout,
    "volumes": sorted(gpu.volumes), "max_inputs": gpu.concurrency_info.max_inputs,
    "methods": gpu.method_names, "secrets": len(gpu.secrets),
    "web_gpus": web.gpus, "web_max_inputs": web.concurrency_info.max_inputs,
    "web_has_web_info": web.web_info is not None,
}))
"""


def version() -> str:
    out = subprocess.run([str(binary()), "--version"], check=True, capture_output=True, text=True).stdout
    return out.split()[-1]


def make_wheel(path: Path, ver: str | None = None, server: bool = True) -> Path:
    """A minimal wheel (METADATA and the native module), and beside it the
    server's (METADATA and its executable): the generator checks and copies both."""
    ver = ver or version()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"comfy_remote-{ver}.dist-info/METADATA", f"Metadata-Version: 2.4\nName: comfy-remote\nVersion: {ver}\n")
        z.writestr("comfy_remote/_native.abi3.so", b"\x7fELF")
    if server:
        with zipfile.ZipFile(path.parent / f"comfy_remote_server-{ver}-py3-none-manylinux_2_17_x86_64.whl", "w") as z:
            z.writestr(f"comfy_remote_server-{ver}.dist-info/METADATA",
                       f"Metadata-Version: 2.4\nName: comfy-remote-server\nVersion: {ver}\n")
            z.writestr(f"comfy_remote_server-{ver}.data/scripts/comfy-remote-server", b"\x7fELF")
    return path


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory) -> Path:
    return make_wheel(tmp_path_factory.mktemp("wheel") / f"comfy_remote-{version()}-cp310-abi3-manylinux_2_17_x86_64.whl")


@pytest.fixture
def fake_modal(tmp_path, monkeypatch):
    """Put the recording `modal` first on PATH; returns (log path, script setter)."""
    log = tmp_path / "modal.log"
    script = tmp_path / "modal_script.json"
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MODAL_LOG", str(log))
    monkeypatch.setenv("FAKE_MODAL_SCRIPT", str(script))
    monkeypatch.setenv("COMFY_REMOTE_MODAL_PYTHON", str(FAKE / "modal-python"))
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    script.write_text("{}")

    class Fake:
        def calls(self) -> list[dict[str, Any]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        def script(self, **responses: dict[str, Any]) -> None:
            script.write_text(json.dumps({k.replace("_", " ") if k != "get_url" else k: v for k, v in responses.items()}))

    return Fake()


# The resolver the image's packages are locked with: the test virtualenv's (requirements-test.txt).
UV = Path(sys.executable).parent / "uv"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFY_REMOTE_WHEEL")}
    if UV.exists():
        env.setdefault("COMFY_REMOTE_UV", str(UV))
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def generate(tmp_path: Path, wheel: Path, workflow: str = "remote_invert.json", config: dict | None = None,
             *extra: str) -> Path:
    out = tmp_path / "project"
    args = ["deploy", str(FIXTURES / workflow), "--no-deploy", "--out", str(out), "--wheel", str(wheel), *extra]
    if config is not None:
        cfg = tmp_path / "modal_config.json"
        cfg.write_text(json.dumps({"version": 1, **config}))
        args += ["--config", str(cfg)]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out), "generate only prints the project directory, never a URL"
    return out


def inspect(project: Path) -> dict[str, Any]:
    pytest.importorskip("modal")
    r = subprocess.run([sys.executable, "-c", INSPECT], cwd=project, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- generated projects, real modal, offline


def test_default_project_is_an_h100_service(tmp_path, fake_wheel):
    info = inspect(generate(tmp_path, fake_wheel))
    assert info["app"] == "comfy-remote-remote-invert"
    assert info["gpus"] == [["H100", 1]]
    assert (info["timeout"], info["startup_timeout"], info["max_inputs"]) == (3600, 600, 1)
    assert info["methods"] == ["run_job"]
    assert info["volumes"] == []
    assert info["web_gpus"] == [] and info["web_has_web_info"], "the web front is CPU-only and a web endpoint"


def test_gpu_fallback_list(tmp_path, fake_wheel):
    info = inspect(generate(tmp_path, fake_wheel, "remote_invert.json", None, "--gpu", "H100", "--gpu", "A100-80GB"))
    assert info["gpus"] == [["H100", 1], ["A100-80GB", 1]]


def test_seed_preset_and_extra_packages(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel, "remote_invert.json",
                       {"torch": {"stack": "seed-2.3"}, "gpu": "A10G", "timeout_s": 900, "max_concurrent_jobs": 2},
                       "--pip", "einops==0.8.0", "--apt", "libsm6")
    info = inspect(project)
    assert info["gpus"] == [["A10G", 1]] and info["timeout"] == 900 and info["max_inputs"] == 2
    text = (project / "workflow.py").read_text()
    assert "torch==2.3.0 torchvision==0.18.0 torchaudio==2.3.0" in text
    assert '"libsm6"' in text
    lock = (project / "build" / "requirements.lock").read_text()
    assert "\neinops==0.8.0 \\\n    --hash=sha256:" in lock, "extra packages are resolved into the lock"
    # torch 2.3 was built against numpy 1.x: the stack pins it, and the resolution honours it.
    assert (project / "build" / "constraints.txt").read_text().splitlines()[1:] == [
        "torch==2.3.0", "torchvision==0.18.0", "torchaudio==2.3.0", "xformers==0.0.26.post1", "numpy<2"]
    numpy = next(line for line in lock.splitlines() if line.startswith("numpy=="))
    assert numpy.startswith("numpy==1."), numpy
    cfg = json.loads((project / "modal_config.json").read_text())
    assert cfg["version"] == 1 and cfg["scaledown_window_s"] == 300, "defaults are written out"


def test_custom_node_pack_and_volume(tmp_path, fake_wheel):
    config = {
        "custom_nodes": [{"path": str(FIXTURES / "my_pack")},
                         {"git": "https://github.com/example/comfy-git-pack.git", "ref": "v1.2.0",
                          "nodes": ["GitPackNode"]}],
        "volume": {"name": "comfy-models"},
        "auth": {"token_secret": "comfy-remote-token"},
        "min_containers": 1, "scaledown_window_s": 60,
    }
    project = generate(tmp_path, fake_wheel, "remote_custom.json", config)
    assert (project / "custom_nodes" / "my_pack" / "__init__.py").is_file()
    info = inspect(project)
    assert info["volumes"] == ["/models"]
    assert info["secrets"] == 1


def test_image_recipe_pins_torch_after_every_install_step(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel, "remote_custom.json",
                       {"custom_nodes": [{"path": str(FIXTURES / "my_pack")},
                                         {"git": "https://x/y.git", "ref": "abc", "nodes": ["GitPackNode"]}],
                        "pip": ["einops"]})
    text = (project / "workflow.py").read_text()
    steps = [line.strip() for line in text.splitlines() if line.strip().startswith(".run_commands(") or "REPIN," in line]
    installs = [s for s in text.split(".run_commands(")[1:] if "PIP +" in s.split(")")[0] or "requirements.txt" in s]
    assert installs and all("REPIN" in s.split("\n    .")[0] for s in installs), steps
    assert '"--no-deps -c "' in text.replace("extra_options=", "").replace("'", '"') or "--no-deps -c" in text
    assert "pip uninstall -y utils || true" in text
    assert text.index("pip uninstall -y utils") < text.index("check_stack.py")
    assert '"PYTHONPATH": COMFYUI_DIR' in text and '"PIP_CONSTRAINT": CONSTRAINTS' in text


# ---------------------------------------------------------------- the checks before deploy


def test_ui_format_workflow_without_node_definitions_says_how_to_give_them(tmp_path, fake_wheel):
    r = cli("deploy", str(FIXTURES / "ui_format.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--wheel", str(fake_wheel))
    assert r.returncode == 2 and "--object-info" in r.stderr and "Export (API)" in r.stderr
    assert not (tmp_path / "p").exists()


def test_a_package_conflict_is_refused_before_the_build_naming_it(tmp_path, fake_wheel, fake_modal):
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel),
            "--pip", "torch==2.5.0")
    assert r.returncode == 2, r.stderr
    assert "do not resolve together" in r.stderr and "torch==2.5.0" in r.stderr and "torch==2.11.0" in r.stderr
    assert fake_modal.calls() == [], "nothing reaches Modal"
    assert not (tmp_path / "p").exists(), "no project is left behind"


def test_the_image_installs_the_lock_with_hashes(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    lock = (project / "build" / "requirements.lock").read_text()
    pinned = [line.split(" ")[0] for line in lock.splitlines() if line and not line.startswith(("#", " "))]
    names = {p.split("==")[0].lower() for p in pinned}
    assert all("==" in p for p in pinned) and len(pinned) > 30, pinned
    assert {"numpy", "aiohttp", "safetensors", "transformers"} <= names, "ComfyUI's requirements are locked"
    assert not names & {"torch", "torchvision", "torchaudio", "xformers"}, "the stack comes from its own index"
    assert lock.count("--hash=sha256:") >= len(pinned)
    text = (project / "workflow.py").read_text()
    install = '"PIP_CONSTRAINT= python -m pip install --disable-pip-version-check --no-deps --require-hashes -r " + LOCK'
    assert install in text
    assert text.index(install) < text.index("check_stack.py"), "the lock installs before the last build check"
    assert "requirements.txt\", REPIN)" not in text, "ComfyUI's requirements come from the lock, not unresolved"


@pytest.mark.parametrize("stack", ["torch-2.11", "torch-2.10", "torch-2.9", "torch-2.8", "seed-2.3"])
def test_every_torch_preset_resolves_with_the_pinned_comfyui(tmp_path, fake_wheel, stack):
    project = generate(tmp_path, fake_wheel, "remote_invert.json", None, "--torch-stack", stack)
    lock = (project / "build" / "requirements.lock").read_text()
    row = json.loads((REPO / "crates" / "deploy" / "torch_stacks.json").read_text())["stacks"][stack]
    assert f"torch=={row['torch']} torchvision=={row['torchvision']} torchaudio=={row['torchaudio']}" in lock
    numpy = next(line for line in lock.splitlines() if line.startswith("numpy=="))
    if stack == "seed-2.3":
        assert numpy.startswith("numpy==1."), f"torch 2.3 was built against numpy 1.x: {numpy}"


def test_unresolved_node_types_stop_the_deploy(tmp_path, fake_wheel, fake_modal):
    r = cli("deploy", str(FIXTURES / "remote_custom.json"), "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel))
    assert r.returncode == 2
    assert "GitPackNode, MyPackSharpen" in r.stderr
    assert fake_modal.calls() == [], "nothing reaches Modal"


def test_no_wheel_of_the_right_version_fails_clearly(tmp_path):
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert r.returncode == 2
    assert f"no comfy-remote wheel of version {version()}" in r.stderr and "COMFY_REMOTE_WHEEL" in r.stderr


# ---------------------------------------------------------------- where the images get comfy-remote

# The build steps of each image as the real `modal` package renders them
# (the Dockerfile commands it sends to Modal's builder, and the files its
# copy layers carry), read offline from the generated workflow.py.
IMAGE_STEPS = r"""
import importlib.util, json, warnings
warnings.simplefilter("ignore")
spec = importlib.util.spec_from_file_location("workflow", "workflow.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
from modal._utils.async_utils import synchronizer

def steps(image):
    out = []
    def walk(img):
        load = img._load
        cells = dict(zip(load.__code__.co_freevars, (c.cell_contents for c in load.__closure__ or ())))
        if "base_image" in cells:
            walk(cells["base_image"])
        for base in (cells.get("base_images") or {}).values():
            walk(base)
        if cells.get("context_mount_function"):
            mount = cells["context_mount_function"]("2025.06")
            for f in getattr(mount, "_entries", None) or []:
                out.append(f"COPY {f.remote_path}")
        if cells.get("dockerfile_function"):
            out.extend(c for c in cells["dockerfile_function"]("2025.06").commands if c.startswith("RUN "))
    walk(synchronizer._translate_in(image))
    return out

print(json.dumps({"gpu": steps(m.gpu_image), "web": steps(m.web_image)}))
"""


def image_steps(project: Path) -> dict[str, list[str]]:
    pytest.importorskip("modal")
    r = subprocess.run([sys.executable, "-c", IMAGE_STEPS], cwd=project, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def installs(steps: list[str], *words: str) -> str:
    """The one RUN step that names all `words`."""
    found = [s for s in steps if s.startswith("RUN ") and all(w in s for w in words)]
    assert len(found) == 1, (words, steps)
    return found[0]


def no_dist_files(steps: list[str]) -> bool:
    return not any(s.startswith("COPY /workspace/wheels/") or s.startswith("COPY /workspace/sdist/") for s in steps)


def test_without_any_wheel_the_images_install_this_version_from_the_registry(tmp_path):
    v = version()
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--source", "registry", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    project = tmp_path / "p"
    steps = image_steps(project)
    gpu = installs(steps["gpu"], f"comfy-remote=={v}", f"comfy-remote-server=={v}")
    assert gpu.startswith("RUN python -m pip install") and "-c /workspace/constraints.txt" in gpu
    web = installs(steps["web"], f"comfy-remote=={v}")
    assert "comfy-remote-server" not in web
    assert no_dist_files(steps["gpu"]) and no_dist_files(steps["web"])
    assert not (project / "wheels").exists()
    assert json.loads((project / "modal_config.json").read_text())["comfy_remote"]["source"] == "registry"
    # Saved: the next run without the flag keeps the registry.
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(project), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    installs(image_steps(project)["gpu"], f"comfy-remote=={v}", f"comfy-remote-server=={v}")
    assert inspect(project)["app"] == "comfy-remote-remote-invert"


def test_local_wheels_are_copied_into_the_images_and_installed(tmp_path, fake_wheel):
    steps = image_steps(generate(tmp_path, fake_wheel))
    server = next(fake_wheel.parent.glob("comfy_remote_server-*.whl")).name
    assert f"COPY /workspace/wheels/{fake_wheel.name}" in steps["gpu"]
    assert f"COPY /workspace/wheels/{server}" in steps["gpu"]
    installs(steps["gpu"], f"/workspace/wheels/{fake_wheel.name} /workspace/wheels/{server}")
    assert f"COPY /workspace/wheels/{fake_wheel.name}" in steps["web"]
    web = installs(steps["web"], f"/workspace/wheels/{fake_wheel.name}")
    assert server not in web and not any(server in s for s in steps["web"])


def test_a_wheel_url_is_fetched_by_pip_in_the_build(tmp_path):
    v = version()
    base = f"https://example.com/releases/download/v{v}"
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--wheel", f"{base}/comfy_remote-{v}-cp310-abi3-manylinux_2_28_x86_64.whl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = image_steps(tmp_path / "p")
    installs(steps["gpu"], f"{base}/comfy_remote-{v}-cp310-abi3-manylinux_2_28_x86_64.whl "
                           f"{base}/comfy_remote_server-{v}-py3-none-manylinux_2_28_x86_64.whl")
    installs(steps["web"], f"{base}/comfy_remote-{v}-cp310-abi3-manylinux_2_28_x86_64.whl")
    assert no_dist_files(steps["gpu"]) and no_dist_files(steps["web"])
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "q"),
            "--wheel", f"{base}/comfy_remote-{v}-cp310-abi3-macosx_11_0_arm64.whl", cwd=tmp_path)
    assert r.returncode == 2 and "Linux x86_64" in r.stderr


def make_sdist(path: Path, name: str) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as t:
        data = f"Metadata-Version: 2.4\nName: {name}\nVersion: {version()}\n".encode()
        info = tarfile.TarInfo(f"{path.name.removesuffix('.tar.gz')}/PKG-INFO")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


def test_sdists_are_built_in_the_images_by_a_rust_toolchain_of_that_step_only(tmp_path):
    v = version()
    dist = tmp_path / "dist"
    dist.mkdir()
    package = make_sdist(dist / f"comfy_remote-{v}.tar.gz", "comfy-remote")
    server = make_sdist(dist / f"comfy_remote_server-{v}.tar.gz", "comfy-remote-server")
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--sdist", str(dist), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = image_steps(tmp_path / "p")
    for image, files in (("gpu", [package, server]), ("web", [package])):
        for f in files:
            assert f"COPY /workspace/sdist/{f.name}" in steps[image]
        step = installs(steps[image], " ".join(f"/workspace/sdist/{f.name}" for f in files))
        # One step: the toolchain is installed, used and removed, so no layer keeps it.
        assert step.index("sh.rustup.rs") < step.index("pip install") < step.index("rustup self uninstall -y"), step
        assert any("apt-get install" in s and "curl" in s for s in steps[image]), "rustup is fetched with curl"
    assert not any("comfy_remote_server" in s for s in steps["web"])

    # Without files: the registry's sdists of this exact version.
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "q"),
            "--source", "sdist", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = image_steps(tmp_path / "q")
    installs(steps["gpu"], "sh.rustup.rs", f"--no-binary comfy-remote,comfy-remote-server comfy-remote=={v} "
                                           f"comfy-remote-server=={v}")
    installs(steps["web"], "sh.rustup.rs", f"--no-binary comfy-remote comfy-remote=={v}")
    assert no_dist_files(steps["gpu"])


def test_without_a_source_a_development_build_names_every_way(tmp_path):
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert r.returncode == 2
    for words in ("--wheel PATH|URL", "--sdist PATH|URL", "--source registry", "not a release build"):
        assert words in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_wheel_from_a_directory_a_glob_or_the_checkouts_target_wheels(tmp_path):
    wheels = tmp_path / "src" / "target" / "wheels"
    wheels.mkdir(parents=True)
    (tmp_path / "src" / "Cargo.toml").write_text("[workspace]\n")
    make_wheel(wheels / "comfy_remote-0.0.1-cp310-abi3-manylinux_2_17_x86_64.whl", "0.0.1")
    good = make_wheel(wheels / f"comfy_remote-{version()}-cp310-abi3-manylinux_2_34_x86_64.whl")
    for n, extra in enumerate([("--wheel", str(wheels)), ("--wheel", str(wheels / "comfy_remote-*.whl")), ()]):
        out = tmp_path / f"p{n}"
        r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(out), "--json", *extra,
                cwd=tmp_path / "src")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["project"]["wheel"].endswith(good.name)
        assert (out / "wheels" / good.name).is_file()


def test_a_junk_file_named_like_a_wheel_is_refused(tmp_path):
    junk = tmp_path / f"comfy_remote-{version()}-cp310-abi3-manylinux_2_17_x86_64.whl"
    junk.write_bytes(b"wheel")
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--wheel", str(junk))
    assert r.returncode == 2 and junk.name in r.stderr and "not a zip" in r.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("case", ["no_output", "two_outputs", "two_inputs", "path_name", "empty_name"])
def test_workflows_serve_refuses_are_refused_before_anything_is_written(tmp_path, fake_wheel, case):
    inp = lambda i, n: {"class_type": "RemoteInput", "inputs": {"name": n, "type": "IMAGE"}}  # noqa: E731
    out = lambda n: {"class_type": "RemoteOutput", "inputs": {"name": n, "value": ["1", 0]}}  # noqa: E731
    wf = {
        "no_output": {"1": inp(1, "image")},
        "two_outputs": {"1": inp(1, "a"), "2": out("image"), "3": out("image")},
        "two_inputs": {"1": inp(1, "a"), "2": inp(2, "a"), "3": out("image")},
        "path_name": {"1": inp(1, "../x"), "3": out("image")},
        "empty_name": {"1": inp(1, ""), "3": out("image")},
    }[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(wf))
    r = cli("deploy", str(path), "--no-deploy", "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel), "--json")
    assert r.returncode == 2, r.stderr
    assert "workflow bad.json: " in r.stderr
    assert json.loads(r.stdout)["status"] == "rejected"
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args,words", [
    (("--gpu", "H1000"), "--gpu H1000 is not a Modal GPU type; use one of"),
    (("--app", "Bad App!"), '--app "Bad App!" is not a Modal app name'),
    (("--comfyui", "/nonexistent"), "--comfyui /nonexistent: is not a directory"),
    (("--torch-stack", "torch-9"), "unknown torch stack `torch-9`; presets: "),
])
def test_bad_flags_are_named_with_a_json_report(tmp_path, fake_wheel, args, words):
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(tmp_path / "p"),
            "--wheel", str(fake_wheel), "--json", *args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "modal_config.json" not in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "rejected" and words in report["error"]["message"]
    assert not (tmp_path / "p").exists()


def test_a_bad_config_file_is_named(tmp_path, fake_wheel):
    cfg = tmp_path / "badcfg.json"
    cfg.write_text(json.dumps({"version": 1, "gpu": "H1000"}))
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--config", str(cfg),
            "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel))
    assert r.returncode == 2 and f"{cfg}: \"gpu\"" in r.stderr, r.stderr


def test_every_exit_path_prints_a_json_report(tmp_path, fake_wheel, monkeypatch):
    base = ("deploy", "--no-deploy", "--out", str(tmp_path / "p"), "--json")
    r = cli(base[0], str(FIXTURES / "remote_invert.json"), *base[1:], cwd=tmp_path)
    assert r.returncode == 2 and json.loads(r.stdout)["status"] == "rejected"
    assert "COMFY_REMOTE_WHEEL" in json.loads(r.stdout)["error"]["message"]
    r = cli(base[0], str(FIXTURES / "ui_format.json"), *base[1:], "--wheel", str(fake_wheel))
    assert r.returncode == 2 and "Export (API)" in json.loads(r.stdout)["error"]["message"]
    r = cli(base[0], str(FIXTURES / "remote_invert.json"), *base[1:], "--wheel", str(fake_wheel))
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok"
    monkeypatch.setenv("COMFY_REMOTE_MODAL", str(tmp_path / "nowhere" / "modal"))
    for args in (("stop", "svc", "--json"), ("status", "svc", "--json")):
        r = cli(*args)
        assert r.returncode == 4, r.stderr
        report = json.loads(r.stdout)
        assert report["status"] == "unavailable" and "pip install modal" in report["error"]["message"]


def test_an_existing_directory_that_is_not_a_project_is_not_written(tmp_path, fake_wheel):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--out", str(mine), "--wheel", str(fake_wheel))
    assert r.returncode == 2
    assert f"refusing to write into {mine}: it exists and is not a comfy-remote project" in r.stderr
    assert "delete" not in r.stderr and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_written_config_shows_every_setting_and_reads_back(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    cfg = json.loads((project / "modal_config.json").read_text())
    assert cfg["max_containers"] is None and cfg["volume"] is None and cfg["auth"]["token_secret"] is None
    assert set(cfg["torch"]) == {"stack", "torch", "torchvision", "torchaudio", "xformers", "index_url"}
    assert cfg["torch"]["stack"] == "torch-2.11", "the default preset is written by name, as docs/deploy.md shows"
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--config", str(project / "modal_config.json"),
            "--out", str(project), "--wheel", str(fake_wheel))
    assert r.returncode == 0, r.stderr


def test_incoherent_torch_override_is_refused(tmp_path, fake_wheel):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"version": 1, "torch": {"torch": "2.11.0", "torchvision": "0.18.0"}}))
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--config", str(cfg),
            "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel))
    assert r.returncode == 2 and "incoherent torch stack" in r.stderr and "torch-2.11:" in r.stderr
    assert not (tmp_path / "p").exists()


def test_unknown_config_key_is_named(tmp_path, fake_wheel):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"version": 1, "gpus": "A10G"}))
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--no-deploy", "--config", str(cfg),
            "--out", str(tmp_path / "p"), "--wheel", str(fake_wheel))
    assert r.returncode == 2 and "unknown key `gpus`" in r.stderr


@pytest.mark.parametrize("torch,row", [
    ("2.9.1", "torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"),
    ("seed-2.3", "torch==2.3.0 torchvision==0.18.0 torchaudio==2.3.0"),
    (None, "torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"),
])
def test_the_documented_torch_forms_are_accepted(tmp_path, fake_wheel, torch, row):
    project = generate(tmp_path, fake_wheel, "remote_invert.json", {"torch": torch})
    assert row in (project / "workflow.py").read_text()
    stack = json.loads((project / "modal_config.json").read_text())["torch"]["stack"]
    assert stack == {"2.9.1": "torch-2.9", "seed-2.3": "seed-2.3", None: "torch-2.11"}[torch]


@pytest.mark.parametrize("setting,words", [
    ({"scaledown_window_s": 1}, '"scaledown_window_s" must be a whole number of seconds from 2 to 3600'),
    ({"scaledown_window_s": 7200}, '"scaledown_window_s" must be a whole number of seconds from 2 to 3600'),
    ({"startup_timeout_s": 0}, '"startup_timeout_s" must be a whole number of seconds from 1 to 86400'),
    ({"timeout_s": 100000}, '"timeout_s" must be a whole number of seconds from 1 to 86400'),
    ({"max_containers": 0}, '"max_containers" must be null (no limit) or a whole number of 1 or more'),
    ({"max_concurrent_jobs": 0}, '"max_concurrent_jobs" must be a whole number of 1 or more'),
    ({"min_containers": -1}, '"min_containers" must be a whole number of 0 or more; got -1'),
    ({"torch": 2.9}, '"torch" must be a preset name ('),
    ({"torch": {"torch": 2.9}}, '"torch.torch" must be null or a version string'),
])
def test_settings_modal_would_refuse_stop_the_deploy_naming_the_key(tmp_path, fake_wheel, fake_modal, setting, words):
    cfg = tmp_path / "modal_config.json"
    cfg.write_text(json.dumps({"version": 1, **setting}))
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--config", str(cfg), "--wheel", str(fake_wheel),
            "--json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert message.startswith(f"{cfg}: ") and words in message, message
    assert "expected struct" not in message and "TorchChoice" not in message and "u32" not in message
    assert fake_modal.calls() == [] and not (tmp_path / "modal").exists()


def test_flags_saved_in_the_project_config_are_announced(tmp_path, fake_wheel, fake_modal):
    r = deploy(tmp_path, fake_wheel, "--no-deploy", "--gpu", "T4", "--pip", "einops")
    assert r.returncode == 0, r.stderr
    cfg_path = project_of(tmp_path) / "modal_config.json"
    assert f'--gpu T4: saved as "gpu": "T4" in {cfg_path}; later runs use it' in r.stderr
    assert f'--pip einops: saved as an entry of "pip" in {cfg_path}' in r.stderr
    r = deploy(tmp_path, fake_wheel, "--no-deploy")
    assert r.returncode == 0, r.stderr
    assert "saved as" not in r.stderr
    assert "gpu T4, torch stack torch-2.11" in r.stderr, "the run says which GPU the project now uses"
    assert inspect(project_of(tmp_path))["gpus"] == [["T4", 1]]


@pytest.mark.parametrize("name,app", [("___.json", "comfy-remote-workflow"),
                                      ("SDXL Turbo.json", "comfy-remote-sdxl-turbo")])
def test_odd_file_names_give_a_valid_app_name(tmp_path, fake_wheel, name, app):
    (tmp_path / name).write_text((FIXTURES / "remote_invert.json").read_text())
    r = cli("deploy", name, "--no-deploy", "--wheel", str(fake_wheel), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "modal" / app)
    assert inspect(tmp_path / "modal" / app)["app"] == app


def test_a_public_service_is_warned_about(tmp_path, fake_wheel, fake_modal):
    cfg = tmp_path / "modal_config.json"
    cfg.write_text(json.dumps({"version": 1, "auth": {"proxy_auth": False}}))
    r = deploy(tmp_path, fake_wheel, "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    warning = f"warning: app {APP} is public"
    assert warning in r.stderr and "anyone with the service URL can run jobs on your GPU" in r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "ok" and len(report["warnings"]) == 1 and report["warnings"][0].startswith(warning)
    cfg.write_text(json.dumps({"version": 1, "auth": {"proxy_auth": False, "token_secret": "comfy-remote-token"}}))
    r = deploy(tmp_path, fake_wheel, "--config", str(cfg), "--json", "--no-deploy")
    assert r.returncode == 0 and "warning" not in r.stderr and json.loads(r.stdout)["warnings"] == []


def test_deploy_help_says_what_it_does_by_default_and_what_sticks():
    top = cli("--help").stdout
    assert "deploy  Generate a Modal project for a remote workflow and deploy it (--no-deploy:" in top
    r = cli("deploy", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "saved in the project's modal_config.json, and later runs use them" in text
    assert "Exit status: 0 ok, 1 Modal failed" in text and "4 `modal` is not installed" in text
    assert "never your own files" in text, "--clean says what it spares"
    assert "Exit status: 0 stopped (or there was no such app)" in " ".join(cli("stop", "--help").stdout.split())


# ---------------------------------------------------------------- lifecycle, recorded


APP = "comfy-remote-remote-invert"


def deploy(tmp_path: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`comfy-remote deploy remote_invert.json` run in `tmp_path`, as users do: the project is ./modal/<app>."""
    return cli("deploy", str(FIXTURES / "remote_invert.json"), "--wheel", str(wheel), *extra, cwd=tmp_path)


def project_of(tmp_path: Path, app: str = APP) -> Path:
    return tmp_path / "modal" / app


def modal_deploy_argv(project: Path) -> list[str]:
    return ["deploy", f"{project / 'workflow.py'}::app"]


def test_deploy_runs_modal_deploy_and_asks_modal_for_the_url(tmp_path, fake_wheel, fake_modal):
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"https://acme--{APP}-web.modal.run"
    project = project_of(tmp_path)
    calls = fake_modal.calls()
    assert [c["argv"] for c in calls] == [
        modal_deploy_argv(project),
        [str(project / "build" / "get_url.py"), APP],
    ]
    assert calls[0]["cwd"] == str(project) and calls[1]["cwd"] == str(project)
    assert "MODAL_IGNORE_CACHE" not in calls[0]["env"]
    assert "App deployed" in r.stderr, "modal's output streams to the terminal"
    assert f"$ modal deploy {project / 'workflow.py'}::app" in r.stderr, "every command is logged"


def test_the_readme_command_deploys_from_the_default_relative_project_dir(tmp_path, fake_wheel, fake_modal):
    """`comfy-remote deploy remote.json` in a directory of the user's: every path a child gets is absolute."""
    (tmp_path / "remote.json").write_text((FIXTURES / "remote_invert.json").read_text())
    r = cli("deploy", "remote.json", "--wheel", str(fake_wheel), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "https://acme--comfy-remote-remote-web.modal.run"
    project = tmp_path / "modal" / "comfy-remote-remote"
    assert (project / "workflow.py").is_file() and (project / "remote.json").is_file()
    for call in fake_modal.calls():
        paths = [a.split("::")[0] for a in call["argv"] if a.endswith((".py", "::app"))]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths), call
        assert Path(call["cwd"]) == project


def test_a_failed_url_step_is_retried_without_redeploying(tmp_path, fake_wheel, fake_modal):
    fake_modal.script(get_url={"exit": 1, "stderr": "modal.exception.NotFoundError: App not found\n"})
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 1
    assert "deployed, but could not read the service URL" in r.stderr
    assert "run the same command again to only ask Modal for the URL" in r.stderr
    assert r.stdout == ""
    state = json.loads((project_of(tmp_path) / ".comfy-remote" / "state.json").read_text())
    assert state["deployed_hash"] == state["content_hash"], "the successful modal deploy is recorded"
    fake_modal.script(app_list={"stdout": json.dumps(
        [{"app_id": "ap-1", "description": APP, "state": "deployed", "tasks": "0"}])})
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"https://acme--{APP}-web.modal.run"
    argvs = [c["argv"] for c in fake_modal.calls()]
    assert argvs.count(modal_deploy_argv(project_of(tmp_path))) == 1, "the retry did not deploy again"
    assert argvs[-2:] == [["app", "list", "--json"], [str(project_of(tmp_path) / "build" / "get_url.py"), APP]]
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 0 and "unchanged since the last deploy" in r.stderr
    assert [c["argv"] for c in fake_modal.calls()][-1] == ["app", "list", "--json"], "the URL is now known"


def test_unchanged_inputs_do_not_redeploy(tmp_path, fake_wheel, fake_modal):
    assert deploy(tmp_path, fake_wheel).returncode == 0
    fake_modal.script(app_list={"stdout": json.dumps(
        [{"app_id": "ap-1", "description": APP, "state": "deployed", "tasks": "0"}])})
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("-web.modal.run")
    argvs = [c["argv"] for c in fake_modal.calls()]
    assert argvs.count(modal_deploy_argv(project_of(tmp_path))) == 1
    assert argvs[-1] == ["app", "list", "--json"]
    assert "unchanged since the last deploy" in r.stderr


def test_a_stopped_app_is_redeployed_even_when_unchanged(tmp_path, fake_wheel, fake_modal):
    assert deploy(tmp_path, fake_wheel).returncode == 0
    fake_modal.script(app_list={"stdout": json.dumps(
        [{"app_id": "ap-1", "description": APP, "state": "stopped", "tasks": "0"}])})
    assert deploy(tmp_path, fake_wheel).returncode == 0
    assert [c["argv"] for c in fake_modal.calls()].count(modal_deploy_argv(project_of(tmp_path))) == 2


def test_force_rebuild_sets_ignore_cache_and_a_new_nonce(tmp_path, fake_wheel, fake_modal):
    assert deploy(tmp_path, fake_wheel).returncode == 0
    r = deploy(tmp_path, fake_wheel, "--force-rebuild")
    assert r.returncode == 0, r.stderr
    deploys = [c for c in fake_modal.calls() if c["argv"][:1] == ["deploy"]]
    assert len(deploys) == 2
    assert deploys[1]["env"].get("MODAL_IGNORE_CACHE") == "1"
    assert deploys[0]["nonce"] and deploys[1]["nonce"] and deploys[0]["nonce"] != deploys[1]["nonce"]


def test_delete_remote_app(tmp_path, fake_modal):
    r = cli("stop", "my-app")
    assert r.returncode == 0 and r.stdout.strip() == "stopped my-app"
    assert fake_modal.calls()[-1]["argv"] == ["app", "stop", "-y", "my-app"]
    fake_modal.script(app_stop={"exit": 1, "stderr": "No App with name 'my-app' found in the 'main' environment.\n"})
    r = cli("stop", "my-app", "--json")
    assert r.returncode == 0, "a missing app is not an error"
    assert json.loads(r.stdout) == {"status": "ok", "app": "my-app", "stopped": False}
    fake_modal.script(app_stop={"exit": 1, "stderr": "Token missing. Run `modal token new`.\n"})
    r = cli("stop", "my-app")
    assert r.returncode == 1 and "modal token new" in r.stderr
    n = len(fake_modal.calls())
    r = cli("stop", "bad app!", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["status"] == "rejected"
    assert len(fake_modal.calls()) == n, "a bad name never reaches Modal"


def test_delete_remote_before_redeploy(tmp_path, fake_wheel, fake_modal):
    assert deploy(tmp_path, fake_wheel, "--delete-remote").returncode == 0
    argvs = [c["argv"] for c in fake_modal.calls()]
    assert argvs[0] == ["app", "stop", "-y", APP]
    assert argvs[1] == modal_deploy_argv(project_of(tmp_path))


def test_clean_build_removes_what_the_generator_wrote_and_nothing_else(tmp_path, fake_wheel, fake_modal):
    assert deploy(tmp_path, fake_wheel, "--no-deploy").returncode == 0
    project = project_of(tmp_path)
    (project / "build" / "stale.txt").write_text("left by an older version")
    (project / "__pycache__").mkdir()
    (project / "notes.txt").write_text("mine")
    state = json.loads((project / ".comfy-remote" / "state.json").read_text())
    r = deploy(tmp_path, fake_wheel, "--no-deploy", "--clean")
    assert r.returncode == 0, r.stderr
    assert not (project / "build" / "stale.txt").exists() and not (project / "__pycache__").exists()
    assert (project / "workflow.py").is_file()
    assert (project / "notes.txt").read_text() == "mine", "a file of the user's stays"
    assert json.loads((project / ".comfy-remote" / "state.json").read_text())["nonce"] == state["nonce"], \
        "Clean Build alone does not rebuild the image"
    assert "clean build: removing the generated files in" in r.stderr
    assert fake_modal.calls() == []


def test_clean_build_inside_the_project_keeps_what_it_reads(tmp_path, fake_wheel, fake_modal):
    """The generated README's command plus Clean Build, run in the project: the edited config and the workflow stay."""
    (tmp_path / "sd.json").write_text((FIXTURES / "remote_invert.json").read_text())
    assert cli("deploy", "sd.json", "--no-deploy", "--wheel", str(fake_wheel), cwd=tmp_path).returncode == 0
    project = tmp_path / "modal" / "comfy-remote-sd"
    assert "--config modal_config.json --out ." in (project / "README.md").read_text()
    cfg = json.loads((project / "modal_config.json").read_text())
    cfg["gpu"] = "L4"
    (project / "modal_config.json").write_text(json.dumps(cfg))
    (project / "notes.txt").write_text("mine")
    r = cli("deploy", "sd.json", "--config", "modal_config.json", "--out", ".", "--clean", "--no-deploy",
            "--wheel", str(fake_wheel), cwd=project)
    assert r.returncode == 0, r.stderr
    assert json.loads((project / "modal_config.json").read_text())["gpu"] == "L4", "the user's edit survives"
    assert (project / "sd.json").read_text() == (FIXTURES / "remote_invert.json").read_text()
    assert (project / "notes.txt").read_text() == "mine"
    assert 'GPU = "L4"' in (project / "workflow.py").read_text()
    assert f"clean build: kept {project / 'modal_config.json'}" in r.stderr
    assert fake_modal.calls() == []


def test_clean_build_refuses_a_directory_it_did_not_create(tmp_path, fake_wheel, fake_modal):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "modal_config.json").write_text(json.dumps({"version": 1}))
    (mine / "notes.txt").write_text("keep")
    r = cli("deploy", str(FIXTURES / "remote_invert.json"), "--out", "mine", "--clean", "--wheel", str(fake_wheel),
            "--json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"refusing to clean {mine}: comfy-remote did not create it" in json.loads(r.stdout)["error"]["message"]
    assert sorted(p.name for p in mine.iterdir()) == ["modal_config.json", "notes.txt"]
    assert fake_modal.calls() == []


def test_deploy_failure_surfaces_modals_message(tmp_path, fake_wheel, fake_modal):
    fake_modal.script(deploy={"exit": 1, "stdout": "Building image im-123\n",
                              "stderr": "Image build for im-123 failed. See build logs for more details.\n"})
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 1
    assert "Image build for im-123 failed" in r.stderr.splitlines()[-1]
    assert r.stdout == "", "no URL on failure"
    state = json.loads((project_of(tmp_path) / ".comfy-remote" / "state.json").read_text())
    assert "deployed_hash" not in state


def test_status(tmp_path, fake_modal):
    fake_modal.script(app_list={"stdout": json.dumps([
        {"app_id": "ap-0", "description": "svc", "state": "stopped", "tasks": "0"},
        {"app_id": "ap-1", "description": "svc", "state": "deployed", "tasks": "2"}])})
    r = cli("status", "svc", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"status": "ok", "name": "svc", "state": "deployed", "app_id": "ap-1", "tasks": 2}
    r = cli("status", "other")
    assert r.returncode == 1 and "not deployed" in r.stdout
    assert cli("status", "bad app!").returncode == 2
    fake_modal.script(app_list={"exit": 1, "stderr": "Token missing. Run `modal token new`.\n"})
    r = cli("status", "svc", "--json")
    assert r.returncode == 4 and json.loads(r.stdout)["status"] == "unavailable"


def test_modal_missing_says_how_to_install(tmp_path, fake_wheel, monkeypatch):
    monkeypatch.setenv("COMFY_REMOTE_MODAL", str(tmp_path / "nowhere" / "modal"))
    r = deploy(tmp_path, fake_wheel)
    assert r.returncode == 4 and "pip install modal" in r.stderr


# ---------------------------------------------------------------- the build-time stack check


# A stand-in numpy array: enough for the check's round trip through torch.
_NUMPY_STUB = """
__version__ = "{ver}"
float32 = "float32"


class ndarray:
    def __init__(self, values):
        self.values = list(values)

    def reshape(self, *shape):
        return self

    def __mul__(self, k):
        return ndarray(v * k for v in self.values)

    def __eq__(self, other):
        return ndarray(a == b for a, b in zip(self.values, other.values))

    def all(self):
        return all(self.values)


def arange(n, dtype=None):
    return ndarray(range(n))
"""


def _stub_env(root: Path, versions: dict[str, str], nms: bool = True, utils: bool = True,
              numpy_works: bool = True) -> Path:
    """Fake torch packages and numpy (module + dist-info) for the generated check script; with
    `numpy_works=False` torch fails to exchange arrays the way torch 2.3 does with numpy 2."""
    versions = {**versions, "numpy": "1.26.4"}
    for name, ver in versions.items():
        pkg = root / name
        pkg.mkdir(parents=True)
        body = f"__version__ = {ver!r}\n"
        if name == "numpy":
            body = _NUMPY_STUB.format(ver=ver)
        if name == "torch":
            body += (
                "class _Ops:\n"
                "    def __getattr__(self, ns):\n"
                "        if ns == 'torchvision' and " + repr(nms) + ":\n"
                "            return type('NS', (), {'nms': object()})()\n"
                "        raise RuntimeError(f'No such operator {ns}::nms')\n"
                "ops = _Ops()\n"
                "class _Tensor:\n"
                "    def __init__(self, a):\n"
                "        self.a = a\n"
                "    def __mul__(self, k):\n"
                "        return _Tensor(self.a * k)\n"
                "    def numpy(self):\n"
                "        return self.a\n"
                "def from_numpy(a):\n"
                "    if not " + repr(numpy_works) + ":\n"
                "        raise RuntimeError('Numpy is not available')\n"
                "    return _Tensor(a)\n"
            )
        if name == "torchvision":
            body += "import torch\n"
        (pkg / "__init__.py").write_text(body)
        dist = root / f"{name}-{ver}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
    if utils:
        (root / "utils").mkdir()
        (root / "utils" / "__init__.py").write_text("")
        (root / "utils" / "install_util.py").write_text("")
    return root


def _run_check(project: Path, stubs: Path) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages, so only the stubs (not this venv's real torch) are seen.
    env = {"PYTHONPATH": str(stubs), "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, "-S", str(project / "build" / "check_stack.py")],
                          capture_output=True, text=True, env=env, timeout=60)


GOOD = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0", "xformers": "0.0.35"}


def test_check_script_passes_on_the_pinned_stack(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    r = _run_check(project, _stub_env(tmp_path / "stubs", GOOD))
    assert r.returncode == 0, r.stderr
    assert "torchvision 0.26.0" in r.stdout


def test_check_script_fails_the_build_on_a_moved_torchvision(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    r = _run_check(project, _stub_env(tmp_path / "stubs", {**GOOD, "torchvision": "0.18.0"}))
    assert r.returncode == 1
    assert "torchvision is 0.18.0, the stack pins 0.26.0" in r.stderr


def test_check_script_fails_when_torchvision_ops_are_missing(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    r = _run_check(project, _stub_env(tmp_path / "stubs", GOOD, nms=False))
    assert r.returncode == 1
    assert "torch.ops.torchvision.nms is missing" in r.stderr


def test_check_script_fails_when_torch_and_numpy_do_not_exchange_arrays(tmp_path, fake_wheel):
    # torch 2.3 with numpy 2 imports fine and fails at the first array: the check tries one.
    project = generate(tmp_path, fake_wheel)
    r = _run_check(project, _stub_env(tmp_path / "stubs", GOOD, numpy_works=False))
    assert r.returncode == 1
    assert "torch and numpy 1.26.4 do not work together (RuntimeError: Numpy is not available)" in r.stderr


def test_check_script_fails_on_a_pypi_utils(tmp_path, fake_wheel):
    project = generate(tmp_path, fake_wheel)
    stubs = _stub_env(tmp_path / "stubs", GOOD, utils=False)
    (stubs / "utils.py").write_text("# a PyPI module named utils\n")
    r = _run_check(project, stubs)
    assert r.returncode == 1 and "utils.install_util" in r.stderr


def test_check_script_passes_in_comfyuis_real_environment(tmp_path, fake_wheel, comfyui_dir, comfy_python):
    """The real torch 2.11 stack of ComfyUI's test env (without xformers) passes the generated check."""
    project = generate(tmp_path, fake_wheel, "remote_invert.json", {"torch": {"xformers": "none"}})
    env = {**os.environ, "PYTHONPATH": str(comfyui_dir)}
    r = subprocess.run([str(comfy_python), str(project / "build" / "check_stack.py")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
