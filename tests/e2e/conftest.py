"""Fixtures of the e2e tier. `real_stack`: the operator installed with helm from the built image and the real-node
samples Ready on the real node, built once for the whole tier (package scope) and shared by every module that asks
for it; `real` is the same with the operator installed again if a test uninstalled it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_operator.devcluster import Cluster, real_node_unavailable_reason
from tests.e2e.realstack import RealStack, install, uninstall
from tests.helpers import ClusterAccess, started_harnesses


@pytest.fixture(scope="package")
def real_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterAccess]:
    """A control plane of its own with the real node, or the cluster given with --kubeconfig (kind, where a
    labelled and tainted worker is the real node). Fails, never skips, where the real node cannot start."""
    external = request.config.getoption("--kubeconfig")
    if external:
        access = ClusterAccess.connect(Path(external).expanduser())
        yield access
        access.api.close()
        return
    reason = real_node_unavailable_reason()
    if reason is not None:
        pytest.fail(f"the e2e tier runs on the real node, which this machine cannot start: {reason}")
    harness = Cluster.start(real_node=True)
    started_harnesses.append(harness)
    undo = harness.stop_on_exit()
    try:
        access = ClusterAccess.connect(harness.kubeconfig, harness)
        yield access
        access.api.close()
    finally:
        try:
            harness.stop()
        finally:
            undo()


@pytest.fixture(scope="package")
def real_stack(real_cluster: ClusterAccess) -> Iterator[RealStack]:
    installed = install(real_cluster)
    yield installed
    if real_cluster.harness is None:  # a shared cluster: leave it as we found it
        uninstall(installed)


@pytest.fixture
def real(real_stack: RealStack) -> RealStack:
    real_stack.ensure_operator()
    return real_stack
