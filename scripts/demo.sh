#!/usr/bin/env bash
# The main job, end to end on one machine: build the comfy-remote binary and
# wheel, find (or provision) ComfyUI, prepare its Python environment, start a
# worker in front of it with examples/invert_blur.json, submit
# examples/input.png with `comfy-remote run`, write the result to ./out/, and
# stop everything.
#
# ComfyUI: $COMFYUI_DIR when set; else a clone of upstream ComfyUI at a pinned
# tag in ~/.cache/comfy-remote/comfyui (clone source: $COMFY_REMOTE_COMFYUI_REPO).
# `demo.sh --provision-only` stops after finding/provisioning ComfyUI and
# prints its directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COMFYUI_TAG=${COMFY_REMOTE_COMFYUI_TAG:-v0.33.0}
COMFYUI_REPO=${COMFY_REMOTE_COMFYUI_REPO:-https://github.com/comfyanonymous/ComfyUI.git}
CACHE=${COMFY_REMOTE_CACHE:-$HOME/.cache/comfy-remote}
OUT=$ROOT/out
step() { printf '==> %s\n' "$*" >&2; }

provision_comfyui() {
  if [ -n "${COMFYUI_DIR:-}" ]; then
    if [ ! -f "$COMFYUI_DIR/main.py" ]; then
      echo "error: COMFYUI_DIR=$COMFYUI_DIR has no main.py; point it at a ComfyUI checkout" >&2
      exit 1
    fi
    return
  fi
  COMFYUI_DIR=$CACHE/comfyui
  if [ -f "$COMFYUI_DIR/main.py" ]; then
    return
  fi
  step "cloning ComfyUI $COMFYUI_TAG from $COMFYUI_REPO into $COMFYUI_DIR"
  mkdir -p "$CACHE"
  local tmp
  tmp=$(mktemp -d "$CACHE/comfyui.clone.XXXXXX")
  if ! git clone --quiet --depth 1 --branch "$COMFYUI_TAG" "$COMFYUI_REPO" "$tmp/ComfyUI" >/dev/null 2>&1; then
    rm -rf "$tmp"
    echo "error: could not clone ComfyUI $COMFYUI_TAG from $COMFYUI_REPO; set COMFYUI_DIR=/path/to/ComfyUI (an existing checkout) and run again" >&2
    exit 1
  fi
  rm -rf "$COMFYUI_DIR"
  mv "$tmp/ComfyUI" "$COMFYUI_DIR"
  rm -rf "$tmp"
}

provision_comfyui
if [ "${1:-}" = "--provision-only" ]; then
  echo "$COMFYUI_DIR"
  exit 0
fi

step "building the comfy-remote binary and wheel"
cargo build --release --locked -p comfy-remote-cli >&2
VENV=${COMFY_REMOTE_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/maturin" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.7,<2" >&2
fi
TARGET=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
"$VENV/bin/maturin" build --release --locked --out "$TARGET/wheels" >&2
WHEEL=$(ls -t "$TARGET"/wheels/comfy_remote-*.whl | head -n 1)
BIN=$TARGET/release/comfy-remote

step "preparing ComfyUI's Python environment (cached after the first run)"
PY=$(python3 scripts/comfyui_env.py --comfyui "$COMFYUI_DIR" --install-wheel "$WHEEL")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/comfy-remote-demo.XXXXXX")
HOME_DIR=$WORK/comfyui-home
mkdir -p "$HOME_DIR"/{custom_nodes,input,output,temp,user,models}
ln -s "$ROOT" "$HOME_DIR/custom_nodes/comfy-remote"
COMFY_ARGS=(--comfyui-arg=--base-directory="$HOME_DIR" --comfyui-arg=--database-url="sqlite:///$HOME_DIR/comfyui.db")
if ! command -v nvidia-smi >/dev/null 2>&1; then
  COMFY_ARGS+=(--comfyui-arg=--cpu)
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

step "starting the worker on $URL (it starts and supervises ComfyUI)"
"$BIN" serve --workflow examples/invert_blur.json --comfyui "$COMFYUI_DIR" --python "$PY" \
  --listen "127.0.0.1:$PORT" --spool "$WORK/spool" "${COMFY_ARGS[@]}" 2>"$WORK/worker.log" &
WORKER=$!
cleanup() {
  if kill -0 "$WORKER" 2>/dev/null; then
    kill -TERM "$WORKER" 2>/dev/null || true
    wait "$WORKER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for _ in $(seq 1 1200); do
  if curl -fsS "$URL/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$WORKER" 2>/dev/null; then
    echo "error: the worker exited; its log:" >&2
    tail -n 40 "$WORK/worker.log" >&2
    exit 1
  fi
  sleep 0.5
done
curl -fsS "$URL/readyz" >/dev/null || { echo "error: the worker did not become ready; log: $WORK/worker.log" >&2; exit 1; }

step "submitting examples/input.png"
"$BIN" run "$URL" --input image=examples/input.png --out "$OUT"
step "done: the result is in $OUT"
