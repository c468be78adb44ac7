#!/usr/bin/env bash
# What an install from the package registry gets, checked from the files the
# release workflow builds, here (slow: several release builds; its output is
# committed as docs/dist-check.txt):
#
# 1. the Linux wheels, linked with zig against glibc 2.28
#    (`--compatibility manylinux_2_28`), are what auditwheel calls
#    manylinux_2_28 or older;
# 2. a fresh virtualenv installs them and runs `comfy-remote` (and `serve`,
#    handed over to comfy-remote-server);
# 3. a fresh virtualenv installs both sdists (building them with cargo, as
#    the Modal image's sdist stage does) and runs the same.
#
# Needs: maturin, ziglang, auditwheel (pip), Rust. Usage:
#   scripts/check_dist.sh [VENV]     (VENV: where those tools are; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-${COMFY_REMOTE_VENV:-.venv}}
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
OUT=${CARGO_TARGET_DIR:-target}/dist-check
rm -rf "$OUT" && mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "versions"
"$PY" -m maturin --version
"$PY" -m ziglang version | sed 's/^/zig /'
"$PY" -m auditwheel --version

step "manylinux_2_28 wheels (zig)"
# The artist's package is configured by pyproject.toml (its manifest is
# crates/py); the server's by its own manifest. A failed build stops here.
for m in "" crates/server/Cargo.toml; do
  log="$OUT/build.log"
  if ! "$PY" -m maturin build --release --locked --zig --target x86_64-unknown-linux-gnu \
      --compatibility manylinux_2_28 ${m:+-m "$m"} --out "$OUT/wheels" >"$log" 2>&1; then
    tail -20 "$log"; echo "error: maturin build ${m:-(pyproject.toml)} failed"; exit 1
  fi
  grep -E 'Built wheel' "$log" || true
done
for w in "$OUT"/wheels/*.whl; do
  "$PY" -m auditwheel show "$w" | tr -s ' \n' ' ' | sed 's/$/\n/'
  "$PY" -m auditwheel show "$w" | tr -s ' \n' ' ' \
    | grep -Eq 'platform tag: "manylinux_2_(1[0-9]|2[0-8])_x86_64"' \
    || { echo "error: $w is not manylinux_2_28 or older"; exit 1; }
done
echo "ok: every Linux wheel is manylinux_2_28 or older"

smoke() { # venv
  "$1/bin/comfy-remote" --version
  "$1/bin/comfy-remote" serve --help | head -n 1
  "$1/bin/python" -c "import comfy_remote, comfy_remote.codec; print('import comfy_remote', comfy_remote.__version__)"
}

step "a fresh virtualenv installs the wheels"
python3 -m venv "$OUT/venv-wheel"
"$OUT/venv-wheel/bin/python" -m pip install -q --disable-pip-version-check "$OUT"/wheels/*.whl
smoke "$OUT/venv-wheel"

step "a fresh virtualenv installs the sdists (built with cargo)"
"$PY" -m maturin sdist --out "$OUT/sdist" 2>&1 | grep -E 'sdist' || true
"$PY" -m maturin sdist -m crates/server/Cargo.toml --out "$OUT/sdist" 2>&1 | grep -E 'sdist' || true
ls "$OUT/sdist"
python3 -m venv "$OUT/venv-sdist"
"$OUT/venv-sdist/bin/python" -m pip install -q --disable-pip-version-check "$OUT"/sdist/*.tar.gz
smoke "$OUT/venv-sdist"
echo
echo "ok: wheels and sdists install in fresh virtualenvs"
