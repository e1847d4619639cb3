#!/usr/bin/env bash
# Installs the Debian packages the harness's real node needs (runc, iptables, iproute2, util-linux's unshare and
# nsenter, and a C compiler with a static libc for the pause binary), and puts Debian's static busybox in the
# cache for the tests' tiny images (downloaded with `apt-get download`, not installed: busybox-static conflicts
# with the busybox an initramfs may need). Idempotent: a second run checks and exits.
# Without root it installs nothing, says so, and exits 0: the real node is then unavailable, and the tests that
# need it fail naming the reason.
# Env: LOCALAI_OPERATOR_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/localai-operator).
set -euo pipefail

PACKAGES=(runc iptables iproute2 util-linux gcc libc6-dev)
CACHE=${LOCALAI_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/localai-operator}
BUSYBOX=$CACHE/debian/busybox

log() { printf '[node-packages] %s\n' "$*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  if ((EUID != 0)); then
    log "not root: not installing ${missing[*]}; the real node will be unavailable (run \`make node-packages\` as root)"
  else
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update only when the install needs it.
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
  fi
fi

# Services between pods on one bridge need bridged packets to pass iptables (kube-proxy's DNAT): br_netfilter.
# Built into some kernels (then there is nothing to load); a module elsewhere, which nothing loads by itself.
# containerd's overlayfs snapshotter likewise needs overlay listed in /proc/filesystems before the first mount.
if ((EUID == 0)) && command -v modprobe >/dev/null; then
  if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    log "loading the br_netfilter kernel module"
    modprobe br_netfilter || log "could not load br_netfilter; the real node will be unavailable"
  fi
  if ! grep -qw overlay /proc/filesystems; then
    log "loading the overlay kernel module"
    modprobe overlay || log "could not load overlay; the real node will be unavailable"
  fi
fi

if [[ ! -x $BUSYBOX ]]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt-get download fetches as the _apt user when it can
  trap 'rm -rf "$tmp"' EXIT
  log "downloading Debian's busybox-static into $BUSYBOX"
  (cd "$tmp" && { apt-get download -q busybox-static >&2 || { ((EUID == 0)) && apt-get update -q >&2 && apt-get download -q busybox-static >&2; }; })
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/root"
  mkdir -p "$(dirname "$BUSYBOX")"
  cp "$tmp/root/bin/busybox" "$BUSYBOX.tmp"
  mv "$BUSYBOX.tmp" "$BUSYBOX"
fi
log "ready (busybox: $BUSYBOX)"
