#!/usr/bin/env bash
# Install Debian's `chromium` package (idempotent, quiet). The report test
# (tests/tidetune/jobs/test_report_browser.py) opens `tidetune report`'s page in headless
# Chromium and takes a screenshot.
#   bash .ci/setup-chromium.sh
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 \
  || { echo "setup-chromium: apt-get not found: install Chromium so that 'chromium' is on PATH" >&2; exit 1; }
SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 \
    || { echo "setup-chromium: installing Debian's chromium package needs root or sudo" >&2; exit 1; }
  SUDO=sudo
fi
LOG=$(mktemp -t setup-chromium.XXXXXX)
trap 'rm -f "$LOG"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >"$LOG" 2>&1; then
  # a fresh machine may have no package lists yet
  $SUDO apt-get update -qq >"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; echo "setup-chromium: apt-get update failed" >&2; exit 1; }
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; echo "setup-chromium: apt-get install chromium failed" >&2; exit 1; }
fi
command -v chromium >/dev/null 2>&1 || { echo "setup-chromium: chromium is not on PATH after installing it" >&2; exit 1; }
