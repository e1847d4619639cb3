"""What a release publishes, short of pushing: the chart packaged by hack/release-chart.sh (the release workflow's
step) defaults to the image the release pushed, and so does the install.yaml rendered from it."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from localai_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
VERSION = "1.2.3"
IMAGE = "ghcr.io/acme/localai-operator"


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("release")
    result = subprocess.run(
        [str(ROOT / "hack" / "release-chart.sh"), VERSION, IMAGE, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip()), out / "install.yaml"


def _helm() -> str:
    tools = subprocess.run([str(ROOT / "hack" / "tools.sh")], capture_output=True, text=True, check=True)
    return str(Path(tools.stdout.strip().splitlines()[-1]) / "helm")


def _operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in documents if d and d["kind"] == "Deployment"]
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_released_chart_installs_the_released_image_by_default(released: tuple[Path, Path]) -> None:
    chart, _ = released
    rendered = subprocess.run(
        [_helm(), "template", "localai-operator", str(chart)], capture_output=True, text=True, check=True
    ).stdout
    container = _operator_container(list(yaml.safe_load_all(rendered)))
    assert container["image"] == f"{IMAGE}:{VERSION}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCALAI_OPERATOR_IMAGE"] == f"{IMAGE}:{VERSION}", "the routers use it too"
    assert env["LOCALAI_OPERATOR_DOWNLOADER_IMAGE"].startswith(f"{IMAGE}:"), "and the pools' init containers"


def test_the_released_chart_carries_the_release_version(released: tuple[Path, Path]) -> None:
    chart, _ = released
    shown = yaml.safe_load(
        subprocess.run(
            [_helm(), "show", "chart", str(chart)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert (shown["version"], shown["appVersion"]) == (VERSION, VERSION)


def test_the_released_install_yaml_runs_the_released_image(released: tuple[Path, Path]) -> None:
    _, install = released
    container = _operator_container(list(yaml.safe_load_all(install.read_text())))
    assert container["image"] == f"{IMAGE}:{VERSION}"


def test_the_release_workflow_pushes_a_multi_arch_image_with_provenance() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
    assert list(workflow[True]["push"]) == ["tags"], (
        "releases run on version tags only"
    )  # YAML 1.1: `on` is True
    (build,) = [
        s for s in workflow["jobs"]["image"]["steps"] if s.get("uses", "").startswith("docker/build-push")
    ]
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert build["with"]["provenance"] == "mode=max"


def test_the_release_workflow_packages_pushes_and_checks_the_chart_with_the_tested_script() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
    runs = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert [r for r in runs if "release-chart.sh" in r] == [
        './hack/release-chart.sh "$VERSION" "$IMAGE" dist "oci://$CHARTS"'
    ], "one packaging and push step, the one tests/e2e/test_oci_release.py runs against a registry"
    assert not [r for r in runs if "helm push" in r or "helm package" in r], "no second packaging or push"


def test_the_chart_app_version_is_the_package_version_and_the_default_image_tag() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "localai-operator" / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["version"] == chart["appVersion"] == project["version"] == __version__
    rendered = subprocess.run(
        [_helm(), "template", "localai-operator", str(ROOT / "charts" / "localai-operator")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    container = _operator_container(list(yaml.safe_load_all(rendered)))
    assert container["image"] == f"localai-operator:{chart['appVersion']}", "image.tag defaults to appVersion"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCALAI_OPERATOR_IMAGE"] == container["image"]
