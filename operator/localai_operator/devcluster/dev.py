"""`localai-operator dev up | status | down`: the local control plane, the operator, the samples, and the
router demo against stand-ins, on one machine with no GPU and no Docker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localai_operator.constants import FALLBACK_API_KEY_ENV, SERVED_BY_HEADER
from localai_operator.devcluster import binaries as binaries_module
from localai_operator.devcluster.cluster import Cluster, ClusterError
from localai_operator.devcluster.process import ProcessRecord, free_ports, record, spawn, stop_groups
from localai_operator.kube import Kube

STATE_FILE = "dev.json"
KINDS = ("LLMModel", "InferencePool", "FallbackRoute")
DEMO_KEY = "demo-key-for-the-cloud-stand-in"
DEMO_ROUTE = "chat"
DEMO_MODEL = "mistral-7b-instruct"


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

    @classmethod
    def load(cls, root: Path) -> DevState:
        try:
            data = json.loads((root / STATE_FILE).read_text())
        except FileNotFoundError:
            return cls(root, {}, {})
        processes = {name: ProcessRecord.from_json(p) for name, p in data.get("processes", {}).items()}
        return cls(root, processes, {k: int(v) for k, v in data.get("ports", {}).items()})

    def save(self) -> None:
        body = {"processes": {n: p.to_json() for n, p in self.processes.items()}, "ports": self.ports}
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


def _cluster(state: DevState) -> Cluster:
    if (state.cluster_dir / "state.json").exists():
        try:
            existing = Cluster.attach(state.cluster_dir)
            if existing.is_running():
                say(f"reusing the running control plane in {state.cluster_dir}")
                return existing
            existing.stop()
        except ClusterError:
            shutil.rmtree(state.cluster_dir, ignore_errors=True)
    try:
        binaries_module.find(build=False)
    except binaries_module.BinariesError:
        say("building the Kubernetes control plane from source the first time (about 10-30 minutes on 2 cores;"
            " cached afterwards); progress follows")  # fmt: skip
    found = binaries_module.find()
    say("starting etcd, kube-apiserver, controller-manager, scheduler and kwok with 2 fake GPU nodes (4 x A100 each)"
        " and 1 CPU node")  # fmt: skip
    return Cluster.start(state_dir=state.cluster_dir, binaries=found, detach=True)


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
    argv = [sys.executable, "-m", "localai_operator.cli", "run", "-A", "--metrics-port", str(metrics),
            "--health-port", str(health)]  # fmt: skip
    state.start("operator", argv, {"KUBECONFIG": str(cluster.kubeconfig)})
    _wait_http(f"http://127.0.0.1:{health}/healthz", 60, "the operator")
    say(f"operator running (log: {state.root / 'operator.log'}, metrics: http://127.0.0.1:{metrics}/metrics)")


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


def _apply_samples(cluster: Cluster, kube: Kube) -> None:
    kubectl = str(binaries_module.find(build=False).kubectl)
    result = subprocess.run([kubectl, f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", str(samples_dir())],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"kubectl apply of the samples failed: {result.stderr}")
    say(f"applied {samples_dir()} (kubectl apply)")
    deadline, last = time.monotonic() + 180, ""
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
    raise SystemExit("the samples did not become Ready within 3 minutes: see `localai-operator dev status`")


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
        rows.append((obj["kind"], f"{meta['namespace']}/{meta['name']}", ready["status"], ready.get("reason", ""),
                     ", ".join(_owned(kube, obj)) or "-"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)


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
        state.start("standin-cloud", [*py, "cloud", "--port", str(cloud), "--api-key-env", FALLBACK_API_KEY_ENV],
                    {FALLBACK_API_KEY_ENV: DEMO_KEY})  # fmt: skip
        config = router_config(route)
        assert config.fallback is not None, "the demo route has a fallback"
        config = config.model_copy(update={
            "local": config.local.model_copy(update={"endpoints": [f"http://127.0.0.1:{local}/v1"]}),
            "fallback": config.fallback.model_copy(update={"base_url": f"http://127.0.0.1:{cloud}/v1"}),
        })  # fmt: skip
        (state.root / "router.yaml").write_text(config.to_yaml())
        argv = [sys.executable, "-m", "localai_operator.cli", "router", "--config", str(state.root / "router.yaml"),
                "--host", "127.0.0.1", "--port", str(router)]  # fmt: skip
        state.start("router", argv, {FALLBACK_API_KEY_ENV: DEMO_KEY})
        for name in ("standin-local", "standin-cloud"):
            _wait_http(f"http://127.0.0.1:{state.ports[name]}/healthz", 30, f"the {name}")
        _wait_http(f"http://127.0.0.1:{router}/readyz", 30, "the router")
    else:
        say("reusing the running router demo")
    budget = route.spec.policy.first_token_timeout_ms
    base = f"http://127.0.0.1:{state.ports['router']}/v1"
    say(f"router for FallbackRoute llm-samples/{DEMO_ROUTE} on {base}: local = LocalAI stand-in, "
        "fallback = cloud stand-in (both fake OpenAI-compatible servers on localhost)")  # fmt: skip
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
    print(f"    request 2: local slower than the {budget} ms first-token budget"
          f" -> {SERVED_BY_HEADER}: {served:<8}  {ms:7.1f} ms", flush=True)  # fmt: skip
    print("    These are stand-ins. On a cluster the route sends traffic to the InferencePool's LocalAI and, on\n"
          "    failure or delay, to https://api.holysheep.ai/v1 with the key from Secret llm-samples/holysheep.\n"
          "    Outside a cluster: `localai-operator router --config router.yaml` with local.endpoints set to your\n"
          f"    LocalAI (http://<host>:8080/v1) and {FALLBACK_API_KEY_ENV} set to your HolySheep key.", flush=True)  # fmt: skip


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def _ask(base: str, prompt: str) -> tuple[str, float]:
    body = {"model": DEMO_MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    request = urllib.request.Request(f"{base}/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": "Bearer client-token"})  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        served = response.headers.get(SERVED_BY_HEADER, "?")
    return served, (time.perf_counter() - started) * 1000


def up() -> int:
    state = DevState.load(state_root())
    state.root.mkdir(parents=True, exist_ok=True)
    cluster = _cluster(state)
    kube = _api(cluster)
    _install_crds(kube)
    say("CRDs installed (kubectl get llm -A lists all three kinds)")
    _operator(state, cluster)
    _apply_samples(cluster, kube)
    _router_demo(state)
    print(table(kube), flush=True)
    _print_access(cluster)
    return 0


def _print_access(cluster: Cluster) -> None:
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
        print(f"the control plane is not healthy ({', '.join(down_components)} stopped): "
              "run `localai-operator dev down` then `dev up`", file=sys.stderr)  # fmt: skip
        return 1
    for name in ("operator", "standin-local", "standin-cloud", "router"):
        print(f"{name:<14} {'running' if state.running(name) else 'stopped'}", flush=True)
    print(table(_api(cluster)), flush=True)
    _print_access(cluster)
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
    say("stopped the operator, the router demo and the control plane; removed " + str(state.root))
    return 0


def dev_command(action: str) -> int:
    return {"up": up, "status": status, "down": down}[action]()
