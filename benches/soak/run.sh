#!/usr/bin/env bash
# Soak and chaos: two stsgate instances sharing a real Redis, steady mixed
# traffic (HTTP/1.1 and HTTP/2 over TLS) and a chaos loop, on loopback.
#
#   benches/soak/run.sh                      10 minutes
#   SOAK_SECONDS=3600 benches/soak/run.sh    one hour
#   STSGATE_BIN=/path/to/stsgate benches/soak/run.sh   a binary built elsewhere
#   SOAK_REPORT=file.md   where the markdown report goes (default: the work dir)
#   SOAK_WORK=dir         keep the work dir there (default: a temporary one, kept)
#   SOAK_RATE=40 SOAK_SEED=2026   steady requests a second; the seed
#
# What runs and what the report holds: benches/soak/soak.py's header and
# BENCHMARKS.md, "Reliability". The binary is copied before the run, so a
# rebuild of target/ during the run does not touch it. Exit 0: every target
# met; 1: one missed; 2: the run failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${SOAK_SECONDS:-600}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The driver speaks HTTP/2 through Debian's python3-h2 (hyper's h2 library for Python).
/usr/bin/python3 -c 'import h2' >/dev/null 2>&1 || need+=(python3-h2)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=${SOAK_WORK:-$(mktemp -d /tmp/stsgate-soak.XXXXXX)}
mkdir -p "$work"
if [ -n "${STSGATE_BIN:-}" ]; then
  src=$STSGATE_BIN
else
  cargo build --release -q -p stsgate
  src=target/release/stsgate
fi
cp "$src" "$work/stsgate"
note="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+local changes')"
[ -n "${STSGATE_BIN:-}" ] && note="$STSGATE_BIN"
note=${SOAK_BINARY_NOTE:-$note}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "soak: $seconds s, work dir $work (kept: logs, alerts, every request)"
/usr/bin/python3 benches/soak/soak.py --stsgate "$work/stsgate" --binary-note "$note" --work "$work" \
  --seconds "$seconds" --rate "${SOAK_RATE:-40}" --seed "${SOAK_SEED:-2026}" \
  --report "${SOAK_REPORT:-$work/report.md}"
