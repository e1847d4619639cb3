"""The Helm chart and manifests/install.yaml, offline: lint, schema, Kubernetes validity, RBAC, freshness."""

from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from localai_operator.api.route import FallbackRoute
from localai_operator.render.route import slice_reader

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "localai-operator"
KUBE_VERSION = "1.34.0"
NAMESPACE = "localai-operator"
GROUP = "llm.localai-operator.io"
# The Prometheus Operator's CRDs: kubernetes-validate has no schema for them.
FOREIGN_KINDS = {"ServiceMonitor", "PodMonitor"}
DASHBOARD = CHART / "dashboards" / "localai-router.json"
CLUSTER_SCOPED_RESOURCES = {"nodes", "namespaces", "customresourcedefinitions"}
LEADER_ELECTION_ROLE = "localai-operator-leader-election"

VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "metrics": {
        "metrics": {"serviceMonitor": {"enabled": True}, "routerPodMonitor": {"enabled": True}},
        "grafanaDashboard": {"enabled": True},
    },
    "standby": {"replicas": 2},
    "no-leader-election": {"leaderElection": {"enabled": False}},
    "debug-digest": {"logLevel": "debug", "image": {"digest": "sha256:" + "a" * 64}},
}


@pytest.fixture(scope="module")
def helm() -> str:
    """helm from the project-local tool dir, installed by hack/tools.sh on first use."""
    tools = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools.sh")], check=True, capture_output=True, text=True
    )
    return str(Path(tools.stdout.strip().splitlines()[-1]) / "helm")


def helm_template(
    helm: str, tmp_path: Path, values: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [
            helm,
            "template",
            "localai-operator",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(values_file),
            *flags,
        ],
        capture_output=True,
        text=True,
    )


