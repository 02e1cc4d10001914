#!/usr/bin/env bash
# Builds one of the local cluster's add-ons (CoreDNS, Kueue) from the Go module
# proxy, at the version its tools module pins, into OUT_DIR/VERSION/NAME. Like
# hack/build-k8s.sh it keeps the binary in a cache outside the work tree
# ($MODELGUARD_CACHE, default ~/.cache/modelguard), keyed by name and version,
# so a fresh clone on the same machine copies it instead of rebuilding.
#
# Usage: hack/local-cluster/build-addon.sh NAME TOOLS_MODULE_DIR MODULE PACKAGE VERSION OUT_DIR
#   e.g. build-addon.sh coredns hack/tools/cluster github.com/coredns/coredns github.com/coredns/coredns v1.15.0 bin/coredns
set -euo pipefail

name=${1:?usage: build-addon.sh NAME TOOLS_MODULE_DIR MODULE PACKAGE VERSION OUT_DIR}
tools=${2:?}
module=${3:?}
pkg=${4:?}
version=${5:?}
out=${6:?}/$version
cache=${MODELGUARD_CACHE:-$HOME/.cache/modelguard}/$name/$version

if [ -x "$out/$name" ]; then exit 0; fi
pinned=$(cd "$tools" && go list -m -f '{{.Version}}' "$module")
if [ "$pinned" != "$version" ]; then
  echo "build-addon.sh: $tools/go.mod pins $module $pinned, but $version was asked for; update both together" >&2
  exit 1
fi
mkdir -p "$out" "$cache"
if [ ! -x "$cache/$name" ]; then
  echo "Building $name $version from the Go module proxy (a few minutes cold on 2 cores)" >&2
  began=$(date +%s)
  (cd "$tools" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$cache/$name.tmp" "$pkg")
  mv "$cache/$name.tmp" "$cache/$name"
  echo "  built $name $version in $(( $(date +%s) - began ))s" >&2
fi
cp "$cache/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
