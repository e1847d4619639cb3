"""Only the memory phase of `benchmarks/router.py`, for one router: peak RSS (VmHWM) while `--clients` max-size
bodies arrive at once, to local and then to the cloud, against the limit the operator renders for a router
(256 Mi). About half a minute per round, so commits can be compared (and bisected) by the same measurement.

    python benchmarks/router_memory.py [--ref main | --router-python PATH] [--clients 8] [--rounds 3]

`--ref`: the router at a git ref of this repository, in its shipped dependency set (built once, as `router.py
--baseline` builds it) and with the config that commit's own renderer makes (an older router refuses newer keys).
Without it: this tree's shipped router.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # router.py beside this file

import router as bench

# The route memory_config renders, through the measured commit's own renderer.
RENDER = """
import json, sys
from localai_operator.api import FallbackRoute
from localai_operator.render.route import router_config
config = router_config(FallbackRoute.parse(json.loads(sys.argv[1])))
print(json.dumps(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
"""


def rendered_by(python: Path) -> Any:
    def config(local: int, cloud: int) -> dict[str, Any]:
        route = {
            "metadata": {"name": "bench-memory", "namespace": "bench"},
            "spec": {
                "primary": {"url": f"http://{bench.HOST}:{local}/v1"},
                "fallback": {
                    "baseURL": f"http://{bench.HOST}:{cloud}/v1",
                    "apiKeySecretRef": {"name": "k", "key": "k"},
                },
            },
        }
        out = subprocess.run(
            [str(python), "-c", RENDER, json.dumps(route)],
            check=True,
            capture_output=True,
            text=True,
            cwd="/",
        )
        rendered: dict[str, Any] = json.loads(out.stdout)
        return rendered

    return config


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", default="", help="a git ref: the router at that commit")
    parser.add_argument(
        "--router-python", default="", help="the python to run the router with (default: shipped)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent max-size bodies")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop", help="the stand-ins' loop")
    args = parser.parse_args()
    if args.ref:
        python = bench.baseline_python(args.ref)
        bench.memory_config = rendered_by(python)
    else:
        python = Path(args.router_python) if args.router_python else bench.shipped_python()
    run = argparse.Namespace(
        loop=args.loop, memory_clients=min(max(args.clients, 1), 64), router_python=python
    )
    print(f"router: {args.ref or 'this tree'} ({python})", flush=True)
    for _ in range(max(args.rounds, 1)):
        workdir = Path(tempfile.mkdtemp(prefix="router-memory-"))
        try:
            bench.memory_phase(run, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
