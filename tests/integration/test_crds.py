"""The CRDs on the real API server: samples and rendered objects pass a server-side dry run; bad input is
rejected by the schema with a message that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localai_operator.render.offline import render_paths
from tests.helpers import ClusterAccess, kubectl
from tests.operator_process import install_crds

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


@pytest.fixture(scope="module")
def crds_installed(cluster: ClusterAccess) -> ClusterAccess:
    install_crds(cluster.api)
    return cluster


def _in_namespace(text: str, namespace: str) -> str:
    docs = [d for d in yaml.safe_load_all(text) if d and d.get("kind") != "Namespace"]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs)


def test_crds_pass_a_server_side_dry_run(crds_installed: ClusterAccess) -> None:
    result = kubectl(crds_installed, "apply", "--dry-run=server", "-f", str(ROOT / "crds"))
    assert result.returncode == 0, result.stderr


def test_samples_and_everything_rendered_from_them_pass_a_server_side_dry_run(
    crds_installed: ClusterAccess, namespace: str
) -> None:
    samples = "".join(
        f"---\n{p.read_text()}" for p in sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
    )
    rendered = render_paths([str(ROOT / "manifests" / "samples")])
    for text in (samples, rendered):
        result = kubectl(
            crds_installed, "apply", "--dry-run=server", "-f", "-", input=_in_namespace(text, namespace)
        )
        assert result.returncode == 0, result.stderr


def test_there_are_at_least_ten_invalid_examples() -> None:
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_custom_resources_are_rejected_with_a_message_naming_the_field(
    crds_installed: ClusterAccess, namespace: str, path: Path
) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    result = kubectl(crds_installed, "apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert result.returncode != 0, f"{path.name} was accepted"
    assert expected in result.stderr, result.stderr
