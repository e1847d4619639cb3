"""The kind workflow (.github/workflows/e2e-kind.yaml) runs the e2e tier as the local run does: a worker made the real
node with the harness's own label and taint, the three images built and loaded (LocalAI's the published image of the
version built locally, with its backend inside), their names where the tests look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TAINT
from localai_operator.devcluster.localai import LOCALAI_VERSION
from tests.e2e.realstack import LOCALAI_IMAGE_ENV, MIRROR_IMAGE_ENV, OPERATOR_IMAGE_ENV

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "e2e-kind.yaml"


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"]["e2e"]["steps"]
    return found


def step(name_start: str) -> dict[str, Any]:
    [found] = [s for s in steps() if s.get("name", "").startswith(name_start)]
    return found


def test_the_kind_worker_gets_the_real_nodes_label_and_taint() -> None:
    env = workflow()["env"]
    [(key, value)] = REAL_NODE_LABEL.items()
    taint = REAL_NODE_TAINT

    assert env["REAL_NODE_LABEL"] == f"{key}={value}"
    assert env["REAL_NODE_TAINT"] == f"{taint['key']}={taint['value']}:{taint['effect']}"
    labelling = step("The kind worker is the real node")["run"]
    assert 'kubectl label node "$CLUSTER-worker" "$REAL_NODE_LABEL"' in labelling
    assert 'kubectl taint node "$CLUSTER-worker" "$REAL_NODE_TAINT"' in labelling


def test_the_three_images_are_built_loaded_into_kind_and_named_for_the_e2e_tier() -> None:
    assert 'docker build -t "$IMAGE" .' in step("Build the operator image")["run"]
    mirror = step("Build the model-mirror image")["run"]
    assert "operator/localai_operator/devcluster/images/model-mirror" in mirror
    assert "--build-arg PYTHON_IMAGE=" in mirror
    assert '"$IMAGE" "$LOCALAI_IMAGE" "$MIRROR_IMAGE"' in step("Load the three images into kind")["run"]
    e2e = step("The e2e tier against kind")
    assert e2e["env"][OPERATOR_IMAGE_ENV] == "${{ env.IMAGE }}"
    assert e2e["env"][LOCALAI_IMAGE_ENV] == "${{ env.LOCALAI_IMAGE }}"
    assert e2e["env"][MIRROR_IMAGE_ENV] == "${{ env.MIRROR_IMAGE }}"
    assert "tests/e2e --kubeconfig" in e2e["run"]


def test_kind_runs_localais_published_image_of_the_version_built_here_with_its_backend_at_that_release() -> (
    None
):
    assert workflow()["env"]["LOCALAI_VERSION"] == LOCALAI_VERSION
    build = step("LocalAI's published CPU image")["run"]
    assert "FROM localai/localai:%s" in build
    assert "local-ai backends install --backends-path=/backends" in build
    assert "local-ai-backends:%s-cpu-llama-cpp llama-cpp" in build
    assert "latest" not in build


def test_the_integration_tier_runs_apart_from_the_e2e_tier() -> None:
    names = [s.get("name", "") for s in steps()]

    assert names.index("The e2e tier against kind") < names.index("The integration tier against kind")
    assert "tests/integration --kubeconfig" in step("The integration tier against kind")["run"]
    assert "tests/integration" not in step("The e2e tier against kind")["run"]
