"""Secrets by reference, measured both ways on the local control plane (issue 19): a watch restricted to a label
the operator documents, or a GET by name of each Secret a pass needs.

A namespace holds `--referenced` Secrets that resources name (small: an API key) among `--others` that they do
not (4 KiB each, and every tenth 256 KiB, as Helm release and TLS Secrets are). For each way, with the operator's
own client (control/kube.py's Api, aiohttp):

- label watch: the LIST a (re)start costs (requests, bytes, seconds), what the watch then holds in memory (the
  labelled Secrets only, values included: the API server sends them), and the time from a Secret's create to its
  event;
- GET by name: the latency of one GET (p50/p99 over every referenced Secret, sequential, and all at once as a
  resync's passes send them), the client CPU per GET, and what finding a new Secret costs (control/secrets.py
  re-checks a missing one every RECHECK_SECONDS);
- for scale, the cluster-wide watch the operator had before (every Secret, values included).

Run by hand: python benchmarks/secret_reads.py [--referenced 100] [--others 1000] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import kopf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from localai_operator.api.kinds import NAMESPACE as NAMESPACE_KIND  # noqa: E402
from localai_operator.api.kinds import SECRET  # noqa: E402
from localai_operator.control.kube import Api  # noqa: E402
from localai_operator.control.secrets import RECHECK_SECONDS, Secrets  # noqa: E402

NAMESPACE = "bench-secrets"
LABEL = "llm.localai-operator.io/referenced"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def secret(name: str, size: int, labelled: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labelled:
        meta["labels"] = {LABEL: "true"}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"api-key": "x" * size}}


async def listed(api: Api, selector: str | None, namespaced: bool) -> tuple[int, int, float, str]:
    """(items, bytes, seconds, resourceVersion) of one LIST of Secrets."""
    session = api._open()
    path = SECRET.path(NAMESPACE if namespaced else None)
    params = {"labelSelector": selector} if selector else {}
    started = time.perf_counter()
    async with session.get(api._server + path, params=params) as response:
        raw = await response.read()
    seconds = time.perf_counter() - started
    body = json.loads(raw)
    return len(body["items"]), len(raw), seconds, body["metadata"]["resourceVersion"]


async def watch_delay(api: Api, version: str) -> float:
    """Seconds from a labelled Secret's create to its ADDED event on a label-restricted watch."""
    session = api._open()
    params = {"labelSelector": f"{LABEL}=true", "watch": "1", "resourceVersion": version}
    async with session.get(api._server + SECRET.path(NAMESPACE), params=params) as response:
        created = time.perf_counter()
        await api.create(SECRET, secret("appears-later", 64, True))
        async for line in response.content:
            event = json.loads(line)
            if event["object"]["metadata"]["name"] == "appears-later":
                return time.perf_counter() - created
    raise AssertionError("the watch ended before the new Secret's event")


async def measure(args: argparse.Namespace) -> None:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None, "no usable kubeconfig"
    api = Api(lambda: info, count=lambda *_: None, rate=10_000, burst=10_000)
    try:
        await api.create(
            NAMESPACE_KIND, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        referenced = [f"key-{i:04d}" for i in range(args.referenced)]
        bodies = [secret(n, 64, True) for n in referenced] + [
            secret(f"other-{i:05d}", 256 * 1024 if i % 10 == 0 else 4096, False) for i in range(args.others)
        ]
        for start in range(0, len(bodies), 50):
            await asyncio.gather(*(api.create(SECRET, b) for b in bodies[start : start + 50]))
        print(
            f"{args.referenced} referenced Secrets (64 B) among {args.others} others (4 KiB, every tenth 256 KiB)"
        )

        items, size, seconds, version = await listed(api, f"{LABEL}=true", True)
        delays = [await watch_delay(api, version)]
        for _ in range(4):
            await api.delete(SECRET, NAMESPACE, "appears-later")
            _, _, _, version = await listed(api, f"{LABEL}=true", True)
            delays.append(await watch_delay(api, version))
        print(
            f"label watch: LIST {items} Secrets, {size / 1024:.0f} KiB in {seconds * 1000:.1f} ms; a new Secret "
            f"seen {statistics.median(delays) * 1000:.1f} ms after its create (median of {len(delays)})"
        )
        all_items, all_size, all_seconds, _ = await listed(api, None, False)
        print(
            f"cluster-wide watch (before issue 19): LIST {all_items} Secrets, {all_size / 2**20:.1f} MiB in "
            f"{all_seconds * 1000:.0f} ms, every value included"
        )

        latencies = []
        used = cpu()
        for name in referenced:
            started = time.perf_counter()
            await api.get(SECRET, NAMESPACE, name)
            latencies.append(time.perf_counter() - started)
        per_get = (cpu() - used) / len(referenced)
        started = time.perf_counter()
        await asyncio.gather(*(api.get(SECRET, NAMESPACE, name) for name in referenced))
        burst = time.perf_counter() - started
        shared = Secrets(api)
        started = time.perf_counter()
        await asyncio.gather(*(shared.read(NAMESPACE, referenced[:1]) for _ in range(50)))
        one_for_fifty = time.perf_counter() - started
        print(
            f"GET by name: p50 {pct(latencies, 0.5) * 1000:.2f} ms, p99 {pct(latencies, 0.99) * 1000:.2f} ms "
            f"(sequential, {len(latencies)} GETs), client CPU {per_get * 1000:.2f} ms per GET; all {len(referenced)} "
            f"at once {burst * 1000:.0f} ms; 50 passes naming one Secret at once: one GET, {one_for_fifty * 1000:.1f} "
            f"ms; a Secret created later is found within {RECHECK_SECONDS:g} s (the re-check of a missing one)"
        )
        print(
            f"steady state: a resync every 60 s costs {len(referenced)} GETs "
            f"({len(referenced) / 60:.1f} per second) by name, the label watch none"
        )
    finally:
        await api.delete(NAMESPACE_KIND, "", NAMESPACE)
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--referenced", type=int, default=100)
    parser.add_argument("--others", type=int, default=1000)
    parser.add_argument("--kubeconfig", help="an existing cluster (default: start the local control plane)")
    args = parser.parse_args()
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        asyncio.run(measure(args))
        return
    from localai_operator.devcluster import Cluster

    with Cluster.start() as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
