"""An endpoint that speaks only the seed's JSON/polling shape, in front of a
real comfy-remote worker. Used by the end-to-end tests to prove the Remote
API node works with endpoints that know nothing of the native protocol.

It answers
- ``POST /run`` with a JSON body ``{"format": "comfy-remote/1+base64", "data": ...}``
  -> ``{"status": "pending", "id": ..., "poll_url": "/status/<id>"}``;
- ``GET /status/<id>`` -> ``{"status": <synonym>, "progress": {"percent": ..}
  | number, "poll_url": ..., "result": {"format", "data"} | absent, "error": str}``;
- ``POST /status/<id>/cancel`` -> cancels the worker job;
- everything else (``/v1/info`` included) -> 404.
No SSE, no binary bodies, no signature: like the seed's services, it takes
inputs by position and renames them to the workflow's Remote Inputs
(asking the worker once) before passing them on.

Usage: python seed_endpoint.py --worker http://127.0.0.1:PORT [--port N]
Prints ``listening on http://127.0.0.1:N`` once ready.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTAINER = "application/vnd.comfy-remote.container"
# Status words the seed's peers use, deliberately not the native ones.
SYNONYMS = {
    "queued": "in_queue",
    "running": "processing",
    "canceling": "in_progress",
    "succeeded": "completed",
    "canceled": "cancelled",
    "failed": "error",
    "expired": "error",
}


def worker_call(url: str, *, method: str = "GET", body: bytes | None = None, ctype: str | None = None) -> bytes:
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def by_position(container: bytes, worker: str) -> bytes:
    """Rename the entries to the worker's input names, in order."""
    from comfy_remote import codec

    names = [i["name"] for i in json.loads(worker_call(f"{worker}/v1/info"))["inputs"]]
    entries = codec.decode(container)
    if len(entries) > len(names):
        raise ValueError(f"{len(entries)} inputs sent, the workflow takes {len(names)}")
    return codec.encode([(names[i], t, v) for i, (_, t, v) in enumerate(entries)])


class Handler(BaseHTTPRequestHandler):
    worker = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("seed-endpoint: " + fmt % args + "\n")

    def reply(self, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        try:
            if self.path == "/run":
                form = json.loads(self.body())
                container = by_position(base64.b64decode(form["data"]), self.worker)
                view = json.loads(worker_call(f"{self.worker}/v1/jobs", method="POST", body=container, ctype=CONTAINER))
                jid = view["id"]
                return self.reply(202, {"status": "pending", "id": jid, "poll_url": f"/status/{jid}"})
            if self.path.startswith("/status/") and self.path.endswith("/cancel"):
                self.body()
                jid = self.path[len("/status/") : -len("/cancel")]
                worker_call(f"{self.worker}/v1/jobs/{jid}/cancel", method="POST", body=b"")
                return self.reply(200, {"status": "cancelling"})
            self.reply(404, {"error": "not found"})
        except urllib.error.HTTPError as e:
            self.reply(e.code, {"error": e.read().decode(errors="replace")})

    def do_GET(self) -> None:
        if not self.path.startswith("/status/"):
            return self.reply(404, {"error": "not found"})
        jid = self.path[len("/status/") :]
        try:
            view = json.loads(worker_call(f"{self.worker}/v1/jobs/{jid}"))
        except urllib.error.HTTPError as e:
            return self.reply(e.code, {"error": e.read().decode(errors="replace")})
        fraction = float((view.get("progress") or {}).get("fraction") or 0.0)
        doc: dict[str, object] = {
            "status": SYNONYMS.get(view["status"], view["status"]),
            # Alternate the progress shapes the seed's peers use.
            "progress": {"percent": round(fraction * 100, 3)} if fraction < 0.5 else fraction,
            "poll_url": f"/status/{jid}",
        }
        if view["status"] == "succeeded":
            data = worker_call(f"{self.worker}/v1/jobs/{jid}/result")
            doc["result"] = {"format": "comfy-remote/1+base64", "data": base64.b64encode(data).decode()}
        if view.get("error"):
            doc["error"] = view["error"].get("message", "failed")
        self.reply(200, doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", required=True, help="base URL of a comfy-remote worker")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    Handler.worker = args.worker.rstrip("/")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
