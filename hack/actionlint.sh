#!/usr/bin/env bash
# Checks the GitHub Actions workflows with actionlint (the workflows cannot run here, so this is their test).
# actionlint is built once from its pinned Go module into the project-local tool dir (.tools/bin); a second run
# only checks the version. shellcheck integration is off so that every machine reports the same findings.
# Usage: hack/actionlint.sh [workflow files...]   (default: .github/workflows/*.y*ml)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_BIN=${LOCALAI_OPERATOR_TOOLS:-$ROOT/.tools/bin}
ACTIONLINT_VERSION=v1.7.12

log() { printf '[actionlint] %s\n' "$*" >&2; }

if ! { [[ -x $TOOLS_BIN/actionlint ]] && [[ $("$TOOLS_BIN/actionlint" -version | head -n1) == "${ACTIONLINT_VERSION#v}" ]]; }; then
  command -v go >/dev/null || { log "Go is required to build actionlint $ACTIONLINT_VERSION"; exit 1; }
  log "building github.com/rhysd/actionlint $ACTIONLINT_VERSION into $TOOLS_BIN"
  mkdir -p "$TOOLS_BIN"
  GOBIN=$TOOLS_BIN GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "-s -w -X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION#v}" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi

cd "$ROOT"
if (($# == 0)); then
  set -- .github/workflows/*.y*ml
fi
exec "$TOOLS_BIN/actionlint" -shellcheck= -pyflakes= "$@"
