"""The user's install paths on a real control plane: `helm install`/`uninstall` of the chart and `kubectl apply` of
manifests/install.yaml, each proving its RBAC by running the operator with the installed ServiceAccount's token."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import yaml

from localai_operator.api.kinds import FALLBACK_ROUTE, INFERENCE_POOL, LLM_MODEL
from tests.e2e.kube import Kube, fresh_cluster, helm_binary, kubectl_binary
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "localai-operator"
SAMPLES = ROOT / "manifests" / "samples"
SAMPLES_NAMESPACE = "llm-samples"
NAMESPACE = "localai-operator"
RELEASE = "localai-operator"
# kwok never pulls the image; on kind, set LOCALAI_OPERATOR_E2E_IMAGE to one loaded into the cluster.
IMAGE = os.environ.get("LOCALAI_OPERATOR_E2E_IMAGE", "localai-operator:e2e")
CRDS = sorted(p.stem for p in (ROOT / "crds").glob("*.yaml"))
KINDS = ",".join(kind.resource for kind in (LLM_MODEL, INFERENCE_POOL, FALLBACK_ROUTE))
FORBIDDEN = re.compile(r"forbidden|\(403\)", re.IGNORECASE)


@pytest.fixture(scope="module")
def helm_path() -> str:
    return helm_binary()


@pytest.fixture(scope="module")
def chart_cluster(request: pytest.FixtureRequest, helm_path: str) -> Iterator[Kube]:
    with fresh_cluster(request) as access:
        yield Kube(access.kubeconfig, kubectl_binary(), helm_path)


@contextmanager
def helm_release(kube: Kube, *values: str) -> Iterator[Kube]:
    """The chart installed with `helm install --wait` and `--set` values, uninstalled afterwards if still there."""
    repository, tag = IMAGE.rsplit(":", 1)
    kube.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        *values,
        "--wait",
        "--timeout",
        "3m",
    )
    try:
        yield kube
    finally:
        kube.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found", "--wait")


@pytest.fixture
def installed(chart_cluster: Kube) -> Iterator[Kube]:
    with helm_release(chart_cluster) as kube:
        yield kube


def token_kubeconfig(kube: Kube, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig for the same server and CA that authenticates only as the ServiceAccount."""
    token = kube.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration", "1h"
    ).stdout.strip()
    config = json.loads(kube.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    (user,) = config["users"]
    user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def forbidden_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if FORBIDDEN.search(line)]


def samples_reach_ready_with_token_of(
    kube: Kube, service_account: str, tmp_path: Path, operator_args: tuple[str, ...] = ("-A",)
) -> None:
    """Runs `localai-operator run` locally as the installed operator would run (its ServiceAccount's token, its
    namespace for the leader-election Lease), applies the samples and waits for every Ready=True; fails as soon as
    the operator's log shows a 403."""
    # The installed operator (a kwok fake here, a real pod on kind) steps aside: the local one is the only one.
    kube.kubectl("scale", f"deployment/{RELEASE}", "-n", NAMESPACE, "--replicas=0")
    selector = "app.kubernetes.io/component=operator"
    wait_for(lambda: not kube.exists("pods", "-n", NAMESPACE, "-l", selector), 60, "the operator pod to go")
    kubeconfig = token_kubeconfig(kube, service_account, NAMESPACE, tmp_path / "operator.kubeconfig")
    log = tmp_path / "operator.log"
    with mock.patch.dict(os.environ, {"POD_NAMESPACE": NAMESPACE, "LOCALAI_OPERATOR_IMAGE": IMAGE}):
        operator = OperatorProcess(kubeconfig, log, args=list(operator_args)).start()

    def all_ready() -> bool:
        denied = forbidden_lines(log)
        assert denied == [], "the ServiceAccount lacks permissions:\n" + "\n".join(denied[:20])
        waited = kube.kubectl(
            "wait",
            "--for=condition=Ready",
            KINDS,
            "--all",
            "-n",
            SAMPLES_NAMESPACE,
            "--timeout=5s",
            check=False,
        )
        return waited.returncode == 0

    def state() -> str:
        listing = kube.kubectl("get", KINDS, "-n", SAMPLES_NAMESPACE, check=False).stdout
        return f"{listing}\noperator log:\n{operator.log_tail(40)}"

    try:
        kube.kubectl("apply", "-f", str(SAMPLES))
        wait_for(all_ready, 180, "every sample to be Ready", interval=1, describe=state)
    finally:
        operator.stop()
        kube.kubectl("delete", "namespace", SAMPLES_NAMESPACE, "--ignore-not-found", "--wait=false")
    assert forbidden_lines(log) == []
    wait_for(
        lambda: not kube.exists("namespace", SAMPLES_NAMESPACE), 120, f"namespace {SAMPLES_NAMESPACE} to go"
    )


