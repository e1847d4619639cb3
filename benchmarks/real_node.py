"""Real-node demo benchmark, run by hand against a running `localai-operator dev up` on the real node: the model's
tokens/s asked directly (the pool pod's IP, port 8080) against through the route (its router pod, by the route
Service's ClusterIP; the host routes to both), and the resident memory of the whole local cluster while it serves.

Each round sends the same streamed /v1/completions request (`--max-tokens` tokens, the model's own sampling, seed 7)
to both targets, in an order that alternates per round; figures are medians: time to first token, decode rate
(tokens after the first per second between the first and the last) and end-to-end rate (tokens per second of the
whole request). Memory is summed over every process the cluster owns (the components, their process groups,
everything in the real node's PID namespace: containerd, kubelet, kube-proxy, CoreDNS, the shims and every
container), as RSS and PSS.

    localai-operator dev up && python benchmarks/real_node.py [--rounds 10] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # harness.py: the cluster's processes and their memory

from harness import cluster_pids, memory_mib  # noqa: E402
from kubernetes import config  # noqa: E402

from localai_operator.control.kube import Kube  # noqa: E402
from localai_operator.devcluster import Cluster, stack  # noqa: E402
from localai_operator.devcluster.dev import POOL_POD_SELECTOR, DevState, complete, state_root  # noqa: E402

PROMPT = "Kubernetes is"


def descendants(root: int) -> set[int]:
    """`root` and every process below it (PPid), whatever PID namespace it is in: each pod's containers run in
    a PID namespace of their own, below the real node's."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def whole_cluster(cluster: Cluster) -> set[int]:
    assert cluster.real_node is not None
    return cluster_pids(cluster) | descendants(cluster.real_node.init_pid)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    state = DevState.load(state_root())
    cluster = Cluster.attach(state.cluster_dir)
    if cluster.real_node is None or not cluster.is_running():
        print("needs a running `localai-operator dev up` with the real node", file=sys.stderr)
        return 1
    kube = Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    [pod] = [
        p
        for p in kube.list("Pod", stack.NAMESPACE, label_selector=POOL_POD_SELECTOR)
        if (p.get("status") or {}).get("podIP")
    ]
    service = kube.get("Service", stack.NAMESPACE, stack.ROUTE)
    assert service is not None
    targets = {
        "direct (pod IP)": f"http://{pod['status']['podIP']}:8080/v1",
        "router (route Service)": f"http://{service['spec']['clusterIP']}/v1",
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"ttft": [], "decode": [], "e2e": []} for name in targets
    }
    served: dict[str, set[str]] = {name: set() for name in targets}
    for base in targets.values():  # warm-up, not counted
        complete(base, PROMPT, args.max_tokens)
    memory = []
    for round_ in range(args.rounds):
        order = list(targets.items()) if round_ % 2 == 0 else list(reversed(targets.items()))
        for name, base in order:
            answer = complete(base, PROMPT, args.max_tokens)
            served[name].add(answer.served_by)
            if answer.first_token_ms is not None:
                results[name]["ttft"].append(answer.first_token_ms)
            if answer.tokens_per_second is not None:
                results[name]["decode"].append(answer.tokens_per_second)
            results[name]["e2e"].append(answer.tokens / (answer.total_ms / 1000))
        memory.append(memory_mib(whole_cluster(cluster)))
    print(
        f"{args.rounds} rounds, {args.max_tokens} tokens, prompt {PROMPT!r}; load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"{'target':<24} {'first token ms':>15} {'decode tok/s':>13} {'end-to-end tok/s':>17}  X-Served-By")
    for name in targets:
        r = results[name]
        print(
            f"{name:<24} {median(r['ttft']):>15.1f} {median(r['decode']):>13.1f} {median(r['e2e']):>17.1f}  "
            f"{','.join(sorted(served[name]))}"
        )
    direct, router = (results[name] for name in targets)
    print(
        f"router / direct: decode {median(router['decode']) / median(direct['decode']):.3f}x, end-to-end "
        f"{median(router['e2e']) / median(direct['e2e']):.3f}x, first token +{median(router['ttft']) - median(direct['ttft']):.1f} ms"
    )
    rss = [m[0] for m in memory]
    pss = [m[1] for m in memory]
    print(
        f"the whole local cluster while serving: RSS {median(rss):.0f} MiB (max {max(rss):.0f}), "
        f"PSS {median(pss):.0f} MiB (max {max(pss):.0f}), {len(whole_cluster(cluster))} processes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
