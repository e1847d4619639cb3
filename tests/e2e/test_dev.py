"""`localai-operator dev up | status | down` as a new user runs them: twice up, status, down leaves nothing. On this
machine (root) `dev up` runs the operator in a pod on the real node and the demo asks Gemma through the route's
Service; where the real node cannot start it says why and runs the kwok-only demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_operator.devcluster import real_node_unavailable_reason, stack
from localai_operator.devcluster.process import ProcessRecord

pytestmark = [pytest.mark.cluster, pytest.mark.harness]
ROOT = Path(__file__).resolve().parents[2]
# `dev up` as on a machine where the real node cannot run: the same process with a non-root effective uid.
AS_NON_ROOT = (
    "import os, sys; os.geteuid = lambda: 1000; from localai_operator.cli import main; sys.exit(main())"
)


def dev(action: str, state_dir: Path, *, non_root: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCALAI_OPERATOR_DEV_DIR": str(state_dir)}
    program = ["-c", AS_NON_ROOT] if non_root else ["-m", "localai_operator.cli"]
    return subprocess.run(
        [sys.executable, *program, "dev", action],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def running_records(state_dir: Path) -> list[ProcessRecord]:
    saved = json.loads((state_dir / "dev.json").read_text())["processes"].values()
    cluster = json.loads((state_dir / "cluster" / "state.json").read_text())["processes"]
    return [ProcessRecord.from_json(p) for p in [*saved, *cluster]]


def ready_row(output: str, row: str) -> bool:
    return any(line.startswith(row) and " True " in line for line in output.splitlines())


@pytest.fixture(scope="module")
def first_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """One `dev up` from nothing, shared: the demo's output and the lifecycle after it."""
    state_dir = tmp_path_factory.mktemp("dev") / "dev"
    up = dev("up", state_dir)
    yield state_dir, up
    dev("down", state_dir)  # nothing left to stop when the lifecycle test already did


def test_dev_up_serves_the_model_from_the_real_node_through_the_route_and_falls_back_without_a_pod(
    first_up: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, up = first_up
    assert up.returncode == 0, up.stdout + up.stderr

    # The one pod the router lists for the pool answers request 1, and it runs LocalAI's own process.
    listed = re.search(
        rf"the router lists the pool's pod http://[0-9.]+:8080/v1 .*: pod {stack.POOL}-\S+, process 1 of its "
        r"localai container: (\S+)$",
        up.stdout,
        re.M,
    )
    assert listed, up.stdout
    assert listed.group(1).rsplit("/", 1)[-1] == "local-ai", listed.group(0)
    local = re.search(
        r"request 1: POST /v1/completions .* X-Served-By: local +first token \d+ ms, (\d+) tokens, "
        r"[0-9.]+ tokens/s\n +Kubernetes is (\S.*)",
        up.stdout,
    )
    assert local, up.stdout
    assert int(local.group(1)) > 1
    assert re.search(
        r"request 2: .*pool scaled to 0.* X-Served-By: fallback +X-Fallback-Reason: pool_cold", up.stdout
    ), up.stdout
    for row in ("InferencePool  llm-real-node/gemma-cpu", "FallbackRoute  llm-real-node/gemma-chat"):
        assert ready_row(up.stdout, row), row
    assert re.search(r"^localai-operator/localai-operator-\S+ +real-node +Running +1/1", up.stdout, re.M), (
        up.stdout
    )
    assert re.search(r"==> timings: .*total [0-9.]+ s$", up.stdout, re.M), up.stdout


def test_dev_up_twice_then_status_then_down_leaves_no_process_and_no_file(
    first_up: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    state_dir, first = first_up
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"export KUBECONFIG={state_dir / 'cluster' / 'kubeconfig'}" in first.stdout.splitlines()[-1]
        assert "X-Served-By: local" in first.stdout and "X-Served-By: fallback" in first.stdout
        assert "every sample is Ready" in first.stdout
        for row in ("InferencePool  llm-samples/gpu-pool", "FallbackRoute  llm-samples/chat"):
            assert ready_row(first.stdout, row), row

        second = dev("up", state_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "reusing the running control plane" in second.stdout
        assert "reusing the running operator" in second.stdout

        status = dev("status", state_dir)
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[-1] == f"export KUBECONFIG={state_dir / 'cluster' / 'kubeconfig'}"
        assert re.search(r"^llm-real-node/gemma-cpu-\S+ +real-node +Running +1/1", status.stdout, re.M), (
            status.stdout
        )

        records = running_records(state_dir)
        assert all(r.is_running() for r in records)
    finally:
        down = dev("down", state_dir)
    assert down.returncode == 0, down.stderr
    assert not [r.name for r in records if r.is_running()]
    assert not state_dir.exists()
    assert dev("status", state_dir).returncode == 1


def test_where_the_real_node_cannot_start_dev_up_says_why_and_runs_the_kwok_only_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = real_node_unavailable_reason()
    monkeypatch.undo()
    assert reason is not None
    state_dir = tmp_path / "dev"
    try:
        up = dev("up", state_dir, non_root=True)
    finally:
        down = dev("down", state_dir)
    assert up.returncode == 0, up.stdout + up.stderr

    assert f"==> no real node: {reason}\n" in up.stdout
    assert "falling back to the kwok-only demo" in up.stdout
    assert "request 1: local healthy" in up.stdout and "X-Served-By: fallback" in up.stdout
    assert ready_row(up.stdout, "InferencePool  llm-samples/gpu-pool")
    assert "llm-real-node" not in up.stdout
    assert down.returncode == 0, down.stderr
