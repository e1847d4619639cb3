"""The real stack the e2e tier drives: the operator installed with helm from the built image, and the real-node
samples (manifests/real-node/) Ready on the real node, reached from a client pod in the cluster (real DNS, real
kube-proxy) so that the same tests run on the local harness and on kind. Fixtures in conftest.py build it once per
tier; modules of later issues reuse it (`real_stack`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.api.kinds import INFERENCE_POOL
from localai_operator.constants import LABEL_COMPONENT, LABEL_INSTANCE
from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TOLERATION, stack
from tests.helpers import ClusterAccess, kubectl, kubectl_binary, wait_for

# The image names in kubeconfig mode (kind: the workflow builds them with Docker and loads them); locally the
# tests build and import them.
OPERATOR_IMAGE_ENV = "LOCALAI_OPERATOR_E2E_IMAGE"
LOCALAI_IMAGE_ENV = "LOCALAI_OPERATOR_E2E_LOCALAI_IMAGE"
MIRROR_IMAGE_ENV = "LOCALAI_OPERATOR_E2E_MIRROR_IMAGE"
IMAGE_ENVS = (OPERATOR_IMAGE_ENV, LOCALAI_IMAGE_ENV, MIRROR_IMAGE_ENV)
# Apart from test_install.py's release, so that both can run against one kind cluster.
RELEASE = "localai-operator-e2e"
OPERATOR_NAMESPACE = "localai-operator-e2e"
CLIENT_POD = "e2e-client"
POOL_SELECTOR = f"{LABEL_INSTANCE}={stack.POOL},{LABEL_COMPONENT}=inference-server"
READY_TIMEOUT = 600.0
# Runs in the client pod (the operator image's python, stdlib only). `call METHOD URL [JSON]` prints one JSON
# result; `loop MAX_SECONDS JSON_BODY kind=URL...` asks each target in turn (POST the body, or GET for kind
# `readyz`) and prints one JSON line per answer until its stdin closes or MAX_SECONDS pass.
CLIENT_SCRIPT = r"""
import json, sys, threading, time, urllib.error, urllib.request

