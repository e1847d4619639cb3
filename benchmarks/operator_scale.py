"""Operator scale benchmark, run by hand: our operator and a naive Kopf peer (benchmarks/peer_operator.py), one after
the other on the same real control plane, each in its own namespace, over the same object counts.

For each: create -> owned Deployment latency in a burst of pool creates, time until every Deployment is available
(and, for ours, every InferencePool Ready=True), resident memory after convergence, API writes while nothing
changes and after a restart over unchanged resources. Operators, apiserver, etcd, kwok and this load generator
share the machine's cores: quote the figures as ratios against the peer of the same run (shared/PERF.md).

    python benchmarks/operator_scale.py [--models 1000] [--pools 100] [--models-per-pool 10] [--resync 30]
                                        [--kubeconfig PATH] [--logs DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the operator's process wrapper lives in tests/

from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from tests.helpers import wait_for  # noqa: E402
from tests.operator_process import (  # noqa: E402
    CustomResources,
    OperatorProcess,
    free_port,
    install_crds,
    model,
    pool,
)

from localai_operator.constants import GROUP, VERSION  # noqa: E402
from localai_operator.devcluster import Cluster, cpu_node  # noqa: E402

PEER = Path(__file__).resolve().parent / "peer_operator.py"
PEER_GROUP, PEER_VERSION = "bench.example", "v1"
KOPF_HANDLED = "kopf.zalando.org/last-handled-configuration"
PODS_PER_NODE = 250
QUIET_SECONDS = 5.0
LOG_PROBLEM = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b|Traceback")


@dataclass
class Figures:
    """What one operator showed; times in seconds from the first pool create unless named otherwise."""

    name: str
    models_settled: float = 0.0
    to_deployment: list[float] = field(default_factory=list)
    deployments_available: float = 0.0
    pools_ready: float | None = None
    writes_settled: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    cpu_seconds: float = 0.0
    reconciles: dict[str, tuple[float, float]] = field(default_factory=dict)
    queue_waits: dict[str, tuple[float, float]] = field(default_factory=dict)
    request_latency: dict[str, tuple[float, float]] = field(default_factory=dict)
    converge_writes: float = 0.0
    writes_by_kind: dict[str, float] = field(default_factory=dict)
    noop_seconds: float = 0.0
    noop_writes: float = 0.0
    noop_reads: float = 0.0
    noop_rss_mib: float = 0.0
    resync_pass: float | None = None
    stop_seconds: float = 0.0
    stop_exit: int | None = None
    restart_lease: float | None = None
    restart_pass: float = 0.0
    restart_seconds: float = 0.0
    restart_writes: float = 0.0
    restart_reads: float = 0.0
    restart_writes_by_kind: dict[str, float] = field(default_factory=dict)
    restart_rss_mib: float = 0.0
    log_problems: list[str] = field(default_factory=list)


class FirstSeen:
    """Records, from a background watch, when each object of one kind in one namespace first satisfies `holds`."""

    def __init__(
        self, list_call: Callable[..., Any], *args: Any, holds: Callable[[dict[str, Any]], bool]
    ) -> None:
        self.list_call, self.args, self.holds = list_call, args, holds
        self.times: dict[str, float] = {}
        self._version = ""
        self._stopped = threading.Event()

    def start(self) -> FirstSeen:
        self._list()  # synchronously, so nothing created after start() can be missed
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _see(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if name not in self.times and self.holds(obj):
            self.times[name] = now

    def _list(self) -> None:
        data = json.loads(self.list_call(*self.args, _preload_content=False).data)
        now = time.monotonic()
        for item in data["items"]:
            self._see(item, now)
        self._version = data["metadata"]["resourceVersion"]

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                for event in watch.Watch().stream(
                    self.list_call, *self.args, resource_version=self._version, timeout_seconds=10
                ):
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=obj.get("code"), reason=obj.get("reason"))
                    self._see(obj, time.monotonic())
                    self._version = obj["metadata"]["resourceVersion"]
            except Exception:  # 410 Gone or a dropped connection: list again, then watch from there
                if not self._stopped.is_set():
                    time.sleep(0.2)
                    self._list()


@dataclass
class PeerProcess:
    """`kopf run --standalone -A benchmarks/peer_operator.py` in a subprocess, with its write counts endpoint."""

    kubeconfig: Path
    log_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerProcess:
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PEER_COUNTS_PORT": str(self.port)}
        argv = [sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(PEER)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._up, 60, "the peer's counts endpoint")
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the peer exited with {self.process.returncode}; see {self.log_path}")
        try:
            self.counts()
        except OSError:
            return False
        return True

    def counts(self) -> dict[str, dict[str, float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as response:
            result: dict[str, dict[str, float]] = json.loads(response.read())
        return result

    def writes(self) -> float:
        return sum(self.counts()["writes"].values())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used since it started."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stopped(process: OperatorProcess | PeerProcess, grace: float = 30.0) -> tuple[float, int | None]:
    """SIGTERM, then SIGKILL after Kubernetes' default grace period; returns how long it took and the exit code."""
    child = process.process
    assert child is not None
    started = time.monotonic()
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
    return time.monotonic() - started, child.returncode


