"""Router benchmark, run by hand: our router side by side with nginx and LiteLLM proxy, in one run.

Targets, all on loopback, each in its own process(es), sharing this machine's cores:
  direct   the LocalAI stand-in itself (the baseline every "added" figure is taken against)
  router   `localai-operator router --config ...` (its production entry point; uvloop when installed)
  router-local-only  the same route without its fallback: no first-token budget, so the relay's work
  relay    a minimal aiohttp relay (the reference peer of shared/PERF.md)
  nginx    Debian's nginx with the seed article's nginx.conf settings (least_conn, keepalive 64,
           HTTP/1.1 upstream, Connection "", 300 s timeouts, proxy_buffering on), minus its
           limit_req/limit_conn (30 r/s, 10 connections per address would throttle the load
           generator, not measure nginx) and minus TLS (nobody terminates TLS here)
  litellm  LiteLLM proxy with the same fallback: local stand-in first, cloud stand-in in
           `fallbacks`, num_retries 0, no database, telemetry off

Load generators: `wrk` (C, one thread; Debian package `wrk`) for latency and requests/s at 1 and 64
connections, so the client does not eat the cores it measures; this script's own aiohttp client
for the sequential failover timings and the SSE streams. Request/response figures are medians over
interleaved rounds, so drift in background load hits every target alike.

    python benchmarks/router.py [--seconds 4] [--rounds 5] [--no-pin] [--litellm PATH] [--without nginx,litellm]

The router runs from the dependency set the image installs (`--router-python shipped`, the default: a venv made
from the wheels `pip wheel .` builds, as the Dockerfile does, cached by content), so the loop it runs on is the
shipped one; `router-asyncio` is the same router with uvloop made unimportable (what the image ran before uvloop
became a dependency), in the same run. Every router figure is labelled with the loop the router reported
(`localai_router_build_info`).

Then, with the router alone: time to first content token through the router vs direct on streams (the
stand-in sends LocalAI v3.12's instant role chunk, the router holds it), and its peak RSS while N clients send
max-size bodies at once (`--memory-clients`, default 8), to local and then to the cloud, against the memory
limit the operator renders for a router (256 Mi); and its RSS with the overload guard's cap of connections
(`server.maxConnections` as rendered for 256 Mi) all holding a stream, and what the next connection gets.

nginx: `apt-get install -y nginx`. LiteLLM: `pip install 'litellm[proxy]'` (any environment; pass
the `litellm` executable with --litellm when it is not on PATH). Neither is a project dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from localai_operator.api import FallbackRoute
from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.render.route import DEFAULT_MEMORY_LIMIT, memory_bytes
from localai_operator.render.route import router_config as rendered_config
from localai_operator.testing.standins import Behaviour, cloud_standin, local_standin

HOST = "127.0.0.1"
API_KEY = "sk-bench-cloud-key"
LITELLM_MASTER_KEY = "sk-bench-" + "5f0e" * 12
LOCAL_MODEL = "mistral-7b-instruct"
MESSAGES = [{"role": "user", "content": "Say something short about benchmarks, please."}]
TTFT_BUDGET_MS = 500
LOW, HIGH = 1, 64  # concurrent clients
SSE_TOKENS, SSE_INTERVAL = 50, 0.02
# Streams: LocalAI v3.12.0's shape (role chunk at once, which the router holds), first content after 100 ms.
SSE_FIRST_TOKEN = 0.1
# Request/response: the pinned LocalAI v4.9.0, whose role chunk comes with the first token; with nothing to
# wait for, the stand-in writes the whole (instant) stream at once.
PINNED_SHAPE = "with_first_token"
TARGETS = (
    "direct",
    "router",
    "router-baseline",
    "router-traced",
    "router-sampled",
    "router-asyncio",
    "router-local-only",
    "router-2pods",
    "router-2pods-affinity",
    "relay",
    "nginx",
    "litellm",
)
# router-sampled: telemetry on with 1 trace in 1 / SAMPLED_RATIO recorded (and the GenAI metrics of every request).
SAMPLED_RATIO = 0.1
PEERS = ("relay", "nginx", "litellm")
STARTUP_SECONDS = 60.0
INSTALL_HINTS = {
    "nginx": "nginx not found on PATH: install it with `apt-get update && apt-get install -y nginx`",
    "litellm": "litellm not found on PATH: `pip install 'litellm[proxy]'` (a venv is fine; pass --litellm PATH)",
    "wrk": "wrk not found on PATH: install it with `apt-get update && apt-get install -y wrk`",
}


# --------------------------------------------------------------------------- the router as shipped

REPO = Path(__file__).resolve().parents[1]
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; from localai_operator.cli import main; sys.exit(main())"
)


def shipped_python(repo: Path = REPO) -> Path:
    """The python of a venv holding what the image installs: the wheels `pip wheel '.[telemetry]'` builds (the
    Dockerfile's build stage), installed with --no-index. Cached by the content of pyproject.toml and the
    package."""
    import hashlib

    digest = hashlib.sha256((repo / "pyproject.toml").read_bytes())
    for path in sorted((repo / "operator").rglob("*.py")):
        digest.update(path.relative_to(repo).as_posix().encode() + path.read_bytes())
    root = Path.home() / ".cache" / "localai-operator" / "bench" / f"router-venv-{digest.hexdigest()[:12]}"
    python = root / "venv" / "bin" / "python"
    if python.exists():
        return python
    print(f"building the shipped dependency set of {repo} in {root} (once per source change)", flush=True)
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), f"{repo}[telemetry]"],
        check=True,
    )
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheels),
            "localai-operator[telemetry]",
        ],
        check=True,
    )
    return python


def baseline_python(ref: str) -> Path:
    """The shipped dependency set of the router at git `ref` (e.g. main), for the before/after of a change in
    one run: the tree exported with `git archive`, then built as `shipped_python` builds this one."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = Path.home() / ".cache" / "localai-operator" / "bench" / f"tree-{commit[:12]}"
    if not (tree / "pyproject.toml").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return shipped_python(tree)


def router_argv(
    args: argparse.Namespace,
    config: Path,
    port: int,
    *flags: str,
    asyncio_only: bool = False,
    python_path: Path | None = None,
) -> list[str]:
    """`localai-operator router` for `config` on `port`, from the chosen dependency set (or `python_path`'s)."""
    python = str(python_path or args.router_python)
    command = [python, "-c", WITHOUT_UVLOOP] if asyncio_only else [python, "-m", "localai_operator"]
    return [*command, "router", "--config", str(config), "--host", HOST, "--port", str(port), *flags]


def router_loop(base: str) -> str:
    """The event loop a router reports in its build-info metric."""
    import urllib.request

    with urllib.request.urlopen(base.removesuffix("/v1") + "/metrics", timeout=5) as answer:
        found = re.search(r'localai_router_build_info\{[^}]*loop="([a-z]+)"', answer.read().decode())
    return found.group(1) if found else "unknown"


# --------------------------------------------------------------------------- in-script servers


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def standin_process(kind: str, behaviour: Behaviour, port: int, loop: str, ready: Any) -> None:
    import logging

    # Clients that leave mid-answer (wrk at the end of a run) are normal here, not worth a traceback.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)

    async def main() -> None:
        standin = (
            local_standin(behaviour=behaviour)
            if kind == "local"
            else cloud_standin(API_KEY, behaviour=behaviour)
        )
        await standin.start(HOST, port)
        ready.put(standin.port)
        await asyncio.Event().wait()

    _run(loop, main)


def otlp_sink_process(port: int, loop: str, ready: Any, counts: Any) -> None:
    """An OTLP/HTTP receiver that only counts what it gets (decoding would cost this machine's cores)."""
    from localai_operator.testing.otlp import OtlpReceiver

    async def main() -> None:
        receiver = await OtlpReceiver(decode=False).start(HOST, port)
        ready.put(receiver.port)
        while True:
            await asyncio.sleep(0.5)
            counts.put((dict(receiver.requests), receiver.received_bytes))

    _run(loop, main)


def relay_process(upstream: str, port: int, loop: str, ready: Any) -> None:
    """The minimal aiohttp relay of PERF.md: keep-alive client, body in, body out, SSE passed through."""

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def relay(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session.post(
                upstream + request.path[3:], data=body, headers={"Content-Type": "application/json"}
            ) as upstream_response:
                if upstream_response.content_type == "text/event-stream":
                    response = web.StreamResponse(
                        status=upstream_response.status, headers={"Content-Type": "text/event-stream"}
                    )
                    await response.prepare(request)
                    async for chunk in upstream_response.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                return web.Response(
                    status=upstream_response.status,
                    body=await upstream_response.read(),
                    content_type=upstream_response.content_type,
                )

        app = web.Application()
        app.router.add_post("/v1/chat/completions", relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, backlog=2048).start()
        ready.put(port)
        await asyncio.Event().wait()

    _run(loop, main)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, deadline: float, alive: Callable[[], bool], log: Callable[[], str] = str
) -> None:
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process meant to listen on {port} exited; its output ends:\n{log()}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {STARTUP_SECONDS:.0f} s")


def wait_for_http(url: str, deadline: float, alive: Callable[[], bool]) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process meant to serve {url} exited")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {STARTUP_SECONDS:.0f} s")


