"""A release as users get it, on a control plane of its own: the chart packaged, pushed and checked by
hack/release-chart.sh (the release workflow's own step) in an OCI registry on loopback (the CNCF distribution
registry over HTTPS), then the commands docs/install.md gives, run as written against that registry: install the
previous release, upgrade to this one, upgrade again with nothing changed, and a fresh install of this one."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localai_operator.devcluster.binaries import find_registry
from localai_operator.devcluster.registry import Registry
from tests.documented import commands_in
from tests.e2e.kube import Kube, fresh_cluster, helm_binary, kubectl_binary

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "localai-operator"
INSTALL_DOC = ROOT / "docs" / "install.md"
NAMESPACE = "localai-operator"
RELEASE = "localai-operator"
CRDS = sorted(p.stem for p in (ROOT / "crds").glob("*.yaml"))
# The docs' registry, replaced by the one on loopback.
PUBLISHED = "oci://ghcr.io/<owner>/charts"
# No version has been tagged yet. Until one is, the previous release is the chart as it was at the commit that added
# the release workflow: the first commit a release could have been cut from, and an old enough chart that the
# upgrade changes CRDs (new fields), the operator Deployment (env) and RBAC (new rules). Once a vX.Y.Z tag exists,
# the newest such tag below this version is the previous release instead.
FIRST_RELEASABLE_COMMIT = "b3cbb36b6b3d3767a79ceffbeede8c8ea522d718"
# On kind the registry's image cannot be pulled: the tests then set the image loaded into kind.
E2E_IMAGE = os.environ.get("LOCALAI_OPERATOR_E2E_IMAGE")
E2E_IMAGE_VALUES = (
    [
        "--set",
        f"image.repository={E2E_IMAGE.rsplit(':', 1)[0]}",
        "--set",
        f"image.tag={E2E_IMAGE.rsplit(':', 1)[1]}",
    ]
    if E2E_IMAGE
    else []
)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def previous_release(version: str) -> tuple[str, str]:
    """(git revision, chart version) of the release before `version`."""
    for tag in git("tag", "--merged", "HEAD", "--list", "v[0-9]*", "--sort=-v:refname").split():
        if tag.removeprefix("v") != version:
            return tag, tag.removeprefix("v")
    has_commit = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{FIRST_RELEASABLE_COMMIT}^{{commit}}"], check=False
    )
    if has_commit.returncode != 0:
        pytest.fail(
            f"the upgrade test packages the chart of commit {FIRST_RELEASABLE_COMMIT[:7]}, which this checkout lacks"
            " (a shallow clone? `git fetch --unshallow`, or check out with fetch-depth: 0)"
        )
    old = yaml.safe_load(git("show", f"{FIRST_RELEASABLE_COMMIT}:charts/localai-operator/Chart.yaml"))
    # A pre-release of its own version: semver orders it before that version, as a previous release is.
    return FIRST_RELEASABLE_COMMIT, f"{old['version']}-0.g{FIRST_RELEASABLE_COMMIT[:7]}"


def documented(start: str) -> list[str]:
    """The commands of docs/install.md's code blocks (continuations joined) that start with `start`."""
    lines = [c.text for c in commands_in(INSTALL_DOC, "helm") if c.text.startswith(start)]
    assert lines, f"docs/install.md has no command starting with {start!r}"
    return lines