def test_helm_install_waits_until_the_operator_deployment_is_available(installed: Kube) -> None:
    installed.kubectl(
        "wait", "--for=condition=Available", f"deployment/{RELEASE}", "-n", NAMESPACE, "--timeout=10s"
    )
    for crd in CRDS:
        installed.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=10s")


def test_the_chart_service_account_is_enough_to_reconcile_the_samples(
    installed: Kube, tmp_path: Path
) -> None:
    samples_reach_ready_with_token_of(installed, RELEASE, tmp_path)


def test_in_namespaced_mode_the_roles_are_enough_to_reconcile_the_samples(
    chart_cluster: Kube, tmp_path: Path
) -> None:
    chart_cluster.kubectl("create", "namespace", SAMPLES_NAMESPACE)
    with helm_release(chart_cluster, "--set", f"watchNamespaces={{{SAMPLES_NAMESPACE}}}") as kube:
        assert kube.exists("role", RELEASE, "-n", SAMPLES_NAMESPACE)
        assert not kube.exists("clusterrole", RELEASE)
        samples_reach_ready_with_token_of(kube, RELEASE, tmp_path, ("-n", SAMPLES_NAMESPACE))


def test_with_leader_election_off_the_chart_reconciles_the_samples_and_no_lease_is_taken(
    chart_cluster: Kube, tmp_path: Path
) -> None:
    with helm_release(chart_cluster, "--set", "leaderElection.enabled=false") as kube:
        assert not kube.exists("role", f"{RELEASE}-leader-election", "-n", NAMESPACE)
        deployment = json.loads(
            kube.kubectl("get", f"deployment/{RELEASE}", "-n", NAMESPACE, "-o", "json").stdout
        )
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert "--no-leader-election" in container["args"]
        # The chart's own arguments, run with the chart's ServiceAccount: a Lease call would be a 403. (Earlier
        # tests' operators, with election on, left their Lease behind: the namespace starts without one.)
        kube.kubectl("delete", "leases", "--all", "-n", NAMESPACE)
        samples_reach_ready_with_token_of(kube, RELEASE, tmp_path, tuple(container["args"][1:]))
        leases = kube.kubectl("get", "leases", "-n", NAMESPACE, "-o", "name").stdout.split()
        assert not [lease for lease in leases if "localai-operator" in lease]


def test_helm_uninstall_keeps_the_crds_and_removes_everything_else(installed: Kube) -> None:
    manifest = installed.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
    release_objects = [
        (o["kind"].lower(), o["metadata"]["name"], o["metadata"].get("namespace"))
        for o in yaml.safe_load_all(manifest)
        if o
    ]
    assert {kind for kind, _, _ in release_objects} >= {"deployment", "serviceaccount", "clusterrole"}
    installed.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")
    for crd in CRDS:
        assert installed.exists("crd", crd), f"helm uninstall deleted CRD {crd}"
    for kind, name, namespace in release_objects:
        scope = ["-n", namespace] if namespace else []
        assert not installed.exists(f"{kind}/{name}", *scope), f"{kind}/{name} survived helm uninstall"
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    wait_for(
        lambda: not installed.exists("pods", "-n", NAMESPACE, "-l", selector),
        60,
        "the operator's pods to be garbage-collected",
    )


@pytest.fixture
def install_yaml_cluster(request: pytest.FixtureRequest, helm_path: str) -> Iterator[Kube]:
    with fresh_cluster(request) as access:
        kube = Kube(access.kubeconfig, kubectl_binary(), helm_path)
        yield kube
        if access.harness is None:  # a shared cluster: leave it as we found it
            kube.kubectl(
                "delete", "-f", str(ROOT / "manifests" / "install.yaml"), "--ignore-not-found", "--wait"
            )


def test_kubectl_apply_of_install_yaml_reconciles_the_samples(
    install_yaml_cluster: Kube, tmp_path: Path
) -> None:
    kube = install_yaml_cluster
    kube.kubectl("apply", "-f", str(ROOT / "manifests" / "install.yaml"))
    kube.kubectl("wait", "--for=condition=Established", *(f"crd/{c}" for c in CRDS), "--timeout=60s")
    if "LOCALAI_OPERATOR_E2E_IMAGE" in os.environ:  # on kind: the image built by CI, not the release's tag
        kube.kubectl("set", "image", f"deployment/{RELEASE}", f"operator={IMAGE}", "-n", NAMESPACE)
    kube.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", NAMESPACE, "--timeout=180s")
    samples_reach_ready_with_token_of(kube, RELEASE, tmp_path)
