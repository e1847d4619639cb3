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

With `--knobs` (root, the images built; no cluster): each CPU-pool knob the operator exposes (threads, batch,
kvCacheType, parallel, mmap) moved alone from the operator's CPU-pool defaults, on the real LocalAI binary run on
loopback from its image with what the operator renders, as the conformance tier runs it. One server per setting,
all started first, then measured round by round in a new random order each round: time to first token of a new
~600-token prompt, decode tokens/s, and tokens/s of two streams at once; medians, quartiles, and each setting's
ratio to the default's figure of the same round (with the rounds it beat the default in).

    python benchmarks/real_node.py --knobs [--rounds 10] [--minutes 15] [--max-tokens 64] [--prompt-words 600]

With `--router` (root, the images built; no cluster): the router's cost on the real binary. The LocalAI binary on
loopback as `--knobs` runs it (the sample pool rendered with its API key), and the router in front of it on
loopback with the sample route's config as the operator renders it (one static endpoint, the cloud a stand-in that
is never reached). Each round sends the same streamed chat request (`--max-tokens` tokens, `ignore_eos`) directly
and through the router, in an order that alternates per round; every request has the same prompt, so LocalAI's
prompt cache gives each the same warm prefill and the difference is the router's. Figures: p50 time to the first
content token (a delta with text, not LocalAI's role and null events), p50 decode tokens/s (content events after
the first, between the first and the last) and p50 end-to-end tokens/s (LocalAI's usage count over the whole
request), each as router / direct.

    python benchmarks/real_node.py --router [--rounds 40] [--max-tokens 64]
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


# The knobs the operator exposes for a CPU pool, each moved alone from what the operator renders by default for a
# CPU pool on this 2-core machine: threads 2 (the CPU request in whole cores: threads = cores), batch 512,
# kvCacheType f16, one slot (LLMModel.spec.parallel unset), mmap on; with the real-node sample's model otherwise
# (contextSize 2048, its sampling). (label, InferencePool spec, LLMModel spec) merged into the sample's specs.
DEFAULT_KNOBS: dict[str, object] = {"parallel": None}
KNOBS: tuple[tuple[str, dict[str, object], dict[str, object]], ...] = (
    ("default", {"threads": 2}, {}),
    ("threads 1", {"threads": 1}, {}),
    # What a pool without a CPU request renders (LocalAI's own default too): more threads than this machine's cores.
    ("threads 4", {"threads": 4}, {}),
    ("batch 128", {"threads": 2}, {"batch": 128}),
    ("batch 2048", {"threads": 2}, {"batch": 2048}),
    ("kvCacheType q8_0", {"threads": 2}, {"kvCacheType": "q8_0"}),
    ("kvCacheType q4_0", {"threads": 2}, {"kvCacheType": "q4_0"}),
    ("parallel 2", {"threads": 2}, {"parallel": 2}),
    ("parallel 4", {"threads": 2}, {"parallel": 4}),
    ("mmap false", {"threads": 2}, {"mmap": False}),
)
# Common words, one token each with their leading space: a prompt of N of them in a random order is ~N tokens and
# shares no prefix with any other, so every time to first token is a cold prompt evaluation.
WORDS_TEXT = (
    "the of and to in is was for on that with as by at from his her they this had not are but which one were all "
    "their there been has when who will more no if out so said what up its about into than them can only other new "
    "some could time these two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between both life being under"
)


def spread(values: list[float]) -> str:
    """Median and the range of the middle half (quartiles), as `median [q1-q3]`."""
    if len(values) < 2:
        return f"{median(values):.0f}"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    digits = 0 if median(values) >= 100 else 1
    return f"{median(values):.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"


def versus(values: list[float], baseline: list[float], *, lower_is_better: bool) -> str:
    """The median of the per-round ratios to the default's figure in the same round, and in how many rounds the
    setting did better than the default: pairing by round cancels what the shared machine's load did that round."""
    pairs = [(v, b) for v, b in zip(values, baseline, strict=True) if b == b and v == v and b > 0]
    if not pairs:
        return "-"
    ratio = median([v / b for v, b in pairs])
    better = sum(1 for v, b in pairs if (v < b if lower_is_better else v > b))
    return f"{ratio:.2f}x {better}/{len(pairs)}"


