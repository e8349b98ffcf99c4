#!/usr/bin/env bash
# The efficacy campaign replay against the release binary (loopback only,
# about 10 s): what share of attacker guesses reach the STS, and what
# happens to legitimate sign-ins. See replay.py's header and README
# "Efficacy against sprays".
#
#   benches/campaign/run.sh [--seed N] [--workers N] [--sts-ms N] [--scale small|full] [--json]
#
# Exit status: 0 targets met (< 1 % of attacker guesses reach the STS,
# 0 legitimate sign-ins refused), 1 missed, 2 the replay failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p stsgate
exec timeout 300 python3 benches/campaign/replay.py --stsgate target/release/stsgate "$@"
