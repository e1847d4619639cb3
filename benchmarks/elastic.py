"""Elastic pool vs fixed-size pool over a scripted, compressed day of traffic (bursts and idle stretches).

Both runs use the real router (in-process, its real slots, spillover, cold-start bridging and demand metrics) in
front of LocalAI stand-ins, and a cloud stand-in. The pool itself is simulated on loopback: a replica is a
stand-in on its own 127.0.0.x address that the router finds through its pod-discovery seam (as it would the
pool's headless Service), and a new replica becomes ready only after --cold-start seconds (a compressed model
download and load). The elastic run is sized by the operator's own arithmetic (control/autoscale.py: DemandMeter and
Scaler on the router's /metrics, read over HTTP every --look seconds); the fixed run keeps --max-replicas
replicas all day, sized for the peak.

Reported for each: replica-seconds held (starting ones included: a GPU is held from the moment a pod is
scheduled), completion tokens answered by the cloud, requests answered locally, and p50/p99 time to first token
as the client saw it; then the ratios elastic/fixed. Run by hand, once (see benchmarks/README.md):

    python benchmarks/elastic.py            # defaults: --scale 1.0 (a 160 s day), --cold-start 6, --look 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from localai_operator.api.pool import Autoscaling
from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.control.autoscale import DemandMeter, Scaler, parse_metrics
from localai_operator.router.server import create_app
from localai_operator.testing.standins import OpenAIStandIn, cloud_standin, local_standin
from localai_operator.wire import RouterConfig

MODEL = "mistral-7b-instruct"
SLOTS = 2
CLOUD_KEY = "sk-bench"
# (seconds, concurrent clients): idle nights, a morning burst, a steady afternoon, a short evening spike.
DAY: tuple[tuple[float, int], ...] = ((20, 0), (20, 8), (25, 0), (30, 3), (30, 0), (10, 12), (25, 0))


@dataclass
class Replica:
    address: str
    standin: OpenAIStandIn
    ready_at: float


@dataclass
class Pool:
    """Replicas on 127.0.0.10, .11, ...: started at once, listed (ready) only after the cold start."""

    port: int
    cold_start: float
    replicas: list[Replica] = field(default_factory=list)
    held_seconds: float = 0.0
    _since: float = field(default_factory=time.monotonic)

    def _account(self) -> None:
        now = time.monotonic()
        self.held_seconds += len(self.replicas) * (now - self._since)
        self._since = now

    async def resolve(self, host: str, port: int) -> list[str]:
        now = time.monotonic()
        return [r.address for r in self.replicas if r.ready_at <= now]

    async def scale(self, replicas: int) -> None:
        self._account()
        while len(self.replicas) < replicas:
            used = {r.address for r in self.replicas}
            address = next(f"127.0.0.{i}" for i in range(10, 250) if f"127.0.0.{i}" not in used)
            standin = local_standin()
            standin.set(
                delay_before_first_chunk=0.05, token_interval=0.02, tokens=16, role_chunk="with_first_token"
            )
            await standin.start(address, self.port)
            self.replicas.append(Replica(address, standin, time.monotonic() + self.cold_start))
        while len(self.replicas) > replicas:
            gone = self.replicas.pop()
            # Stopped a little later, as a terminating pod drains: the router may still send it a request.
            asyncio.get_running_loop().call_later(2.0, _stop_soon, gone.standin)

    async def close(self) -> None:
        self._account()
        for replica in self.replicas:
            await replica.standin.stop()
        self.replicas.clear()


_STOPPING: set[asyncio.Task[None]] = set()


def _stop_soon(standin: OpenAIStandIn) -> None:
    task = asyncio.ensure_future(standin.stop())
    _STOPPING.add(task)
    task.add_done_callback(_STOPPING.discard)


@dataclass
class Answer:
    started: float
    ttft: float | None
    served_by: str
    completion_tokens: int


async def one_request(session: aiohttp.ClientSession, url: str) -> Answer:
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    ttft: float | None = None
    tokens = 0
    async with session.post(url, json=body) as response:
        served_by = response.headers.get("X-Served-By", "?")
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any(
                (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
            ):
                ttft = time.monotonic() - started
            usage = chunk.get("usage")
            if usage:
                tokens = int(usage.get("completion_tokens") or 0)
    return Answer(started, ttft, served_by, tokens)


async def clients(url: str, scale: float) -> list[Answer]:
    answers: list[Answer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def loop(until: float) -> None:
            while time.monotonic() < until:
                answers.append(await one_request(session, url))

        for seconds, concurrent in DAY:
            until = time.monotonic() + seconds * scale
            if concurrent:
                await asyncio.gather(*(loop(until) for _ in range(concurrent)))
            else:
                await asyncio.sleep(max(0.0, until - time.monotonic()))
    return answers


async def autoscaler(
    pool: Pool, metrics_url: str, spec: Autoscaling, look: float, stop: asyncio.Event
) -> None:
    scaler = Scaler(spec.min_replicas, time.monotonic())
    meter = DemandMeter()
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            await asyncio.sleep(look)
            async with session.get(metrics_url) as response:
                sample = parse_metrics(await response.text())
            now = time.monotonic()
            decision = scaler.decide(spec, meter.observe("router", now, sample), SLOTS, now)
            if decision.changed:
                await pool.scale(decision.desired)


async def run(mode: str, args: argparse.Namespace, cloud: OpenAIStandIn) -> dict[str, Any]:
    port = 18000 + (1 if mode == "elastic" else 2)
    pool = Pool(port, args.cold_start)
    config = RouterConfig.model_validate(
        {
            "route": {"name": f"bench-{mode}", "namespace": "bench"},
            "local": {
                "discovery": {"url": f"http://pool-pods.bench.svc:{port}/v1", "intervalSeconds": 5},
                "pool": "pool",
                "slots": {MODEL: SLOTS},
            },
            "fallback": {
                "baseURL": cloud.url,
                "apiKeyEnv": FALLBACK_API_KEY_ENV,
                "defaultModel": "deepseek-v3.2",
                "pricePerMillionTokens": 0.42,
            },
            "policy": {"firstTokenTimeoutMs": 3000},
        }
    )
    app = create_app(config, env={FALLBACK_API_KEY_ENV: CLOUD_KEY}, resolver=pool.resolve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    router_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{router_port}"
    stop = asyncio.Event()
    spec = Autoscaling(
        min_replicas=0,
        max_replicas=args.max_replicas,
        target_in_flight_per_slot=0.7,
        scale_down_delay_seconds=int(args.scale_down_delay),
    )
    if mode == "fixed":
        await pool.scale(args.max_replicas)
        task = None
    else:
        task = asyncio.ensure_future(autoscaler(pool, f"{base}/metrics", spec, args.look, stop))
    # The fixed pool starts warm (its cold start happened long before the day); the elastic one starts at zero.
    for replica in pool.replicas:
        replica.ready_at = 0.0
    pool._since, pool.held_seconds = time.monotonic(), 0.0
    answers = await clients(f"{base}/v1/chat/completions", args.scale)
    stop.set()
    if task is not None:
        await task
    await pool.close()
    await runner.cleanup()
    ttfts = sorted(a.ttft for a in answers if a.ttft is not None)
    return {
        "mode": mode,
        "requests": len(answers),
        "local": sum(1 for a in answers if a.served_by == "local"),
        "cloud": sum(1 for a in answers if a.served_by == "fallback"),
        "cloud_tokens": sum(a.completion_tokens for a in answers if a.served_by == "fallback"),
        "replica_seconds": pool.held_seconds,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000,
    }


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


async def main(args: argparse.Namespace) -> None:
    cloud = cloud_standin(api_key=CLOUD_KEY)
    cloud.set(delay_before_first_chunk=0.15, token_interval=0.01, tokens=16)  # a farther, faster API
    await cloud.start()
    try:
        results = [await run(mode, args, cloud) for mode in ("elastic", "fixed")]
    finally:
        await cloud.stop()
    day = sum(s for s, _ in DAY) * args.scale
    print(
        f"a {day:.0f} s compressed day {list(DAY)} (seconds, concurrent clients); {SLOTS} slots per replica, "
        f"max {args.max_replicas} replicas, cold start {args.cold_start:g} s, look every {args.look:g} s, "
        f"scale-down delay {args.scale_down_delay:g} s"
    )
    keys = ("requests", "local", "cloud", "cloud_tokens", "replica_seconds", "ttft_p50_ms", "ttft_p99_ms")
    print(f"{'':10}" + "".join(f"{k:>17}" for k in keys))
    for r in results:
        print(
            f"{r['mode']:10}"
            + "".join(f"{r[k]:>17.1f}" if isinstance(r[k], float) else f"{r[k]:>17}" for k in keys)
        )
    elastic, fixed = results
    print(
        f"elastic/fixed: replica-seconds {ratio(elastic['replica_seconds'], fixed['replica_seconds'])}, "
        f"served locally {ratio(elastic['local'] / elastic['requests'], fixed['local'] / fixed['requests'])} "
        f"({elastic['local'] / elastic['requests']:.1%} vs {fixed['local'] / fixed['requests']:.1%}), "
        f"cloud tokens {elastic['cloud_tokens']} vs {fixed['cloud_tokens']}, "
        f"p99 TTFT {ratio(elastic['ttft_p99_ms'], fixed['ttft_p99_ms'])}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stretch of the day")
    parser.add_argument("--cold-start", type=float, default=6.0, help="seconds before a new replica is ready")
    parser.add_argument("--look", type=float, default=1.0, help="seconds between the autoscaler's looks")
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--scale-down-delay", type=float, default=10.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
