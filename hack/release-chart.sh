#!/usr/bin/env bash
# Packages the chart as a release publishes it: version and appVersion set to VERSION, the default
# image.repository set to IMAGE (the image the release pushed), and install.yaml rendered from that chart.
# Writes OUT_DIR/localai-operator-VERSION.tgz and OUT_DIR/install.yaml; pushes nothing (the release workflow
# does, and tests/unit/test_release.py checks the result).
# Usage: hack/release-chart.sh VERSION IMAGE OUT_DIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=${1:?usage: $0 VERSION IMAGE OUT_DIR}
IMAGE=${2:?usage: $0 VERSION IMAGE OUT_DIR}
OUT=${3:?usage: $0 VERSION IMAGE OUT_DIR}
HELM="$("$ROOT/hack/tools.sh")/helm"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/charts/localai-operator" "$work/localai-operator"
values="$work/localai-operator/values.yaml"
grep -qx '  repository: localai-operator' "$values" \
  || { echo "values.yaml has no '  repository: localai-operator' line to point at $IMAGE" >&2; exit 1; }
sed -i "s|^  repository: localai-operator$|  repository: $IMAGE|" "$values"
sed -i "s|^version: .*|version: $VERSION|; s|^appVersion: .*|appVersion: \"$VERSION\"|" "$work/localai-operator/Chart.yaml"

mkdir -p "$OUT"
"$HELM" lint --quiet "$work/localai-operator" >&2
"$HELM" package "$work/localai-operator" --destination "$OUT" >&2
"$ROOT/hack/gen-install.sh" "$OUT/install.yaml" "$work/localai-operator"
echo "$OUT/localai-operator-$VERSION.tgz"
