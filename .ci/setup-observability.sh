#!/usr/bin/env bash
# Tools for the observability tests (idempotent, quiet; tests/observability uses them):
#   - typescript + @grafana/schema (npm) in .tools/node/, for `tsc --strict --noEmit` on the
#     Grafana dashboard (helm/tidetune/files/dashboard.json);
#   - Debian's `prometheus` package (prometheus + promtool), for the alert rule tests and the
#     lab test that scrapes the operator. The package's service is never left running.
#   bash .ci/setup-observability.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TS_VERSION=${TIDETUNE_TS_VERSION:-5.9}                      # tsc 5.9.x
SCHEMA_VERSION=${TIDETUNE_GRAFANA_SCHEMA_VERSION:-12.4}     # @grafana/schema 12.4.x
NODE_DIR=.tools/node
LOG=$(mktemp -t setup-observability.XXXXXX)
trap 'rm -f "$LOG"' EXIT

die() {
  if [ -s "$LOG" ]; then tail -n 20 "$LOG" >&2; fi
  echo "setup-observability: $*" >&2
  exit 1
}

# ---- npm: typescript and @grafana/schema ---------------------------------------------------
if [ ! -x "$NODE_DIR/node_modules/.bin/tsc" ] \
   || [ ! -f "$NODE_DIR/node_modules/@grafana/schema/package.json" ]; then
  command -v npm >/dev/null 2>&1 \
    || die "npm not found: install Node.js >= 18 with npm (Debian: apt-get install -y nodejs npm), then run 'bash .ci/setup-observability.sh' again"
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] \
    || printf '{\n  "name": "tidetune-tools",\n  "private": true\n}\n' >"$NODE_DIR/package.json"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error \
      "typescript@~$TS_VERSION" "@grafana/schema@~$SCHEMA_VERSION" >"$LOG" 2>&1 \
    || die "npm install of typescript and @grafana/schema failed (is the npm registry reachable?)"
  [ -x "$NODE_DIR/node_modules/.bin/tsc" ] || die "tsc missing in $NODE_DIR after npm install"
fi

# ---- apt: prometheus + promtool ------------------------------------------------------------
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 \
  || die "apt-get not found: install Prometheus by hand so that prometheus and promtool are on PATH"
SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "installing Debian's prometheus package needs root or sudo"
  SUDO=sudo
fi
# Keep the package's postinst from starting a Prometheus service: a policy-rc.d that says
# no (removed again afterwards, if we placed it); anything started anyway is stopped below.
POLICY=/usr/sbin/policy-rc.d
placed_policy=
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  placed_policy=1
fi
cleanup() {
  rm -f "$LOG"
  if [ -n "$placed_policy" ]; then $SUDO rm -f "$POLICY"; fi
}
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >"$LOG" 2>&1 \
  || die "apt-get update failed (are Debian's package mirrors reachable?)"
$SUDO apt-get install -y -qq --no-install-recommends prometheus >"$LOG" 2>&1 \
  || die "apt-get install prometheus failed"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null 2>&1 || die "promtool is not on PATH after installing prometheus"
command -v prometheus >/dev/null 2>&1 || die "prometheus is not on PATH after installing it"
