#!/usr/bin/env bash
# Runs stsgate's fuzz targets for a bounded time each.
#
#   fuzz/run.sh                      every target, 60 s each
#   fuzz/run.sh ip_notation config   those targets
#   FUZZ_SECONDS=600 fuzz/run.sh     longer
#
# Seeds from fuzz/seeds/<target>/ are copied into fuzz/corpus/<target>/
# (gitignored), which keeps what libFuzzer finds between runs. Crashes land in
# fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address). This machine
# has the stable toolchain only, so RUSTC_BOOTSTRAP=1 lets stable rustc
# accept them (set it to 0 beforehand to use a nightly toolchain instead).
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
all_targets=(rule_file ip_notation forwarded_header config wstrust_username wstrust_differential wstrust_answer path_normalize state_records signin_form alert_event)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it" >&2
    cargo install cargo-fuzz --locked
fi
if [ "${RUSTC_BOOTSTRAP:-}" != "0" ]; then
    export RUSTC_BOOTSTRAP=1
else
    unset RUSTC_BOOTSTRAP
fi

# Build first, so that the time limit is fuzzing time. Cargo caches rustc's
# answers in target/.rustc_info.json without regard to RUSTC_BOOTSTRAP: a
# build once tried without it keeps failing until that cache is dropped.
for t in "${targets[@]}"; do
    if ! cargo fuzz build "$t" 2>/dev/null; then
        rm -f target/.rustc_info.json
        cargo fuzz build "$t"
    fi
done

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ -d "seeds/$t" ]; then
        cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    fi
    echo "== $t: ${seconds}s" >&2
    if ! cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -max_len=16384 -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "findings in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "no findings in: ${targets[*]}" >&2
