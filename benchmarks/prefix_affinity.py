"""Prefix affinity against least-outstanding, in one run: the p50 time to first token of a chat workload whose
conversations share long system prompts, through the router to two LocalAI replicas with two slots each.

Workload (issue 22's acceptance): 20 conversations over 4 distinct system prompts of ~1,500 tokens (6,000
characters of prose), 3 user turns each (the model's answers kept in the history), 2 requests at a time (half the
pool's 4 slots: an autoscaled pool's headroom) and then 4 (all of them), streamed with the openai SDK; time to
first token = from the call to the first content chunk. Users think between turns: the conversations advance round
by round, each round in a new random order, so a conversation's next turn does not arrive right behind its previous
one (which would let least-outstanding land it on the same pod). Each policy gets its own 4 (--prompts) fresh
system prompts, so neither finds the other's in a cache. The router runs in this process from the production app
(`create_app`), `local.slots` 2 per pod, no fallback (a request waits for a slot rather than leaving), prefix
affinity on or off. Its per-pod in-flight counts are sampled every 10 ms: the most a pod held, and how often a
request waited at the router while some pod had a free slot (both must stay 0 / <= 2).

Pods, one of:
  (default)                 two LocalAI stand-ins with llama.cpp's slots and three prompt-cache tiers
                            (testing/prefill.py) at --standin-rate cold tokens/s (the real Gemma 3 270M on one
                            thread: ~220; the default 2,200 runs ten times faster with the same ratios)
  --pods URL,URL            two running LocalAI servers (pods through `kubectl port-forward`, or processes)
  --localai BIN --backends DIR --gguf FILE
                            starts two real `local-ai` processes on loopback, one thread each, the model preloaded
                            with the model YAML the operator renders for a CPU pool (`parallel: 2`, LLMModel's
                            default contextSize 4096 unless --context-size, swa_full:true), plus any --option;
                            at debug level (the default) their logs say what llama.cpp did in each phase: how many
                            requests read a system prompt, how many tokens the others evaluated, and (with
                            --option verbosity:4) how many were restored from the RAM prompt cache

Then the cost of affinity itself on the router's path (key + choice, µs per request, on vs off) for a small and a
6 KB body.

    python benchmarks/prefix_affinity.py [--conversations 20] [--turns 3] [--concurrency 4]
    flock /work/locks/cluster python benchmarks/prefix_affinity.py --localai .../local-ai \\
        --backends .../backends --gguf .../gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from localai_process import localai_processes

from localai_operator.api.llmmodel import LLMModel, LLMModelSpec
from localai_operator.render.model_config import model_config_yaml
from localai_operator.router import body as bodies
from localai_operator.router.affinity import request_key
from localai_operator.router.server import ROUTER, create_app, start
from localai_operator.router.upstream import build_route
from localai_operator.testing.prefill import PromptCache
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from localai_operator.wire import RouterConfig

MODEL = "gemma-3-270m"
SLOTS = 2
SYSTEM_CHARS = 6000  # ~1,500 tokens by the router's estimator (4 characters each)
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
    "not",
    "have",
    "which",
    "one",
    "all",
    "were",
    "their",
    "there",
    "been",
    "has",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "if",
    "out",
    "up",
    "what",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
]
# llama.cpp's per-task line in a pod's log (LocalAI at debug level relays the backend's stderr), and what it says
# about the cache: a task that evaluated this many prompt tokens or more read a system prompt, not only its turns.
PROMPT_EVAL = re.compile(r"prompt eval time =\s*([0-9.]+) ms /\s*(\d+) tokens")
RAM_RESTORE = "found better prompt"
TRACE = "cache state:"
FULL_READ_TOKENS = 1000


def prose(characters: int, rng: random.Random) -> str:
    out: list[str] = []
    size = 0
    while size < characters:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))
        out.append(sentence.capitalize() + ".")
        size += len(sentence) + 2
    return " ".join(out)


@dataclass
class Phase:
    name: str
    concurrency: int
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    outcomes: dict[str, float] = field(default_factory=dict)
    most_in_flight: dict[str, int] = field(default_factory=dict)
    waited_with_free_slot: int = 0
    samples: int = 0
    seconds: float = 0.0
    pods: PodWork | None = None


@dataclass
class PodWork:
    """What the pods' llama.cpp logs say about one phase's prompts."""

    tasks: int = 0
    # Read a system prompt (>= FULL_READ_TOKENS): neither the slots nor the RAM cache had it.
    full_reads: int = 0
    # The others: the tokens each evaluated past the cached prefix.
    warm_tokens: list[int] = field(default_factory=list)
    # Slots loaded from the RAM prompt cache (a trace line: None without the option verbosity:4).
    ram_restores: int | None = None

    @classmethod
    def of(cls, text: str) -> PodWork:
        work = cls(ram_restores=text.count(RAM_RESTORE) if TRACE in text else None)
        for _, tokens in PROMPT_EVAL.findall(text):
            work.tasks += 1
            if int(tokens) >= FULL_READ_TOKENS:
                work.full_reads += 1
            else:
                work.warm_tokens.append(int(tokens))
        return work

    def summary(self) -> str:
        warm = f"a median {statistics.median(self.warm_tokens):.0f} tokens" if self.warm_tokens else "nothing"
        restores = "" if self.ram_restores is None else f"; {self.ram_restores} restores from the RAM cache"
        return (
            f"{self.full_reads} of {self.tasks} read a system prompt; the others evaluated {warm}{restores}"
        )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- pods


@contextlib.asynccontextmanager
async def standin_pods(rate: float) -> AsyncIterator[list[str]]:
    pods: list[OpenAIStandIn] = []
    for _ in range(2):
        pod = local_standin(prompt_cache=PromptCache(slots=SLOTS, tokens_per_second=rate, overhead=0.02))
        pod.models = (MODEL,)
        pod.set(tokens=8)
        await pod.start()
        pods.append(pod)
    try:
        yield [p.url for p in pods]
    finally:
        for pod in pods:
            await pod.stop()


def model_yaml(gguf: Path, options: list[str], context_size: int | None) -> str:
    """The model YAML the operator renders for a CPU pool serving `gguf` with 2 slots (render/model_config.py: its
    defaults, contextSize included, unless `context_size`), greedy, then `options` (the backend reads them in order,
    so a later one wins)."""
    spec: dict[str, Any] = {
        "source": {"url": f"https://models.invalid/{gguf.name}", "sha256": "0" * 64},
        "parallel": SLOTS,
        "parameters": {"temperature": 0},
        "options": options,
    }
    if context_size is not None:
        spec["contextSize"] = context_size
    model = LLMModel.parse(
        {"kind": "LLMModel", "metadata": {"name": MODEL, "namespace": "bench"}, "spec": spec}
    )
    return model_config_yaml(model, gpu=False)


@contextlib.contextmanager
def localai_pods(
    binary: Path,
    backends: Path,
    gguf: Path,
    workdir: Path,
    options: list[str],
    context_size: int | None,
    log_level: str = "debug",
) -> Iterator[list[str]]:
    """Two `local-ai` processes, as the operator configures a pool's (galleries off, the model preloaded)."""
    roots = [workdir / f"localai-{index}" for index in range(2)]
    yaml_text = model_yaml(gguf, options, context_size)
    with localai_processes(binary, backends, gguf, roots, MODEL, yaml_text, log_level=log_level) as urls:
        yield urls


