#!/usr/bin/env bash
# Remakes docs/admin-ui.png, the README's picture of the admin page: runs the
# admin page's main browser test, which drives the page through every view
# and action, and keeps its screenshot. Needs chromium and chromium-driver
# (Debian packages; scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
STSGATE_UI_SCREENSHOT="$PWD/docs/admin-ui.png" \
  cargo test -p stsgate-tests --test ui -- --exact sign_in_views_and_every_action
echo "wrote docs/admin-ui.png"
