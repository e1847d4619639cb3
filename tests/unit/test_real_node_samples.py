"""The real-node samples (manifests/real-node/) and the chart values that go with them: every pod they make lands on
the real node, pulls nothing and asks for little, before any cluster runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from localai_operator.api import FallbackRoute
from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TOLERATION, stack
from localai_operator.devcluster.images import MODEL_SHA256
from localai_operator.render import RenderSettings
from localai_operator.render.offline import render_documents
from localai_operator.render.route import route_objects

ROOT = Path(__file__).resolve().parents[2]
IMAGES = stack.StackImages(
    "localai-operator:dev-0123456789ab",
    "localai-operator-localai:dev-0123456789ab",
    "localai-operator-model-mirror:dev-0123456789ab",
)
SETTINGS = RenderSettings(operator_image=IMAGES.operator, downloader_image=IMAGES.operator)
# Of the node's 2 CPUs, what every real-node pod together may request (the rest is the control plane's and the
# tests').
CPU_BUDGET_MILLICORES = 800


def sample_documents(namespace: str = stack.NAMESPACE) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stack.sample_manifests(IMAGES, namespace, ROOT)) if d]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every pod the samples make: their own Deployments and what the operator renders."""
    docs = sample_documents()
    rendered = render_documents([("samples", d) for d in docs], SETTINGS)
    deployments = [d for d in [*docs, *rendered] if d["kind"] == "Deployment"]
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in deployments]


def millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def test_every_pod_of_the_samples_selects_and_tolerates_the_real_node() -> None:
    specs = pod_specs()

    assert {name for name, _ in specs} == {
        "model-mirror",
        "cloud-standin",
        stack.POOL,
        f"{stack.ROUTE}-router",
        f"{stack.SENSITIVE_ROUTE}-router",
    }
    for name, spec in specs:
        assert spec["nodeSelector"].items() >= REAL_NODE_LABEL.items(), name
        assert dict(REAL_NODE_TOLERATION) in spec["tolerations"], name


def test_every_image_of_the_samples_is_a_built_one_that_is_never_pulled() -> None:
    for name, spec in pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["image"] in (IMAGES.operator, IMAGES.localai, IMAGES.mirror), name
            assert not container["image"].endswith(":latest"), name
            assert container.get("imagePullPolicy", "IfNotPresent") in ("IfNotPresent", "Never"), name


def test_the_samples_request_less_cpu_than_the_real_node_can_spare() -> None:
    total = sum(
        millicores(str(c.get("resources", {}).get("requests", {}).get("cpu", "0")))
        for _, spec in pod_specs()
        for c in spec["containers"]
    )

    assert total <= CPU_BUDGET_MILLICORES


def test_the_pool_serves_gemma_from_the_in_cluster_mirror_with_its_checksum_and_no_surge() -> None:
    docs = sample_documents()
    model = next(d for d in docs if d["kind"] == "LLMModel")
    pool = next(d for d in docs if d["kind"] == "InferencePool")

    assert (
        model["spec"]["source"]["url"]
        == f"http://{stack.MIRROR}.{stack.NAMESPACE}.svc:8080/gemma-3-270m-q4_k_m.gguf"
    )
    assert model["spec"]["source"]["sha256"] == MODEL_SHA256
    assert model["spec"]["contextSize"] == 2048
    assert pool["spec"]["image"] == IMAGES.localai
    assert pool["spec"]["preinstallBackends"] == []
    mirror = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == stack.MIRROR)
    assert mirror["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES.mirror
    assert pool["spec"]["rollout"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_another_namespace_moves_every_object_and_every_in_cluster_url() -> None:
    text = stack.sample_manifests(IMAGES, "elsewhere", ROOT)

    assert stack.NAMESPACE not in text
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in sample_documents("elsewhere")} == {
        "elsewhere"
    }


def test_the_routes_fall_back_to_the_cloud_stand_in_with_its_secret() -> None:
    docs = sample_documents()
    route = next(d for d in docs if d["kind"] == "FallbackRoute" and d["metadata"]["name"] == stack.ROUTE)
    rendered = route_objects(FallbackRoute.parse(route), SETTINGS)
    config = yaml.safe_load(next(o for o in rendered if o["kind"] == "ConfigMap")["data"]["router.yaml"])

    assert config["fallback"]["baseURL"] == f"http://{stack.CLOUD_STANDIN}.{stack.NAMESPACE}.svc:8080/v1"
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == route["spec"]["fallback"]["apiKeySecretRef"]["name"]


def test_the_chart_values_put_the_operator_on_the_real_node_and_never_pull(tmp_path: Path) -> None:
    helm = stack.helm_binary(ROOT)
    argv = stack.helm_install_command(helm, tmp_path / "kubeconfig", IMAGES, root=ROOT)
    # The same values as `dev up` and the e2e tier, rendered instead of installed.
    values = [a for i, a in enumerate(argv) if i and argv[i - 1] in ("--values", "--set")]
    flags = [f for v in values for f in (("--values", v) if v.endswith(".yaml") else ("--set", v))]
    result = subprocess.run(
        [helm, "template", stack.RELEASE, str(stack.chart_dir(ROOT)), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    [deployment] = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}

    assert spec["nodeSelector"] == dict(REAL_NODE_LABEL)
    assert spec["tolerations"] == [dict(REAL_NODE_TOLERATION)]
    assert (container["image"], container["imagePullPolicy"]) == (IMAGES.operator, "IfNotPresent")
    assert env["LOCALAI_OPERATOR_DOWNLOADER_IMAGE"] == IMAGES.operator
