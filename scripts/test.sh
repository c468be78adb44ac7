#!/usr/bin/env bash
# Runs every test of comfy-remote from a fresh machine.
#
# Rust: fmt, clippy (-D warnings), unit/integration/property tests, the fuzz
# target compile check. Python: builds the wheel with maturin, installs it in
# a test virtualenv with torch, runs pytest (codec, nodes, deploy, and the
# end-to-end tests against a real ComfyUI when COMFYUI_DIR is set; without it
# they print one SKIPPED line naming the variable).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${COMFY_REMOTE_VENV:-.venv}
TARGET=${CARGO_TARGET_DIR:-target}
step() { printf '\n==> %s\n' "$*" >&2; }

step "python test environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-test.txt

# The UI test drives Debian's Chromium headless; install it when we can.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  step "install chromium (UI test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the UI test will be skipped" >&2
fi

step "actionlint (.github/workflows)"
"$VENV/bin/actionlint" .github/workflows/*.yml
step "the native module's crates on every target (cargo tree)"
scripts/check_targets.sh

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
if [ -f fuzz/Cargo.toml ]; then
  step "fuzz targets compile"
  cargo check --manifest-path fuzz/Cargo.toml --bins
fi

step "build the comfy-remote binary and wheels (release)"
cargo build --release --locked -p comfy-remote-cli -p comfy-remote-netsim
rm -rf "$TARGET/wheels"
# The package an artist installs (nodes, native module, run/deploy) and the
# server (comfy-remote-server, which `comfy-remote serve` hands over to).
"$VENV/bin/maturin" build --release --locked --out "$TARGET/wheels" >&2
"$VENV/bin/maturin" build --release --locked -m crates/server/Cargo.toml --out "$TARGET/wheels" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$TARGET"/wheels/*.whl

step "pytest"
export COMFY_REMOTE_BIN
COMFY_REMOTE_BIN=$(cd "$TARGET" && pwd)/release/comfy-remote
export COMFY_REMOTE_WHEEL
COMFY_REMOTE_WHEEL=$(ls "$(cd "$TARGET" && pwd)"/wheels/comfy_remote-*.whl | head -n 1)
"$VENV/bin/python" -m pytest "$@"
