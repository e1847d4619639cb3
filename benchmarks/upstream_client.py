"""A/B of the router's upstream client (`router/http.py`) against aiohttp's ClientSession, run by hand: the
reason the router has a client of its own is that on its hot path aiohttp's cost more CPU per request than
everything else the router does. This keeps that claim measurable, and shows what the strict parser
(`router/framing.py`) costs.

    python benchmarks/upstream_client.py [--seconds 3] [--rounds 3] [--loop uvloop]

One LocalAI stand-in in its own process (the pinned v4.9.0 shape: an instant chat stream in one write, and the
JSON answer); in this process each client sends POST /v1/chat/completions at 1 and 64 requests in flight for
`--seconds`, rounds interleaved (A, B, A, B, ...), reading the whole answer. Reported per client: requests/s and
this process's CPU per request (the client is all this process does), medians over the rounds, and B/A ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from localai_operator.router import http
from localai_operator.testing.standins import Behaviour, local_standin

HOST = "127.0.0.1"
BODY = {"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": "Say something short."}]}
CONCURRENCY = (1, 64)


def standin(port: int, loop: str, ready: Any) -> None:
    async def main() -> None:
        server = local_standin(behaviour=Behaviour(role_chunk="with_first_token"))
        await server.start(HOST, port)
        ready.put(server.port)
        await asyncio.Event().wait()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


Send = Callable[[], Awaitable[int]]


async def measure(send: Send, concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests/s, CPU seconds per request) of `concurrency` workers sending for `seconds`."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await send()
            done += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return done / wall, cpu / max(done, 1)


async def run(args: argparse.Namespace, port: int) -> None:
    url = URL(f"http://{HOST}:{port}/v1/chat/completions")
    payloads = {
        "json": json.dumps(BODY).encode(),
        "stream": json.dumps({**BODY, "stream": True}).encode(),
    }
    ours = http.Client(keepalive=10)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    headers = [("Content-Type", "application/json"), ("Accept-Encoding", "identity")]

    def ours_send(body: bytes) -> Send:
        async def send() -> int:
            response = await ours.request("POST", url, headers, (body,), connect_timeout=5, timeout=30)
            try:
                await response.read()
            finally:
                response.close()
            return response.status

        return send

    def aiohttp_send(body: bytes) -> Send:
        async def send() -> int:
            async with session.post(url, data=body, headers=dict(headers)) as response:
                await response.read()
                return response.status

        return send

    clients = {"router/http.py": ours_send, "aiohttp": aiohttp_send}
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    try:
        for shape, body in payloads.items():
            for make in clients.values():  # warm-up: pools, first-request paths
                await measure(make(body), 64, 1.0)
            for round_ in range(args.rounds):
                order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                for concurrency in CONCURRENCY:
                    for name in order:
                        result = await measure(clients[name](body), concurrency, args.seconds)
                        results.setdefault((shape, name, concurrency), []).append(result)
    finally:
        ours.close()
        await session.close()

    print(f"\n## Upstream client A/B ({args.loop}, medians of {args.rounds} rounds of {args.seconds:g} s)")
    print(
        "| answer | in flight | router/http.py rps | aiohttp rps | CPU/request ours | CPU/request aiohttp | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for shape in payloads:
        for concurrency in CONCURRENCY:
            a = results[shape, "router/http.py", concurrency]
            b = results[shape, "aiohttp", concurrency]
            rps_a, rps_b = statistics.median(r for r, _ in a), statistics.median(r for r, _ in b)
            cpu_a, cpu_b = statistics.median(c for _, c in a), statistics.median(c for _, c in b)
            print(
                f"| {shape} | {concurrency} | {rps_a:,.0f} | {rps_b:,.0f} | {cpu_a * 1e6:.0f} µs | "
                f"{cpu_b * 1e6:.0f} µs | {cpu_b / cpu_a:.2f}x |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    args.seconds = min(max(args.seconds, 0.5), 30.0)
    args.rounds = min(max(args.rounds, 1), 10)
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    with_port = 0
    process = ctx.Process(target=standin, args=(with_port, args.loop, ready), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=60)
        print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}")
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(run(args, port))
        else:
            asyncio.run(run(args, port))
    finally:
        process.terminate()
        process.join(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
