"""`localai-operator dev up | status | down`: the local control plane, the operator, the samples and a demo, on one
machine with no GPU and no Docker.

With a real node (root, cgroups: `real_node_unavailable_reason()` is None) the operator runs in a pod, installed
with its Helm chart and the image this checkout builds, and the real-node samples (manifests/real-node/) serve
Gemma 3 270M on CPU behind a FallbackRoute whose fallback is a cloud stand-in pod; the demo's requests go through
the route's Service. Without one, `dev up` says why and runs the kwok-only demo: the operator as a host process
and the router against stand-ins on localhost. The kwok GPU samples (manifests/samples/) are applied in both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from localai_operator.api.kinds import INFERENCE_POOL
from localai_operator.constants import (
    FALLBACK_API_KEY_ENV,
    FALLBACK_REASON_HEADER,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    SERVED_BY_HEADER,
)
from localai_operator.control.kube import Kube
from localai_operator.devcluster import binaries as binaries_module
from localai_operator.devcluster import images as images_module
from localai_operator.devcluster import stack
from localai_operator.devcluster.cluster import Cluster, ClusterError
from localai_operator.devcluster.errors import RealNodeError
from localai_operator.devcluster.process import ProcessRecord, free_ports, record, spawn, stop_groups
from localai_operator.devcluster.realnode import unavailable_reason as real_node_unavailable_reason
from localai_operator.render.pool import LOCALAI_CONTAINER

STATE_FILE = "dev.json"
KINDS = ("LLMModel", "InferencePool", "FallbackRoute")
DEMO_KEY = "demo-key-for-the-cloud-stand-in"
DEMO_ROUTE = "chat"
DEMO_MODEL = "mistral-7b-instruct"
MODE_REAL: Final = "real"
MODE_KWOK: Final = "kwok"
# Gemma 3 270M as packaged is the pretrained (base) model, not the instruction-tuned one: it continues text well
# and answers chat turns poorly, so the demo asks for a completion.
REAL_PROMPT: Final = "Kubernetes is"
REAL_MAX_TOKENS: Final = 48
POOL_POD_SELECTOR: Final = f"{LABEL_INSTANCE}={stack.POOL},{LABEL_COMPONENT}=inference-server"
KWOK_READY_SECONDS: Final = 180
REAL_READY_SECONDS: Final = 600


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def state_root() -> Path:
    if os.environ.get("LOCALAI_OPERATOR_DEV_DIR"):
        return Path(os.environ["LOCALAI_OPERATOR_DEV_DIR"])
    shm = Path("/dev/shm")
    if shm.is_dir():  # etcd and the logs on tmpfs: fast, and nothing left on disk after a reboot
        return shm / f"localai-operator-dev-{os.getuid()}"
    return binaries_module.cache_root() / "dev"


def samples_dir() -> Path:
    for candidate in (
        Path.cwd() / "manifests" / "samples",
        Path(__file__).resolve().parents[3] / "manifests" / "samples",
    ):
        if candidate.is_dir():
            return candidate
    raise SystemExit(
        "manifests/samples not found: run `localai-operator dev up` from a checkout of the project"
    )


@dataclass
class DevState:
    root: Path
    processes: dict[str, ProcessRecord]
    ports: dict[str, int]
    mode: str = ""

    @classmethod
    def load(cls, root: Path) -> DevState:
        try:
            data = json.loads((root / STATE_FILE).read_text())
        except FileNotFoundError:
            return cls(root, {}, {})
        processes = {name: ProcessRecord.from_json(p) for name, p in data.get("processes", {}).items()}
        ports = {k: int(v) for k, v in data.get("ports", {}).items()}
        return cls(root, processes, ports, str(data.get("mode", "")))

    def save(self) -> None:
        body = {
            "mode": self.mode,
            "processes": {n: p.to_json() for n, p in self.processes.items()},
            "ports": self.ports,
        }
        (self.root / STATE_FILE).write_text(json.dumps(body, indent=2))

    @property
    def cluster_dir(self) -> Path:
        return self.root / "cluster"

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.is_running()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.root / f"{name}.log"
        saved = os.environ.copy()
        os.environ.update(env or {})
        try:
            child = spawn(argv, log, die_with_parent=False)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.processes[name] = record(name, child, log)
        self.save()


@dataclass
class Timings:
    """How long each phase of `dev up` took, printed at the end (the first run is the cold one)."""

    started: float = field(default_factory=time.perf_counter)
    phases: list[tuple[str, float]] = field(default_factory=list)
    _mark: float = field(default_factory=time.perf_counter)

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        seconds = now - self._mark
        self.phases.append((phase, seconds))
        self._mark = now
        return seconds

    def line(self) -> str:
        parts = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.phases if seconds >= 0.05)
        return f"timings: {parts}; total {time.perf_counter() - self.started:.1f} s"


def _cluster(state: DevState, timings: Timings) -> tuple[Cluster, list[images_module.Image]]:
    """The running control plane (reused) or a new one, with the real node and the built images where this
    machine can run them; else kwok-only, after saying exactly why."""
    if (state.cluster_dir / "state.json").exists():
        try:
            existing = Cluster.attach(state.cluster_dir)
            if existing.is_running():
                kind = "with its real node" if existing.real_node else "kwok-only"
                say(f"reusing the running control plane ({kind}) in {state.cluster_dir}")
                try:
                    reused = _built_images() if existing.real_node else []
                except images_module.ImageError as err:
                    raise SystemExit(f"the images for the running real node cannot be built: {err}") from err
                timings.lap("images")
                return existing, reused
            existing.stop()
        except ClusterError:
            shutil.rmtree(state.cluster_dir, ignore_errors=True)
    try:
        binaries_module.find(build=False)
    except binaries_module.BinariesError:
        say(
            "building the Kubernetes control plane from source the first time (about 10-30 minutes on 2 cores;"
            " cached afterwards); progress follows"
        )
    found = binaries_module.find()
    timings.lap("control-plane binaries")
    why_not = real_node_unavailable_reason()
    built: list[images_module.Image] = []
    if why_not is None:
        try:
            binaries_module.find_node(build=False)
        except binaries_module.BinariesError:
            say(
                "building the real node's kubelet, kube-proxy, containerd, CNI plugins and CoreDNS the first time"
                " (about 8 minutes on 2 cores; cached afterwards)"
            )
        try:
            built = _built_images()
        except images_module.ImageError as err:
            why_not = f"the project's images cannot be built here: {err}"
        timings.lap("images")
    if why_not is None:
        say(
            "starting etcd, kube-apiserver, controller-manager, scheduler and kwok with 2 fake GPU nodes (4 x A100"
            " each) and 1 CPU node, and the real node (containerd, runc, kubelet, kube-proxy, CoreDNS)"
        )
        try:
            cluster = Cluster.start(state_dir=state.cluster_dir, binaries=found, detach=True, real_node=True)
        except RealNodeError as err:
            why_not = f"the real node did not start: {err}"
        else:
            assert cluster.real_node is not None, "started with real_node=True"
            node_seconds = _seconds_since_start(
                next(p.start_ticks for p in cluster.processes if p.name == "containerd")
            )
            say(
                f"control plane and real node {cluster.real_node.name} Ready (the node's containerd, kubelet,"
                f" kube-proxy and CoreDNS in {node_seconds:.1f} s)"
            )
            timings.lap("control plane + real node")
            return cluster, built
    say(f"no real node: {why_not}")
    say("falling back to the kwok-only demo (fake nodes; the operator and the router as host processes)")
    say(
        "starting etcd, kube-apiserver, controller-manager, scheduler and kwok with 2 fake GPU nodes (4 x A100 each)"
        " and 1 CPU node"
    )
    cluster = Cluster.start(state_dir=state.cluster_dir, binaries=found, detach=True)
    timings.lap("control plane")
    return cluster, []


def _seconds_since_start(start_ticks: int) -> float:
    """How long ago a process started, from its /proc start time (clock ticks after boot)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _built_images() -> list[images_module.Image]:
    if not all(images_module.cached(which) for which in stack.STACK_IMAGES):
        say(
            "building the operator, LocalAI and model-mirror images (buildah, no Docker; LocalAI v4.9.0 and its"
            " llama-cpp backend from source: the first time about half an hour on 2 cores, then cached by"
            " content); progress follows"
        )
    return stack.build_images()


