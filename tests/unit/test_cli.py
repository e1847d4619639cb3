"""The command line reaches the operator's options unchanged (the flags users and the chart pass)."""

from __future__ import annotations

import subprocess
import sys

from localai_operator.cli import build_parser, run_options
from localai_operator.control.main import RunOptions


def options(*argv: str) -> RunOptions:
    return run_options(build_parser().parse_args(["run", *argv]))


def test_no_leader_election_reaches_the_operator() -> None:
    assert options("--no-leader-election").leader_election is False
    assert options().leader_election is True


def test_watched_namespaces_reach_the_operator() -> None:
    assert options("-n", "a", "-n", "b").watched == ["a", "b"]
    assert options("-A").watched is None


def test_ports_workers_and_the_api_rate_reach_the_operator() -> None:
    parsed = options(
        "--metrics-port", "0", "--health-port", "9", "--workers", "3", "--api-qps", "5", "--api-burst", "7"
    )
    assert (parsed.metrics_port, parsed.health_port, parsed.workers, parsed.api_qps, parsed.api_burst) == (
        0,
        9,
        3,
        5,
        7,
    )


def test_no_read_model_headers_reaches_the_operator() -> None:
    assert options("--no-read-model-headers").read_model_headers is False
    assert options().read_model_headers is True


def test_python_dash_m_runs_the_same_command() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "localai_operator", "render", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: localai-operator render")