# --------------------------------------------------------------------------- the workload


def router_config(urls: list[str], affinity: bool) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "route": {"name": "bench", "namespace": "bench"},
            "local": {"endpoints": urls, "slots": {MODEL: SLOTS}},
            "policy": {
                "affinity": {"enabled": affinity},
                "queueTimeoutMs": 600_000,
                "requestTimeoutSeconds": 600,
            },
        }
    )


async def one_turn(
    client: openai.AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int]:
    """(time to first content, the answer's text, prompt tokens LocalAI reported)."""
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    prompt_tokens = 0
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        max_tokens=max_tokens,
        temperature=0,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                if first is None:
                    first = time.perf_counter() - started
                text.append(choice.delta.content)
            elif first is None and choice.finish_reason:
                first = time.perf_counter() - started  # an empty answer: its end is its first token
    return (first if first is not None else time.perf_counter() - started), "".join(text), prompt_tokens


async def run_phase(
    args: argparse.Namespace, urls: list[str], affinity: bool, concurrency: int, seed: int
) -> Phase:
    phase = Phase("prefix affinity" if affinity else "least-outstanding", concurrency)
    rng = random.Random(seed)
    systems = [f"You are assistant {seed}-{i}. " + prose(SYSTEM_CHARS, rng) for i in range(args.prompts)]
    histories = [
        [{"role": "system", "content": systems[c % len(systems)]}] for c in range(args.conversations)
    ]
    # Users think between turns: the conversations advance round by round, each round's turns in a new order,
    # so a conversation's next turn finds the pool busy with others (not right behind its previous turn).
    schedule: list[tuple[int, int]] = []
    for turn in range(args.turns):
        order = list(range(args.conversations))
        rng.shuffle(order)
        schedule += [(c, turn) for c in order]
    finished = {(c, -1): asyncio.Event() for c in range(args.conversations)}
    for event in finished.values():
        event.set()
    finished.update({item: asyncio.Event() for item in schedule})
    questions = {item: prose(80, rng) for item in schedule}
    app = create_app(router_config(urls, affinity), env={})
    runner, port = await start(app)
    router = app[ROUTER]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in schedule:
        queue.put_nowait(item)
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            route = router.route
            busy = {e.base_url: e.by_model.get(MODEL, 0) for e in route.endpoints}
            for url, count in busy.items():
                phase.most_in_flight[url] = max(phase.most_in_flight.get(url, 0), count)
            if sum(router.relay.waiting.values()) and any(count < SLOTS for count in busy.values()):
                phase.waited_with_free_slot += 1
            phase.samples += 1
            await asyncio.sleep(0.01)

    async def worker() -> None:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=900
        ) as client:
            while not queue.empty():
                number, turn = queue.get_nowait()
                await finished[number, turn - 1].wait()
                messages = histories[number]
                question = f"Conversation {number}, question {turn + 1}: " + questions[number, turn]
                messages.append({"role": "user", "content": question})
                ttft, answer, tokens = await one_turn(client, messages, args.max_tokens)
                messages.append({"role": "assistant", "content": answer})
                phase.ttft.append(ttft)
                if tokens:
                    phase.prompt_tokens.append(tokens)
                finished[number, turn].set()

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        done.set()
        await watcher
        phase.seconds = time.perf_counter() - started
        phase.outcomes = {o.value: float(n) for o, n in router.route.table.outcomes.items()}
        await runner.cleanup()
    return phase


