#!/usr/bin/env bash
# Builds kube-router (NetworkPolicy enforcement for the local cluster) from the
# Go module proxy into OUT_DIR. Like hack/build-k8s.sh it keeps the binary in a
# cache outside the work tree ($MODELGUARD_CACHE, default ~/.cache/modelguard),
# so a fresh clone on the same machine copies it instead of rebuilding.
#
# Usage: hack/local-cluster/build-kube-router.sh VERSION OUT_DIR
set -euo pipefail

version=${1:?usage: build-kube-router.sh VERSION OUT_DIR}
out=${2:?usage: build-kube-router.sh VERSION OUT_DIR}
cache=${MODELGUARD_CACHE:-$HOME/.cache/modelguard}/kube-router/$version
mkdir -p "$out" "$cache"

if [ -x "$out/kube-router" ]; then exit 0; fi
if [ ! -x "$cache/kube-router" ]; then
  echo "Building kube-router $version from the Go module proxy (about a minute cold)" >&2
  # GOBIN installs the pinned release without touching any go.mod of ours.
  GOBIN="$cache/.tmp" CGO_ENABLED=0 GOFLAGS=-trimpath \
    go install "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$version"
  mv "$cache/.tmp/kube-router" "$cache/kube-router"
  rmdir "$cache/.tmp"
fi
cp "$cache/kube-router" "$out/kube-router.tmp" && mv "$out/kube-router.tmp" "$out/kube-router"