def histogram_means(metrics: dict[str, float], name: str) -> dict[str, tuple[float, float]]:
    """Per label value of a one-label histogram: (observations, mean)."""
    out = {}
    for key, count in metrics.items():
        match = re.match(rf'{name}_count\{{(\w+)="([^"]+)"\}}', key)
        if match and count:
            total = metrics[f'{name}_sum{{{match.group(1)}="{match.group(2)}"}}']
            out[match.group(2)] = (count, total / count)
    return out


def reconcile_stats(metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Per kind: (reconcile passes, mean seconds per pass)."""
    return histogram_means(metrics, "localai_operator_reconcile_duration_seconds")


def wait_quiet(read: Callable[[], float], timeout: float, what: str, quiet: float = QUIET_SECONDS) -> float:
    """Waits until `read()` has not changed for `quiet` seconds; returns when it last changed (monotonic)."""
    value, changed = read(), time.monotonic()
    deadline = changed + timeout
    while time.monotonic() - changed < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} to stop changing (at {value})"
            )
        time.sleep(0.5)  # each read is a scrape of the operator's metrics, which costs it CPU
        now = read()
        if now != value:
            value, changed = now, time.monotonic()
    return changed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def log_problems(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [
        line.strip() for line in path.read_text(errors="replace").splitlines() if LOG_PROBLEM.search(line)
    ]


def served_models(index: int, names: list[str], per_pool: int) -> list[str]:
    return [names[(index * per_pool + j) % len(names)] for j in range(per_pool)]


def create_all(create: Callable[[dict[str, Any]], Any], bodies: list[dict[str, Any]]) -> None:
    with ThreadPoolExecutor(8) as pool_:
        list(pool_.map(create, bodies))


def burst(create: Callable[[dict[str, Any]], Any], bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Creates one after the other, as fast as the API answers; returns each object's send time."""
    sent = {}
    for body in bodies:
        sent[body["metadata"]["name"]] = time.monotonic()
        create(body)
    return sent


def available(deployment: dict[str, Any]) -> bool:
    return int((deployment.get("status") or {}).get("readyReplicas") or 0) >= 1


def ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def wait_served(custom: client.CustomObjectsApi, group: str, version: str, plurals: Any) -> None:
    """Freshly created CRDs answer 429 "storage is (re)initializing" for a few seconds: wait that out before an
    operator starts, so neither starts by retrying its first list while objects pile up."""

    def served() -> bool:
        try:
            for plural in plurals:
                custom.list_cluster_custom_object(group, version, plural, limit=1)
        except ApiException as err:
            if err.status == 429:
                return False
            raise
        return True

    wait_for(served, 60, f"the API server to serve {', '.join(plurals)}")


def wait_all(seen: FirstSeen, names: list[str], timeout: float, what: str) -> None:
    wait_for(
        lambda: len(seen.times) >= len(names),
        timeout,
        what,
        interval=0.5,
        describe=lambda: f"{len(seen.times)}/{len(names)}",
    )


def measure_ours(
    api: client.ApiClient, kubeconfig: Path, namespace: str, args: argparse.Namespace, logs: Path
) -> Figures:
    figures = Figures("ours")
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    crs = CustomResources(api, namespace)
    install_crds(api)
    wait_served(custom, GROUP, VERSION, ("llmmodels", "inferencepools", "fallbackroutes"))
    models = [f"m{i:05d}" for i in range(args.models)]
    pools = [pool(f"p{i:04d}", served_models(i, models, args.models_per_pool)) for i in range(args.pools)]
    objects = args.models + args.pools
    log = logs / "ours.log"
    operator = OperatorProcess(kubeconfig, log, resync_seconds=args.resync).start()
    restarted: OperatorProcess | None = None
    watchers: list[FirstSeen] = []
    try:
        assert operator.process is not None
        models_ready = FirstSeen(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "llmmodels", holds=ready
        ).start()
        watchers.append(models_ready)
        started = time.monotonic()
        create_all(crs.create, [model(name) for name in models])
        wait_all(models_ready, models, args.timeout, "every LLMModel Ready=True")
        figures.models_settled = time.monotonic() - started
        wait_quiet(operator.writes, args.timeout, "our writes after the models")
        writes_before = operator.writes()

        exists = FirstSeen(apps.list_namespaced_deployment, namespace, holds=lambda _: True).start()
        up = FirstSeen(apps.list_namespaced_deployment, namespace, holds=available).start()
        pools_ready = FirstSeen(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "inferencepools", holds=ready
        ).start()
        watchers += [exists, up, pools_ready]
        sent = burst(crs.create, pools)
        first = min(sent.values())
        names = list(sent)
        wait_all(pools_ready, names, args.timeout, "every InferencePool Ready=True")
        wait_all(up, names, args.timeout, "every pool's Deployment available")
        settled = wait_quiet(operator.writes, args.timeout, "our writes after the pools")
        figures.to_deployment = [exists.times[n] - sent[n] for n in names]
        figures.deployments_available = max(up.times.values()) - first
        figures.pools_ready = max(pools_ready.times.values()) - first
        figures.writes_settled = settled - first
        figures.rss_mib, figures.peak_rss_mib = memory_mib(operator.process.pid)
        figures.cpu_seconds = cpu_seconds(operator.process.pid)
        metrics = operator.metrics()
        figures.converge_writes = operator.writes()
        figures.writes_by_kind = by_kind(metrics)
        figures.reconciles = reconcile_stats(metrics)
        figures.queue_waits = histogram_means(metrics, "localai_operator_queue_wait_seconds")
        figures.request_latency = histogram_means(metrics, "localai_operator_api_request_duration_seconds")
        print(
            f"  ours: converged; {figures.converge_writes - writes_before:.0f} writes for the pools",
            flush=True,
        )

        if args.converge_only:
            figures.stop_seconds, figures.stop_exit = stopped(operator)
            return figures

        # No-op window: from a pause between resync passes, two full passes over every object.
        wait_quiet(operator.reconciles, args.timeout, "a pause between resync passes", quiet=1.0)
        writes0, reads0, reconciles0 = operator.writes(), operator.reads(), operator.reconciles()
        window_start = time.monotonic()
        first_pass = resync_passes(
            operator.reconciles, reconciles0, objects, 2, args.resync * 3 + args.timeout
        )
        figures.noop_seconds = time.monotonic() - window_start
        figures.noop_writes = operator.writes() - writes0
        figures.noop_reads = operator.reads() - reads0
        figures.resync_pass = first_pass
        figures.noop_rss_mib = memory_mib(operator.process.pid)[0]
        print(f"  ours: no-op window done ({figures.noop_seconds:.0f} s)", flush=True)

        # Restart over unchanged resources: the start-up pass, then two resync passes.
        figures.stop_seconds, figures.stop_exit = stopped(operator)
        restart_start = time.monotonic()
        restarted = OperatorProcess(kubeconfig, logs / "ours-restart.log", resync_seconds=args.resync).start()
        assert restarted.process is not None
        wait_for(
            lambda: restarted.metrics().get("localai_operator_leader") == 1.0,
            args.timeout,
            "the restarted operator to take the lease",
            interval=0.5,
        )
        figures.restart_lease = time.monotonic() - restart_start
        wait_for(
            lambda: restarted.reconciles() >= objects,
            args.timeout,
            "the restarted operator's start-up pass",
            interval=0.5,
            describe=restarted.reconciles,
        )
        pass_end = wait_quiet(restarted.reconciles, args.timeout, "the end of the start-up pass", quiet=1.0)
        figures.restart_pass = pass_end - restart_start
        resync_passes(
            restarted.reconciles, restarted.reconciles(), objects, 2, args.resync * 3 + args.timeout
        )
        figures.restart_seconds = time.monotonic() - restart_start
        figures.restart_writes = restarted.writes()
        figures.restart_reads = restarted.reads()
        figures.restart_writes_by_kind = by_kind(restarted.metrics())
        figures.restart_rss_mib = memory_mib(restarted.process.pid)[0]
    finally:
        for watcher in watchers:
            watcher.stop()
        operator.stop()
        if restarted is not None:
            restarted.stop()
        figures.log_problems = log_problems(log) + log_problems(logs / "ours-restart.log")
    return figures


def by_kind(metrics: dict[str, float]) -> dict[str, float]:
    """Our API requests by "verb kind" (Lease renewals left out: they are no work on the resources)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("localai_operator_api_requests_total{") and value:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            if labels["kind"] != "Lease":
                name = f"{labels['verb']} {labels['kind']}"
                out[name] = out.get(name, 0) + value
    return out


def resync_passes(
    read: Callable[[], float], start: float, objects: int, passes: int, timeout: float
) -> float | None:
    """Waits for `passes` x `objects` more reconciles; returns how long the first pass took once it began."""
    began = finished = None
    deadline = time.monotonic() + timeout
    while (count := read()) < start + passes * objects:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {passes} resync passes ({count - start})"
            )
        if began is None and count > start:
            began = time.monotonic()
        if finished is None and count >= start + objects:
            finished = time.monotonic()
        time.sleep(0.5)
    return finished - began if began is not None and finished is not None else None


def peer_crd(plural: str, kind: str) -> dict[str, Any]:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{PEER_GROUP}"},
        "spec": {
            "group": PEER_GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [
                {"name": PEER_VERSION, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }


PEER_KINDS = {"peermodels": "PeerModel", "peerpools": "PeerPool"}


def install_peer_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for plural, kind in PEER_KINDS.items():
        try:
            ext.create_custom_resource_definition(peer_crd(plural, kind))
        except ApiException as err:
            if err.status != 409:
                raise

    def established() -> bool:
        for plural in PEER_KINDS:
            live = ext.read_custom_resource_definition(f"{plural}.{PEER_GROUP}")
            if not any(c.type == "Established" and c.status == "True" for c in live.status.conditions or []):
                return False
        return True

    wait_for(established, 30, "the peer's CRDs to be Established")


def measure_peer(
    api: client.ApiClient, kubeconfig: Path, namespace: str, args: argparse.Namespace, logs: Path
) -> Figures:
    figures = Figures("peer")
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    install_peer_crds(api)
    wait_served(custom, PEER_GROUP, PEER_VERSION, tuple(PEER_KINDS))

    def create(body: dict[str, Any]) -> None:
        plural = {v: k for k, v in PEER_KINDS.items()}[body["kind"]]
        body = {**body, "apiVersion": f"{PEER_GROUP}/{PEER_VERSION}"}
        custom.create_namespaced_custom_object(PEER_GROUP, PEER_VERSION, namespace, plural, body)

    models = [f"m{i:05d}" for i in range(args.models)]
    pools = [
        {
            "kind": "PeerPool",
            "metadata": {"name": f"p{i:04d}"},
            "spec": {"models": served_models(i, models, args.models_per_pool), "replicas": 1},
        }
        for i in range(args.pools)
    ]
    log = logs / "peer.log"
    peer = PeerProcess(kubeconfig, log).start()
    restarted: PeerProcess | None = None
    watchers: list[FirstSeen] = []
    try:
        assert peer.process is not None
        handled = FirstSeen(
            custom.list_namespaced_custom_object,
            PEER_GROUP,
            PEER_VERSION,
            namespace,
            "peermodels",
            holds=lambda m: KOPF_HANDLED in (m["metadata"].get("annotations") or {}),
        ).start()
        watchers.append(handled)
        started = time.monotonic()
        create_all(
            create, [{"kind": "PeerModel", "metadata": {"name": n}, "spec": model(n)["spec"]} for n in models]
        )
        wait_all(handled, models, args.timeout, "every PeerModel handled by the peer")
        figures.models_settled = time.monotonic() - started
        wait_quiet(peer.writes, args.timeout, "the peer's writes after the models")

        exists = FirstSeen(apps.list_namespaced_deployment, namespace, holds=lambda _: True).start()
        up = FirstSeen(apps.list_namespaced_deployment, namespace, holds=available).start()
        watchers += [exists, up]
        sent = burst(create, pools)
        first = min(sent.values())
        names = list(sent)
        wait_all(up, names, args.timeout, "every peer Deployment available")
        settled = wait_quiet(peer.writes, args.timeout, "the peer's writes after the pools")
        figures.to_deployment = [exists.times[n] - sent[n] for n in names]
        figures.deployments_available = max(up.times.values()) - first
        figures.writes_settled = settled - first
        figures.rss_mib, figures.peak_rss_mib = memory_mib(peer.process.pid)
        figures.cpu_seconds = cpu_seconds(peer.process.pid)
        counts = peer.counts()["writes"]
        figures.converge_writes = sum(counts.values())
        figures.writes_by_kind = counts
        print("  peer: converged", flush=True)

        if args.converge_only:
            figures.stop_seconds, figures.stop_exit = stopped(peer)
            return figures

        # The peer has no resync: its no-op window is as long as two of our resync intervals.
        writes0, window_start = peer.writes(), time.monotonic()
        time.sleep(2 * args.resync)
        figures.noop_seconds = time.monotonic() - window_start
        figures.noop_writes = peer.writes() - writes0
        figures.noop_rss_mib = memory_mib(peer.process.pid)[0]

        figures.stop_seconds, figures.stop_exit = stopped(peer)
        restart_start = time.monotonic()
        restarted = PeerProcess(kubeconfig, logs / "peer-restart.log").start()
        assert restarted.process is not None

        def resumed() -> bool:
            done = restarted.counts()["handled"]
            return done.get("peermodels", 0) >= args.models and done.get("peerpools", 0) >= args.pools

        wait_for(resumed, args.timeout, "the restarted peer's resume handlers", interval=0.5)
        figures.restart_pass = time.monotonic() - restart_start
        wait_quiet(restarted.writes, args.timeout, "the restarted peer's writes")
        figures.restart_seconds = time.monotonic() - restart_start
        figures.restart_writes_by_kind = restarted.counts()["writes"]
        figures.restart_writes = sum(figures.restart_writes_by_kind.values())
        figures.restart_rss_mib = memory_mib(restarted.process.pid)[0]
    finally:
        for watcher in watchers:
            watcher.stop()
        peer.stop()
        if restarted is not None:
            restarted.stop()
        figures.log_problems = log_problems(log) + log_problems(logs / "peer-restart.log")
    return figures


def namespace_exists(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None:
        return "-"
    if peer == 0:
        return "=" if ours == 0 else "inf"
    return f"{ours / peer:.2f}"


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def ms(values: list[float], q: float) -> float:
    return pct(values, q) * 1000


def report(ours: Figures, peer: Figures, args: argparse.Namespace) -> None:
    all_ready = ours.models_settled + (ours.pools_ready or 0)
    rows: list[tuple[str, float | None, float | None, str]] = [
        (
            "create -> Deployment exists, p50 (ms)",
            ms(ours.to_deployment, 0.5),
            ms(peer.to_deployment, 0.5),
            "{:.0f}",
        ),
        (
            "create -> Deployment exists, p99 (ms)",
            ms(ours.to_deployment, 0.99),
            ms(peer.to_deployment, 0.99),
            "{:.0f}",
        ),
        (
            f"all {args.pools} Deployments available (s)",
            ours.deployments_available,
            peer.deployments_available,
            "{:.1f}",
        ),
        (f"all {args.pools} pools Ready=True (s)", ours.pools_ready, None, "{:.1f}"),
        ("writes settled after the burst (s)", ours.writes_settled, peer.writes_settled, "{:.1f}"),
        (f"{args.models} models Ready / handled (s)", ours.models_settled, peer.models_settled, "{:.1f}"),
        ("models + pools Ready, both phases (s)", all_ready, None, "{:.1f}"),
        ("RSS after convergence (MiB)", ours.rss_mib, peer.rss_mib, "{:.0f}"),
        ("peak RSS, VmHWM (MiB)", ours.peak_rss_mib, peer.peak_rss_mib, "{:.0f}"),
        ("CPU seconds used until converged", ours.cpu_seconds, peer.cpu_seconds, "{:.1f}"),
        ("RSS after the no-op window (MiB)", ours.noop_rss_mib, peer.noop_rss_mib, "{:.0f}"),
        ("write requests to converge, all objects", ours.converge_writes, peer.converge_writes, "{:.0f}"),
        ("writes in the no-op window", ours.noop_writes, peer.noop_writes, "{:.0f}"),
        ("reads in the no-op window (ours)", ours.noop_reads, None, "{:.0f}"),
        ("restart: lease taken after (s)", ours.restart_lease, None, "{:.1f}"),
        ("restart: start-up pass over unchanged (s)", ours.restart_pass, peer.restart_pass, "{:.1f}"),
        ("writes after a restart over unchanged", ours.restart_writes, peer.restart_writes, "{:.0f}"),
        ("reads after a restart over unchanged (ours)", ours.restart_reads, None, "{:.0f}"),
        ("RSS after the restart (MiB)", ours.restart_rss_mib, peer.restart_rss_mib, "{:.0f}"),
        ("SIGTERM -> exit (s)", ours.stop_seconds, peer.stop_seconds, "{:.2f}"),
    ]
    print(
        f"\n{args.models} models + {args.pools} pools x {args.models_per_pool} models, resync {args.resync:g} s"
    )
    print(f"{'':44} {'ours':>9} {'peer':>9} {'ours/peer':>10}")
    for label, o, p, fmt in rows:
        print(f"{label:44} {cell(o, fmt):>9} {cell(p, fmt):>9} {ratio(o, p):>10}")
    if not args.converge_only:
        resync = f", one pass {ours.resync_pass:.1f} s" if ours.resync_pass else ""
        print(
            f"\nno-op window: ours {ours.noop_seconds:.0f} s (two resync passes{resync}), peer {peer.noop_seconds:.0f} s;"
            f" restart window: ours {ours.restart_seconds:.0f} s, peer {peer.restart_seconds:.0f} s"
        )
    for figures in (ours, peer):
        slowest = sorted(enumerate(figures.to_deployment), key=lambda item: -item[1])[:5]
        listed = ", ".join(f"#{i}: {t * 1000:.0f}" for i, t in slowest)
        print(f"{figures.name} slowest creates (position in the burst: ms): {listed}")
    passes = ", ".join(
        f"{kind} {n:.0f} x {mean * 1000:.1f} ms" for kind, (n, mean) in ours.reconciles.items()
    )
    print(f"ours reconcile passes until converged (count x mean duration): {passes}")
    waits = ", ".join(f"{kind} {mean * 1000:.1f} ms" for kind, (_, mean) in ours.queue_waits.items())
    print(f"ours mean wait in the work queue: {waits}")
    latency = ", ".join(
        f"{verb} {n:.0f} x {mean * 1000:.1f} ms" for verb, (n, mean) in ours.request_latency.items()
    )
    print(f"ours API requests until converged (count x mean latency): {latency}")
    for figures in (ours, peer):
        killed = " (SIGKILLed after the grace period)" if figures.stop_exit == -signal.SIGKILL else ""
        print(
            f"{figures.name} SIGTERM -> exit: {figures.stop_seconds:.2f} s, exit code {figures.stop_exit}{killed}"
        )
        print(f"{figures.name} writes to converge: {json.dumps(figures.writes_by_kind, sort_keys=True)}")
        print(
            f"{figures.name} writes after restart: {json.dumps(figures.restart_writes_by_kind, sort_keys=True)}"
        )
        problems = figures.log_problems
        print(f"{figures.name} log: {len(problems)} ERROR/WARNING/Traceback lines")
        for line in dict.fromkeys(re.sub(r"\d", "0", p)[:200] for p in problems[:200]):
            print(f"    {line}")
    targets = [
        (
            "create -> Deployment p50 <= the peer's",
            ms(ours.to_deployment, 0.5) <= ms(peer.to_deployment, 0.5),
        ),
        ("create -> Deployment p99 <= 1 s", ms(ours.to_deployment, 0.99) <= 1000),
        (f"{args.models} models + {args.pools} pools all Ready <= 30 s, both phases added", all_ready <= 30),
        (
            f"{args.pools} pools Ready <= 30 s after their first create, the models in place",
            (ours.pools_ready or 1e9) <= 30,
        ),
        ("RSS <= 150 MiB (peak)", ours.peak_rss_mib <= 150),
        ("CPU seconds <= 1.5x the peer's", ours.cpu_seconds <= 1.5 * peer.cpu_seconds),
        ("SIGTERM -> exit <= 1 s", ours.stop_seconds <= 1.0),
    ]
    if not args.converge_only:
        targets.append(
            (
                "0 requests on a no-op resync and after a restart",
                ours.noop_writes + ours.noop_reads + ours.restart_writes + ours.restart_reads == 0,
            )
        )
    print("\ntargets (issue 13):")
    for label, met in targets:
        print(f"  {label}: {'met' if met else 'NOT met'}")


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 16  # eight creating threads and the watches
    return client.ApiClient(configuration)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=1000, help="LLMModels (and PeerModels)")
    parser.add_argument(
        "--pools", type=int, default=100, help="InferencePools (and PeerPools), 1 replica each"
    )
    parser.add_argument("--models-per-pool", type=int, default=10)
    parser.add_argument("--resync", type=float, default=30.0, help="our operator's resync interval (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="for each wait (s)")
    parser.add_argument("--kubeconfig", type=Path, help="use this cluster instead of starting the local one")
    parser.add_argument("--logs", type=Path, help="where the operators' logs go (default: a new temp dir)")
    parser.add_argument(
        "--converge-only",
        action="store_true",
        help="stop after convergence (and SIGTERM): no no-op window, no restart; for the large sizes",
    )
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="operator-scale-"))
    logs.mkdir(parents=True, exist_ok=True)
    if any(logs.iterdir()):  # the operators append to their logs: an old run's lines would be counted
        parser.error(f"--logs {logs} is not empty")
    print(f"logs: {logs}", flush=True)

    cluster: Cluster | None = None
    undo: Callable[[], None] = lambda: None  # noqa: E731
    suffix = secrets.token_hex(3)
    namespaces = {"peer": f"bench-peer-{suffix}", "ours": f"bench-ours-{suffix}"}
    api: client.ApiClient | None = None
    try:
        if args.kubeconfig:
            kubeconfig = args.kubeconfig.expanduser()
        else:
            nodes = max(4, math.ceil(2 * args.pools / PODS_PER_NODE) + 1)
            started = time.monotonic()
            cluster = Cluster.start(
                [dataclasses.replace(cpu_node(f"cpu-node-{i}"), pods=PODS_PER_NODE) for i in range(nodes)]
            )
            undo = cluster.stop_on_exit()
            kubeconfig = cluster.kubeconfig
            print(
                f"control plane up in {time.monotonic() - started:.1f} s ({nodes} fake CPU nodes)", flush=True
            )
        api = api_client(kubeconfig)
        core = client.CoreV1Api(api)
        for name in namespaces.values():
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        # The peer first; its namespace is then deleted and gone before ours starts, so its pods and Services
        # (ClusterIPs) weigh on neither run. What stays (etcd's history) weighs on ours.
        print("peer ...", flush=True)
        peer = measure_peer(api, kubeconfig, namespaces["peer"], args, logs)
        started = time.monotonic()
        core.delete_namespace(namespaces["peer"])
        wait_for(
            lambda: not namespace_exists(core, namespaces["peer"]), args.timeout, "the peer's namespace to go"
        )
        print(f"peer's namespace deleted in {time.monotonic() - started:.0f} s; ours ...", flush=True)
        ours = measure_ours(api, kubeconfig, namespaces["ours"], args, logs)
        report(ours, peer, args)
    finally:
        if api is not None and cluster is None:  # an existing cluster: leave it as found
            core = client.CoreV1Api(api)
            for name in namespaces.values():
                try:
                    core.delete_namespace(name)
                except ApiException as err:
                    if err.status != 404:
                        raise
            for plural in PEER_KINDS:
                try:
                    client.ApiextensionsV1Api(api).delete_custom_resource_definition(f"{plural}.{PEER_GROUP}")
                except ApiException as err:
                    if err.status != 404:
                        raise
        if api is not None:
            api.close()
        if cluster is not None:
            try:
                cluster.stop()
            finally:
                undo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