def _wait_http(url: str, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what} ({url})")


def _api(cluster: Cluster) -> Kube:
    from kubernetes import config

    return Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]


def _install_crds(kube: Kube) -> None:
    if not kube.install_crds():
        raise SystemExit("the CRDs did not become Established")


def _operator(state: DevState, cluster: Cluster) -> None:
    if state.running("operator"):
        say("reusing the running operator")
        return
    metrics, health = free_ports(2)
    state.ports.update({"operator-metrics": metrics, "operator-health": health})
    argv = [
        sys.executable,
        "-m",
        "localai_operator.cli",
        "run",
        "-A",
        "--metrics-port",
        str(metrics),
        "--health-port",
        str(health),
    ]
    state.start("operator", argv, {"KUBECONFIG": str(cluster.kubeconfig)})
    _wait_http(f"http://127.0.0.1:{health}/healthz", 60, "the operator")
    say(f"operator running (log: {state.root / 'operator.log'}, metrics: http://127.0.0.1:{metrics}/metrics)")


def _kubectl(cluster: Cluster, *args: str, input: str | None = None) -> str:
    kubectl = str(binaries_module.find(build=False).kubectl)
    try:
        return stack.run([kubectl, f"--kubeconfig={cluster.kubeconfig}", *args], input=input)
    except stack.StackError as err:
        raise SystemExit(str(err)) from err