# --------------------------------------------------------------------------- the cost of affinity itself


def affinity_cost() -> list[str]:
    """µs per request of the affinity key and the keyed choice over two pods, against the choice alone."""
    lines = []
    urls = ["http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1"]
    small = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something short about benchmarks."}],
    }
    large = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": prose(SYSTEM_CHARS, random.Random(1))},
            {"role": "user", "content": "A question."},
        ],
    }
    for label, payload in (("0.1 KB body", small), ("6 KB system prompt", large)):
        parsed = bodies.parse(json.dumps(payload).encode())
        figures = {}
        for enabled in (False, True):
            config = router_config(urls, enabled)
            route = build_route(config, None, {}, 0.0)

            def once(route: Any = route, enabled: bool = enabled, parsed: Any = parsed) -> None:
                key = request_key(parsed, None, route.prefix_bytes) if enabled else None
                choice = route.pick(0.0, model=MODEL, key=key)
                choice.endpoint.take(MODEL)
                choice.endpoint.give(MODEL)

            number = 20000
            figures[enabled] = min(timeit.repeat(once, number=number, repeat=5)) / number * 1e6
        lines.append(
            f"- {label}: choice with affinity {figures[True]:.2f} µs, without {figures[False]:.2f} µs "
            f"(+{figures[True] - figures[False]:.2f} µs per request)"
        )
    return lines


# --------------------------------------------------------------------------- main


