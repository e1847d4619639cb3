"""The kind workflow (.github/workflows/e2e-kind.yaml) runs the e2e tier as the local run does: a worker made the real
node with the harness's own label and taint, both images built and loaded, their names where the tests look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TAINT
from tests.e2e.realstack import MODEL_SERVER_IMAGE_ENV, OPERATOR_IMAGE_ENV

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


def test_both_images_are_built_loaded_into_kind_and_named_for_the_e2e_tier() -> None:
    assert 'docker build -t "$IMAGE" .' in step("Build the operator image")["run"]
    model_server = step("Build the model-server image")["run"]
    assert "operator/localai_operator/devcluster/images/model-server" in model_server
    assert {"BUILD_IMAGE", "RUNTIME_IMAGE"} <= {
        arg.split("=")[0] for arg in model_server.split("--build-arg ")[1:]
    }
    assert '"$IMAGE" "$MODEL_SERVER_IMAGE"' in step("Load both images into kind")["run"]
    e2e = step("The e2e tier against kind")
    assert e2e["env"][OPERATOR_IMAGE_ENV] == "${{ env.IMAGE }}"
    assert e2e["env"][MODEL_SERVER_IMAGE_ENV] == "${{ env.MODEL_SERVER_IMAGE }}"
    assert "tests/e2e --kubeconfig" in e2e["run"]


def test_the_integration_tier_runs_apart_from_the_e2e_tier() -> None:
    names = [s.get("name", "") for s in steps()]

    assert names.index("The e2e tier against kind") < names.index("The integration tier against kind")
    assert "tests/integration --kubeconfig" in step("The integration tier against kind")["run"]
    assert "tests/integration" not in step("The e2e tier against kind")["run"]