def _operator_in_cluster(cluster: Cluster, kube: Kube, images: stack.StackImages) -> None:
    """The operator from the chart, in a pod on the real node: installed, upgraded when the image changed, or
    reused."""
    helm = stack.helm_binary()
    deployed = _helm_values(helm, cluster)
    repository, tag = stack.split_image(images.operator)
    if deployed is not None and (
        _value(deployed, "image", "repository"),
        _value(deployed, "image", "tag"),
        _value(deployed, "downloader", "image", "tag"),
    ) == (repository, tag, tag):
        say(
            f"reusing the running operator (helm release {stack.OPERATOR_NAMESPACE}/{stack.RELEASE}, image"
            f" {images.operator})"
        )
        return
    try:
        stack.run(stack.helm_install_command(helm, cluster.kubeconfig, images))
    except stack.StackError as err:
        raise SystemExit(f"helm could not install the operator: {err}") from err
    pods = kube.list("Pod", stack.OPERATOR_NAMESPACE)
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    where = ", ".join(f"pod {p['metadata']['name']} on {p['spec'].get('nodeName')}" for p in running)
    say(
        f"operator installed with helm (release {stack.OPERATOR_NAMESPACE}/{stack.RELEASE}, chart"
        f" charts/localai-operator, image {images.operator}): {where or 'starting'}"
    )


def _value(values: Any, *path: str) -> Any:
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values


