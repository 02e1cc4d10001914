#!/usr/bin/env bash
# Installs the Debian packages the local cluster's node needs: a container
# runtime (containerd, runc), the CNI plugins (bridge, host-local, portmap) and
# the netfilter tools kube-proxy and kube-router drive. It runs `apt-get update`
# at most once, and only when something is missing, so a warm run costs a few
# dpkg queries.
set -euo pipefail

# e2fsprogs and mount: the volumes filesystem (mkfs.ext4 -O encrypt on a loop
# device, for fscrypt).
packages=(containerd runc containernetworking-plugins iptables nftables ipset conntrack iproute2 e2fsprogs mount)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: the local cluster needs root (it runs containerd, kubelet and changes iptables)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  echo "install-deps.sh: the local cluster needs a Debian-like system with apt-get and dpkg" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0

echo "Installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends keeps out extras (e.g. criu) the node does not use.
apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's containerd package enables a system service; the harness runs its
# own containerd with its own root, state and socket, so the packaged one must
# not compete for /run/containerd or the CRI.
if command -v systemctl >/dev/null && systemctl is-enabled containerd >/dev/null 2>&1; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi
