#!/usr/bin/env bash
# Build the lab's real Kubernetes parts from their Go modules into ./.tools (idempotent).
#   bash .ci/setup-kube.sh
# tests/lab/go/cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, Kueue
# tests/lab/go/kubeflow: the Kubeflow training operator v1 (PyTorchJob)
# tests/lab/go/trainer: Kubeflow Trainer v2 (TrainJob) and JobSet, which runs a TrainJob's pods
# Each module is rebuilt only when its go.mod, go.sum or this script changed (a stamp file
# records their digest), and the manifests the lab applies (CRDs, webhooks) are copied from
# the module cache into .tools/manifests. busybox-static (Debian) provides the shell and
# nslookup of the training operator's `init-pytorch` container (image alpine).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$PWD/.tools
mkdir -p "$TOOLS/bin" "$TOOLS/manifests"
command -v go >/dev/null 2>&1 || { echo "setup-kube: Go is missing (go1.26 or newer: Trainer 2.3 needs it)" >&2; exit 1; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# busybox applets for the init-pytorch container (alpine): sh, nslookup, seq, sleep …
if [ ! -x "$TOOLS/busybox/sh" ]; then
  if ! command -v busybox >/dev/null 2>&1 && [ ! -x /bin/busybox ]; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq busybox-static >/dev/null
  fi
  BB=$(command -v busybox || echo /bin/busybox)
  mkdir -p "$TOOLS/busybox"
  cp "$BB" "$TOOLS/busybox/busybox"
  for applet in $("$BB" --list); do ln -sf busybox "$TOOLS/busybox/$applet"; done
fi

K8S=v1.35.4
KUEUE=v0.17.0
KUBEFLOW=v1.9.3
TRAINER=v2.3.0
JOBSET=v0.12.0

stamp_of() { cat "$1/go.mod" "$1/go.sum" "$0" | sha256sum | cut -c1-16; }

build() {  # build MODULE_DIR NAME... (packages listed in the module's tool block, plus ./etcd)
  local dir=$1; shift
  local stamp; stamp=$(stamp_of "$dir")
  if [ "$(cat "$TOOLS/bin/.stamp-$(basename "$dir")" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  local start=$SECONDS
  echo "setup-kube: building $(basename "$dir") ($*) — cold, this takes several minutes" >&2
  local v=k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=$K8S -X $v.gitMajor=1 -X $v.gitMinor=35 -X $v.gitTreeState=clean"
  ldflags+=" -X $v.buildDate=2026-01-01T00:00:00Z"
  ldflags+=" -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE"
  ldflags+=" -X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$TOOLS/bin/" "$@")
  echo "$stamp" > "$TOOLS/bin/.stamp-$(basename "$dir")"
  echo "setup-kube: built $(basename "$dir") in $((SECONDS - start)) s" >&2
}

build tests/lab/go/cluster ./etcd k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  sigs.k8s.io/kueue/cmd/kueue
build tests/lab/go/kubeflow github.com/kubeflow/training-operator/cmd/training-operator.v1
build tests/lab/go/trainer github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager \
  sigs.k8s.io/jobset

# Manifests from the same module versions.
copy_manifests() {  # MODULE_DIR MODULE@VERSION SUBDIR DEST
  local src; src=$(cd "$1" && go list -m -f '{{.Dir}}' "${2%@*}")
  rm -rf "$TOOLS/manifests/$4" && mkdir -p "$TOOLS/manifests/$4"
  cp -r "$src/$3/." "$TOOLS/manifests/$4/" && chmod -R u+w "$TOOLS/manifests/$4"
}
copy_manifests tests/lab/go/cluster sigs.k8s.io/kueue@$KUEUE config/components kueue
copy_manifests tests/lab/go/kubeflow github.com/kubeflow/training-operator@$KUBEFLOW manifests/base kubeflow
copy_manifests tests/lab/go/trainer github.com/kubeflow/trainer/v2@$TRAINER manifests/base trainer
copy_manifests tests/lab/go/trainer sigs.k8s.io/jobset@$JOBSET config/components jobset