def fetched_models(work: Path) -> Path:
    """The sample pool's models directory, laid out by the operator image's fetch-models from the mirror image
    (as the conformance tier does)."""
    sys.path.insert(0, str(ROOT))
    from tests.integration.real_localai import fetch_models, mirror_serving, render

    from localai_operator.devcluster import images

    with mirror_serving(work / "mirror.log") as mirror:
        code, fetched, log = fetch_models(images.build("operator"), mirror, render().config, work / "f")
    assert code == 0, log
    return fetched


def knobs(rounds: int, max_tokens: int, prompt_words: int, minutes: float) -> int:
    """Each knob on the real LocalAI binary (the localai image's local-ai on loopback, with what the operator
    renders for a default CPU pool changed by that knob alone), one server per setting, all started first and
    then measured round by round in a new random order each round, so a busy minute on the shared machine falls
    on every setting alike: time to first token of a ~`prompt_words`-token prompt never seen before (prompt
    evaluation), decode tokens/s of that stream, and tokens/s of two streams at once (what slots share). Each
    setting's figures are medians with quartiles, and its ratio to the default's figure of the same round."""
    import concurrent.futures
    import json
    import random
    import tempfile
    import urllib.request

    sys.path.insert(0, str(ROOT))
    from tests.integration.real_localai import LocalAI, copy_models, render, start, wait_ready

    from localai_operator.devcluster import images

    image = images.build("localai")

    def post(base: str, path: str, body: dict[str, object]) -> urllib.request.Request:
        return urllib.request.Request(
            f"{base}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )

    def stream(base: str, prompt: str) -> tuple[float, float, int]:
        """(seconds to the first token, decode tokens/s after it, tokens) of one streamed completion."""
        body = {
            "model": stack.MODEL,
            "prompt": prompt,
            "stream": True,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
        started = time.perf_counter()
        stamps = []
        with urllib.request.urlopen(post(base, "/v1/completions", body), timeout=600) as response:
            for line in response:
                if line.startswith(b"data: {") and b'"text"' in line:
                    stamps.append(time.perf_counter())
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return stamps[0] - started, rate, len(stamps)

    def two_streams(base: str, prompts: list[str]) -> float:
        """Tokens per second of two streamed completions sent at once."""
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = time.perf_counter()
            done = list(pool.map(stream, [base] * 2, prompts))
            return sum(d[2] for d in done) / (time.perf_counter() - started)

    def rss_mib(localai: LocalAI) -> float:
        """Resident memory of local-ai and its llama.cpp backend (below the container's `buildah run`)."""
        total = 0
        for pid in descendants(localai.container.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm in ("local-ai", "ld.so") or comm.startswith("llama"):  # the backend runs under ld.so
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                    total += sum(int(line.split()[1]) for line in rollup if line.startswith("Rss:"))
            except OSError:
                continue
        return total / 1024

    rng = random.Random(7)
    words = WORDS_TEXT.split()

    def new_prompt() -> str:
        return " ".join(rng.choice(words) for _ in range(prompt_words)).capitalize()

    labels = [label for label, _, _ in KNOBS]
    ttft: dict[str, list[float]] = {label: [] for label in labels}
    decode: dict[str, list[float]] = {label: [] for label in labels}
    pair: dict[str, list[float]] = {label: [] for label in labels}
    ready: dict[str, float] = {}
    servers: dict[str, LocalAI] = {}
    with tempfile.TemporaryDirectory(prefix="bench-knobs-") as tmp:
        work = Path(tmp)
        fetched = fetched_models(work)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        began = time.strftime("%Y-%m-%d %H:%M")
        try:
            for n, (label, pool_spec, model_spec) in enumerate(KNOBS):
                rendered = render(pool_spec=pool_spec, model_spec={**DEFAULT_KNOBS, **model_spec})
                models = copy_models(fetched, work / f"m{n}", rendered.config)
                started = time.perf_counter()
                servers[label] = start(image, models, rendered.env(), work / f"localai-{n}.log")
                wait_ready(servers[label])
                ready[label] = time.perf_counter() - started
                stream(servers[label].base, "Warm up.")
            with urllib.request.urlopen(
                post(
                    servers["default"].base, "/v1/tokenize", {"model": stack.MODEL, "content": new_prompt()}
                ),
                timeout=60,
            ) as response:
                prompt_tokens = len(json.loads(response.read())["tokens"])
            measuring = time.monotonic()
            done = 0
            while done < rounds and time.monotonic() - measuring < minutes * 60:
                order = list(labels)
                rng.shuffle(order)
                for label in order:
                    first, rate, _ = stream(servers[label].base, new_prompt())
                    ttft[label].append(first * 1000)
                    decode[label].append(rate)
                    pair[label].append(
                        two_streams(servers[label].base, [new_prompt()[:60] for _ in range(2)])
                    )
                    print(  # every figure as it comes, should the run be cut short
                        f"round {done + 1} {label}: TTFT {ttft[label][-1]:.0f} ms, decode {rate:.1f} tok/s, "
                        f"2 streams {pair[label][-1]:.1f} tok/s",
                        file=sys.stderr,
                        flush=True,
                    )
                done += 1
            elapsed = time.monotonic() - measuring
            rss = {label: rss_mib(localai) for label, localai in servers.items()}
        finally:
            for localai in servers.values():
                localai.stop()
    print(
        f"LocalAI {image.ref} on loopback, one server per setting; {done} rounds in "
        f"{elapsed / 60:.1f} min, each setting once per round in a new random order; prompt "
        f"~{prompt_tokens} tokens, {max_tokens} tokens out; load {load} at the start, "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end; {began}"
    )
    print("medians [quartiles]; vs default: median of the per-round ratios, rounds better than the default")
    header = (
        f"{'setting':<17} {'ready s':>7} {'RSS MiB':>7}  {'TTFT ms':<19} {'vs default':<11} "
        f"{'decode tok/s':<18} {'vs default':<11} {'2 streams tok/s':<18} {'vs default':<11}"
    )
    print(header)
    base = "default"
    for label in labels:
        print(
            f"{label:<17} {ready[label]:>7.1f} {rss[label]:>7.0f}  {spread(ttft[label]):<19} "
            f"{versus(ttft[label], ttft[base], lower_is_better=True):<11} {spread(decode[label]):<18} "
            f"{versus(decode[label], decode[base], lower_is_better=False):<11} {spread(pair[label]):<18} "
            f"{versus(pair[label], pair[base], lower_is_better=False):<11}",
            flush=True,
        )
    return 0


# The route's first-token budget here: far above any first token of these requests, so none falls back (each
# answer's X-Served-By is checked).
ROUTER_BUDGET_MS = 60_000
CHAT_PROMPT = "Write a long story about a lighthouse keeper and the sea."


def chat_body(max_tokens: int) -> bytes:
    """The streamed chat request every round sends: the same prompt, `max_tokens` generated whatever the model
    says (`ignore_eos`), LocalAI's usage asked for (its count of the tokens)."""
    import json

    return json.dumps(
        {
            "model": stack.MODEL,
            "messages": [{"role": "user", "content": CHAT_PROMPT}],
            "stream": True,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def streamed_chat(base: str, body: bytes, key: str) -> tuple[float, float, float, str]:
    """One streamed chat request to `base`: (time to the first content token s, decode tokens/s, end-to-end
    tokens/s, X-Served-By)."""
    import json
    import urllib.request

    from localai_operator.constants import SERVED_BY_HEADER

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    request = urllib.request.Request(f"{base}/v1/chat/completions", body, headers)
    started = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    with urllib.request.urlopen(request, timeout=300) as response:
        served = response.headers.get(SERVED_BY_HEADER, "-")
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                stamps.append(time.perf_counter())
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    ended = time.perf_counter()
    assert stamps and tokens, f"{base}: no content or no usage"
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return stamps[0] - started, decode, tokens / (ended - started), served


def compare(targets: dict[str, str], rounds: int, max_tokens: int, key: str) -> bool:
    """The same streamed chat to each target every round, in an order that alternates per round, after one
    uncounted request each; prints the p50s and target / first target ratios. True when every answer came from
    local."""
    body = chat_body(max_tokens)
    for base in targets.values():  # warm-up (the prompt cached), not counted
        streamed_chat(base, body, key)
    results: dict[str, dict[str, list[float]]] = {
        name: {"ttft": [], "decode": [], "e2e": []} for name in targets
    }
    served: dict[str, set[str]] = {name: set() for name in targets}
    for round_ in range(rounds):
        order = list(targets.items()) if round_ % 2 == 0 else list(reversed(targets.items()))
        for name, base in order:
            ttft, decode, e2e, by = streamed_chat(base, body, key)
            results[name]["ttft"].append(ttft * 1000)
            results[name]["decode"].append(decode)
            results[name]["e2e"].append(e2e)
            served[name].add(by)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"{rounds} rounds, {max_tokens} tokens, streamed chat; load {load}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"{'target':<8} {'p50 first token ms':>19} {'p50 decode tok/s':>17} {'p50 end-to-end tok/s':>21}  X-Served-By"
    )
    for name, r in results.items():
        print(
            f"{name:<8} {median(r['ttft']):>19.1f} {median(r['decode']):>17.2f} {median(r['e2e']):>21.2f}  "
            f"{','.join(sorted(served[name]))}"
        )
    first, *others = targets
    base_r = results[first]
    for name in others:
        r = results[name]
        print(
            f"{name} / {first}: first token {median(r['ttft']) / median(base_r['ttft']):.3f}x "
            f"({median(r['ttft']) - median(base_r['ttft']):+.1f} ms), decode "
            f"{median(r['decode']) / median(base_r['decode']):.3f}x, end-to-end "
            f"{median(r['e2e']) / median(base_r['e2e']):.3f}x"
        )
    return all(by <= {"local", "-"} for by in served.values())


def router_vs_direct(rounds: int, max_tokens: int) -> int:
    """The router on loopback in front of the real LocalAI binary against the binary asked directly: p50 time to
    the first content token, decode and end-to-end tokens/s of the same streamed chat request, as ratios."""
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.integration.real_localai import (
        API_KEY,
        KEY_SECRET,
        copy_models,
        render,
        router_in_front,
        running,
    )

    from localai_operator.devcluster import images

    image = images.build("localai")
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        work = Path(tmp)
        rendered = render(pool_spec={"apiKeySecretRef": KEY_SECRET})
        models = copy_models(fetched_models(work), work / "models", rendered.config)
        with (
            running(image, models, rendered.env(), work / "localai.log") as localai,
            router_in_front(localai, work / "router", ROUTER_BUDGET_MS) as routed,
        ):
            print(f"LocalAI {image.ref} on loopback (direct), the router on loopback in front of it (router)")
            local = compare({"direct": localai.base, "router": routed}, rounds, max_tokens, API_KEY)
    return 0 if local else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--knobs",
        action="store_true",
        help="each CPU-pool knob on the LocalAI binary on loopback (no cluster)",
    )
    parser.add_argument("--prompt-words", type=int, default=600, help="--knobs: the new prompt's length")
    parser.add_argument(
        "--minutes",
        type=float,
        default=15,
        help="--knobs: start no round after this many minutes of measuring",
    )
    parser.add_argument(
        "--router",
        action="store_true",
        help="the router on loopback in front of the LocalAI binary vs the binary directly (no cluster)",
    )
    args = parser.parse_args()
    if args.router:
        return router_vs_direct(args.rounds, args.max_tokens)
    if args.knobs:
        return knobs(args.rounds, args.max_tokens, args.prompt_words, args.minutes)
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