def _helm_values(helm: str, cluster: Cluster) -> dict[str, Any] | None:
    """The user-supplied values of the deployed release, or None when it is not deployed."""
    status = subprocess.run(
        [
            helm,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "status",
            stack.RELEASE,
            "-n",
            stack.OPERATOR_NAMESPACE,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if status.returncode != 0 or json.loads(status.stdout).get("info", {}).get("status") != "deployed":
        return None
    values = stack.run(
        [
            helm,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "get",
            "values",
            stack.RELEASE,
            "-n",
            stack.OPERATOR_NAMESPACE,
            "-o",
            "json",
        ]
    )
    loaded = json.loads(values)
    return loaded if isinstance(loaded, dict) else {}


def _custom_resources(kube: Kube) -> list[dict[str, Any]]:
    out = []
    for kind in KINDS:
        for item in kube.list(kind):
            item["kind"] = kind
            out.append(item)
    return out


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return dict(condition)
    return {"status": "Unknown", "reason": "Pending", "message": "not reconciled yet"}


def _apply_samples(cluster: Cluster, kube: Kube, images: stack.StackImages | None) -> None:
    _kubectl(cluster, "apply", "-f", str(samples_dir()))
    say(f"applied {samples_dir()} (kubectl apply)")
    if images is not None:
        _kubectl(cluster, "apply", "-f", "-", input=stack.sample_manifests(images))
        say(f"applied {stack.samples_dir()} with the built images (kubectl apply -f -)")
        _scale_pool(
            cluster, kube, 1
        )  # an interrupted demo may have left it at 0; kubectl apply keeps a patched value
    seconds = REAL_READY_SECONDS if images is not None else KWOK_READY_SECONDS
    deadline, last = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        waiting = [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in _custom_resources(kube)
            if _ready(o)["status"] != "True"
        ]
        if not waiting:
            say("every sample is Ready")
            return
        line = f"waiting for Ready: {', '.join(waiting)}"
        if line != last:
            say(line)
            last = line
        time.sleep(1)
    raise SystemExit(
        f"the samples did not become Ready within {seconds // 60} minutes: see `localai-operator dev status`"
    )


def _owned(kube: Kube, obj: dict[str, Any]) -> list[str]:
    uid, namespace = obj["metadata"]["uid"], obj["metadata"]["namespace"]
    found = []
    for kind in ("Deployment", "Service", "ConfigMap"):
        for item in kube.list(kind, namespace):
            if any(ref.get("uid") == uid for ref in item["metadata"].get("ownerReferences") or []):
                found.append(f"{kind}/{item['metadata']['name']}")
    return found


def table(kube: Kube) -> str:
    rows = [("KIND", "NAMESPACE/NAME", "READY", "REASON", "OWNS")]
    for obj in _custom_resources(kube):
        ready = _ready(obj)
        meta = obj["metadata"]
        rows.append(
            (
                obj["kind"],
                f"{meta['namespace']}/{meta['name']}",
                ready["status"],
                ready.get("reason", ""),
                ", ".join(_owned(kube, obj)) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)


def pods_table(kube: Kube) -> str:
    """The real node's pods: what runs for real (kwok's fake pods are left out)."""
    rows = [("NAMESPACE/POD", "NODE", "PHASE", "READY")]
    for namespace in (stack.OPERATOR_NAMESPACE, stack.NAMESPACE):
        for pod in kube.list("Pod", namespace):
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            ready = f"{sum(bool(s.get('ready')) for s in statuses)}/{len(pod['spec']['containers'])}"
            rows.append(
                (
                    f"{namespace}/{pod['metadata']['name']}",
                    str(pod["spec"].get("nodeName") or "-"),
                    str((pod.get("status") or {}).get("phase", "?")),
                    ready,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


def _router_demo(state: DevState) -> None:
    from localai_operator.render.offline import _documents, parse
    from localai_operator.render.route import router_config

    _, _, routes = parse(_documents([str(samples_dir())]))
    route = next(r for r in routes if r.name == DEMO_ROUTE)
    if not all(state.running(n) for n in ("standin-local", "standin-cloud", "router")):
        stop_groups(
            [
                state.processes[n]
                for n in ("standin-local", "standin-cloud", "router")
                if n in state.processes
            ],
            {},
        )
        local, cloud, router = free_ports(3)
        state.ports.update({"standin-local": local, "standin-cloud": cloud, "router": router})
        py = [sys.executable, "-m", "localai_operator.testing.standins"]
        state.start("standin-local", [*py, "local", "--port", str(local), "--models", DEMO_MODEL])
        state.start(
            "standin-cloud",
            [*py, "cloud", "--port", str(cloud), "--api-key-env", FALLBACK_API_KEY_ENV],
            {FALLBACK_API_KEY_ENV: DEMO_KEY},
        )
        config = router_config(route)
        assert config.fallback is not None, "the demo route has a fallback"
        # The pool's headless Service does not resolve outside a cluster: the stand-in is the one endpoint (so no
        # pool either: a pool is found by DNS), and the spend ledger lives in the demo's directory.
        local_upstream = config.local.model_copy(
            update={"endpoints": [f"http://127.0.0.1:{local}/v1"], "discovery": None, "pool": None}
        )
        config = config.model_copy(
            update={
                "local": local_upstream,
                "server": config.server.model_copy(update={"state_directory": str(state.root)}),
                "fallback": config.fallback.model_copy(update={"base_url": f"http://127.0.0.1:{cloud}/v1"}),
            }
        )
        (state.root / "router.yaml").write_text(config.to_yaml())
        argv = [
            sys.executable,
            "-m",
            "localai_operator.cli",
            "router",
            "--config",
            str(state.root / "router.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(router),
        ]
        state.start("router", argv, {FALLBACK_API_KEY_ENV: DEMO_KEY})
        for name in ("standin-local", "standin-cloud"):
            _wait_http(f"http://127.0.0.1:{state.ports[name]}/healthz", 30, f"the {name}")
        _wait_http(f"http://127.0.0.1:{router}/readyz", 30, "the router")
    else:
        say("reusing the running router demo")
    budget = route.spec.policy.first_token_timeout_ms
    base = f"http://127.0.0.1:{state.ports['router']}/v1"
    say(
        f"router for FallbackRoute llm-samples/{DEMO_ROUTE} on {base}: local = LocalAI stand-in, "
        "fallback = cloud stand-in (both fake OpenAI-compatible servers on localhost)"
    )
    served, ms = _ask(base, "Say hello from the local pool.")
    print(
        f"    request 1: local healthy          -> {SERVED_BY_HEADER}: {served:<8}  {ms:7.1f} ms", flush=True
    )
    control = f"http://127.0.0.1:{state.ports['standin-local']}/standin/behaviour"
    _post(control, {"delay_before_headers": budget / 1000 + 5, "delay_before_first_chunk": budget / 1000 + 5})
    try:
        served, ms = _ask(base, "Say hello from wherever is fastest.")
    finally:
        _post(control, {})
    print(
        f"    request 2: local slower than the {budget} ms first-token budget"
        f" -> {SERVED_BY_HEADER}: {served:<8}  {ms:7.1f} ms",
        flush=True,
    )
    print(
        "    These are stand-ins. On a cluster the route sends traffic to the InferencePool's LocalAI and, on\n"
        "    failure or delay, to https://api.holysheep.ai/v1 with the key from Secret llm-samples/holysheep.\n"
        "    Outside a cluster: `localai-operator router --config router.yaml` with local.endpoints set to your\n"
        f"    LocalAI (http://<host>:8080/v1) and {FALLBACK_API_KEY_ENV} set to your HolySheep key.",
        flush=True,
    )


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def _ask(base: str, prompt: str) -> tuple[str, float]:
    body = {"model": DEMO_MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    request = urllib.request.Request(
        f"{base}/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer client-token"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        served = response.headers.get(SERVED_BY_HEADER, "?")
    return served, (time.perf_counter() - started) * 1000


@dataclass
class Answer:
    """One streamed completion as a client sees it."""

    served_by: str
    fallback_reason: str | None
    text: str
    tokens: int
    first_token_ms: float | None
    total_ms: float
    tokens_per_second: float | None


def complete(base: str, prompt: str, max_tokens: int = REAL_MAX_TOKENS) -> Answer:
    """A streamed /v1/completions request (no proxy: a ClusterIP is local to this machine)."""
    body = {"model": stack.MODEL, "prompt": prompt, "stream": True, "max_tokens": max_tokens}
    request = urllib.request.Request(
        f"{base}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    with opener.open(request, timeout=120) as response:
        served = response.headers.get(SERVED_BY_HEADER, "?")
        reason = response.headers.get(FALLBACK_REASON_HEADER)
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line.removeprefix("data: ")).get("choices") or []:
                if choice.get("text"):
                    last = time.perf_counter()
                    first = first or last
                    pieces.append(choice["text"])
    total = time.perf_counter() - started
    rate = (len(pieces) - 1) / (last - first) if first and last and last > first else None
    ttft = (first - started) * 1000 if first else None
    return Answer(served, reason, "".join(pieces), len(pieces), ttft, total * 1000, rate)


def _scale_pool(cluster: Cluster, kube: Kube, replicas: int) -> None:
    pool = kube.get("InferencePool", stack.NAMESPACE, stack.POOL)
    if pool is not None and pool["spec"].get("replicas") != replicas:
        patch = json.dumps({"spec": {"replicas": replicas}})
        _kubectl(
            cluster,
            "patch",
            INFERENCE_POOL.resource,
            stack.POOL,
            "-n",
            stack.NAMESPACE,
            "--type=merge",
            "-p",
            patch,
        )


def _wait(what: str, seconds: float, done: Any) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > seconds:
            raise SystemExit(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def _pool_ready(kube: Kube) -> bool:
    pool = kube.get("InferencePool", stack.NAMESPACE, stack.POOL) or {}
    status = pool.get("status") or {}
    return bool(
        _ready(pool)["status"] == "True"
        and status.get("observedGeneration") == pool.get("metadata", {}).get("generation")
        and status.get("readyReplicas", 0) >= 1
    )


def _router_endpoints(base: str, breaker: str | None = "closed") -> list[str] | None:
    """The local endpoints the router behind `base` lists on its /readyz (with that breaker state); None when it
    does not answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(base.removesuffix("/v1") + "/readyz", timeout=5) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return [e["url"] for e in body.get("endpoints") or [] if breaker in (None, e.get("breaker"))]


def _pod_process(cluster: Cluster, kube: Kube, url: str) -> str:
    """The pool's pod behind a router endpoint URL and the program its LocalAI container runs as process 1."""
    host = url.split("://", 1)[-1].split(":", 1)[0]
    pods = kube.list("Pod", stack.NAMESPACE, label_selector=POOL_POD_SELECTOR)
    name = next((p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("podIP") == host), None)
    if name is None:
        return f"no pod of the pool has the address {host}"
    command = _kubectl(
        cluster, "exec", "-n", stack.NAMESPACE, name, "-c", LOCALAI_CONTAINER, "--", "cat", "/proc/1/cmdline"
    )
    return f"pod {name}, process 1 of its {LOCALAI_CONTAINER} container: {command.split(chr(0))[0]}"


def _real_demo(cluster: Cluster, kube: Kube) -> None:
    service = kube.get("Service", stack.NAMESPACE, stack.ROUTE)
    assert service is not None, "the route's Service exists once the route is Ready"
    base = f"http://{service['spec']['clusterIP']}/v1"
    say(
        f"FallbackRoute {stack.NAMESPACE}/{stack.ROUTE} on {base} (its Service's ClusterIP; this host routes to"
        f" ClusterIPs): local = InferencePool {stack.POOL} (LocalAI v4.9.0 serving Gemma 3 270M Q4_K_M on the real node's CPU),"
        f" fallback = the cloud stand-in pod"
    )
    # The route is Ready when its router is; the router finds the pool's pods by DNS every few seconds.
    seconds = _wait("the router to list a pod of the pool (its /readyz)", 60, lambda: _router_endpoints(base))
    listed = _router_endpoints(base) or []
    say(
        f"the router lists the pool's pod {', '.join(listed)} ({seconds:.1f} s after Ready): "
        f"{'; '.join(_pod_process(cluster, kube, url) for url in listed)}"
    )
    answer = complete(base, REAL_PROMPT)
    rate = f"{answer.tokens_per_second:.1f} tokens/s" if answer.tokens_per_second else "-"
    first = f"{answer.first_token_ms:.0f} ms" if answer.first_token_ms is not None else "-"
    print(
        f"    request 1: POST /v1/completions {REAL_PROMPT!r} -> {SERVED_BY_HEADER}: {answer.served_by:<8}"
        f" first token {first}, {answer.tokens} tokens, {rate}",
        flush=True,
    )
    print(f"               {REAL_PROMPT}{answer.text}".rstrip().replace("\n", " "), flush=True)
    _scale_pool(cluster, kube, 0)
    _wait(
        f"the pods of InferencePool {stack.POOL} to go",
        120,
        lambda: not kube.list("Pod", stack.NAMESPACE, label_selector=POOL_POD_SELECTOR),
    )
    _wait("the router to list no pod of the pool", 60, lambda: _router_endpoints(base, None) == [])
    answer = complete(base, REAL_PROMPT)
    print(
        f"    request 2: the same, with the pool scaled to 0 (no Ready pod) -> {SERVED_BY_HEADER}:"
        f" {answer.served_by:<8} {FALLBACK_REASON_HEADER}: {answer.fallback_reason}, {answer.total_ms:.1f} ms"
        f" ({answer.text.strip()[:60]!r})",
        flush=True,
    )
    _scale_pool(cluster, kube, 1)
    seconds = _wait(f"InferencePool {stack.POOL} to be Ready again", 300, lambda: _pool_ready(kube))
    say(
        f"{stack.POOL} scaled back to 1: Ready again in {seconds:.1f} s (a cold start: fetch-models downloaded the"
        f" 253 MB GGUF from the mirror pod and checked its sha256, LocalAI loaded it)"
    )


def up() -> int:
    timings = Timings()
    state = DevState.load(state_root())
    state.root.mkdir(parents=True, exist_ok=True)
    cluster, built = _cluster(state, timings)
    kube = _api(cluster)
    _install_crds(kube)
    say("CRDs installed (kubectl get llm -A lists all three kinds)")
    images = None
    if cluster.real_node is not None:
        state.mode = MODE_REAL
        imported = stack.import_images(cluster.real_node, built)
        if imported:
            say(f"imported into {cluster.real_node.name}'s containerd: {', '.join(imported)}")
        timings.lap("image import")
        images = stack.StackImages.of(built)
        _operator_in_cluster(cluster, kube, images)
        timings.lap("operator (helm)")
    else:
        state.mode = MODE_KWOK
        _operator(state, cluster)
        timings.lap("operator")
    state.save()
    _apply_samples(cluster, kube, images)
    timings.lap("samples Ready")
    if images is not None:
        _real_demo(cluster, kube)
    else:
        _router_demo(state)
    timings.lap("demo")
    print(table(kube), flush=True)
    if images is not None:
        print(pods_table(kube), flush=True)
    say(timings.line())
    _print_access(cluster, real=images is not None)
    return 0


def _print_access(cluster: Cluster, *, real: bool) -> None:
    if real:
        ns, pool, route = stack.NAMESPACE, stack.POOL, stack.ROUTE
        print(
            f"kubectl -n {ns} logs deploy/{pool}                # LocalAI (-c fetch-models: the download)\n"
            f"kubectl -n {ns} exec deploy/{pool} -- ls -l /models\n"
            f"kubectl -n {ns} port-forward svc/{route} 8000:80   # then OPENAI_BASE_URL=http://127.0.0.1:8000/v1",
            flush=True,
        )
    kubectl = binaries_module.find(build=False).kubectl
    print(f"kubectl matching this control plane: {kubectl} (any kubectl >= 1.33 works)", flush=True)
    print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)


def status() -> int:
    state = DevState.load(state_root())
    try:
        cluster = Cluster.attach(state.cluster_dir)
    except ClusterError:
        print("not running: start it with `localai-operator dev up`", file=sys.stderr)
        return 1
    if not cluster.is_running():
        down_components = [name for name, ok in cluster.status().items() if not ok]
        print(
            f"the control plane is not healthy ({', '.join(down_components)} stopped): "
            "run `localai-operator dev down` then `dev up`",
            file=sys.stderr,
        )
        return 1
    kube = _api(cluster)
    real = state.mode == MODE_REAL
    if real:
        print(
            f"real node {cluster.real_node.name if cluster.real_node else '?'}: the operator runs in a pod (helm"
            f" release {stack.OPERATOR_NAMESPACE}/{stack.RELEASE})",
            flush=True,
        )
        print(pods_table(kube), flush=True)
    else:
        for name in ("operator", "standin-local", "standin-cloud", "router"):
            print(f"{name:<14} {'running' if state.running(name) else 'stopped'}", flush=True)
    print(table(kube), flush=True)
    _print_access(cluster, real=real)
    return 0


def down() -> int:
    state = DevState.load(state_root())
    stop_groups(list(state.processes.values()), {})
    if (state.cluster_dir / "state.json").exists():
        try:
            Cluster.attach(state.cluster_dir).stop()
        except ClusterError as err:
            print(f"warning: {err}", file=sys.stderr)
    shutil.rmtree(state.root, ignore_errors=True)
    say(
        "stopped the operator, the demo and the control plane (and its real node); removed " + str(state.root)
    )
    return 0


def dev_command(action: str) -> int:
    return {"up": up, "status": status, "down": down}[action]()