def render(helm: str, tmp_path: Path, values: dict[str, Any], *flags: str) -> list[dict[str, Any]]:
    result = helm_template(helm, tmp_path, values, *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def rules_by_resource(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    """`group/resource` -> verbs, merged over all rules."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


def test_helm_lint_strict_passes(helm: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", VALUES)
def test_every_rendered_object_is_valid_kubernetes(helm: str, tmp_path: Path, case: str) -> None:
    objects = render(helm, tmp_path, VALUES[case], "--include-crds")
    assert of_kind(objects, "Deployment")
    for obj in objects:
        if obj["kind"] not in FOREIGN_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_values_yaml_satisfies_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": "x"}, "/replicas"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"logLevel": "loud"}, "/logLevel"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
    ],
    ids=["replicas-string", "unknown-key", "log-level", "namespace-name", "pull-policy", "port-range"],
)
def test_a_bad_value_is_rejected_by_the_schema(
    helm: str, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    result = helm_template(helm, tmp_path, values)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_chart_crds_are_identical_to_the_top_level_crds() -> None:
    names = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert names == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", names, shallow=False)
    assert (mismatch, errors) == ([], []), "charts/localai-operator/crds is stale: run `make crds`"


def test_install_yaml_is_generated_from_the_current_chart(tmp_path: Path) -> None:
    fresh = tmp_path / "install.yaml"
    subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-install.sh"), str(fresh)], check=True, capture_output=True
    )
    current = (ROOT / "manifests" / "install.yaml").read_text()
    assert current == fresh.read_text(), "manifests/install.yaml is stale: run `hack/gen-install.sh`"


def test_install_yaml_holds_the_namespace_the_crds_and_the_operator() -> None:
    objects = [o for o in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if o]
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == NAMESPACE
    crds = {o["metadata"]["name"] for o in of_kind(objects, "CustomResourceDefinition")}
    assert crds == {p.stem for p in (ROOT / "crds").glob("*.yaml")}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        if obj["kind"] not in {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("case", VALUES)
def test_rbac_has_no_wildcard_verb_resource_or_api_group(helm: str, tmp_path: Path, case: str) -> None:
    objects = render(helm, tmp_path, VALUES[case])
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), f"{role['metadata']['name']}: {rule}"
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_all_namespaces_mode_binds_a_cluster_role_and_watches_everything(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {})
    assert [r["metadata"]["name"] for r in of_kind(objects, "Role")] == [LEADER_ELECTION_ROLE]
    granted = rules_by_resource([r for cr in of_kind(objects, "ClusterRole") for r in cr["rules"]])
    assert granted[f"{GROUP}/inferencepools"] == {"get", "list", "watch", "patch", "update"}
    assert granted[f"{GROUP}/inferencepools/status"] == {"get", "patch", "update"}
    bound = {b["roleRef"]["name"] for b in of_kind(objects, "ClusterRoleBinding")}
    assert bound == {cr["metadata"]["name"] for cr in of_kind(objects, "ClusterRole")}
    args = operator_container(objects)["args"]
    assert args[0] == "run" and "--all-namespaces" in args
    assert not any(a.startswith("--namespace") for a in args)


def test_namespaced_mode_grants_namespaced_resources_only_through_roles(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, VALUES["namespaced"])
    for cluster_role in of_kind(objects, "ClusterRole"):
        resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        assert resources <= CLUSTER_SCOPED_RESOURCES, cluster_role["metadata"]["name"]
    roles = [r for r in of_kind(objects, "Role") if r["metadata"]["name"] != LEADER_ELECTION_ROLE]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        granted = rules_by_resource(role["rules"])
        assert granted[f"{GROUP}/llmmodels"] == {"get", "list", "watch", "patch", "update"}
        assert granted["apps/deployments"] >= {"create", "patch", "delete"}
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "localai-operator", "namespace": NAMESPACE}
        ]
    args = operator_container(objects)["args"]
    assert "--namespace=a" in args and "--namespace=b" in args and "--all-namespaces" not in args


def test_secrets_and_pods_are_read_only_and_nothing_else_is_granted(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {})
    granted = rules_by_resource([r for cr in of_kind(objects, "ClusterRole") for r in cr["rules"]])
    assert granted["/secrets"] == {"get"}, "by name only: no Secret the resources do not name is read"
    assert granted["apps/replicasets"] == {"get"}
    assert granted["/pods"] == {"get", "list", "watch"}
    assert granted["/nodes"] == {"get", "list", "watch"}
    assert granted["autoscaling/horizontalpodautoscalers"] == {"get", "list", "watch"}
    assert granted["discovery.k8s.io/endpointslices"] == {"get", "list", "watch"}
    # RBAC's escalation check: the Role the operator renders for a router grants nothing the operator lacks.
    route = FallbackRoute.parse(
        {"metadata": {"name": "r", "namespace": "a"}, "spec": {"primary": {"poolRef": {"name": "p"}}}}
    )
    for rule in next(o for o in slice_reader(route) if o["kind"] == "Role")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= granted[f"{group}/{resource}"], resource
    assert granted["/events"] == granted["events.k8s.io/events"] == {"create", "patch"}
    assert set(granted) == {
        f"{GROUP}/{plural}{sub}"
        for plural in ("llmmodels", "inferencepools", "fallbackroutes")
        for sub in ("", "/status")
    } | {
        "/configmaps",
        "/services",
        "/persistentvolumeclaims",
        "/secrets",
        "/pods",
        "/events",
        "events.k8s.io/events",
        "apps/deployments",
        "policy/poddisruptionbudgets",
        "networking.k8s.io/networkpolicies",
        "/serviceaccounts",
        "rbac.authorization.k8s.io/roles",
        "rbac.authorization.k8s.io/rolebindings",
        "/nodes",
        "autoscaling/horizontalpodautoscalers",
        "discovery.k8s.io/endpointslices",
        "apps/replicasets",
        "/namespaces",
        "apiextensions.k8s.io/customresourcedefinitions",
    }


def test_every_kind_the_operator_owns_can_be_watched_applied_and_pruned(helm: str, tmp_path: Path) -> None:
    from localai_operator.api.kinds import CUSTOM, OWNED

    for case in ("defaults", "namespaced"):
        objects = render(helm, tmp_path, VALUES[case])
        roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
        granted = rules_by_resource([rule for role in roles for rule in role["rules"]])
        for kind in OWNED:
            assert granted[f"{kind.group}/{kind.plural}"] >= {"list", "watch", "create", "patch", "delete"}, (
                kind
            )
        for kind in CUSTOM:
            assert granted[f"{kind.group}/{kind.plural}"] >= {"list", "watch"}, kind
            assert "patch" in granted[f"{kind.group}/{kind.plural}/status"], kind


def test_leader_election_is_granted_leases_in_the_release_namespace_only(helm: str, tmp_path: Path) -> None:
    for case in ("defaults", "namespaced"):
        objects = render(helm, tmp_path, VALUES[case])
        lease_roles = [r for r in of_kind(objects, "Role") if r["metadata"]["name"] == LEADER_ELECTION_ROLE]
        assert [r["metadata"]["namespace"] for r in lease_roles] == [NAMESPACE]
        assert rules_by_resource(lease_roles[0]["rules"]) == {
            "coordination.k8s.io/leases": {"get", "create", "update"}
        }
        assert "--leader-election" in operator_container(objects)["args"]
    objects = render(helm, tmp_path, VALUES["no-leader-election"])
    assert [r for r in of_kind(objects, "Role") if r["metadata"]["name"] == LEADER_ELECTION_ROLE] == []
    assert "--no-leader-election" in operator_container(objects)["args"]


def test_operator_pod_is_hardened_and_runs_one_replica_with_recreate(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {})
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8081, "health": 8082}
    assert {"--metrics-port=8081", "--health-port=8082"} <= set(container["args"])


def test_the_operator_pod_gives_kopf_its_name_as_identity(helm: str, tmp_path: Path) -> None:
    # Without POD_ID Kopf asks getpass.getuser(), which fails for the image's uid 65532 (no passwd entry).
    env = {e["name"]: e for e in operator_container(render(helm, tmp_path, {}))["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_operator_is_told_its_own_image_for_the_routers(helm: str, tmp_path: Path) -> None:
    env = {e["name"]: e.get("value") for e in operator_container(render(helm, tmp_path, {}))["env"]}
    assert env["LOCALAI_OPERATOR_IMAGE"] == "localai-operator:0.1.0"
    assert env["LOCALAI_OPERATOR_LOG_LEVEL"] == "info"
    pinned = operator_container(render(helm, tmp_path, VALUES["debug-digest"]))
    assert pinned["image"] == "localai-operator@sha256:" + "a" * 64
    assert {"name": "LOCALAI_OPERATOR_IMAGE", "value": pinned["image"]} in pinned["env"]
    assert "--verbose" in pinned["args"]


def test_the_downloader_image_keeps_its_pinned_tag_when_the_operator_is_upgraded(
    helm: str, tmp_path: Path
) -> None:
    from localai_operator.render.common import DOWNLOADER_VERSION

    def downloader(values: dict[str, Any]) -> str | None:
        env = {e["name"]: e.get("value") for e in operator_container(render(helm, tmp_path, values))["env"]}
        return env["LOCALAI_OPERATOR_DOWNLOADER_IMAGE"]

    assert downloader({}) == f"localai-operator:{DOWNLOADER_VERSION}"
    upgraded = {"image": {"repository": "reg.example/localai-operator", "tag": "9.9.9"}}
    assert downloader(upgraded) == f"reg.example/localai-operator:{DOWNLOADER_VERSION}"
    digest = "sha256:" + "d" * 64
    assert downloader(
        {"downloader": {"image": {"repository": "reg.example/fetch", "tag": "x", "digest": digest}}}
    ) == (f"reg.example/fetch@{digest}")


def test_localai_images_and_backend_repository_reach_the_operator_only_when_set(
    helm: str, tmp_path: Path
) -> None:
    def env(values: dict[str, Any]) -> dict[str, str | None]:
        return {e["name"]: e.get("value") for e in operator_container(render(helm, tmp_path, values))["env"]}

    assert not {k for k in env({}) if k.startswith("LOCALAI_OPERATOR_LOCALAI_")}
    mirrored = env({"localai": {"cpuImage": "reg/l:v4.9.0", "backendRepository": "reg/local-ai-backends"}})
    assert mirrored["LOCALAI_OPERATOR_LOCALAI_CPU_IMAGE"] == "reg/l:v4.9.0"
    assert mirrored["LOCALAI_OPERATOR_LOCALAI_BACKEND_REPOSITORY"] == "reg/local-ai-backends"


def test_service_monitor_scrapes_the_metrics_service(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, VALUES["metrics"])
    (monitor,) = of_kind(objects, "ServiceMonitor")
    (service,) = of_kind(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert of_kind(render(helm, tmp_path, {}), "ServiceMonitor") == []


def _argo_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    lupa = pytest.importorskip("lupa")
    config_map = yaml.safe_load((ROOT / "manifests" / "gitops" / "argocd" / "argocd-cm.yaml").read_text())
    script = config_map["data"][f"resource.customizations.health.{GROUP}_{kind}"]
    lua = lupa.LuaRuntime()
    result = lua.eval(f"function(obj) {script} end")(lua.table_from(obj, recursive=True))
    return str(result["status"]), str(result["message"])


@pytest.mark.parametrize("kind", ["LLMModel", "InferencePool", "FallbackRoute"])
@pytest.mark.parametrize(
    ("ready", "observed", "health"),
    [
        (None, 2, "Progressing"),
        ("Unknown", 2, "Progressing"),
        ("True", 2, "Healthy"),
        ("False", 2, "Degraded"),
        ("True", 1, "Progressing"),  # the operator has not seen the latest spec yet
    ],
)
def test_argo_cd_health_follows_the_ready_condition(
    kind: str, ready: str | None, observed: int, health: str
) -> None:
    conditions = [{"type": "Available", "status": "True", "reason": "ReplicasReady", "message": "1/1"}]
    if ready is not None:
        conditions.append(
            {"type": "Ready", "status": ready, "reason": "R", "message": "m", "observedGeneration": observed}
        )
    obj = {"metadata": {"generation": 2}, "status": {"conditions": conditions}}
    assert _argo_health(kind, obj)[0] == health


def _gitops_objects() -> list[dict[str, Any]]:
    files = sorted((ROOT / "manifests" / "gitops").rglob("*.yaml"))
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


def test_argo_cd_applications_sync_crds_then_operator_then_resources() -> None:
    apps = {o["metadata"]["name"]: o for o in of_kind(_gitops_objects(), "Application")}
    for app in apps.values():
        assert (ROOT / app["spec"]["source"]["path"]).is_dir(), app["metadata"]["name"]
    waves = {
        app["spec"]["source"]["path"]: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for app in apps.values()
        if "annotations" in app["metadata"]
    }
    assert waves["crds"] < waves["charts/localai-operator"] < waves["manifests/samples"]
    assert apps["localai-operator"]["spec"]["source"]["helm"]["skipCrds"] is True


def test_flux_kustomizations_chain_crds_then_operator_then_resources() -> None:
    objects = _gitops_objects()
    kustomizations = {
        o["metadata"]["name"]: o["spec"] for o in of_kind(objects, "Kustomization") if "spec" in o
    }
    for spec in kustomizations.values():
        assert (ROOT / spec["path"]).is_dir(), spec["path"]
        assert spec.get("wait") or spec.get("healthChecks"), spec["path"]
    assert kustomizations["localai-operator"]["dependsOn"] == [{"name": "localai-operator-crds"}]
    assert kustomizations["llm-samples"]["dependsOn"] == [{"name": "localai-operator"}]
    assert kustomizations["localai-operator-crds"]["prune"] is False
    (release,) = of_kind(objects, "HelmRelease")
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"]).resolve() == CHART
    assert release["spec"]["install"]["crds"] == "Skip"


def test_the_router_pod_monitor_is_off_by_default_and_scrapes_every_router_pod_when_on(
    helm: str, tmp_path: Path
) -> None:
    from localai_operator.api import FallbackRoute
    from localai_operator.render.common import RenderSettings
    from localai_operator.render.route import deployment

    assert of_kind(render(helm, tmp_path, {}), "PodMonitor") == []
    (monitor,) = of_kind(render(helm, tmp_path, VALUES["metrics"]), "PodMonitor")
    route = FallbackRoute.parse(
        {"metadata": {"name": "chat", "namespace": "ai"}, "spec": {"primary": {"url": "http://x/v1"}}}
    )
    pod = deployment(route, RenderSettings())["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (
        endpoint["port"] == "metrics"
        and "metrics" in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
        and endpoint["path"] == "/metrics"
    )
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = of_kind(
        render(helm, tmp_path, {**VALUES["metrics"], "watchNamespaces": ["a", "b"]}), "PodMonitor"
    )
    assert namespaced[0]["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_the_dashboard_is_valid_json_and_uses_only_series_the_router_exports() -> None:
    import re

    from localai_operator.router.metrics import RouterMetrics

    dashboard = json.loads(DASHBOARD.read_text())
    exported = RouterMetrics(list, list, list, list).series_names()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\blocalai_router_[a-z_]+", expr)}
    assert used and used <= exported, sorted(used - exported)
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for subject in (
        "requests",
        "fallbacks",
        "first token",
        "cost",
        "breaker",
        "per output token",
        "client key",
    ):
        assert subject in titles, subject


def test_the_dashboard_ships_in_a_configmap_grafana_picks_up_when_enabled(helm: str, tmp_path: Path) -> None:
    assert [
        c for c in of_kind(render(helm, tmp_path, {}), "ConfigMap") if "dashboard" in c["metadata"]["name"]
    ] == []
    [config_map] = [
        c
        for c in of_kind(render(helm, tmp_path, VALUES["metrics"]), "ConfigMap")
        if "dashboard" in c["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["localai-router.json"]) == json.loads(DASHBOARD.read_text())