def call(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, err.headers, err.read()
    except Exception as err:
        return {"url": url, "error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - started}
    out = {"url": url, "status": status, "served_by": headers.get("X-Served-By"),
           "reason": headers.get("X-Fallback-Reason"), "seconds": time.monotonic() - started}
    try:
        out["json"] = json.loads(raw)
    except ValueError:
        out["text"] = raw.decode(errors="replace")[:2000]
    return out

if sys.argv[1] == "call":
    print(json.dumps(call(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)))
else:
    until, body, targets = time.monotonic() + float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4:]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set() and time.monotonic() < until:
        for target in targets:
            kind, _, url = target.partition("=")
            result = call("GET", url, timeout=10) if kind == "readyz" else call("POST", url, body, timeout=30)
            print(json.dumps({**result, "kind": kind, "t": time.time()}), flush=True)
        time.sleep(0.1)
"""


@dataclass(frozen=True)
class StartupSample:
    """One look at the pool while its first pod started: its Ready condition, and whether LocalAI in the pod
    answered a completion on its own port at that moment."""

    seconds: float
    pool_ready: bool
    model_answers: bool


@dataclass
class Traffic:
    """A request loop running in the client pod; `lines` fills as answers arrive."""

    process: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> Traffic:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return self

    def of(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line["kind"] == kind and line["t"] >= since]

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


@dataclass
class RealStack:
    """The installed operator and the Ready real-node samples, with ways to look at them from inside the cluster."""

    access: ClusterAccess
    images: stack.StackImages
    helm: str
    namespace: str = stack.NAMESPACE
    release: str = RELEASE
    operator_namespace: str = OPERATOR_NAMESPACE
    startup: list[StartupSample] = field(default_factory=list)

    # ------------------------------------------------------------------ clients

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = kubectl(self.access, *args, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def helm_install(self) -> None:
        argv = stack.helm_install_command(
            self.helm,
            self.access.kubeconfig,
            self.images,
            release=self.release,
            namespace=self.operator_namespace,
            watch_namespaces=[self.namespace],
        )
        stack.run(argv)

    def helm_uninstall_argv(self, *flags: str) -> list[str]:
        """`helm uninstall` of the operator's release, with `flags` after it."""
        return [
            self.helm,
            "--kubeconfig",
            str(self.access.kubeconfig),
            "uninstall",
            self.release,
            "-n",
            self.operator_namespace,
            *flags,
        ]

    def helm_deployed(self) -> bool:
        result = subprocess.run(
            [
                self.helm,
                "--kubeconfig",
                str(self.access.kubeconfig),
                "status",
                self.release,
                "-n",
                self.operator_namespace,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.returncode == 0 and json.loads(result.stdout)["info"]["status"] == "deployed"

    def ensure_operator(self) -> None:
        """Installs the operator again if a test uninstalled it (the uninstall test runs last, but later
        modules may still use the stack)."""
        if not self.helm_deployed():
            self.helm_install()

    @property
    def core(self) -> client.CoreV1Api:
        return self.access.core

    def url(self, service: str, path: str, port: int | None = None) -> str:
        return f"http://{service}.{self.namespace}.svc{f':{port}' if port else ''}{path}"

    def in_cluster(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """`call METHOD URL [JSON]` from the client pod; the JSON result (status, served_by, reason, json...)."""
        out = subprocess.run(
            self._exec_argv(False, "-c", CLIENT_SCRIPT, "call", *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert out.returncode == 0, f"the client pod's request failed: {out.stdout}{out.stderr}"
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def chat(self, route: str, content: str = "Name a colour.", max_tokens: int = 8) -> dict[str, Any]:
        body = {
            "model": stack.MODEL,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        return self.in_cluster("POST", self.url(route, "/v1/chat/completions"), json.dumps(body))

    def readyz(self, route: str) -> dict[str, Any]:
        answer = self.in_cluster("GET", self.url(route, "/readyz"))
        assert answer.get("status") == 200, answer
        body: dict[str, Any] = answer["json"]
        return body

    @contextlib.contextmanager
    def traffic(
        self, targets: Sequence[str], body: dict[str, Any] | None = None, max_seconds: float = 600
    ) -> Iterator[Traffic]:
        """A request loop in the client pod over `targets` (`kind=URL`; kind `readyz` is a GET)."""
        body = body or {
            "model": stack.MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say one word."}],
        }
        argv = self._exec_argv(
            True, "-c", CLIENT_SCRIPT, "loop", str(max_seconds), json.dumps(body), *targets
        )
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        running = Traffic(process).start()
        try:
            yield running
        finally:
            running.stop()

    @contextlib.contextmanager
    def forward(self, service: str, port: int = 80) -> Iterator[str]:
        """`kubectl port-forward svc/<service>` on a free loopback port; yields `http://127.0.0.1:<port>`."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        forward = subprocess.Popen(
            [
                kubectl_binary(self.access),
                f"--kubeconfig={self.access.kubeconfig}",
                "port-forward",
                "-n",
                self.namespace,
                f"svc/{service}",
                f"{local}:{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert forward.stdout is not None
            first = forward.stdout.readline()
            assert first.startswith("Forwarding from 127.0.0.1"), first
            yield f"http://127.0.0.1:{local}"
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def _exec_argv(self, interactive: bool, *python_args: str) -> list[str]:
        """`kubectl exec` of python in the client pod; with `interactive` its stdin stays open (closing it ends a
        loop)."""
        return [
            kubectl_binary(self.access),
            f"--kubeconfig={self.access.kubeconfig}",
            "exec",
            *(["-i"] if interactive else []),
            "-n",
            self.namespace,
            CLIENT_POD,
            "--",
            "python",
            *python_args,
        ]

    # ------------------------------------------------------------------ the objects

    def pool_pods(self) -> list[client.V1Pod]:
        pods: list[client.V1Pod] = self.core.list_namespaced_pod(
            self.namespace, label_selector=POOL_SELECTOR
        ).items
        return pods

    def ready_pool_pod(self) -> client.V1Pod:
        return wait_for(
            lambda: next(
                (p for p in self.pool_pods() if pod_ready(p) and not p.metadata.deletion_timestamp), None
            ),
            READY_TIMEOUT,
            f"a Ready pod of InferencePool {self.namespace}/{stack.POOL}",
            describe=lambda: [(p.metadata.name, p.status.phase) for p in self.pool_pods()],
        )

    def patch_pool(self, spec: dict[str, Any]) -> None:
        """A merge patch of the sample pool's spec."""
        self.kubectl(
            "patch",
            INFERENCE_POOL.resource,
            stack.POOL,
            "-n",
            self.namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
        )

    def custom(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = client.CustomObjectsApi(self.access.api).get_namespaced_custom_object(
            "llm.localai-operator.io", "v1alpha1", self.namespace, plural, name
        )
        return obj

    def ready(self, plural: str, name: str) -> bool:
        try:
            obj = self.custom(plural, name)
        except ApiException:
            return False
        status = obj.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return (
            conditions.get("Ready") == "True"
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        )

    def model_answers_in(self, pod: client.V1Pod) -> bool:
        """Whether LocalAI in `pod` answers a one-token completion on its own port: curl in its container (LocalAI's
        images carry curl), so the pool's NetworkPolicy, enforced on kind, is not in the way."""
        body = json.dumps({"model": stack.MODEL, "prompt": "Hi", "max_tokens": 1})
        result = kubectl(
            self.access,
            "exec",
            "-n",
            self.namespace,
            pod.metadata.name,
            "-c",
            "localai",
            "--",
            "curl",
            "-sS",
            "-m",
            "20",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "http://127.0.0.1:8080/v1/completions",
        )
        if result.returncode != 0:
            return False
        try:
            answer = json.loads(result.stdout)
        except ValueError:
            return False
        return isinstance(answer, dict) and bool(answer.get("choices"))

    def router_lists_a_pod(self, route: str) -> bool:
        endpoints = self.readyz(route).get("endpoints") or []
        return any(e.get("breaker") == "closed" for e in endpoints)


def pod_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


SLEEP_SCRIPT = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def client_pod(image: str) -> dict[str, Any]:
    """A pod on the real node with the operator image's python, from which the tests send requests."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": CLIENT_POD, "labels": {"app.kubernetes.io/name": CLIENT_POD}},
        "spec": {
            "nodeSelector": dict(REAL_NODE_LABEL),
            "tolerations": [dict(REAL_NODE_TOLERATION)],
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", SLEEP_SCRIPT],
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }


def split_documents(text: str) -> tuple[str, str]:
    """(the Namespace documents, everything else) of a YAML stream: the namespace exists before the operator's
    namespaced install, the rest is applied once the operator runs."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    rest = [d for d in docs if d["kind"] != "Namespace"]
    return yaml.safe_dump_all(namespaces), yaml.safe_dump_all(rest)


def watch_startup(stack_: RealStack, timeout: float = READY_TIMEOUT) -> list[StartupSample]:
    """Samples the pool's Ready condition and its model's answer until the pool is Ready (the first pod start)."""
    samples: list[StartupSample] = []
    started = time.monotonic()

    def look() -> bool:
        pool_ready = stack_.ready("inferencepools", stack.POOL)
        pods = [p for p in stack_.pool_pods() if p.status.phase == "Running"]
        answers = bool(pods) and stack_.model_answers_in(pods[0])
        samples.append(StartupSample(time.monotonic() - started, pool_ready, answers))
        return pool_ready

    wait_for(
        look,
        timeout,
        f"InferencePool {stack_.namespace}/{stack.POOL} to become Ready",
        interval=0.5,
        describe=lambda: samples[-3:],
    )
    return samples


def images_for(access: ClusterAccess) -> stack.StackImages:
    """Locally: build the images (cached) and import them into the harness's real node. On a cluster given with
    --kubeconfig: the names in the environment, of images already loaded there (kind: `kind load docker-image`)."""
    if access.harness is None:
        names = [os.environ.get(name) for name in IMAGE_ENVS]
        if not all(names):
            raise AssertionError(
                f"set {', '.join(IMAGE_ENVS)} to the operator, LocalAI and model-mirror images loaded into the "
                "cluster (.github/workflows/e2e-kind.yaml builds them with Docker)"
            )
        return stack.StackImages(*(str(name) for name in names))
    node = access.harness.real_node
    assert node is not None, "the e2e stack needs the real node"
    built = stack.build_images()
    stack.import_images(node, built)
    return stack.StackImages.of(built)


def real_node_names(access: ClusterAccess) -> list[str]:
    key, value = next(iter(REAL_NODE_LABEL.items()))
    nodes = access.core.list_node(label_selector=f"{key}={value}").items
    return [n.metadata.name for n in nodes]


def install(access: ClusterAccess) -> RealStack:
    """Images, the namespace, the operator (helm), the client pod and the samples; returns once the pool, its
    routes and the route's router are Ready and the router lists the pool's pod."""
    assert real_node_names(access), (
        f"no node is labelled {REAL_NODE_LABEL} (on kind, label and taint a worker as .github/workflows/e2e-kind.yaml "
        "does)"
    )
    images = images_for(access)
    real = RealStack(access, images, stack.helm_binary())
    namespaces, rest = split_documents(stack.sample_manifests(images, real.namespace))
    real.kubectl("apply", "-f", "-", input=namespaces)
    real.helm_install()
    real.kubectl("apply", "-n", real.namespace, "-f", "-", input=json.dumps(client_pod(images.operator)))
    real.kubectl("apply", "-f", "-", input=rest)
    real.startup = watch_startup(real)
    for plural, name in (("fallbackroutes", stack.ROUTE), ("fallbackroutes", stack.SENSITIVE_ROUTE)):
        wait_for(lambda p=plural, n=name: real.ready(p, n), 120, f"FallbackRoute {name} to be Ready")
    real.kubectl("wait", "--for=condition=Ready", f"pod/{CLIENT_POD}", "-n", real.namespace, "--timeout=120s")
    wait_for(
        lambda: real.router_lists_a_pod(stack.ROUTE),
        60,
        f"the router of {stack.ROUTE} to list the pool's pod",
    )
    return real


def uninstall(real: RealStack) -> None:
    """Leaves a shared cluster (kind) as it was: the samples' namespace and the release go."""
    real.kubectl(
        "delete",
        "namespace",
        real.namespace,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=180s",
        check=False,
    )
    subprocess.run(
        real.helm_uninstall_argv("--ignore-not-found", "--wait"),
        capture_output=True,
        check=False,
    )
    real.kubectl(
        "delete", "namespace", real.operator_namespace, "--ignore-not-found", "--wait=false", check=False
    )