@dataclass
class Published:
    """The registry with both releases pushed, and how to run the docs' commands against it."""

    registry: Registry
    kube: Kube
    image: str
    version: str
    previous_version: str

    @property
    def repository(self) -> str:
        return f"oci://{self.registry.address}/charts"

    def run(self, documented_line: str, version: str) -> str:
        """One documented command line, as written, for `version` of the chart in the loopback registry."""
        line = re.sub(
            r"--version \S+", f"--version {version}", documented_line.replace(PUBLISHED, self.repository)
        )
        if E2E_IMAGE_VALUES and re.match(r"helm (install|upgrade) ", line):
            line += " " + shlex.join(E2E_IMAGE_VALUES)
        tools = f"{Path(self.kube.helm_path).parent}:{Path(self.kube.kubectl_path).parent}"
        env = {
            **os.environ,
            "PATH": f"{tools}:{os.environ['PATH']}",
            "KUBECONFIG": str(self.kube.kubeconfig),
            # helm trusts the registry's CA the way users' machines trust their registry's.
            "SSL_CERT_FILE": str(self.registry.ca_cert),
        }
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{line}\nexited {result.returncode}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def rendered_deployment(self, version: str) -> dict[str, Any]:
        """The operator Deployment `version` of the chart renders with the values the tests install it with."""
        rendered = self.kube.helm(
            "template", RELEASE, f"{self.repository}/localai-operator", "--version", version,
            "--namespace", NAMESPACE, "--ca-file", str(self.registry.ca_cert), *E2E_IMAGE_VALUES,
        ).stdout  # fmt: skip
        (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
        return dict(deployment)


@dataclass(frozen=True)
class Seen:
    uid: str
    resource_version: str
    generation: int | None
    spec: Any


Snapshot = dict[str, Seen]


def snapshot(kube: Kube) -> Snapshot:
    """Every object of the release (its manifest) and the CRDs, as the API server has them now."""
    manifest = kube.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
    names = [f"{o['kind']}/{o['metadata']['name']}" for o in yaml.safe_load_all(manifest) if o]
    names += [f"customresourcedefinition/{crd}" for crd in CRDS]
    listed = json.loads(kube.kubectl("get", *names, "--namespace", NAMESPACE, "-o", "json").stdout)["items"]
    return {
        f"{o['kind']}/{o['metadata']['name']}": Seen(
            o["metadata"]["uid"],
            o["metadata"]["resourceVersion"],
            o["metadata"].get("generation"),
            o.get("spec"),
        )
        for o in listed
    }


@dataclass
class History:
    """The snapshots along the documented path: previous release installed, upgraded, upgraded again."""

    published: Published
    installed_previous: Snapshot
    upgraded: Snapshot
    upgraded_again: Snapshot
    release: dict[str, Any]  # `helm list` of the release once upgraded twice


@pytest.fixture(scope="module")
def published(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    helm = helm_binary()
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    work = tmp_path_factory.mktemp("release")
    with Registry.start(work / "registry", binary=find_registry()) as registry:
        image = f"{registry.address}/localai-operator"
        flags = {"HELM_REGISTRY_FLAGS": f"--ca-file {registry.ca_cert}"}
        # This version: the release workflow's step, push and check included.
        package(ROOT, version, image, work / "dist", f"oci://{registry.address}/charts", flags)
        # The previous release, packaged by its own release script from its own tree.
        revision, previous_version = previous_release(version)
        old_tree = work / "previous"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "hack", "charts"], capture_output=True, check=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(old_tree, filter="data")
        tools = {"LOCALAI_OPERATOR_TOOLS": str(Path(helm).parent)}
        previous_chart = package(old_tree, previous_version, image, work / "previous-dist", None, tools)
        subprocess.run(
            [helm, "push", str(previous_chart), f"oci://{registry.address}/charts", "--ca-file", str(registry.ca_cert)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        with fresh_cluster(request) as access:
            kube = Kube(access.kubeconfig, kubectl_binary(), helm)
            if access.harness is None:
                remove_unused_crds(kube)
            yield Published(registry, kube, image, version, previous_version)
            if access.harness is None:  # a shared cluster (kind): the CRDs stay, as after any install
                kube.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found", "--wait")


def remove_unused_crds(kube: Kube) -> None:
    """On a shared cluster (kind), the CRDs earlier tests installed go, so that the previous release installs its
    own; only while no resource of ours exists, or the test would delete someone's."""
    present = [crd for crd in CRDS if kube.exists("crd", crd)]
    if not present:
        return
    in_use = kube.kubectl("get", ",".join(present), "-A", "-o", "name").stdout.split()
    assert not in_use, (
        f"the upgrade test starts without our CRDs, and this cluster has them in use ({len(in_use)} resources,"
        f" e.g. {in_use[:3]}): run it on a cluster without them"
    )
    kube.kubectl("delete", "crd", *present, "--wait", "--timeout=120s")


def package(
    tree: Path, version: str, image: str, out: Path, repository: str | None, env: dict[str, str]
) -> Path:
    argv = [
        str(tree / "hack" / "release-chart.sh"),
        version,
        image,
        str(out),
        *([repository] if repository else []),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def history(published: Published) -> History:
    kube = published.kube
    [install] = documented("helm install localai-operator oci://")
    # The old operator's pod is not waited for: on kind it would run today's image with the old chart's settings.
    published.run(install.replace(" --wait", ""), published.previous_version)
    installed_previous = snapshot(kube)
    upgrade = documented("helm show crds oci://") + documented("helm upgrade localai-operator oci://")
    for line in upgrade:
        published.run(line, published.version)
    upgraded = snapshot(kube)
    for line in upgrade:
        published.run(line, published.version)
    upgraded_again = snapshot(kube)
    [release] = json.loads(kube.helm("list", "-n", NAMESPACE, "-o", "json").stdout)
    return History(published, installed_previous, upgraded, upgraded_again, release)


def test_upgrading_from_the_previous_release_deletes_and_recreates_nothing(history: History) -> None:
    kept = history.installed_previous.keys() & history.upgraded.keys()
    assert {f"CustomResourceDefinition/{crd}" for crd in CRDS} <= kept
    assert "Deployment/localai-operator" in kept
    replaced = {key for key in kept if history.installed_previous[key].uid != history.upgraded[key].uid}
    assert not replaced, f"deleted and created again by the upgrade: {sorted(replaced)}"


def test_the_documented_upgrade_serves_this_versions_crd_schemas(history: History) -> None:
    changed = []
    for crd in CRDS:
        wanted = yaml.safe_load((CHART / "crds" / f"{crd}.yaml").read_text())["spec"]["versions"]
        served = history.upgraded[f"CustomResourceDefinition/{crd}"].spec["versions"]
        assert [v["schema"] for v in served] == [v["schema"] for v in wanted], f"{crd} kept an old schema"
        if history.installed_previous[f"CustomResourceDefinition/{crd}"].spec["versions"] != served:
            changed.append(crd)
    assert changed, "the previous release had the same CRDs: this upgrade would not test updating them"


def test_the_operator_deployment_rolls_only_if_its_spec_changed(history: History) -> None:
    before = history.installed_previous["Deployment/localai-operator"]
    after = history.upgraded["Deployment/localai-operator"]
    old = history.published.rendered_deployment(history.published.previous_version)["spec"]
    new = history.published.rendered_deployment(history.published.version)["spec"]
    assert before.generation is not None and after.generation is not None
    if old == new:
        assert after.generation == before.generation, "an unchanged Deployment spec was written"
    else:
        assert after.generation > before.generation, "the upgrade did not apply the new Deployment spec"


def test_running_the_same_upgrade_again_writes_no_object(history: History) -> None:
    assert history.upgraded_again.keys() == history.upgraded.keys()
    written = {
        key: (seen.resource_version, history.upgraded_again[key].resource_version)
        for key, seen in history.upgraded.items()
        if history.upgraded_again[key] != seen
    }
    assert not written, (
        f"changed by an upgrade that changes nothing (resourceVersion before, after): {written}"
    )


def test_the_upgraded_release_runs_this_versions_image(history: History) -> None:
    published = history.published
    [container] = history.upgraded["Deployment/localai-operator"].spec["template"]["spec"]["containers"]
    assert container["image"] == (E2E_IMAGE or f"{published.image}:{published.version}")
    release = history.release
    assert (release["chart"], release["app_version"]) == (
        f"localai-operator-{published.version}",
        published.version,
    )
    assert release["revision"] == "3", "installed, upgraded, upgraded again"


def test_the_release_installs_from_the_registry_as_documented(history: History) -> None:
    """Last in the module: it replaces the upgraded release with a fresh install of this version."""
    published = history.published
    kube = published.kube
    kube.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    [install] = documented("helm install localai-operator oci://")
    notes = published.run(install, published.version)
    assert f"localai-operator {published.version} is installed" in notes, notes
    kube.kubectl(
        "wait", "--for=condition=Available", f"deployment/{RELEASE}", "-n", NAMESPACE, "--timeout=10s"
    )
    deployment = json.loads(
        kube.kubectl("get", f"deployment/{RELEASE}", "-n", NAMESPACE, "-o", "json").stdout
    )
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == (E2E_IMAGE or f"{published.image}:{published.version}")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCALAI_OPERATOR_IMAGE"] == container["image"], "the routers run the operator's image"
