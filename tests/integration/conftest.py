"""The operator for the integration tests: CRDs installed once, one `localai-operator run -A` per session; and the
images with what fetch-models makes of the real-node sample, for the image and LocalAI conformance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_operator.devcluster import images
from tests.helpers import ClusterAccess
from tests.integration.real_localai import fetch_models, mirror_serving, render
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


# The images `make images` builds, and what the pool's init container makes of the real-node sample with them.
# Session-scoped so that test_images.py and test_localai.py (the LocalAI conformance tier) build and fetch once.


@pytest.fixture(scope="session")
def operator_image() -> images.Image:
    return images.build("operator")


@pytest.fixture(scope="session")
def localai_image() -> images.Image:
    return images.build("localai")


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model-mirror image's program on a loopback port; yields its base URL."""
    with mirror_serving(tmp_path_factory.mktemp("mirror") / "mirror.log") as base:
        yield base


@pytest.fixture(scope="session")
def fetched(operator_image: images.Image, mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models directory fetch-models made for the real-node sample pool (its rendered ConfigMap)."""
    code, models_dir, log = fetch_models(
        operator_image, mirror, render().config, tmp_path_factory.mktemp("fetch")
    )
    assert code == 0, log
    return models_dir
