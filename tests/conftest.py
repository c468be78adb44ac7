"""Shared fixtures of the end-to-end tests: ComfyUI's location and Python,
private ComfyUI homes, and workers that are always stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ComfyUI, Worker, comfyui_python, start_comfyui, start_worker, wheel  # noqa: E402

COMFYUI_SKIP = (
    "COMFYUI_DIR is not set: the end-to-end tests against a real ComfyUI did not run "
    "(export COMFYUI_DIR=/path/to/ComfyUI)"
)


COMFYUI_OLD_SKIP = (
    "COMFYUI_OLD_DIR is not set: the node tests on an older ComfyUI (0.3.64) did not run "
    "(export COMFYUI_OLD_DIR=/path/to/ComfyUI-0.3.64; .ci/run uses /opt/comfyui-0.3.64)"
)


# Where COMFYUI_SKIP is defined: the place the folded SKIPPED line points at.
_SKIP_LINE = Path(__file__).read_text().splitlines().index("COMFYUI_SKIP = (") + 1


def _is_comfyui_skip(report: pytest.CollectReport | pytest.TestReport) -> bool:
    longrepr = report.longrepr
    return (
        report.skipped
        and isinstance(longrepr, tuple)
        and len(longrepr) == 3
        and "COMFYUI_DIR" in str(longrepr[2])
    )


def _fold(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Every skip for want of a ComfyUI reports the same place and reason, so
    pytest's summary folds them into one SKIPPED line naming COMFYUI_DIR."""
    if not os.environ.get("COMFYUI_DIR") and _is_comfyui_skip(report):
        report.longrepr = (__file__, _SKIP_LINE, f"Skipped: {COMFYUI_SKIP}")


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered here (the tests' root) so that they parse wherever pytest is pointed.
    g = parser.getgroup("comfy-remote conformance")
    g.addoption("--base-url", default=None, help="run tests/conformance against this server instead of starting "
                "the worker and the Modal front (it must serve tests/conformance/workflow.json)")
    g.addoption("--token", default=None, help="bearer token of --base-url (enables the auth cases)")
    g.addoption("--expired-job", default=None, help="a job of --base-url whose result has expired (enables the 410 case)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    _fold(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    _fold(outcome.get_result())


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    d = os.environ.get("COMFYUI_DIR")
    if not d:
        pytest.skip(COMFYUI_SKIP)
    return Path(d).resolve()


@pytest.fixture(scope="session")
def comfy_python(comfyui_dir: Path) -> Path:
    """ComfyUI's Python with the comfy-remote wheel installed."""
    return comfyui_python(comfyui_dir, wheel())


@pytest.fixture(scope="session")
def comfyui_old_dir(comfyui_dir: Path) -> Path:
    """The older ComfyUI (0.3.64) the node tests also run on."""
    d = os.environ.get("COMFYUI_OLD_DIR")
    if not d:
        pytest.skip(COMFYUI_OLD_SKIP)
    return Path(d).resolve()


@pytest.fixture(scope="session")
def comfy_old_python(comfyui_old_dir: Path) -> Path:
    """The older ComfyUI's Python with the comfy-remote wheel installed."""
    return comfyui_python(comfyui_old_dir, wheel())


@pytest.fixture
def start_worker_fn(tmp_path, comfyui_dir, comfy_python):
    """start_worker_fn(workflow, **kw) -> Worker, stopped after the test."""
    started: list[Worker] = []

    def start(workflow, *, name: str = "w", spool: Path | None = None, **kw) -> Worker:
        home = tmp_path / name
        w = start_worker(workflow, comfyui=comfyui_dir, python=comfy_python, home=home,
                         spool=spool or (home / "spool"), **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def direct_comfyui(tmp_path_factory, comfyui_dir, comfy_python):
    """A ComfyUI run directly (no worker): the baseline."""
    c: ComfyUI = start_comfyui(comfy_python, comfyui_dir, tmp_path_factory.mktemp("direct"))
    yield c
    c.stop()
