"""The operator as the user runs it (`localai-operator run`), in a subprocess the tests can kill and restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from localai_operator.constants import GROUP, VERSION
from localai_operator.control.kube import Kube
from tests.helpers import wait_for

READ_VERBS = frozenset({"get", "list"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_crds(api: client.ApiClient) -> None:
    assert Kube(api).install_crds(), "the CRDs did not become Established within 30 s"


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    resync_seconds: float = 3.0
    args: list[str] = field(default_factory=lambda: ["-A"])
    metrics_port: int = 0
    health_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LOCALAI_OPERATOR_RESYNC_SECONDS": str(self.resync_seconds),
            # The elastic loop looks every second, so that scaling tests wait seconds, not tens of them.
            "LOCALAI_OPERATOR_AUTOSCALE_SECONDS": "1",
        }
        argv = [
            sys.executable,
            "-m",
            "localai_operator.cli",
            "run",
            *self.args,
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._healthy, 60, "the operator's liveness endpoint", describe=self.log_tail)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-reconcile."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            match = re.match(r"^(localai_operator_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if match:
                out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return out

    def requests(self) -> dict[tuple[str, str], float]:
        """API requests the operator sent, by (verb, kind), Lease renewals left out: they are the price of
        having a standby at all, not work on the resources."""
        out: dict[tuple[str, str], float] = {}
        for key, value in self.metrics().items():
            if key.startswith("localai_operator_api_requests_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
                if labels["kind"] != "Lease":
                    verb_kind = (labels["verb"], labels["kind"])
                    out[verb_kind] = out.get(verb_kind, 0) + value
        return out

    def writes(self) -> float:
        return sum(v for (verb, _), v in self.requests().items() if verb not in READ_VERBS)

    def reads(self) -> float:
        return sum(v for (verb, _), v in self.requests().items() if verb in READ_VERBS)

    def reconciles(self) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith("localai_operator_reconciles_total"))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class CustomResources:
    """Create, read, patch and delete the three kinds in the test's namespace."""

    PLURALS = {"LLMModel": "llmmodels", "InferencePool": "inferencepools", "FallbackRoute": "fallbackroutes"}

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = client.CustomObjectsApi(api)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {
            **body,
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {**body.get("metadata", {}), "namespace": self.namespace},
        }
        plural = self.PLURALS[body["kind"]]
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body
        )
        return result

    def get(self, kind: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.PLURALS[kind], name
        )
        return result

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.PLURALS[kind], name, patch
        )

    def replace(self, body: dict[str, Any]) -> None:
        self.api.replace_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.PLURALS[body["kind"]], body["metadata"]["name"], body
        )

    def delete(self, kind: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, self.PLURALS[kind], name)

    def list(self, kind: str) -> list[dict[str, Any]]:
        result = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, self.PLURALS[kind])
        items: list[dict[str, Any]] = result["items"]
        return items

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict[str, Any] | None:
        for condition in (self.get(kind, name).get("status") or {}).get("conditions") or []:
            if condition["type"] == type_:
                return dict(condition)
        return None

    def wait_for_reason(self, kind: str, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        """Waits until the Ready condition carries `reason`; returns that condition."""

        def reported() -> dict[str, Any] | None:
            condition = self.condition(kind, name)
            return condition if condition and condition["reason"] == reason else None

        return wait_for(
            reported,
            timeout,
            f"{kind} {name} to report {reason}",
            describe=lambda: self.condition(kind, name),
        )

    def is_ready(self, kind: str, name: str) -> bool:
        condition = self.condition(kind, name)
        return condition is not None and condition["status"] == "True"


def model(name: str, **spec: Any) -> dict[str, Any]:
    source = {"url": f"https://models.example/{name}.gguf", "sha256": "c" * 64}
    return {"kind": "LLMModel", "metadata": {"name": name}, "spec": {"source": source, **spec}}


def pool(name: str, models: list[str], gpus: int = 0, **spec: Any) -> dict[str, Any]:
    body = {
        "models": models,
        "accelerator": {"gpus": gpus},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        **spec,
    }
    return {"kind": "InferencePool", "metadata": {"name": name}, "spec": body}


def route(name: str, pool_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "FallbackRoute",
        "metadata": {"name": name},
        "spec": {"primary": {"poolRef": {"name": pool_name}}, **spec},
    }
