"""The one entry point, `localai-operator`: run, crds, render, router, dev."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localai_operator.control.main import RunOptions


def _cmd_crds(args: argparse.Namespace) -> int:
    from localai_operator.api.crd import crds_yaml, write_crds

    if args.reference:
        from localai_operator.api.reference import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0
    if args.output_dir:
        for path in write_crds(args.output_dir):
            print(path)
    else:
        sys.stdout.write(crds_yaml())
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from localai_operator.render.offline import render_paths

    try:
        sys.stdout.write(render_paths(args.files))
    except ValueError as err:
        print(f"localai-operator render: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_router(args: argparse.Namespace) -> int:
    from localai_operator.router.server import main as router_main

    return router_main(
        config_path=args.config,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """`run`'s flags, every one of them, as the options the operator starts with."""
    from localai_operator.control.main import RunOptions

    return RunOptions(
        namespaces=tuple(args.namespace),
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        verbose=args.verbose,
        leader_election=args.leader_election,
        workers=args.workers,
        api_qps=args.api_qps,
        api_burst=args.api_burst,
        read_model_headers=args.read_model_headers,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from localai_operator.control.kubeconfig import leave_out_the_client_library

    leave_out_the_client_library()
    from localai_operator.control.main import run

    return run(run_options(args))


def _cmd_dev(args: argparse.Namespace) -> int:
    from localai_operator.devcluster.dev import dev_command

    return dev_command(args.action)


def _cmd_fetch_models(args: argparse.Namespace) -> int:
    from localai_operator.fetch import main as fetch_main

    return fetch_main(args.manifest, args.config_dir, args.models_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localai-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (Kopf)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    run.add_argument("--metrics-port", type=int, default=8081, help="Prometheus metrics port (0 disables)")
    run.add_argument("--health-port", type=int, default=8082, help="liveness/readiness port (0 disables)")
    run.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a Lease so extra replicas stand by (lease namespace: $POD_NAMESPACE or default)",
    )
    run.add_argument("--workers", type=int, default=64, help="passes run at once (async workers)")
    run.add_argument(
        "--api-qps", type=float, default=200.0, help="sustained API requests per second the operator may send"
    )
    run.add_argument("--api-burst", type=int, default=400, help="API requests it may send at once")
    run.add_argument(
        "--read-model-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read each LLMModel's GGUF header from its source (status.gguf, the GPU-memory fit); off: only from "
        "what the pools' fetch-models report",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output-dir", help="write one file per CRD into this directory instead of stdout")
    crds.add_argument(
        "--reference", action="store_true", help="print the field reference (docs/reference.md)"
    )
    crds.set_defaults(func=_cmd_crds)

    render = sub.add_parser("render", help="print every object the operator would create, offline")
    render.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        help="a YAML file or a directory of them (repeatable)",
    )
    render.set_defaults(func=_cmd_render)

    router = sub.add_parser("router", help="run the fallback router (data plane)")
    router.add_argument(
        "--config", required=True, help="the routing config (the FallbackRoute ConfigMap's file)"
    )
    router.add_argument("--host", default="0.0.0.0")
    router.add_argument("--port", type=int, default=8080)
    router.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /metrics, /readyz and /healthz on this port, without client keys (for scrapers)",
    )
    router.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="log verbosity (keys are redacted at every level)",
    )
    router.set_defaults(func=_cmd_router)

    fetch = sub.add_parser("fetch-models", help="download and verify a pool's models (its init container)")
    fetch.add_argument("--manifest", required=True, help="downloads.json from the pool's ConfigMap")
    fetch.add_argument("--config-dir", required=True, help="directory of rendered LocalAI model YAMLs")
    fetch.add_argument("--models-dir", required=True, help="LocalAI's models directory")
    fetch.set_defaults(func=_cmd_fetch_models)

    dev = sub.add_parser("dev", help="a local control plane with the operator and the samples")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.set_defaults(func=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
