"""Fixtures of the protocol conformance suite: the servers under test and a small HTTP client for them.

Without ``--base-url`` every case runs against both servers of this
repository, each in front of a real ComfyUI serving ``workflow.json`` (one
server per kind per session): ``worker`` (``comfy-remote serve``) and
``modal`` (the Modal web front through the local runtime: the real GPU
runtime and worker, Modal's spawn/FunctionCall/Dict replaced by the
in-process stand-in). With ``--base-url URL [--token TOKEN]`` the cases run
against that server, which must serve ``workflow.json`` (it needs the
comfy-remote nodes and ``tests/nodes/comfy_remote_test_nodes``)."""

from __future__ import annotations

from typing import Iterator

import pytest

from protocol_client import MAX_BODY, RESULT_TTL_S, TOKEN, WORKFLOW, Server

# ---------------------------------------------------------------- fixtures


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only: needs one of the suite's own servers (sends its own Host, "
                                       "or needs its limits)")
    config.addinivalue_line("markers", "late: runs after the other cases (retention has had time to drop results)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        kinds = ["url"] if metafunc.config.getoption("--base-url", None) else ["worker", "modal"]
        metafunc.parametrize("server", kinds, indirect=True, scope="session")


@pytest.hookimpl(trylast=True)  # after pytest groups the cases by server, so `late` ones stay last
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda i: i.get_closest_marker("late") is not None)


@pytest.fixture(scope="session")
def _worker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    from harness import start_worker

    comfyui_dir = request.getfixturevalue("comfyui_dir")
    comfy_python = request.getfixturevalue("comfy_python")
    home = tmp_path_factory.mktemp("conformance-worker")
    w = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=home / "spool",
                     token=TOKEN, extra=["--max-body-bytes", str(MAX_BODY), "--retention-secs", str(RESULT_TTL_S)])
    try:
        s = Server("worker", w.url, TOKEN, local=True)
        s.expired_job = expiring_job(s)
        yield s
    finally:
        w.stop()


@pytest.fixture(scope="session")
def _modal(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from harness import start_modal_runtime

    comfyui_dir = request.getfixturevalue("comfyui_dir")
    comfy_python = request.getfixturevalue("comfy_python")
    rt = start_modal_runtime(WORKFLOW, comfyui=comfyui_dir, python=comfy_python,
                             home=tmp_path_factory.mktemp("conformance-modal"), result_ttl_s=RESULT_TTL_S,
                             token=TOKEN, max_body_bytes=MAX_BODY)
    try:
        s = Server("modal", rt.url, TOKEN, local=True)
        s.expired_job = expiring_job(s)
        yield s
    finally:
        rt.stop()


def expiring_job(s: Server) -> str:
    """A job submitted at start, whose result the server's retention drops while the other cases run."""
    job = s.start()
    s.wait(job["id"])
    s.started.clear()
    return str(job["id"])


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "url":
        base = str(request.config.getoption("--base-url")).rstrip("/")
        return Server("url", base, request.config.getoption("--token", None), local=False,
                      expired_job=request.config.getoption("--expired-job", None))
    return request.getfixturevalue("_worker" if request.param == "worker" else "_modal")


@pytest.fixture
def srv(server: Server, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The server for one case; what the case started is canceled and waited for afterwards."""
    if request.node.get_closest_marker("local_only") and not server.local:
        pytest.skip("needs one of the suite's own servers (run without --base-url)")
    yield server
    server.settle()
