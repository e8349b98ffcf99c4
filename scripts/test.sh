#!/usr/bin/env bash
# Runs stsgate's whole test suite, after installing what the tests need on
# a Debian machine: promtool (the metrics are checked with the real one),
# redis-server (the shared-state tests start their own), chromium and
# chromium-driver (the admin page is tested in a real browser).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The directory tests start their own OpenLDAP slapd (memberof overlay), loaded with ldapmodify.
[ -x /usr/sbin/slapd ] || command -v slapd >/dev/null 2>&1 || missing+=(slapd)
command -v ldapmodify >/dev/null 2>&1 || missing+=(ldap-utils)
# The admin page's tests drive a real headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# MSAL Python: tests/tests/msal.rs sends sign-ins with its WS-Trust request builder.
# (pip where it may install; Debian's python3-msal where pip is not allowed to.)
if ! python3 -c 'import msal' 2>/dev/null; then
  python3 -m pip install --quiet msal 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages msal 2>/dev/null \
    || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo";
         DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-msal >/dev/null; }
fi

# The fuzz targets must keep building (fuzzing itself: fuzz/run.sh).
cargo build --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check
cargo test --workspace --all-targets