class Processes:
    """Children of this run: spawned Python servers and external commands, each external one in its
    own process group; `stop` ends them all (SIGTERM, then SIGKILL after a bounded wait)."""

    def __init__(self, workdir: Path) -> None:
        self.ctx = mp.get_context("spawn")
        self.workdir = workdir
        self.spawned: list[Any] = []
        self.commands: list[subprocess.Popen[bytes]] = []

    def spawn(self, target: Callable[..., None], *args: Any, after: tuple[Any, ...] = ()) -> tuple[int, int]:
        """Start `target(*args, port, loop, ready, *after)`; returns (pid, port)."""
        ready = self.ctx.Queue()
        process = self.ctx.Process(target=target, args=(*args, ready, *after), daemon=True)
        process.start()
        self.spawned.append(process)
        port = ready.get(timeout=STARTUP_SECONDS)
        assert process.pid is not None
        return process.pid, port

    def command(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        self.commands.append(process)
        return process

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for process in self.commands:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.spawned:
            process.terminate()
        deadline = time.monotonic() + 10
        for process in self.commands:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Still running: the whole group (nginx workers, uvicorn children) goes.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
        for process in self.spawned:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def load_average() -> str:
    """Other work on the machine shows here; the figures are only comparable within one run."""
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes, from /proc (Linux)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# --------------------------------------------------------------------------- configs


@dataclass
class Ports:
    local: int
    sse_local: int
    cloud: int
    hung: int
    dead: int  # nobody listens: connect is refused


def router_config(local: int, cloud: int, **policy: Any) -> dict[str, Any]:
    return {
        "route": {"name": "bench", "namespace": "bench"},
        "local": {"endpoints": [f"http://{HOST}:{local}/v1"]},
        "fallback": {
            "baseURL": f"http://{HOST}:{cloud}/v1",
            "apiKeyEnv": FALLBACK_API_KEY_ENV,
            "defaultModel": "deepseek-v3.2",
        },
        "policy": policy,
    }


# The largest threshold the policy allows: more failures than a scenario sends.
NEVER_OPEN = {"circuitBreaker": {"failureThreshold": 1000}}


def router_configs(p: Ports) -> dict[str, dict[str, Any]]:
    """One router per scenario (a router serves one route). Production defaults unless stated."""
    return {
        "main": router_config(p.local, p.cloud),
        "sse": router_config(p.sse_local, p.cloud),
        "refused": router_config(p.dead, p.cloud, **NEVER_OPEN),
        "breaker": router_config(
            p.dead, p.cloud, circuitBreaker={"failureThreshold": 1, "openSeconds": 3600}
        ),
        "slow": router_config(p.hung, p.cloud, firstTokenTimeoutMs=TTFT_BUDGET_MS, **NEVER_OPEN),
    }


# The seed's location block, less limit_req/limit_conn (see the module docstring).
NGINX_SEED_LOCATION = """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_buffering on;
            proxy_buffer_size 4k;
            proxy_buffers 8 4k;"""


def nginx_conf(prefix: Path, p: Ports, listen: dict[str, int]) -> str:
    """The seed's nginx.conf on loopback ports, one server block per scenario.

    Failover scenarios add what nginx has: a `backup` server (the cloud stand-in) and
    proxy_next_upstream. nginx cannot map the model name and sends its one Authorization header to
    both servers. "refused": max_fails=0, so every request tries local first. "breaker": max_fails=1
    fail_timeout=3600s, nginx's passive health check. "slow": no first-token budget in nginx; the
    closest is proxy_read_timeout 500ms (a per-read timeout, which would also cut a stream pausing
    between tokens) with `non_idempotent` (else nginx never retries a POST it has sent).
    """

    def upstream(name: str, primary: str, backup: bool = True) -> str:
        cloud = f"\n        server {HOST}:{p.cloud} backup;" if backup else ""
        return (
            f"    upstream {name} {{\n        least_conn;\n        server {primary};{cloud}\n"
            "        keepalive 64;\n        keepalive_timeout 60s;\n    }\n"
        )

    def server(port: int, backend: str, extra: str = "", read_timeout: str = "300s") -> str:
        location = NGINX_SEED_LOCATION.replace(
            "proxy_read_timeout 300s", f"proxy_read_timeout {read_timeout}"
        )
        return (
            f"    server {{\n        listen {HOST}:{port};\n        location /v1 {{\n"
            f"            proxy_pass http://{backend};\n{location}\n{extra}        }}\n    }}\n"
        )

    auth = f'            proxy_set_header Authorization "Bearer {API_KEY}";\n'
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes auto;\n"
        f"error_log {prefix}/error.log warn;\n"
        f"pid {prefix}/nginx.pid;\n"
        "events {\n    worker_connections 1024;\n    multi_accept on;\n}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}"
        + upstream("localai_backend", f"{HOST}:{p.local} weight=5", backup=False)
        + upstream("sse_backend", f"{HOST}:{p.sse_local} weight=5", backup=False)
        + upstream("refused_backend", f"{HOST}:{p.dead} weight=5 max_fails=0")
        + upstream("breaker_backend", f"{HOST}:{p.dead} weight=5 max_fails=1 fail_timeout=3600s")
        + upstream("slow_backend", f"{HOST}:{p.hung} weight=5 max_fails=0")
        + server(listen["main"], "localai_backend")
        + server(listen["sse"], "sse_backend")
        + server(
            listen["refused"], "refused_backend", auth + "            proxy_next_upstream error timeout;\n"
        )
        + server(
            listen["breaker"], "breaker_backend", auth + "            proxy_next_upstream error timeout;\n"
        )
        + server(
            listen["slow"],
            "slow_backend",
            auth + "            proxy_next_upstream error timeout non_idempotent;\n",
            read_timeout=f"{TTFT_BUDGET_MS}ms",
        )
        + "}\n"
    )


