#!/usr/bin/env bash
# Installs the Debian packages that build the project's images without a Docker engine: mmdebstrap (the base
# root filesystems), buildah (the Dockerfile builds, chroot isolation, no daemon), skopeo (OCI archives) and patch
# (LocalAI's source archive is patched before its build; Go, Node.js and npm come with the machine).
# Idempotent: a second run checks that the packages are installed and returns. Needs root and Debian's apt;
# CI runs as root on a fresh machine. Where apt is absent, it says what to install.
set -euo pipefail

PACKAGES=(buildah mmdebstrap skopeo uidmap patch)

log() { printf '[image-tools] %s\n' "$*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "install ${missing[*]} with your distribution's package manager (apt-get not found)"
  exit 1
fi
if ((EUID != 0)); then
  log "installing ${missing[*]} needs root: run \`sudo $0\`"
  exit 1
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
