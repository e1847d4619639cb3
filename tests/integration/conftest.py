"""The operator for the integration tests: CRDs installed once, one `localai-operator run -A` per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ClusterAccess
from tests.operator_process import CustomResources, OperatorProcess, install_crds


@pytest.fixture(scope="session")
def operator(cluster: ClusterAccess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(cluster.api)
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    process = OperatorProcess(cluster.kubeconfig, log).start()
    yield process
    process.stop()


@pytest.fixture
def crs(cluster: ClusterAccess, namespace: str, operator: OperatorProcess) -> CustomResources:
    return CustomResources(cluster.api, namespace)
