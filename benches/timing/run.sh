#!/usr/bin/env bash
# Refusal timing beside real failed sign-ins (blocked.delay = "auto").
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p stsgate
exec python3 benches/timing/refusal_delay.py "$@"
