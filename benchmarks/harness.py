"""Harness benchmark, run by hand: the local control plane with its real node against the kwok-only one (the peer),
started and stopped in alternation on the same machine.

For each start: the time until `Cluster.start` returns (usable: the apiserver ready, nodes Ready and, with the real
node, kube-proxy and CoreDNS serving), the memory of every process the cluster owns (the components, their process
groups and, with the real node, everything in its PID namespace: containerd, shims, pause and containers) summed
as RSS and PSS (PSS splits shared pages between the processes sharing them, so it does not double-count), idle and
with one busybox pod running on the real node, and the time `stop()` takes until nothing is left. Needs root and
the binaries (`make cluster-binaries node-binaries node-packages`).

    python benchmarks/harness.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the polling helper and the cluster client

from kubernetes import client  # noqa: E402
from tests.helpers import ClusterAccess, wait_for  # noqa: E402

from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TOLERATION, Cluster  # noqa: E402
from localai_operator.devcluster.oci import busybox_image  # noqa: E402
from localai_operator.devcluster.process import group_members  # noqa: E402

BUSYBOX = "localhost/localai-operator/busybox:bench"


def cluster_pids(cluster: Cluster) -> set[int]:
    pids = {p.pid for p in cluster.processes if p.is_running()}
    for members in group_members(p.pid for p in cluster.processes).values():
        pids.update(members)
    if cluster.real_node is not None and cluster.real_node.namespaces:
        inode = cluster.real_node.namespaces["pid"]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "ns" / "pid").stat().st_ino == inode:
                        pids.add(int(entry.name))
                except OSError:
                    continue
    return pids


def memory_mib(pids: Iterable[int]) -> tuple[float, float]:
    """Summed RSS and PSS of the processes, in MiB (from /proc/PID/smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key == "Rss":
                rss += int(value.split()[0])
            elif key == "Pss":
                pss += int(value.split()[0])
    return rss / 1024, pss / 1024


def run_pod(cluster: Cluster, archive: Path) -> None:
    assert cluster.real_node is not None
    cluster.real_node.import_image(archive)
    access = ClusterAccess.connect(cluster.kubeconfig, cluster)
    try:
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="bench"),
            spec=client.V1PodSpec(
                node_selector=dict(REAL_NODE_LABEL),
                tolerations=[client.V1Toleration(**REAL_NODE_TOLERATION)],
                containers=[client.V1Container(name="main", image=BUSYBOX, command=["sleep", "3600"])],
            ),
        )
        access.core.create_namespaced_pod("default", pod)
        wait_for(
            lambda: access.core.read_namespaced_pod("bench", "default").status.phase == "Running",
            60,
            "the benchmark pod to run",
        )
    finally:
        access.api.close()


def measure(real_node: bool, archive: Path) -> dict[str, float]:
    started = time.perf_counter()
    cluster = Cluster.start(real_node=real_node)
    figures = {"start s": time.perf_counter() - started}
    try:
        time.sleep(5)  # let the components settle after their start-up burst
        figures["RSS MiB"], figures["PSS MiB"] = memory_mib(cluster_pids(cluster))
        if real_node:
            run_pod(cluster, archive)
            time.sleep(2)
            figures["RSS+pod MiB"], figures["PSS+pod MiB"] = memory_mib(cluster_pids(cluster))
    finally:
        stopping = time.perf_counter()
        cluster.stop()
        figures["stop s"] = time.perf_counter() - stopping
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    archive = busybox_image(Path(tempfile.mkdtemp()) / "busybox.tar", BUSYBOX)
    results: dict[str, list[dict[str, float]]] = {"kwok-only": [], "real node": []}
    for round_ in range(1, args.rounds + 1):
        for name, real in (("kwok-only", False), ("real node", True)):
            figures = measure(real, archive)
            results[name].append(figures)
            shown = ", ".join(f"{key} {value:.1f}" for key, value in figures.items())
            print(f"round {round_} {name:<9}: {shown}", flush=True)
    print("medians:")
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    for name, figures in medians.items():
        print(f"  {name:<9}: " + ", ".join(f"{key} {value:.1f}" for key, value in figures.items()))
    peer, real = medians["kwok-only"], medians["real node"]
    print(
        f"real node / kwok-only: start x{real['start s'] / peer['start s']:.2f}, "
        f"PSS x{real['PSS MiB'] / peer['PSS MiB']:.2f}, stop x{real['stop s'] / peer['stop s']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