def report(phases: list[Phase], pods: str) -> None:
    print(f"\n## Time to first token, {pods} (same run)\n")
    print(
        "| requests at a time | policy | requests | p50 TTFT (s) | p90 (s) | mean (s) | affinity hit / override / "
        "moved / new | most in flight per pod | waits with a free slot | phase (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in phases:
        outcomes = " / ".join(str(int(p.outcomes.get(k, 0))) for k in ("hit", "override", "moved", "new"))
        print(
            f"| {p.concurrency} | {p.name} | {len(p.ttft)} | {pct(p.ttft, 0.5):.3f} | {pct(p.ttft, 0.9):.3f} | "
            f"{statistics.mean(p.ttft):.3f} | {outcomes} | {', '.join(str(n) for n in p.most_in_flight.values())} "
            f"(slots {SLOTS}) | {p.waited_with_free_slot} of {p.samples} samples | {p.seconds:.0f} |"
        )
    print()
    for concurrency in sorted({p.concurrency for p in phases}):
        by_name = {p.name: p for p in phases if p.concurrency == concurrency}
        if "prefix affinity" in by_name and "least-outstanding" in by_name:
            on, off = by_name["prefix affinity"], by_name["least-outstanding"]
            ratio = pct(on.ttft, 0.5) / pct(off.ttft, 0.5)
            verdict = "met" if ratio <= 0.5 else "NOT met"
            print(
                f"- {concurrency} at a time: p50 TTFT with prefix affinity {pct(on.ttft, 0.5):.3f} s = {ratio:.3f}x "
                f"least-outstanding's {pct(off.ttft, 0.5):.3f} s (target <= 0.5x: {verdict})"
            )
    for p in phases:
        if p.pods is not None:
            print(f"- {p.concurrency} at a time, {p.name}, the pods' logs: {p.pods.summary()}")
    tokens = [t for p in phases for t in p.prompt_tokens]
    if tokens:
        print(
            f"- prompt tokens reported by the pods: median {statistics.median(tokens):.0f}, max {max(tokens)}"
        )


async def main_async(args: argparse.Namespace, urls: list[str], logs: tuple[Path, ...] = ()) -> list[Phase]:
    """The phases in turn; with the pods' `logs`, what llama.cpp did in each (the lines each phase added)."""
    phases = []
    for concurrency in args.concurrency:
        for name in args.order:
            print(f"  {name}, {concurrency} at a time ...", flush=True)
            seed = 1000 * (len(phases) + 1) + args.seed
            offsets = [log.stat().st_size for log in logs]
            phase = await run_phase(args, urls, name == "affinity", concurrency, seed)
            if logs:
                text = ""
                for log, offset in zip(logs, offsets, strict=True):
                    with log.open("rb") as f:
                        f.seek(offset)
                        text += f.read().decode(errors="replace")
                phase.pods = PodWork.of(text)
            phases.append(phase)
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument(
        "--prompts",
        type=int,
        default=4,
        help="distinct system prompts the conversations share (4: the acceptance's)",
    )
    parser.add_argument(
        "--concurrency",
        default="2,4",
        help="requests at a time, one pair of phases each (2: half the pool's slots; 4: all of them)",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="least-outstanding,affinity", help="the phases, in order")
    parser.add_argument("--standin-rate", type=float, default=2200.0, help="stand-ins: cold prompt tokens/s")
    parser.add_argument("--pods", default="", help="URL,URL of two running LocalAI servers (base URLs, /v1)")
    parser.add_argument("--localai", type=Path, help="a local-ai binary: start two on loopback")
    parser.add_argument(
        "--backends", type=Path, help="with --localai: the backends directory (llama-cpp/run.sh)"
    )
    parser.add_argument("--gguf", type=Path, help="with --localai: the model file (Gemma 3 270M Q4_K_M)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="with --localai: a llama-cpp backend option for the model (e.g. kv_unified:false), repeatable",
    )
    parser.add_argument(
        "--context-size",
        type=int,
        help="with --localai: the model's contextSize (default: LLMModel's); the RAM prompt cache holds as many tokens",
    )
    parser.add_argument(
        "--log-level",
        default="debug",
        help="with --localai: LOCALAI_LOG_LEVEL (debug relays llama.cpp's lines, which the report counts)",
    )
    parser.add_argument("--keep-logs", type=Path, help="with --localai: copy each process's log here")
    args = parser.parse_args()
    args.order = [o.strip() for o in args.order.split(",") if o.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not set(args.order) <= {"least-outstanding", "affinity"}:
        parser.error("--order takes least-outstanding and affinity")
    print(f"cores: {os.cpu_count()}, load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    print("cost of affinity on the router's path (two pods):")
    for line in affinity_cost():
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="prefix-affinity-"))
    try:
        if args.pods:
            urls = [u.strip().rstrip("/") for u in args.pods.split(",")]
            phases = asyncio.run(main_async(args, urls))
            label = f"LocalAI at {', '.join(urls)}"
        elif args.localai:
            if not (args.backends and args.gguf):
                parser.error("--localai needs --backends and --gguf")
            try:
                with localai_pods(
                    args.localai,
                    args.backends,
                    args.gguf,
                    workdir,
                    args.option,
                    args.context_size,
                    args.log_level,
                ) as urls:
                    logs = tuple(workdir / f"localai-{i}" / "localai.log" for i in range(len(urls)))
                    phases = asyncio.run(main_async(args, urls, logs))
            finally:
                if args.keep_logs is not None:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for log in workdir.glob("localai-*/localai.log"):
                        shutil.copy(log, args.keep_logs / f"{log.parent.name}.log")
            default = LLMModelSpec.model_fields["context_size"].default
            context = f"contextSize {args.context_size or default}"
            options = ", ".join(["rendered options", *args.option])
            label = f"two real local-ai v4.9.0 processes (1 thread, {context}, {options})"
        else:

            async def standins() -> list[Phase]:
                async with standin_pods(args.standin_rate) as urls:
                    return await main_async(args, urls)

            phases = asyncio.run(standins())
            label = f"two LocalAI stand-ins ({args.standin_rate:g} cold tokens/s, slots and cache tiers)"
        report(phases, label)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
