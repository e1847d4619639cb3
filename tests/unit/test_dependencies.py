"""What the image installs: the runtime needs neither the kubernetes client library nor `cryptography` (the dev
harness's), and the operator and the router start without loading them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS_ONLY = ("kubernetes", "cryptography")


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()


def test_the_runtime_dependencies_leave_the_harness_libraries_to_the_dev_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert runtime.isdisjoint(HARNESS_ONLY)
    assert dev >= set(HARNESS_ONLY)


def test_the_operator_and_the_router_start_where_the_harness_libraries_are_not_installed() -> None:
    # As in the image: importing either library fails (Kopf probes for kubernetes and carries on without it).
    probe = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HARNESS_ONLY!r}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import localai_operator.cli, localai_operator.control.main, localai_operator.router.server\n"
        "import localai_operator.fetch\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported without an endpoint'\n"
        "print('started')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_the_operator_leaves_the_client_library_out_unless_its_kubeconfig_needs_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("users: [{name: admin, user: {client-certificate-data: x, client-key-data: y}}]\n")
    eks = tmp_path / "eks"
    eks.write_text("users: [{name: eks, user: {exec: {command: aws}}}]\n")
    probe = (
        "from localai_operator.control.kubeconfig import leave_out_the_client_library\n"
        "leave_out_the_client_library()\n"
        "import kopf, sys\n"
        "print(sys.modules.get('kubernetes') is not None)\n"
    )
    loaded = {}
    for name, kubeconfig in (("plain", plain), ("eks", eks)):
        result = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            env={"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")},
        )
        loaded[name] = result.stdout.strip()
    assert loaded == {"plain": "False", "eks": "True"}


def test_the_image_installs_the_telemetry_extra_that_the_runtime_does_without() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    telemetry = {_name(r) for r in project["optional-dependencies"]["telemetry"]}
    assert telemetry == {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
    assert runtime.isdisjoint(telemetry)
    assert "'localai-operator[telemetry]'" in (ROOT / "Dockerfile").read_text()
