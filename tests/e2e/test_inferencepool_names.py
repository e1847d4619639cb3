"""Our InferencePool beside the Gateway API Inference Extension's, on a control plane of its own: the Extension's
CRDs from its Go module (v1.0.0: groups inference.networking.k8s.io and inference.networking.x-k8s.io, the same kind
and plural as ours), our operator reconciling the samples, and every kubectl command of README.md, docs/ and the
chart's NOTES.txt that names our kinds run as written. Each must succeed and reach only our group: `kubectl -v=6`
logs the URL of every request it sends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from localai_operator.devcluster.gomodules import INFERENCE_EXTENSION_GROUPS, inference_pool_crds
from tests.documented import OUR_GROUP, Command, documented_commands, names_our_kinds
from tests.e2e.kube import Kube, fresh_cluster, helm_binary, kubectl_binary
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess, install_crds

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
# The samples' namespace, and the one the README's and the docs' examples live in: there, the samples the README's
# example has (a GPU model, its pool and a route with its Secret), so that every GPU pool fits the fake nodes.
NAMESPACES = ("llm-samples", "ai")
README_EXAMPLE = {
    ("Namespace", "llm-samples"),
    ("LLMModel", "mistral-7b-instruct"),
    ("InferencePool", "gpu-pool"),
    ("Secret", "holysheep"),
    ("FallbackRoute", "chat"),
}
OUR_KINDS = ",".join(f"{p.stem}" for p in sorted((ROOT / "crds").glob("*.yaml")))
# Commands that would change something run as server-side dry runs: the same resolution, nothing written.
WRITES = frozenset({"apply", "create", "delete", "patch", "replace", "scale", "label", "annotate", "set"})
# The request URLs kubectl logs at -v=6 that name a kind's group: a resource path (not discovery), a CRD by name,
# or the OpenAPI document kubectl explain reads.
RESOURCE = re.compile(r'https://[^/\s"]+/apis/([^/\s"?]+)/[^/\s"?]+/[^\s"?]+')
CRD = re.compile(
    r'https://[^/\s"]+/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions/[^./\s"?]+\.([^/\s"?]+)'
)
OPENAPI = re.compile(r'https://[^/\s"]+/openapi/v3/apis/([^/\s"?]+)/')
OUR_COMMANDS = [c for c in documented_commands() if names_our_kinds(c)]


def samples_in(namespace: str, only: set[tuple[str, str]] | None = None) -> str:
    """manifests/samples/ (`only` those of these kinds and names) with every object in `namespace`."""
    documents = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or (only and (document["kind"], document["metadata"]["name"]) not in only):
                continue
            if document["kind"] == "Namespace":
                document["metadata"]["name"] = namespace
            else:
                document["metadata"]["namespace"] = namespace
            documents.append(document)
    return yaml.safe_dump_all(documents)


@pytest.fixture(scope="module")
def both(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A cluster with both CRDs, our operator running and the samples Ready in NAMESPACES."""
    extension = inference_pool_crds()
    extension_names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in extension]
    with fresh_cluster(request) as access:
        kube = Kube(access.kubeconfig, kubectl_binary(), helm_binary())
        theirs_existed = [name for name in extension_names if kube.exists("crd", name)]
        install_crds(access.api)
        kube.kubectl("apply", "--server-side", *(arg for p in extension for arg in ("-f", str(p))))
        kube.kubectl(
            "wait", "--for=condition=Established", *(f"crd/{n}" for n in extension_names), "--timeout=60s"
        )
        log = tmp_path_factory.mktemp("operator") / "operator.log"
        operator = OperatorProcess(access.kubeconfig, log).start()
        try:
            kube.kubectl("apply", "-f", "-", input=samples_in("llm-samples"))
            kube.kubectl("apply", "-f", "-", input=samples_in("ai", README_EXAMPLE))
            for namespace in NAMESPACES:

                def ready(namespace: str = namespace) -> bool:
                    waited = kube.kubectl(
                        "wait", "--for=condition=Ready", OUR_KINDS, "--all", "-n", namespace, "--timeout=5s",
                        check=False,
                    )  # fmt: skip
                    return waited.returncode == 0

                def state(namespace: str = namespace) -> str:
                    listing = kube.kubectl("get", "llm", "-n", namespace, check=False).stdout
                    return f"{listing}\noperator log:\n{operator.log_tail(40)}"

                wait_for(ready, 180, f"the samples in {namespace} to be Ready", interval=1, describe=state)
            yield kube
        finally:
            operator.stop()
            if access.harness is None:  # a shared cluster (kind): leave it as we found it, but for our CRDs
                kube.kubectl("delete", "namespace", *NAMESPACES, "--ignore-not-found", "--timeout=120s")
                if added := [name for name in extension_names if name not in theirs_existed]:
                    kube.kubectl("delete", "crd", *added, "--ignore-not-found", "--timeout=120s")


def groups_reached(kube: Kube, argv: list[str]) -> tuple[set[str], str]:
    """Runs kubectl with `argv` (a server-side dry run if it writes) at -v=6: the API groups its requests went to,
    and its output."""
    if argv[0] in WRITES or (argv[0] == "-n" and argv[2] in WRITES):
        argv = [*argv, "--dry-run=server"]
    result = kube.kubectl(*argv, "-v=6", timeout=120, check=False)
    assert result.returncode == 0, (
        f"kubectl {' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    )
    groups = {m.group(1) for pattern in (RESOURCE, CRD, OPENAPI) for m in pattern.finditer(result.stderr)}
    return groups - {"apiextensions.k8s.io"}, result.stdout


@pytest.mark.parametrize("command", OUR_COMMANDS, ids=[c.where for c in OUR_COMMANDS])
def test_a_documented_command_reaches_our_kinds_only(both: Kube, command: Command) -> None:
    groups, _ = groups_reached(both, command.argv[1:])
    assert OUR_GROUP in groups, f"{command.text} sent no request for our kinds: {groups}"
    assert not groups & set(INFERENCE_EXTENSION_GROUPS), f"{command.text} reached the Inference Extension"


@pytest.mark.parametrize("bare", [["get", "inferencepools", "-A"], ["explain", "inferencepool.spec"]])
def test_the_bare_name_reaches_the_inference_extension_instead(both: Kube, bare: list[str]) -> None:
    """Why the docs never use it: with both CRDs installed, kubectl resolves it to the Extension's group."""
    groups, _ = groups_reached(both, bare)
    assert OUR_GROUP not in groups and groups & set(INFERENCE_EXTENSION_GROUPS), groups


def test_the_llm_category_lists_our_three_kinds_and_not_the_extensions(both: Kube) -> None:
    listed = both.kubectl("get", "llm", "-n", "ai", "-o", "name").stdout.split()
    kinds = {name.split("/")[0] for name in listed}
    assert kinds == {f"{p.split('.')[0][:-1]}.{OUR_GROUP}" for p in OUR_KINDS.split(",")}, kinds
