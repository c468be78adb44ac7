#!/usr/bin/env bash
# The crates each wheel is built from, on every platform a wheel is built for.
#
#   scripts/check_targets.sh           dependency trees (cargo tree, seconds, no
#                                      toolchain for the targets needed): the
#                                      native module (comfy-remote-py) has no
#                                      Unix-only crate on Windows, no Linux-only
#                                      crate on macOS, and no worker anywhere;
#                                      the server (comfy-remote-server) likewise.
#   scripts/check_targets.sh --check   also `cargo check` of both for every
#                                      target whose Rust std is installed
#                                      (`rustup target add ...`), with zig as the
#                                      C compiler of the foreign ones (pip
#                                      install ziglang cargo-zigbuild). Slow:
#                                      its output is docs/targets-check.txt.
#
# scripts/test.sh runs the first form; the release workflow builds and tests
# natively on each platform.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(
  x86_64-unknown-linux-gnu
  aarch64-unknown-linux-gnu
  x86_64-apple-darwin
  aarch64-apple-darwin
  x86_64-pc-windows-msvc
)
# Crates that exist for Unix only (or Linux only): none may reach a build for
# a platform they do not support.
UNIX_ONLY="nix rustix signal-hook signal-hook-registry linux-raw-sys procfs users uzers termios"
LINUX_ONLY="linux-raw-sys procfs prctl inotify inotify-sys caps"

crates_of() { # package target
  cargo tree --locked -p "$1" --target "$2" -e normal --prefix none --format '{p}' \
    | awk '{print $1}' | sort -u
}

fail=0
for target in "${TARGETS[@]}"; do
  case "$target" in
    *windows*) forbidden=$UNIX_ONLY ;;
    *apple*) forbidden=$LINUX_ONLY ;;
    *) forbidden="" ;;
  esac
  for pkg in comfy-remote-py comfy-remote-server; do
    crates=$(crates_of "$pkg" "$target")
    bad=""
    for c in $forbidden; do
      if grep -qx "$c" <<<"$crates"; then bad="$bad $c"; fi
    done
    if [ "$pkg" = comfy-remote-py ] && grep -qx comfy-remote-worker <<<"$crates"; then
      bad="$bad comfy-remote-worker(the native module must not link the gateway)"
    fi
    if [ -n "$bad" ]; then
      echo "error: $pkg for $target depends on:$bad" >&2
      fail=1
    else
      echo "ok: $pkg for $target: $(wc -l <<<"$crates") crates, none platform-foreign"
    fi
  done
done
[ "$fail" = 0 ] || exit 1
[ "${1:-}" = "--check" ] || exit 0

# cargo check per target. Foreign targets compile their C (ring, SQLite)
# with zig; zig has no MSVC headers, so x86_64-pc-windows-msvc is checked as
# x86_64-pc-windows-gnu here (the same cfg(windows) code) and natively by
# the release workflow.
installed=$(rustup target list --installed)
host=$(rustc -vV | sed -n 's/^host: //p')
for target in "${TARGETS[@]}" x86_64-pc-windows-gnu; do
  [ "$target" = x86_64-pc-windows-msvc ] && { echo "skip: $target (no MSVC headers here; x86_64-pc-windows-gnu stands in)"; continue; }
  if ! grep -qx "$target" <<<"$installed"; then
    echo "skip: $target (rustup target add $target)"
    continue
  fi
  if [ "$target" = "$host" ]; then
    cargo=(cargo)
  else
    command -v cargo-zigbuild >/dev/null || { echo "skip: $target (pip install ziglang cargo-zigbuild)"; continue; }
    cargo=(cargo-zigbuild)
  fi
  if "${cargo[@]}" clippy --locked --target "$target" -p comfy-remote-py -p comfy-remote-server -- -D warnings >/dev/null 2>"/tmp/check-$target.log"; then
    echo "ok: cargo clippy -D warnings for $target (comfy-remote-py, comfy-remote-server)"
  else
    tail -20 "/tmp/check-$target.log" >&2
    echo "error: cargo clippy for $target failed (log: /tmp/check-$target.log)" >&2
    fail=1
  fi
done
exit "$fail"
