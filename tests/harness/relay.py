"""A link on loopback: the `wan-relay` binary (crates/netsim) between a
client and a server, with a set bandwidth and round-trip time, optionally
cutting its first connections after some bytes. The kernel here has no
netem; the WAN benchmark and the tests of resumed transfers use this.

    with Relay(server_port, mbit=100, rtt_ms=40) as link:
        url = link.url
        ...
        link.stats()  # {"connections", "cuts", "up_bytes", "down_bytes"}
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from . import REPO, binary, log, target_dir


def relay_binary() -> Path:
    """`wan-relay` next to the comfy-remote binary, else a cargo build."""
    near = binary().parent / "wan-relay"
    if near.exists():
        return near
    log("building wan-relay (cargo build --release -p comfy-remote-netsim)")
    subprocess.run(["cargo", "build", "--release", "-p", "comfy-remote-netsim"], cwd=REPO, check=True,
                   stdout=sys.stderr)
    return target_dir() / "release" / "wan-relay"


class Relay:
    def __init__(self, target_port: int, *, mbit: float | None = None, rtt_ms: float = 0.0,
                 cut_up: int | None = None, cut_down: int | None = None, cuts: int = 1) -> None:
        cmd = [str(relay_binary()), "--target", f"127.0.0.1:{target_port}", "--rtt-ms", str(rtt_ms)]
        if mbit:
            cmd += ["--mbit", str(mbit)]
        if cut_up is not None:
            cmd += ["--cut-up", str(cut_up)]
        if cut_down is not None:
            cmd += ["--cut-down", str(cut_down)]
        cmd += ["--cuts", str(cuts)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "listening":
            self._proc.kill()
            raise RuntimeError(f"wan-relay did not start: {first}")
        self.port = int(first[1].rsplit(":", 1)[1])
        self._stats: dict[str, int] = {"connections": 0, "cuts": 0, "up_bytes": 0, "down_bytes": 0}
        self._base = dict(self._stats)
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                snap = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._stats = snap

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """Counters since the last `reset()` (updated every 20 ms)."""
        with self._lock:
            return {k: v - self._base.get(k, 0) for k, v in self._stats.items()}

    def reset(self) -> None:
        with self._lock:
            self._base = dict(self._stats)

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
