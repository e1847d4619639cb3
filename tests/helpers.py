"""Helpers shared by the tests: polling with a timeout that names what it waited for, and access to the cluster."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kubernetes import client, config

from localai_operator.devcluster import Cluster, RealNodeError, real_node_unavailable_reason

T = TypeVar("T")

# Every local control plane `open_cluster` started in this process: the session-end check looks at each.
started_harnesses: list[Cluster] = []


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    describe: Callable[[], object] | None = None,
) -> T:
    """Polls `predicate` until it returns something truthy and returns that.

    On timeout fails with "timed out after Ns waiting for <what>", plus `describe()` (the state worth seeing).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"; last seen: {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class ClusterAccess:
    """What the `cluster` fixture yields: an admin kubeconfig file and a client for it.

    `harness` is the local control plane, or None when the tests run against an existing cluster (--kubeconfig).
    `real_node_missing` says why the harness has no real node (`harness.real_node` is None), else it is None.
    """

    kubeconfig: Path
    api: client.ApiClient
    harness: Cluster | None = None
    real_node_missing: str | None = None

    @classmethod
    def connect(
        cls, kubeconfig: Path, harness: Cluster | None = None, real_node_missing: str | None = None
    ) -> ClusterAccess:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        return cls(kubeconfig, api, harness, real_node_missing)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def client_for_token(self, token: str) -> client.ApiClient:
        """A client for the same server and CA that authenticates with `token` only (e.g. a ServiceAccount's)."""
        admin = self.api.configuration
        configuration = client.Configuration()
        configuration.host = admin.host
        configuration.ssl_ca_cert = admin.ssl_ca_cert
        configuration.verify_ssl = admin.verify_ssl
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)


@contextmanager
def open_cluster(kubeconfig: str | None) -> Iterator[ClusterAccess]:
    """The existing cluster at `kubeconfig` (e.g. kind) or, without one, a new local control plane with its real
    node, stopped on exit, on SIGTERM/SIGHUP and at interpreter exit. A harness that cannot start raises; one whose
    real node cannot start runs without it, and the tests needing it fail with the reason."""
    if kubeconfig:
        access = ClusterAccess.connect(Path(kubeconfig).expanduser())
        try:
            yield access
        finally:
            access.api.close()
        return
    harness, missing = start_harness()
    started_harnesses.append(harness)
    undo = harness.stop_on_exit()
    try:
        access = ClusterAccess.connect(harness.kubeconfig, harness, missing)
        try:
            yield access
        finally:
            access.api.close()
    finally:
        try:
            harness.stop()
        finally:
            undo()


def read_state_dir(session: subprocess.Popen[str]) -> Path:
    """The state directory a child process printed (a line STATE_DIR=...) once its harness was up."""
    assert session.stdout is not None
    seen = []
    for line in session.stdout:
        seen.append(line)
        if line.startswith("STATE_DIR="):
            return Path(line.removeprefix("STATE_DIR=").strip())
    raise AssertionError("the child process ended before its harness was up:\n" + "".join(seen))


def start_harness() -> tuple[Cluster, str | None]:
    """The local control plane with a real node where this machine can run one; else without, and why not."""
    missing = real_node_unavailable_reason()
    if missing is None:
        try:
            return Cluster.start(real_node=True), None
        except RealNodeError as err:
            missing = f"the real node did not start: {err}"
    return Cluster.start(), missing


def kubectl_binary(access: ClusterAccess) -> str:
    """$KUBECTL, else the harness's version-matched kubectl, else the one on PATH (e.g. on kind)."""
    import os
    import shutil

    from localai_operator.devcluster import find

    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    if access.harness is not None:
        return str(find(build=False).kubectl)
    found = shutil.which("kubectl")
    assert found, "kubectl is not on PATH (set KUBECTL)"
    return found


def kubectl(access: ClusterAccess, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs kubectl against the test cluster; never raises on a non-zero exit (callers assert on it)."""
    argv = [kubectl_binary(access), f"--kubeconfig={access.kubeconfig}", *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120, check=False)
