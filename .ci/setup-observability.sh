#!/usr/bin/env bash
# Tools for the observability tests (idempotent, quiet; tests/observability uses them):
#   - typescript + @grafana/schema (npm) in .tools/node/, for `tsc --strict --noEmit` on the
#     Grafana dashboard (helm/tidetune/files/dashboard.json);
#   - Debian's `prometheus` package for promtool (the alert rule tests). The package's
#     service is never left running;
#   - .tools/bin/prometheus built from its Go module (tests/lab/go/prometheus) with Kubernetes
#     service discovery, which Debian's build leaves out, for the lab test that scrapes the
#     operator as a cluster's Prometheus does (rebuilt only when that module changes).
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

# ---- go: prometheus with Kubernetes service discovery only ---------------------------------
PROM_MODULE=tests/lab/go/prometheus
PROM_STAMP=.tools/bin/.stamp-prometheus
PROM_VERSION=3.12.0  # the module's github.com/prometheus/prometheus v0.312.0
prom_stamp=$(cat "$PROM_MODULE/go.mod" "$PROM_MODULE/go.sum" "$0" | sha256sum | cut -c1-16)
if [ ! -x .tools/bin/prometheus ] || [ "$(cat "$PROM_STAMP" 2>/dev/null)" != "$prom_stamp" ]; then
  command -v go >/dev/null 2>&1 || die "Go is missing (go1.25 or newer): it builds .tools/bin/prometheus"
  mkdir -p .tools/bin
  bin_dir=$(cd .tools/bin && pwd)
  echo "setup-observability: building prometheus (Kubernetes discovery only) — cold, a few minutes" >&2
  (cd "$PROM_MODULE" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go build -trimpath \
      -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROM_VERSION" -o "$bin_dir/" \
      github.com/prometheus/prometheus/cmd/prometheus) >"$LOG" 2>&1 \
    || die "go build of prometheus failed (is the Go module proxy reachable?)"
  echo "$prom_stamp" >"$PROM_STAMP"
fi

# ---- apt: promtool -------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
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
