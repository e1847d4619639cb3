"""Files other projects ship in their Go modules (their CRDs), at pinned versions, from the Go module cache: what
the tests install beside ours to check that both work on one cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from localai_operator.devcluster.binaries import BinariesError, go_env

# The Gateway API Inference Extension: its InferencePool has our kind's name in other groups. v1.0.0 is the release
# that ships both: inference.networking.k8s.io (v1, GA) and inference.networking.x-k8s.io (v1alpha2, which later
# releases no longer ship but clusters installed from them still serve).
INFERENCE_EXTENSION_MODULE: Final = "sigs.k8s.io/gateway-api-inference-extension"
INFERENCE_EXTENSION_VERSION: Final = "v1.0.0"
INFERENCE_EXTENSION_GROUPS: Final = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")


def module_dir(module: str, version: str, env: Mapping[str, str] = os.environ) -> Path:
    """The module's source tree at `version` in the Go module cache (downloaded, and checksum-verified, once)."""
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise BinariesError(f"Go is required to fetch {module}@{version}")
    with tempfile.TemporaryDirectory() as outside_any_module:
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=outside_any_module,
            env={**go_env(env), "GOFLAGS": "-mod=mod"},
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise BinariesError(f"`go mod download {module}@{version}` failed: {result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


def inference_pool_crds(env: Mapping[str, str] = os.environ) -> list[Path]:
    """The Inference Extension's InferencePool CRDs, one per group in INFERENCE_EXTENSION_GROUPS."""
    bases = (
        module_dir(INFERENCE_EXTENSION_MODULE, INFERENCE_EXTENSION_VERSION, env) / "config" / "crd" / "bases"
    )
    return [bases / f"{group}_inferencepools.yaml" for group in INFERENCE_EXTENSION_GROUPS]
