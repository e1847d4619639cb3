#!/usr/bin/env bash
# Packages the chart as a release publishes it: version and appVersion set to VERSION, the default
# image.repository set to IMAGE (the image the release pushed), and install.yaml rendered from that chart.
# Writes OUT_DIR/localai-operator-VERSION.tgz and OUT_DIR/install.yaml. With OCI_REPOSITORY (oci://HOST/PATH),
# also pushes the chart there and checks what users install from it: that version, appVersion VERSION and the
# image IMAGE:VERSION by default. The release workflow runs it with its registry (logged in beforehand),
# tests/e2e/test_oci_release.py with a registry on loopback, tests/unit/test_release.py without one.
# Usage: hack/release-chart.sh VERSION IMAGE OUT_DIR [OCI_REPOSITORY]
# Env: HELM_REGISTRY_FLAGS, extra flags for helm's registry calls (e.g. `--ca-file ca.crt`, `--plain-http`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=${1:?usage: $0 VERSION IMAGE OUT_DIR [OCI_REPOSITORY]}
IMAGE=${2:?usage: $0 VERSION IMAGE OUT_DIR [OCI_REPOSITORY]}
OUT=${3:?usage: $0 VERSION IMAGE OUT_DIR [OCI_REPOSITORY]}
REPOSITORY=${4:-}
read -r -a REGISTRY_FLAGS <<< "${HELM_REGISTRY_FLAGS:-}"
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
chart="$OUT/localai-operator-$VERSION.tgz"

if [[ -n $REPOSITORY ]]; then
  [[ $REPOSITORY == oci://* ]] || { echo "OCI_REPOSITORY must start with oci://, not $REPOSITORY" >&2; exit 1; }
  "$HELM" push "$chart" "$REPOSITORY" "${REGISTRY_FLAGS[@]}" >&2
  # What `helm install $REPOSITORY/localai-operator --version $VERSION` gets, read back from the registry.
  published="$REPOSITORY/localai-operator"
  shown=$("$HELM" show chart "$published" --version "$VERSION" "${REGISTRY_FLAGS[@]}")
  grep -qx "version: $VERSION" <<< "$shown" && grep -qx "appVersion: \"\?$VERSION\"\?" <<< "$shown" \
    || { echo "$published $VERSION shows another version or appVersion:" >&2; echo "$shown" >&2; exit 1; }
  "$HELM" template localai-operator "$published" --version "$VERSION" "${REGISTRY_FLAGS[@]}" \
    | grep -q "image: \"$IMAGE:$VERSION\"" \
    || { echo "$published $VERSION does not default to the image $IMAGE:$VERSION" >&2; exit 1; }
fi
echo "$chart"
