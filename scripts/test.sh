#!/usr/bin/env bash
# Runs stsgate's whole test suite, after installing what the tests need on
# a Debian machine: promtool (the metrics are checked with the real one) and
# redis-server (the shared-state tests start their own).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# MSAL Python: tests/tests/msal.rs sends sign-ins with its WS-Trust request builder.
python3 -c 'import msal' 2>/dev/null || python3 -m pip install --quiet msal

# The fuzz targets must keep building (fuzzing itself: fuzz/run.sh).
cargo build --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check
cargo test --workspace --all-targets
