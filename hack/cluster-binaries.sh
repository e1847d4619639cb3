#!/usr/bin/env bash
# Builds the control-plane binaries the test harness and `dev up` run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, etcd) from pinned Go modules and caches them per version, so only the first run
# on a machine pays for the build; with --node, the real node's instead (kubelet, kube-proxy, containerd, the CNI
# plugins, CoreDNS, pause). The steps and the pinned versions live in localai_operator.devcluster.binaries
# (standard library only), so an installed package builds the same way.
# Usage: hack/cluster-binaries.sh [--node] [--print-dir]
# Env: K8S_VERSION, KWOK_VERSION, ETCD_VERSION, CONTAINERD_VERSION, CNI_PLUGINS_VERSION, COREDNS_VERSION (override
# the pins), JOBS, LOCALAI_OPERATOR_CACHE, PYTHON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root/operator${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m localai_operator.devcluster "$@"
