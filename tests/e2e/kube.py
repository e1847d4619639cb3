"""kubectl and helm for the e2e tests that bring a control plane of their own: the binaries, and one cluster's
admin kubeconfig bound to them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from localai_operator.devcluster import BinariesError, Cluster
from localai_operator.devcluster import find as find_binaries
from tests.helpers import ClusterAccess

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Kube:
    """kubectl and helm bound to one cluster's admin kubeconfig."""

    kubeconfig: Path
    kubectl_path: str
    helm_path: str

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args]
        return self._run(argv, check, timeout, input)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._run([self.helm_path, "--kubeconfig", str(self.kubeconfig), *args], check, timeout)

    def exists(self, *resource: str) -> bool:
        return self.kubectl("get", *resource, "--ignore-not-found", "-o", "name").stdout.strip() != ""

    @staticmethod
    def _run(
        argv: list[str], check: bool, timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result


def kubectl_binary() -> str:
    """KUBECTL, else the harness's own kubectl (matching its apiserver), else the one on PATH."""
    if env := os.environ.get("KUBECTL"):
        return env
    try:
        return str(find_binaries(build=False).kubectl)
    except BinariesError:  # no harness binaries: an external cluster with its own kubectl
        found = shutil.which("kubectl")
        assert found, "no kubectl: set KUBECTL or run `make cluster-binaries`"
        return found


def helm_binary() -> str:
    """helm from hack/tools.sh, as on every machine (installed there on first use)."""
    tools = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools.sh")], check=True, capture_output=True, text=True
    )
    return str(Path(tools.stdout.strip().splitlines()[-1]) / "helm")


@contextmanager
def fresh_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterAccess]:
    """A control plane of its own (no other operator watching), or the cluster given with --kubeconfig."""
    external = request.config.getoption("--kubeconfig")
    if external:
        access = ClusterAccess.connect(Path(external).expanduser())
        yield access
        access.api.close()
        return
    with Cluster.start() as harness:
        access = ClusterAccess.connect(harness.kubeconfig, harness)
        yield access
        access.api.close()