def litellm_configs(p: Ports) -> dict[str, dict[str, Any]]:
    """Two proxies: "main" with cooldowns off (every request tries local first, like the router's
    refused/slow scenarios), "breaker" with allowed_fails 1 and a one-hour cooldown."""

    def deployment(name: str, port: int, **params: Any) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{LOCAL_MODEL}",
                "api_base": f"http://{HOST}:{port}/v1",
                "api_key": "none",
                **params,
            },
        }

    cloud = {
        "model_name": "cloud",
        "litellm_params": {
            "model": "openai/deepseek-v3.2",
            "api_base": f"http://{HOST}:{p.cloud}/v1",
            "api_key": API_KEY,
        },
    }
    budget = TTFT_BUDGET_MS / 1000
    common = {
        "litellm_settings": {"num_retries": 0, "telemetry": False},
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    main = {
        "model_list": [
            deployment("bench", p.local),
            deployment("sse", p.sse_local),
            deployment("refused", p.dead),
            # LiteLLM's timeouts are httpx timeouts (per read), not a first-token budget.
            deployment("slow", p.hung, timeout=budget, stream_timeout=budget),
            cloud,
        ],
        "router_settings": {
            "num_retries": 0,
            "disable_cooldowns": True,
            "fallbacks": [{name: ["cloud"]} for name in ("bench", "sse", "refused", "slow")],
        },
        **common,
    }
    breaker = {
        "model_list": [deployment("breaker", p.dead), cloud],
        "router_settings": {
            "num_retries": 0,
            "allowed_fails": 1,
            "cooldown_time": 3600,
            "fallbacks": [{"breaker": ["cloud"]}],
        },
        **common,
    }
    return {"main": main, "breaker": breaker}


# uvicorn's access log off (nginx's is off too, the router has none); errors still logged.
LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO"},
        "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
    },
}


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    base: str  # base URL ending in /v1
    model: str = LOCAL_MODEL
    headers: dict[str, str] = field(default_factory=dict)
    pids: Callable[[], list[int]] = list  # the proxy's processes (CPU accounting)

    def body(self, stream: bool = False) -> dict[str, Any]:
        return {"model": self.model, "messages": MESSAGES, **({"stream": True} if stream else {})}


@dataclass
class Setup:
    request: dict[str, Target] = field(default_factory=dict)  # name -> target (request/response)
    sse: dict[str, Target] = field(default_factory=dict)
    failover: dict[str, dict[str, Target]] = field(default_factory=dict)  # scenario -> name -> target
    cloud: Target | None = None
    notes: list[str] = field(default_factory=list)
    # The event loop each router target reported.
    loops: dict[str, str] = field(default_factory=dict)
    # Reports of what the traced router's collector stand-in received: ({path: requests}, bytes), a queue.
    otlp: Any = None
    # The processes a request/response target talks to (the stand-ins, the collector): the load generator's side
    # when the phase pins processes to cores.
    upstreams: list[int] = field(default_factory=list)


