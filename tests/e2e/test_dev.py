"""`localai-operator dev up | status | down` as a new user runs them: twice up, status, down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localai_operator.devcluster.process import ProcessRecord

pytestmark = [pytest.mark.cluster, pytest.mark.harness]
ROOT = Path(__file__).resolve().parents[2]


def dev(action: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCALAI_OPERATOR_DEV_DIR": str(state_dir)}
    return subprocess.run([sys.executable, "-m", "localai_operator.cli", "dev", action], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


def test_dev_up_twice_then_status_then_down_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "dev"
    try:
        first = dev("up", state_dir)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"export KUBECONFIG={state_dir / 'cluster' / 'kubeconfig'}" in first.stdout.splitlines()[-1]
        assert "X-Served-By: local" in first.stdout and "X-Served-By: fallback" in first.stdout
        assert "every sample is Ready" in first.stdout
        for row in ("InferencePool  llm-samples/gpu-pool", "FallbackRoute  llm-samples/chat"):
            assert any(line.startswith(row) and " True " in line for line in first.stdout.splitlines()), row

        second = dev("up", state_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "reusing the running control plane" in second.stdout
        assert "reusing the running operator" in second.stdout

        status = dev("status", state_dir)
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[-1] == f"export KUBECONFIG={state_dir / 'cluster' / 'kubeconfig'}"

        saved = json.loads((state_dir / "dev.json").read_text())["processes"].values()
        cluster = json.loads((state_dir / "cluster" / "state.json").read_text())["processes"]
        records = [ProcessRecord.from_json(p) for p in [*saved, *cluster]]
        assert all(r.is_running() for r in records)
    finally:
        down = dev("down", state_dir)
    assert down.returncode == 0, down.stderr
    assert not [r.name for r in records if r.is_running()]
    assert not state_dir.exists()
    assert dev("status", state_dir).returncode == 1