def start_all(args: argparse.Namespace, processes: Processes, workdir: Path) -> Setup:
    setup = Setup()
    loop = args.loop
    local_pid, local = processes.spawn(
        standin_process, "local", Behaviour(role_chunk=PINNED_SHAPE), free_port(), loop
    )
    sse_behaviour = Behaviour(
        tokens=SSE_TOKENS, token_interval=SSE_INTERVAL, delay_before_first_chunk=SSE_FIRST_TOKEN
    )
    _, sse_local = processes.spawn(standin_process, "local", sse_behaviour, free_port(), loop)
    cloud_pid, cloud = processes.spawn(
        standin_process, "cloud", Behaviour(role_chunk=PINNED_SHAPE), free_port(), loop
    )
    _, hung = processes.spawn(standin_process, "local", Behaviour(hang=True), free_port(), loop)
    setup.upstreams += [local_pid, cloud_pid]
    ports = Ports(local, sse_local, cloud, hung, free_port())
    deadline = time.monotonic() + STARTUP_SECONDS
    auth = {"Authorization": f"Bearer {API_KEY}"}
    setup.cloud = Target("cloud", f"http://{HOST}:{cloud}/v1", headers=auth)
    setup.request["direct"] = Target("direct", f"http://{HOST}:{local}/v1", pids=lambda: [local_pid])
    setup.sse["direct"] = Target("direct", f"http://{HOST}:{sse_local}/v1")
    for scenario in ("refused", "breaker", "slow"):
        setup.failover[scenario] = {}

    # Our router, through its production entry point.
    env = {**os.environ, FALLBACK_API_KEY_ENV: API_KEY}
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        env.pop(name, None)
    scenarios = list(router_configs(ports).items()) if not args.request_only else []
    if args.request_only:
        scenarios.append(("main", router_configs(ports)["main"]))
    if "asyncio" not in args.without:
        scenarios.append(("asyncio", router_configs(ports)["main"]))
    if "local-only" not in args.without:
        # The same route without a fallback: no first-token budget, so a non-stream request goes to local as sent
        # and its JSON answer is relayed as it comes, the work the relay does.
        local_only = router_configs(ports)["main"]
        del local_only["fallback"]
        scenarios.append(("local-only", local_only))
    if args.baseline:
        scenarios.append(("baseline", router_configs(ports)["main"]))
        if not args.request_only:
            scenarios.append(("baseline-sse", router_configs(ports)["sse"]))
    if args.traced:
        setup.otlp = processes.ctx.Queue()
        sink_pid, sink = processes.spawn(otlp_sink_process, free_port(), loop, after=(setup.otlp,))
        setup.upstreams.append(sink_pid)
        scenarios.append(("traced", router_configs(ports)["main"]))
        scenarios.append(("sampled", router_configs(ports)["main"]))
    extra = {
        "asyncio": "router-asyncio",
        "local-only": "router-local-only",
        "baseline": "router-baseline",
        "traced": "router-traced",
        "sampled": "router-sampled",
    }
    for scenario, config in scenarios:
        path = workdir / f"router-{scenario}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        scenario_env = env
        if scenario in ("traced", "sampled"):
            # Traces and the GenAI metrics on, to a collector that only counts: the router's cost of producing and
            # exporting them; every trace recorded (the SDK's default), or one in ten.
            scenario_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink}"}
            if scenario == "sampled":
                scenario_env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
                scenario_env["OTEL_TRACES_SAMPLER_ARG"] = str(SAMPLED_RATIO)
        argv = router_argv(
            args,
            path,
            port,
            asyncio_only=scenario == "asyncio",
            python_path=args.baseline_python if scenario.startswith("baseline") else None,
        )
        process = processes.command(f"router-{scenario}", argv, scenario_env)
        wait_for_port(port, deadline, lambda p=process: p.poll() is None)
        name = extra.get(scenario, "router")
        target = Target(name, f"http://{HOST}:{port}/v1", pids=lambda pid=process.pid: [pid])
        if scenario in extra:
            setup.request[name] = target
            setup.loops[name] = router_loop(target.base)
        elif scenario == "main":
            setup.request["router"] = target
            setup.loops["router"] = router_loop(target.base)
        elif scenario == "sse":
            setup.sse["router"] = target
        elif scenario == "baseline-sse":
            setup.sse["router-baseline"] = Target("router-baseline", target.base, pids=target.pids)
        else:
            setup.failover[scenario]["router"] = target

    if "relay" not in args.without:
        relay_pid, relay = processes.spawn(relay_process, f"http://{HOST}:{local}/v1", free_port(), loop)
        _, sse_relay = processes.spawn(relay_process, f"http://{HOST}:{sse_local}/v1", free_port(), loop)
        setup.request["relay"] = Target("relay", f"http://{HOST}:{relay}/v1", pids=lambda: [relay_pid])
        setup.sse["relay"] = Target("relay", f"http://{HOST}:{sse_relay}/v1")

    if "nginx" not in args.without:
        prefix = workdir / "nginx"
        prefix.mkdir()
        prefix.chmod(0o755)  # workers may run as an unprivileged user
        listen = {name: free_port() for name in ("main", "sse", "refused", "breaker", "slow")}
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, ports, listen))
        process = processes.command(
            "nginx", [args.nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
        )
        for port in listen.values():
            wait_for_port(
                port, deadline, lambda p=process: p.poll() is None, lambda: processes.log_tail("nginx")
            )
        pids = lambda pid=process.pid: process_tree(pid)  # noqa: E731
        setup.request["nginx"] = Target("nginx", f"http://{HOST}:{listen['main']}/v1", pids=pids)
        setup.sse["nginx"] = Target("nginx", f"http://{HOST}:{listen['sse']}/v1")
        for scenario in ("refused", "breaker", "slow"):
            setup.failover[scenario]["nginx"] = Target("nginx", f"http://{HOST}:{listen[scenario]}/v1")
        workers = len(process_tree(process.pid)) - 1
        setup.notes.append(f"nginx {nginx_version(args.nginx)}: worker_processes auto = {workers} workers")

    if "litellm" not in args.without:
        auth = {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
        log_config = workdir / "litellm-log.json"
        log_config.write_text(json.dumps(LITELLM_LOG_CONFIG))
        env = {
            **os.environ,
            "LITELLM_TELEMETRY": "False",
            # Use the bundled model price map instead of fetching it from the internet at start.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        env.pop("DATABASE_URL", None)
        started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        for name, config in litellm_configs(ports).items():
            path = workdir / f"litellm-{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            port = free_port()
            argv = [args.litellm, "--config", str(path), "--host", HOST, "--port", str(port)]
            started[name] = (
                processes.command(f"litellm-{name}", [*argv, "--log_config", str(log_config)], env),
                port,
            )
        try:
            for process, port in started.values():
                wait_for_http(
                    f"http://{HOST}:{port}/health/liveliness", deadline, lambda p=process: p.poll() is None
                )
        except RuntimeError as err:
            tails = "\n".join(processes.log_tail(f"litellm-{name}") for name in started)
            setup.notes.append(f"LiteLLM proxy did not start ({err}); its log ends:\n{tails}")
        else:
            main, main_port = started["main"]
            base = f"http://{HOST}:{main_port}/v1"
            pids = lambda pid=main.pid: process_tree(pid)  # noqa: E731
            setup.request["litellm"] = Target("litellm", base, "bench", auth, pids)
            setup.sse["litellm"] = Target("litellm", base, "sse", auth)
            setup.failover["refused"]["litellm"] = Target("litellm", base, "refused", auth)
            setup.failover["slow"]["litellm"] = Target("litellm", base, "slow", auth)
            breaker_base = f"http://{HOST}:{started['breaker'][1]}/v1"
            setup.failover["breaker"]["litellm"] = Target("litellm", breaker_base, "breaker", auth)
            setup.notes.append(f"LiteLLM {litellm_version(args.litellm)}, 1 uvicorn worker (its default)")
    return setup


def nginx_version(binary: str) -> str:
    run = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (run.stderr or run.stdout).strip().removeprefix("nginx version: ")


def litellm_version(binary: str) -> str:
    python = Path(binary).parent / "python"
    if python.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run = subprocess.run(
                [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if run.returncode == 0:
                return run.stdout.strip()
    return "(version unknown)"


# --------------------------------------------------------------------------- request/response (wrk)

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %f %f %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50: float  # seconds
    p99: float
    errors: int
    cpu: float  # the proxy's CPU seconds during the run
    # Pinned runs: CPU seconds the proxies' cores spent on anything but the proxy (other processes, interrupts), and
    # lost to the hypervisor (steal), during the run: work the pinning cannot keep off those cores.
    other: float = 0.0
    steal: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_script(workdir: Path, target: Target) -> Path:
    path = workdir / f"wrk-{target.name}.lua"
    headers = {"Content-Type": "application/json", **target.headers}
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(target.body()))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def core_seconds(cores: set[int]) -> tuple[float, float]:
    """(busy, steal) CPU seconds of these cores since boot, from /proc/stat (Linux)."""
    busy = steal = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, stolen = map(int, fields[:8])
            busy += (user + nice + system + irq + softirq) / tick
            steal += stolen / tick
    return busy, steal


def wrk(
    args: argparse.Namespace,
    script: Path,
    target: Target,
    connections: int,
    seconds: float,
    cores: set[int] | None = None,
    watched: set[int] | None = None,
) -> WrkRun:
    """One wrk run against `target`, wrk itself on `cores` when given; the time `watched` cores (the proxy's)
    spent on other work is counted."""
    pids = target.pids()
    before = cpu_seconds(pids)
    cores_before = core_seconds(watched) if watched else (0.0, 0.0)
    argv = [
        args.wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.base + "/chat/completions",
    ]
    run = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
    )
    cpu = cpu_seconds(pids) - before
    busy, steal = (
        (b - a for b, a in zip(core_seconds(watched), cores_before, strict=True)) if watched else (0, 0)
    )
    match = re.search(r"^WRKRESULT (.+)$", run.stdout, re.MULTILINE)
    if run.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed on {target.name}: {run.stdout}\n{run.stderr}")
    n, duration_us, p50, p99, *errors = match.group(1).split()
    other = max(0.0, busy - cpu) if watched and target.name != "direct" else 0.0
    return WrkRun(
        int(n),
        int(duration_us) / 1e6,
        float(p50) / 1e6,
        float(p99) / 1e6,
        sum(map(int, errors)),
        cpu,
        other,
        float(steal),
    )


def split_cores() -> tuple[set[int], set[int]] | None:
    """(the load generator's and upstreams' cores, the proxies' cores): the first core this process may use, and
    the others; None on one core."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) > 1 else None


def pin(pids: Iterable[int], cores: set[int]) -> None:
    for pid in pids:
        for member in process_tree(pid):  # nginx's workers, LiteLLM's children
            with contextlib.suppress(OSError):
                os.sched_setaffinity(member, cores)


def request_response(
    args: argparse.Namespace, setup: Setup, workdir: Path
) -> dict[tuple[str, int], list[WrkRun]]:
    """wrk at LOW and HIGH connections against every target, in interleaved rounds. With `--pin` (the default on
    two or more cores), wrk and the upstream stand-ins run on one core and the proxies on the others, for this
    phase only: on a shared 2-core machine, which of three busy processes the scheduler favoured decided a
    proxy's requests/s more than its own cost (the same code measured 0.68x and 1.27x the relay on main); pinned,
    each proxy has a core to itself and its requests/s follows its CPU per request."""
    targets = setup.request
    split = split_cores() if args.pin else None
    everywhere = os.sched_getaffinity(0)
    generator: set[int] | None = None
    proxies: set[int] | None = None
    if split is not None:
        generator, proxies = split
        pin(setup.upstreams, generator)
        pin((pid for name, t in targets.items() if name != "direct" for pid in t.pids()), proxies)
        setup.notes.append(
            f"request/response pinned: wrk and the upstream stand-ins on core(s) {sorted(generator)}, each proxy on "
            f"{sorted(proxies)} (--no-pin: all share every core)"
        )
    scripts = {name: wrk_script(workdir, target) for name, target in targets.items()}
    try:
        for name, target in targets.items():  # warm-up: connection pools, first-request paths
            wrk(args, scripts[name], target, HIGH, args.warmup, generator, proxies)
        runs: dict[tuple[str, int], list[WrkRun]] = {(n, c): [] for n in targets for c in (LOW, HIGH)}
        names = list(targets)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for connections in (LOW, HIGH):
                for name in order:
                    runs[name, connections].append(
                        wrk(args, scripts[name], targets[name], connections, args.seconds, generator, proxies)
                    )
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        if split is not None:  # the streaming and failover phases run as before
            pin([*setup.upstreams, *(pid for t in targets.values() for pid in t.pids())], everywhere)
    return runs


# --------------------------------------------------------------------------- SSE and failover (aiohttp)


async def timed_request(
    session: aiohttp.ClientSession, target: Target, stream: bool = False
) -> tuple[float, float, str]:
    """(time to first body byte, total time, X-Served-By or status) of one chat request."""
    started = time.perf_counter()
    async with session.post(
        target.base + "/chat/completions", json=target.body(stream), headers=target.headers
    ) as response:
        await response.content.readany()
        first = time.perf_counter() - started
        await response.read()
        total = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{target.name} answered {response.status}: {await response.text()}")
    return first, total, response.headers.get("X-Served-By", "")


@dataclass
class SseResult:
    delays: list[float] = field(
        default_factory=list
    )  # stand-in write -> client read (where the timestamp survives)
    gaps: list[float] = field(default_factory=list)  # between consecutive content chunks of one stream
    first: list[float] = field(default_factory=list)  # request sent -> first content chunk read
    chunks: list[int] = field(default_factory=list)  # content chunks per stream

    def add(self, other: SseResult) -> None:
        self.delays += other.delays
        self.gaps += other.gaps
        self.first += other.first
        self.chunks += other.chunks


async def sse(session: aiohttp.ClientSession, target: Target, streams: int, repeat: int) -> SseResult:
    """`streams` concurrent streams, `repeat` times in a row."""
    result = SseResult()

    async def one() -> None:
        started = time.monotonic()
        last = None
        count = 0
        async with session.post(
            target.base + "/chat/completions", json=target.body(stream=True), headers=target.headers
        ) as response:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                received = time.monotonic()
                chunk = json.loads(line[6:])
                sent = chunk.get("x_sent_at")
                if sent is not None:
                    result.delays.append(received - sent)
                choices = chunk.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    count += 1
                    if last is None:
                        result.first.append(received - started)
                    else:
                        result.gaps.append(received - last)
                    last = received
        result.chunks.append(count)

    for _ in range(repeat):
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(streams))), 120)
    return result


@dataclass
class Failover:
    values: list[float]  # seconds: total time (refused, breaker) or time to first byte (slow)
    served_by: str


async def failover(session: aiohttp.ClientSession, target: Target, scenario: str, count: int) -> Failover:
    stream = scenario == "slow"
    warmup = 1 if stream else 5  # the breaker scenario trips on the first
    served = ""
    for _ in range(warmup):
        *_, served = await timed_request(session, target, stream)
    values = []
    for _ in range(count):
        first, total, served = await timed_request(session, target, stream)
        values.append(first if stream else total)
    return Failover(values, served)


async def streaming_and_failover(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    out: dict[str, Any] = {"sse": {}, "failover": {}}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        # One stream at a time: the targets take turns, so that drift in the machine's load hits each alike, and
        # enough of them that a p50 difference of a millisecond stands out of the noise.
        for name in setup.sse:
            out["sse"][name, LOW] = SseResult()
        for _ in range(args.stream_repeats):
            for name, target in setup.sse.items():
                out["sse"][name, LOW].add(await sse(session, target, LOW, 1))
        for name, target in setup.sse.items():
            out["sse"][name, HIGH] = await sse(session, target, HIGH, 1)
        assert setup.cloud is not None
        print("  SSE done", flush=True)
        out["cloud"] = await failover(session, setup.cloud, "refused", args.failover_requests)
        out["cloud_ttfb"] = await failover(session, setup.cloud, "slow", args.slow_requests)
        for scenario, targets in setup.failover.items():
            count = args.slow_requests if scenario == "slow" else args.failover_requests
            for name, target in targets.items():
                try:
                    out["failover"][scenario, name] = await failover(session, target, scenario, count)
                except (aiohttp.ClientError, TimeoutError, RuntimeError) as err:
                    out["failover"][scenario, name] = f"failed: {type(err).__name__}: {err}"[:200]
        print("  failover done", flush=True)
    return out


def memory_report(m: MemoryResult) -> None:
    mib = 1024 * 1024
    print(
        f"\n## Memory: {m.clients} clients at once, each sending {m.body_bytes / mib:.1f} MiB "
        f"(maxRequestBytes {16} MiB), router body buffer {m.buffer_bytes / mib:.0f} MiB "
        f"({m.buffer_bytes // (16 * mib)} max-size bodies at once), rendered limit {m.limit_bytes / mib:.0f} MiB"
    )
    print(f"- baseline RSS after warm-up: {m.baseline_kib / 1024:.0f} MiB")
    for phase, peak in m.peaks_kib.items():
        statuses = ", ".join(f"{s}x{m.statuses[phase].count(s)}" for s in sorted(set(m.statuses[phase])))
        print(
            f"- peak RSS (VmHWM), {phase}: {peak / 1024:.0f} MiB = {peak * 1024 / m.limit_bytes:.2f}x the limit "
            f"(answers: {statuses})"
        )
    print(f"- requests that waited for room in the body buffer: {m.waits}")


# --------------------------------------------------------------------------- memory


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (`clear_refs` 5, Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class MemoryResult:
    clients: int
    body_bytes: int
    buffer_bytes: int
    limit_bytes: int
    baseline_kib: int
    peaks_kib: dict[str, int] = field(default_factory=dict)  # phase -> VmHWM
    statuses: dict[str, list[int]] = field(default_factory=dict)
    waits: int = 0


def memory_config(local: int, cloud: int) -> dict[str, Any]:
    """The config the operator renders for a route with the defaults (256 Mi limit, 16 MiB bodies)."""
    route = FallbackRoute.parse(
        {
            "metadata": {"name": "bench-memory", "namespace": "bench"},
            "spec": {
                "primary": {"url": f"http://{HOST}:{local}/v1"},
                "fallback": {
                    "baseURL": f"http://{HOST}:{cloud}/v1",
                    "apiKeySecretRef": {"name": "k", "key": "k"},
                },
            },
        }
    )
    return rendered_config(route).model_dump(mode="json", by_alias=True, exclude_none=True)


def memory_phase(args: argparse.Namespace, workdir: Path) -> None:
    """The memory phase on processes of its own, stopped after: this script's last phase and benchmarks/
    router_memory.py's every round."""
    processes = Processes(workdir)
    try:
        memory_report(asyncio.run(memory_peak(args, processes, workdir)))
    finally:
        processes.stop()


async def memory_peak(args: argparse.Namespace, processes: Processes, workdir: Path) -> MemoryResult:
    """Peak RSS of the router while `clients` max-size requests are in flight at once: to local (streamed
    from it and assembled), then with local failing, to the cloud (the body rewritten for it)."""
    loop = args.loop
    _, local = processes.spawn(
        standin_process,
        "local",
        Behaviour(role_chunk=PINNED_SHAPE, delay_before_first_chunk=0.5),
        free_port(),
        loop,
    )
    _, cloud = processes.spawn(standin_process, "cloud", Behaviour(), free_port(), loop)
    config = memory_config(local, cloud)
    path = workdir / "router-memory.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = processes.command(
        "router-memory",
        router_argv(args, path, port),
        {**os.environ, FALLBACK_API_KEY_ENV: API_KEY},
    )
    wait_for_port(port, time.monotonic() + STARTUP_SECONDS, lambda: process.poll() is None)
    max_bytes = config["policy"]["maxRequestBytes"]
    # A chat message with one inline image, the whole body just under maxRequestBytes.
    head = json.dumps(
        {
            "model": LOCAL_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
                    ],
                }
            ],
        }
    )
    filler = b"A" * (max_bytes - len(head) - 64)
    at = head.index("base64,") + len("base64,")
    body = head[:at].encode() + filler + head[at:].encode()
    result = MemoryResult(
        args.memory_clients,
        len(body),
        config["server"]["bodyBufferBytes"],
        memory_bytes(DEFAULT_MEMORY_LIMIT) or 0,
        0,
    )
    base = f"http://{HOST}:{port}"
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one() -> int:
            async with session.post(
                base + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                return response.status

        for _ in range(2):  # warm up: imports, first connections
            await one()
        result.baseline_kib = rss_kib(process.pid)["VmRSS"]
        for phase in ("local", "cloud"):
            if phase == "cloud":
                async with session.post(
                    f"http://{HOST}:{local}/standin/behaviour", json={"status": 500}
                ) as r:
                    assert r.status == 200
            reset_peak(process.pid)
            result.statuses[phase] = list(await asyncio.gather(*(one() for _ in range(args.memory_clients))))
            result.peaks_kib[phase] = rss_kib(process.pid)["VmHWM"]
        async with session.get(base + "/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("localai_router_buffer_waits_total "):
                    result.waits = int(float(line.split()[1]))
    return result


async def overload_rss(args: argparse.Namespace, processes: Processes, workdir: Path) -> str:
    """The router's RSS with every connection its overload guard allows holding a stream (the config the
    operator renders for 256 Mi, first-token budget raised so the streams stay open), and what one more gets."""
    loop = args.loop
    _, local = processes.spawn(
        standin_process, "local", Behaviour(delay_before_first_chunk=3600), free_port(), loop
    )
    config = memory_config(local, free_port())
    config["policy"]["firstTokenTimeoutMs"] = 600_000
    cap = args.overload_cap or config["server"]["maxConnections"]
    config["server"]["maxConnections"] = cap
    path = workdir / "router-overload.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, metrics_port = free_port(), free_port()
    process = processes.command(
        "router-overload",
        router_argv(args, path, port, "--metrics-port", str(metrics_port)),
        {**os.environ, FALLBACK_API_KEY_ENV: API_KEY},
    )
    wait_for_port(port, time.monotonic() + STARTUP_SECONDS, lambda: process.poll() is None)
    base = f"http://{HOST}:{port}/v1/chat/completions"
    body = {"model": LOCAL_MODEL, "messages": MESSAGES, "stream": True}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        baseline = rss_kib(process.pid)["VmRSS"]

        async def hold() -> None:
            async with session.post(base, json=body) as response:
                await response.read()

        holders = [asyncio.create_task(hold()) for _ in range(cap)]
        deadline = time.monotonic() + 120
        held = 0.0
        while time.monotonic() < deadline:
            async with session.get(f"http://{HOST}:{metrics_port}/metrics") as response:
                found = re.search(r"^localai_router_client_connections (\S+)$", await response.text(), re.M)
            held = float(found.group(1)) if found else 0.0
            if held >= cap:
                break
            await asyncio.sleep(0.2)
        at_cap = rss_kib(process.pid)["VmRSS"]
        async with aiohttp.ClientSession() as fresh, fresh.post(base, json=body) as response:
            refused = f"{response.status} {(await response.json())['error']['code']}, Retry-After {response.headers.get('Retry-After')}"
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    limit = memory_bytes(DEFAULT_MEMORY_LIMIT) or 1
    return (
        f"\n## Overload guard: {int(held)} of {cap} connections (server.maxConnections for {DEFAULT_MEMORY_LIMIT}) "
        f"holding a stream\n- RSS {baseline / 1024:.0f} MiB idle, {at_cap / 1024:.0f} MiB at the cap = "
        f"{at_cap * 1024 / limit:.2f}x the limit ({(at_cap - baseline) / max(held, 1):.1f} KiB per connection); "
        f"one more connection: {refused}"
    )


# --------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float | None, digits: int = 2) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.{digits}f}"


def times(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a (peer measured 0)"


def med(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def round_ratios(
    runs: dict[tuple[str, int], list[WrkRun]], ours: str, theirs: str, connections: int
) -> list[float]:
    """requests/s of `ours` over `theirs`, round by round (each pair measured under the same background)."""
    return [
        x.rps / max(y.rps, 1e-9)
        for x, y in zip(runs[ours, connections], runs[theirs, connections], strict=True)
    ]


def spread(ratios: list[float], digits: int = 2) -> str:
    """The median of per-round ratios, and their range."""
    return f"{med(ratios):.{digits}f}x (rounds {min(ratios):.{digits}f}-{max(ratios):.{digits}f})"


def report(
    args: argparse.Namespace, setup: Setup, runs: dict[tuple[str, int], list[WrkRun]], more: dict[str, Any]
) -> None:
    names = [n for n in TARGETS if n in setup.request]
    peers = [n for n in PEERS if n in names]
    rows: list[tuple[str, dict[str, str]]] = []

    def row(label: str, cells: dict[str, str]) -> None:
        rows.append((label, cells))

    summary: dict[str, dict[str, float]] = {n: {} for n in names}
    for c in (LOW, HIGH):
        for n in names:
            r = runs[n, c]
            direct = runs["direct", c]
            s = summary[n]
            s[f"p50_{c}"] = med(x.p50 for x in r)
            s[f"p99_{c}"] = med(x.p99 for x in r)
            # Added latency per round (same round, same background), then the median over rounds.
            s[f"add50_{c}"] = med(x.p50 - d.p50 for x, d in zip(r, direct, strict=True))
            s[f"add99_{c}"] = med(x.p99 - d.p99 for x, d in zip(r, direct, strict=True))
            s[f"rps_{c}"] = med(x.rps for x in r)
            s[f"err_{c}"] = sum(x.errors for x in r)
            s[f"cpu_{c}"] = sum(x.cpu for x in r) / max(1, sum(x.requests for x in r))
        row(
            f"{c} client(s): latency p50 / p99 (ms)",
            {n: f"{ms(summary[n][f'p50_{c}'])} / {ms(summary[n][f'p99_{c}'])}" for n in names},
        )
        row(
            f"{c} client(s): added p50 / p99 over direct (ms)",
            {
                n: "—"
                if n == "direct"
                else f"{ms(summary[n][f'add50_{c}'])} / {ms(summary[n][f'add99_{c}'])}"
                for n in names
            },
        )
        row(f"{c} client(s): requests/s", {n: f"{summary[n][f'rps_{c}']:,.0f}" for n in names})
    row(f"{HIGH} clients: server CPU per request (ms)", {n: ms(summary[n][f"cpu_{HIGH}"], 3) for n in names})
    row(
        "errors (non-2xx, socket, timeout), all runs",
        {n: str(int(summary[n][f"err_{LOW}"] + summary[n][f"err_{HIGH}"])) for n in names},
    )

    direct_sse = {s: more["sse"]["direct", s] for s in (LOW, HIGH)}
    for streams in (LOW, HIGH):
        cells = {}
        for n in names:
            res = more["sse"].get((n, streams))
            if res is None:
                continue
            if res.delays:
                base = direct_sse[streams].delays
                added = "" if n == "direct" else f" (+{ms(pct(res.delays, 0.5) - pct(base, 0.5))})"
                cells[n] = f"{ms(pct(res.delays, 0.5))} / {ms(pct(res.delays, 0.99))}{added}"
            else:
                cells[n] = "n/a"
        row(f"SSE {streams} stream(s): chunk delay p50 / p99 (ms)", cells)
        cells = {}
        for n in names:
            res = more["sse"].get((n, streams))
            if res is None:
                continue
            cells[n] = (
                f"{ms(pct(res.first, 0.5), 1)} / {ms(pct(res.gaps, 0.1), 1)} / {ms(pct(res.gaps, 0.5), 1)}"
            )
            if min(res.chunks) != SSE_TOKENS:
                cells[n] += f" ({min(res.chunks)}-{max(res.chunks)} chunks per stream, expected {SSE_TOKENS})"
        row(f"SSE {streams} stream(s): first token p50 / chunk gap p10 / p50 (ms; sent 20 ms apart)", cells)

    cloud = more["cloud"].values
    cloud_ttfb = more["cloud_ttfb"].values
    labels = {
        "refused": "failover, local refused: added p50 / p99 over direct cloud (ms)",
        "breaker": "failover, breaker open: added p50 / p99 over direct cloud (ms)",
        "slow": f"failover, local slow, {TTFT_BUDGET_MS} ms budget: TTFB p50 / max (ms)",
    }
    failovers: dict[tuple[str, str], float] = {}
    for scenario, label in labels.items():
        cells = {"direct": "—"}
        for n in names[1:]:
            res = more["failover"].get((scenario, n))
            if res is None:
                cells[n] = "not run"
            elif isinstance(res, str):
                cells[n] = res
            elif scenario == "slow":
                cells[n] = f"{ms(statistics.median(res.values), 1)} / {ms(max(res.values), 1)}"
                failovers[scenario, n] = statistics.median(res.values)
            else:
                add50 = statistics.median(res.values) - statistics.median(cloud)
                cells[n] = f"{ms(add50)} / {ms(pct(res.values, 0.99) - pct(cloud, 0.99))}"
                failovers[scenario, n] = add50
            if not isinstance(res, (str, type(None))) and res.served_by not in ("", "fallback"):
                cells[n] += f" [served by {res.served_by}]"
        row(label, cells)
    if "relay" in names:
        rows[-3][1]["relay"] = rows[-2][1]["relay"] = rows[-1][1]["relay"] = "no fallback"
    for peer in ("nginx", "litellm"):
        if peer in names:
            rows[-1][1][peer] += " *"
    footnotes = [
        "* no first-token budget in nginx or LiteLLM: the closest each has is a per-read timeout of "
        f"{TTFT_BUDGET_MS} ms (nginx proxy_read_timeout + proxy_next_upstream non_idempotent to a backup "
        "server; LiteLLM timeout/stream_timeout), which would also cut a stream that pauses between tokens",
        "breaker open: nginx max_fails=1 fail_timeout=3600s (passive health check); LiteLLM allowed_fails 1, "
        "cooldown_time 3600; refused/slow run with cooldowns off (nginx max_fails=0, LiteLLM disable_cooldowns)",
        "SSE chunk delay needs the stand-in's x_sent_at timestamp, which LiteLLM drops (it re-encodes chunks)",
    ]

    print(f"\n## Results (medians over {args.rounds} rounds of {args.seconds:g} s per target and load)")
    print(
        f"direct cloud stand-in: p50 {ms(statistics.median(cloud))} ms, p99 {ms(pct(cloud, 0.99))} ms; "
        f"streaming TTFB p50 {ms(statistics.median(cloud_ttfb))} ms"
    )
    for note in setup.notes:
        print(f"note: {note}")
    print()
    labels = {n: f"{n} ({setup.loops[n]})" if n in setup.loops else n for n in names}
    print("| | " + " | ".join(labels[n] for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells.get(n, "") for n in names) + " |")

    print()
    for footnote in footnotes:
        print(footnote)

    router = summary["router"]
    loop = setup.loops.get("router", "unknown")
    print(f"\n## Ratios, ours (router on {loop}) vs each peer (same run)")
    for peer in peers:
        p = summary[peer]
        parts = [
            f"RPS at {HIGH}: {times(router[f'rps_{HIGH}'], p[f'rps_{HIGH}'])}",
            f"RPS at {LOW}: {times(router[f'rps_{LOW}'], p[f'rps_{LOW}'])}",
            f"added p50 at {LOW}: {ms(router[f'add50_{LOW}'])} vs {ms(p[f'add50_{LOW}'])} ms",
            f"added p50 at {HIGH}: {ms(router[f'add50_{HIGH}'])} vs {ms(p[f'add50_{HIGH}'])} ms",
            f"CPU/request: {times(router[f'cpu_{HIGH}'], p[f'cpu_{HIGH}'])}",
        ]
        for scenario in ("refused", "breaker"):
            if (scenario, peer) in failovers:
                parts.append(
                    f"{scenario} failover: {ms(failovers[scenario, 'router'])} vs {ms(failovers[scenario, peer])} ms"
                )
        print(f"- router ({loop}) vs {peer}: " + "; ".join(parts))
    if "router-asyncio" in summary:
        slow = summary["router-asyncio"]
        print(
            f"- router ({loop}) vs the same router on asyncio: RPS at {HIGH}: "
            f"{times(router[f'rps_{HIGH}'], slow[f'rps_{HIGH}'])}, at {LOW}: "
            f"{times(router[f'rps_{LOW}'], slow[f'rps_{LOW}'])}"
        )
    if "router-baseline" in summary:
        before = summary["router-baseline"]
        print(
            f"- router vs the router at {args.baseline} (before/after): RPS at {HIGH}: "
            f"{times(router[f'rps_{HIGH}'], before[f'rps_{HIGH}'])}, at {LOW}: "
            f"{times(router[f'rps_{LOW}'], before[f'rps_{LOW}'])}; CPU/request "
            f"{ms(router[f'cpu_{HIGH}'], 3)} vs {ms(before[f'cpu_{HIGH}'], 3)} ms"
        )
    if "router-2pods" in summary and "router-2pods-affinity" in summary:
        off, on = summary["router-2pods"], summary["router-2pods-affinity"]
        print(
            f"- two pods, prefix affinity on vs off: RPS at {HIGH}: {times(on[f'rps_{HIGH}'], off[f'rps_{HIGH}'])}, "
            f"at {LOW}: {times(on[f'rps_{LOW}'], off[f'rps_{LOW}'])}; CPU/request {ms(on[f'cpu_{HIGH}'], 3)} vs "
            f"{ms(off[f'cpu_{HIGH}'], 3)} ms"
        )

    print(f"\n## Targets (issues 10 and 20; router on {loop}; requests/s as the median of per-round ratios)")
    if "relay" in summary:
        ratios = round_ratios(runs, "router", "relay", HIGH)
        verdict = "met" if med(ratios) >= 0.9 else "NOT met"
        print(f"- RPS >= 0.9x the bare aiohttp relay: {spread(ratios)} at {HIGH} clients -> {verdict}")
    if "litellm" in summary:
        ratios = round_ratios(runs, "router", "litellm", HIGH)
        verdict = "met" if med(ratios) >= 50 else "NOT met"
        print(f"- RPS >= 50x LiteLLM: {spread(ratios, 1)} at {HIGH} clients -> {verdict}")
    else:
        print("- RPS >= 50x LiteLLM: not measured (LiteLLM not run)")
    for streams in (LOW, HIGH):
        direct = more["sse"].get(("direct", streams))
        for name in ("router", "router-baseline", "relay"):
            routed = more["sse"].get((name, streams))
            if direct is not None and routed is not None and direct.first and routed.first:
                d, r = pct(direct.first, 0.5), pct(routed.first, 0.5)
                print(
                    f"- time to first content token, {streams} stream(s): {name} {ms(r, 1)} ms vs direct "
                    f"{ms(d, 1)} ms p50 = {r / d:.3f}x ({(r - d) * 1000:+.1f} ms; the stand-in's role chunk is instant, "
                    f"content after {SSE_FIRST_TOKEN * 1000:.0f} ms)"
                )
    added = {
        (name, streams): pct(more["sse"][name, streams].first, 0.5)
        - pct(more["sse"]["direct", streams].first, 0.5)
        for name in ("router", "relay")
        for streams in (LOW, HIGH)
        if more["sse"].get((name, streams)) and more["sse"].get(("direct", streams))
    }
    if ("router", LOW) in added:
        router_added = added["router", LOW]
        verdict = "met" if router_added <= 0.002 else "NOT met"
        print(
            f"- time to first content token <= direct + 2 ms at {LOW} stream: {router_added * 1000:+.1f} ms -> {verdict}"
        )
    if ("router", HIGH) in added and ("relay", HIGH) in added:
        router_added, relay_added = added["router", HIGH], added["relay", HIGH]
        verdict = "met" if router_added <= relay_added else "NOT met"
        print(
            f"- time to first content token at {HIGH} streams added no more than the relay adds: router "
            f"{router_added * 1000:+.1f} ms, relay {relay_added * 1000:+.1f} ms -> {verdict}"
        )
    refused = failovers.get(("refused", "router"))
    if refused is not None:
        print(f"- failover on refused: {ms(refused)} ms added p50")


def comparisons(args: argparse.Namespace, setup: Setup, runs: dict[tuple[str, int], list[WrkRun]]) -> None:
    """Router against router, and against the relay, in this run: requests/s and CPU per request, as the median of
    per-round ratios (each pair measured in the same round, under the same background load)."""
    pairs = [
        ("router", "relay", "router vs the bare aiohttp relay"),
        ("router-baseline", "relay", f"the router at {args.baseline} vs the bare aiohttp relay"),
        (
            "router-local-only",
            "relay",
            "the router on a route without a fallback (no first-token budget: the relay's work) vs the relay",
        ),
        (
            "router",
            "router-local-only",
            "the first-token budget (non-stream requests streamed from local and assembled) vs none",
        ),
        ("router", "router-baseline", f"this tree vs {args.baseline} (telemetry off in both)"),
        (
            "router-traced",
            "router",
            "telemetry on (every trace recorded, spans and GenAI metrics exported) vs off",
        ),
        (
            "router-sampled",
            "router",
            f"telemetry on ({SAMPLED_RATIO:g} of traces recorded, every metric) vs off",
        ),
    ]
    lines = []
    for ours, theirs, what in pairs:
        if ours not in setup.request or theirs not in setup.request:
            continue
        for c in (LOW, HIGH):
            rps = round_ratios(runs, ours, theirs, c)
            cpu = [
                (x.cpu / max(x.requests, 1)) / max(y.cpu / max(y.requests, 1), 1e-12)
                for x, y in zip(runs[ours, c], runs[theirs, c], strict=True)
            ]
            lines.append(
                f"- {what}, {c} client(s): requests/s {med(rps):.3f}x (rounds {min(rps):.3f}-{max(rps):.3f}), "
                f"CPU per request {med(cpu):.3f}x"
            )
    if not lines:
        return
    print("\n## Router against router and the relay (per-round ratios, median)")
    print("\n".join(lines))
    latest = None
    while setup.otlp is not None:
        try:
            latest = setup.otlp.get_nowait()
        except Exception:  # queue.Empty
            break
    if latest is not None:
        requests, size = latest
        print(f"- the traced router's collector received {requests} ({size / 1024 / 1024:.1f} MiB of OTLP)")


def interference(setup: Setup, runs: dict[tuple[str, int], list[WrkRun]]) -> None:
    """How much of the proxies' core went to other work during the pinned 64-client runs: a round where another
    session's work took a share of it measured the machine, not the proxy."""
    cells = []
    for name in setup.request:
        r = runs[name, HIGH]
        if name == "direct" or not any(x.other or x.steal for x in r):
            continue
        shares = [(x.other + x.steal) / x.seconds for x in r]
        cells.append(f"{name} {med(shares):.0%} (max {max(shares):.0%})")
    if cells:
        print(
            f"- the proxies' core on other work (other processes, interrupts, steal) during the {HIGH}-client runs, "
            "median share of the run: " + ", ".join(cells)
        )


def request_report(args: argparse.Namespace, setup: Setup, runs: dict[tuple[str, int], list[WrkRun]]) -> None:
    """The request/response figures alone (--request-only)."""
    names = [n for n in TARGETS if n in setup.request]
    print(f"\n## Request/response (medians over {args.rounds} rounds of {args.seconds:g} s)")
    for note in setup.notes:
        print(f"note: {note}")
    print("| | " + " | ".join(f"{n} ({setup.loops[n]})" if n in setup.loops else n for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for c in (LOW, HIGH):
        cells = [f"{med(x.rps for x in runs[n, c]):,.0f}" for n in names]
        print(f"| {c} client(s): requests/s | " + " | ".join(cells) + " |")
        cells = [
            f"{ms(med(x.p50 for x in runs[n, c]))} / {ms(med(x.p99 for x in runs[n, c]))}" for n in names
        ]
        print(f"| {c} client(s): latency p50 / p99 (ms) | " + " | ".join(cells) + " |")
    cells = [
        ms(sum(x.cpu for x in runs[n, HIGH]) / max(1, sum(x.requests for x in runs[n, HIGH])), 3)
        for n in names
    ]
    print(f"| {HIGH} clients: server CPU per request (ms) | " + " | ".join(cells) + " |")
    errors = [str(sum(x.errors for c in (LOW, HIGH) for x in runs[n, c])) for n in names]
    print("| errors, all runs | " + " | ".join(errors) + " |")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk duration per target, load and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="request/response phase: wrk and the upstream stand-ins on one core, the proxies on the others",
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load per target before measuring"
    )
    parser.add_argument("--failover-requests", type=int, default=100)
    parser.add_argument(
        "--memory-clients", type=int, default=8, help="concurrent max-size bodies (memory phase)"
    )
    parser.add_argument("--slow-requests", type=int, default=10)
    parser.add_argument(
        "--stream-repeats",
        type=int,
        default=15,
        help="single streams per target, taking turns (time to first token)",
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop",
        help="event loop of the stand-ins and the aiohttp relay (the router picks its own)",
    )
    parser.add_argument(
        "--router-python",
        default="shipped",
        help="python the router runs with: shipped (a venv of the wheels the image installs, built once), "
        "current (this interpreter), or a path",
    )
    parser.add_argument(
        "--overload-cap",
        type=int,
        default=0,
        help="connections for the overload phase (0: as rendered for 256 Mi)",
    )
    parser.add_argument(
        "--affinity",
        action="store_true",
        help="also two-pod routes with prefix affinity off and on (router-2pods, router-2pods-affinity)",
    )
    parser.add_argument("--nginx", default=shutil.which("nginx") or "")
    parser.add_argument("--litellm", default=shutil.which("litellm") or "")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "")
    parser.add_argument(
        "--without",
        default="",
        help="comma-separated targets to skip: relay,nginx,litellm,asyncio,local-only",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="a git ref (e.g. main): adds router-baseline, the router at that commit (its shipped dependency set, "
        "built once), to compare this tree against in the same run",
    )
    parser.add_argument(
        "--traced",
        action="store_true",
        help="adds router-traced and router-sampled: the same router exporting spans (every trace; one in ten) "
        "and the GenAI metrics over OTLP to a collector stand-in that only counts",
    )
    parser.add_argument(
        "--request-only",
        action="store_true",
        help="only the request/response phase (wrk): no SSE, failover, memory or overload phase",
    )
    args = parser.parse_args()
    args.without = {w.strip() for w in args.without.split(",") if w.strip()}
    args.seconds = min(max(args.seconds, 1.0), 60.0)
    args.rounds = min(max(args.rounds, 1), 30)
    args.warmup = min(max(args.warmup, 1.0), 30.0)
    args.failover_requests = min(max(args.failover_requests, 10), 1000)
    args.slow_requests = min(max(args.slow_requests, 1), 50)
    args.stream_repeats = min(max(args.stream_repeats, 1), 100)
    args.memory_clients = min(max(args.memory_clients, 1), 64)
    missing = [
        tool for tool in ("wrk", "nginx", "litellm") if tool not in args.without and not getattr(args, tool)
    ]
    if missing:
        for tool in missing:
            print(INSTALL_HINTS[tool], file=sys.stderr)
        print("(or skip a peer with --without nginx,litellm)", file=sys.stderr)
        return 2

    if args.router_python == "shipped":
        args.router_python = shipped_python()
    elif args.router_python == "current":
        args.router_python = Path(sys.executable)
    args.baseline_python = baseline_python(args.baseline) if args.baseline else None
    # SIGTERM runs the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    workdir.chmod(0o755)  # nginx workers may run as an unprivileged user
    processes = Processes(workdir)
    try:
        load_at_start = load_average()
        setup = start_all(args, processes, workdir)
        print(
            f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
            f"stand-ins on {args.loop}; load generator: wrk -t1 (latency, RPS), aiohttp (SSE, failover)"
        )
        print(
            f"request/response: {args.rounds} rounds x {len(setup.request)} targets x {LOW} and {HIGH} "
            f"connections x {args.seconds:g} s",
            flush=True,
        )
        runs = request_response(args, setup, workdir)
        if args.request_only:
            request_report(args, setup, runs)
            comparisons(args, setup, runs)
            interference(setup, runs)
            print(f"load average (1/5/15 min) at start: {load_at_start}; at end: {load_average()}")
            return 0
        more = asyncio.run(streaming_and_failover(args, setup))
        report(args, setup, runs, more)
        comparisons(args, setup, runs)
        interference(setup, runs)
        print("  memory phase (the other targets are stopped first)", flush=True)
        processes.stop()
        memory_phase(args, workdir)
        processes = Processes(workdir)
        print(asyncio.run(overload_rss(args, processes, workdir)))
        print(f"load average (1/5/15 min) at start: {load_at_start}; at end: {load_average()}")
    finally:
        processes.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
