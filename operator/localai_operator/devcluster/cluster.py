"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback,
optionally with a real node beside the fake ones (realnode.py), started until usable and stopped without
leftovers; its state file lets another process attach and stop it."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from localai_operator.devcluster.binaries import Binaries, NodeBinaries, find_node
from localai_operator.devcluster.binaries import find as find_binaries
from localai_operator.devcluster.errors import ClusterError, RealNodeUnavailable
from localai_operator.devcluster.kubeconfig import admin_kubeconfig, token_kubeconfig, write_kubeconfig
from localai_operator.devcluster.nodes import KWOK_NODE_ANNOTATION, KWOK_NODE_VALUE, FakeNode, default_nodes
from localai_operator.devcluster.process import (
    ProcessRecord,
    free_ports,
    group_members,
    port_is_free,
    record,
    spawn,
    stop_groups,
)
from localai_operator.devcluster.realnode import NodeNetwork, RealNode
from localai_operator.devcluster.realnode import unavailable_reason as real_node_unavailable_reason

__all__ = ["COMPONENTS", "NODE_COMPONENTS", "Cluster", "ClusterError", "component_commands", "kwok_command"]

STATE_FILE: Final = "state.json"
# Room for thousands of Services (the operator benchmark makes 2,000 at its large size); 10.0.0.1 stays first.
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/16"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
POD_CIDR: Final = "10.244.0.1/16"
# kwok leaves pods carrying this annotation alone, so a test can write a pod status itself (e.g. a crash loop).
KWOK_CUSTOM_STATUS_ANNOTATION: Final = "kwok.x-k8s.io/status=custom"
COMPONENTS: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_COMPONENTS: Final = ("node-init", "containerd", "kubelet", "kube-proxy", "coredns")
_NODE_CLIENTS: Final = ("kubelet", "kube-proxy", "coredns")
_PORT_NAMES: Final = (
    "etcd",
    "etcd-peer",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
_NOT_READY_TAINTS: Final = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})
_START_ATTEMPTS: Final = 3
_STATE_DIR_PREFIX: Final = "localai-operator-"


class _PortTaken(ClusterError):
    """Another process bound a port between our check and the component's bind: retried with new ports."""


@dataclass
class Cluster:
    """A running (or stopped) control plane. Create it with `start()` or `attach()`; `stop()` is idempotent.

    Usable as a context manager. `kubeconfig` is an admin (system:masters) kubeconfig file. `real_node` is the
    real node when it was asked for (`start(real_node=True)`), else None.
    """

    state_dir: Path
    server: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    nodes: tuple[str, ...] = ()
    real_node: RealNode | None = None
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @classmethod
    def start(
        cls,
        nodes: Sequence[FakeNode] | None = None,
        *,
        state_dir: Path | None = None,
        binaries: Binaries | None = None,
        detach: bool = False,
        timeout: float = 120.0,
        real_node: bool = False,
    ) -> Cluster:
        """Starts the control plane and returns once it is usable: the apiserver ready, the `default`
        ServiceAccount present and every fake node Ready without a not-ready taint.

        With `real_node` it also starts the real node (realnode.py) and waits until it is Ready with its label and
        taint, kube-proxy serving and CoreDNS answering; it raises RealNodeUnavailable (a ClusterError) at once,
        having started nothing, when this machine cannot run one (`real_node_unavailable_reason()` says why).

        `state_dir` defaults to a new directory on tmpfs. Without `detach` the components die with the calling
        thread even if it is SIGKILLed; with it (`dev up`) they outlive the process and `attach()` finds them.
        Builds missing binaries first (once per machine, slow). On failure nothing is left running.
        """
        found = binaries or find_binaries()
        if real_node and (reason := real_node_unavailable_reason()) is not None:
            raise RealNodeUnavailable(reason)  # before building the node's binaries for nothing
        node_binaries = find_node() if real_node else None
        wanted = tuple(nodes) if nodes is not None else default_nodes()
        for attempt in range(1, _START_ATTEMPTS + 1):
            cluster = cls(state_dir=_new_state_dir(state_dir))
            try:
                cluster._boot(found, wanted, node_binaries, detach=detach, timeout=timeout)
            except _PortTaken:
                cluster.stop()
                if attempt == _START_ATTEMPTS:
                    raise
            except BaseException:
                cluster.stop()
                raise
            else:
                return cluster
        raise AssertionError("unreachable: the last attempt returns or raises")

    @classmethod
    def attach(cls, state_dir: Path) -> Cluster:
        """The cluster whose state is in `state_dir`, e.g. started by another process with `detach=True`."""
        try:
            state = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError as err:
            raise ClusterError(f"no control plane state in {state_dir} (is it running?)") from err
        return cls(
            state_dir=state_dir,
            server=state["server"],
            ports={name: int(port) for name, port in state["ports"].items()},
            processes=[ProcessRecord.from_json(p) for p in state["processes"]],
            nodes=tuple(state["nodes"]),
            real_node=RealNode.from_json(state["realNode"]) if state.get("realNode") else None,
        )

    def status(self) -> dict[str, bool]:
        """Whether each component's process is running."""
        return {p.name: p.is_running() for p in self.processes}

    def is_running(self) -> bool:
        running = self.status()
        wanted = (*COMPONENTS, *NODE_COMPONENTS) if self.real_node is not None else COMPONENTS
        return all(running.get(name, False) for name in wanted)

    def stop(self, timeout: float = 15.0) -> None:
        """Kills every component's process group, stops the real node (its init kills every container and
        removes what it made), then removes the state directory; raises if anything is left."""
        # The node's clients, the control plane, then the node: an apiserver whose address (the host's end of the
        # node's link) vanished with the node never finishes its graceful stop and waits for SIGKILL.
        for names in (_NODE_CLIENTS, COMPONENTS):
            stop_groups([p for p in self.processes if p.name in names], self._children, timeout=timeout)
        if self.real_node is not None:
            self.real_node.stop()
        stop_groups(self.processes, self._children, timeout=timeout)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        deadline = time.monotonic() + timeout
        while (remaining := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if remaining:
            raise ClusterError("the control plane did not stop cleanly: " + "; ".join(remaining))

    def leftovers(self) -> list[str]:
        """What would remain of this cluster if it were stopped now: live processes, bound ports, the state dir,
        and of the real node its containers, namespaces (with their mounts and iptables rules), link and cgroups."""
        found = [f"{p.name} (pid {p.pid}) is running" for p in self.processes if p.is_running()]
        if self.real_node is not None:
            found += self.real_node.leftovers()
        for pgid, pids in group_members(p.pid for p in self.processes).items():
            found.append(f"process group {pgid} still has pids {pids}")
        found += [
            f"port {port} ({name}) is in use" for name, port in self.ports.items() if not port_is_free(port)
        ]
        if self.state_dir.exists():
            found.append(f"{self.state_dir} exists")
        return found

    def stop_on_exit(self) -> Callable[[], None]:
        """Stops the cluster at interpreter exit and on SIGTERM/SIGHUP; returns a function undoing this.

        After stopping on a signal it raises KeyboardInterrupt, so pytest (or any caller) unwinds as on Ctrl-C and
        its own cleanups run. Ctrl-C itself needs nothing: KeyboardInterrupt reaches the caller's `finally`.
        """
        atexit.register(self._stop_quietly)
        previous: dict[signal.Signals, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop_quietly()
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

        # Signal handlers can only be installed from the main thread.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, on_signal)

        def undo() -> None:
            atexit.unregister(self._stop_quietly)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return undo

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """Writes a kubeconfig for this cluster that authenticates with `token` (e.g. a ServiceAccount's)."""
        return write_kubeconfig(path, token_kubeconfig(self.server, self.ca_cert.read_bytes(), token))

    def log_tail(self, name: str, lines: int = 40) -> str:
        for p in self.processes:
            if p.name == name:
                try:
                    return "\n".join(Path(p.log).read_text(errors="replace").splitlines()[-lines:])
                except FileNotFoundError:
                    return ""
        raise KeyError(name)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_quietly(self) -> None:
        # At exit or on a signal nobody could act on the error; the processes got SIGKILL regardless.
        with contextlib.suppress(ClusterError):
            self.stop()

    def _boot(
        self,
        found: Binaries,
        nodes: tuple[FakeNode, ...],
        node_binaries: NodeBinaries | None,
        *,
        detach: bool,
        timeout: float,
    ) -> None:
        from localai_operator.devcluster.certs import issue, write_pki  # cryptography: only to start one

        deadline = time.monotonic() + timeout
        launcher = _Launcher(self, detach=detach, deadline=deadline)
        if node_binaries is not None:
            # First: the apiserver listens on the node's link, which exists once the node's namespaces do.
            self.real_node = RealNode.prepare(launcher, node_binaries)
            self._save()
        network = self.real_node.network if self.real_node is not None else None
        pki = write_pki(self.state_dir / "pki", extra_ips=network.apiserver_ips() if network else ())
        issue(
            pki, "kubelet-client", "kube-apiserver-kubelet-client", organization="system:masters", client=True
        )
        self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        host = network.host_ip if network is not None else "127.0.0.1"
        self.server = f"https://{host}:{self.ports['kube-apiserver']}"
        self.nodes = tuple(node.name for node in nodes)
        write_kubeconfig(
            self.kubeconfig,
            admin_kubeconfig(
                self.server, pki.ca_cert.read_bytes(), pki.admin_cert.read_bytes(), pki.admin_key.read_bytes()
            ),
        )
        (self.state_dir / "kwok.yaml").write_text(_KWOK_CONFIG)
        commands = component_commands(found, self.state_dir, self.ports, network)
        api = _Api.admin(self.server, pki.ca_cert, pki.admin_cert, pki.admin_key)
        launcher.api = api

        # The apiserver retries etcd by itself; the controllers give up if the apiserver is not healthy soon.
        for name in ("etcd", "kube-apiserver"):
            self._spawn(name, commands[name], detach=detach)
        self._wait("kube-apiserver /readyz", lambda: api.get("/readyz")[0] == 200, deadline)
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._spawn(name, commands[name], detach=detach)
        for index, node in enumerate(nodes):
            code, body = api.post("/api/v1/nodes", node.manifest(index))
            if code not in (201, 409):
                raise ClusterError(f"creating node {node.name} failed with HTTP {code}: {body}")
        if self.real_node is not None:
            self.real_node.start(
                launcher, server=self.server, pki_dir=self.state_dir / "pki", admin_kubeconfig=self.kubeconfig
            )
            self.nodes += (self.real_node.name,)
            self._save()

        self._wait(
            "the `default` ServiceAccount",
            lambda: api.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            deadline,
        )
        self._wait(
            f"nodes {', '.join(self.nodes)} Ready without a not-ready taint",
            lambda: _nodes_ready(api.get("/api/v1/nodes")[1], self.nodes),
            deadline,
        )
        for name, url in (
            ("kube-controller-manager", f"https://127.0.0.1:{self.ports['kube-controller-manager']}/healthz"),
            ("kube-scheduler", f"https://127.0.0.1:{self.ports['kube-scheduler']}/healthz"),
            ("kwok", f"http://127.0.0.1:{self.ports['kwok']}/healthz"),
        ):
            self._wait(f"{name} /healthz", _Api.healthy(url), deadline)

    def _spawn(
        self, name: str, argv: list[str], *, detach: bool, pass_fds: Sequence[int] = ()
    ) -> ProcessRecord:
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(exist_ok=True)
        process = spawn(argv, log_path, die_with_parent=not detach, pass_fds=pass_fds)
        self._children[process.pid] = process
        started = record(name, process, log_path)
        self.processes.append(started)
        self._save()
        return started

    def _save(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "processes": [p.to_json() for p in self.processes],
            "nodes": list(self.nodes),
            "realNode": self.real_node.to_json() if self.real_node is not None else None,
        }
        partial = self.state_dir / f"{STATE_FILE}.tmp"
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.state_dir / STATE_FILE)

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        last_error = ""
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError) as err:
                last_error = f" (last error: {err})"
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}{last_error}\n{self._all_log_tails()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for p in self.processes:
            child = self._children.get(p.pid)
            if child is not None and child.poll() is not None:
                tail = self.log_tail(p.name)
                error = _PortTaken if "address already in use" in tail else ClusterError
                raise error(f"{p.name} exited with code {child.returncode}; its log ends:\n{tail}")

    def _all_log_tails(self) -> str:
        return "\n".join(f"--- {p.name} log:\n{self.log_tail(p.name, 15)}" for p in self.processes)

    def restart_component(self, name: str, down_seconds: float, *, timeout: float = 60.0) -> None:
        """Stops one component (SIGTERM, SIGKILL after a grace), leaves it down for `down_seconds`, starts it again
        with the same command line and ports, and returns once it serves again (the apiserver's /readyz, the
        others' /healthz): for tests of clients that must ride out an outage."""
        [old] = [p for p in self.processes if p.name == name]
        stop_groups([old], self._children)
        self.processes.remove(old)
        time.sleep(down_seconds)
        detach = old.pid not in self._children
        network = self.real_node.network if self.real_node else None
        commands = component_commands(find_binaries(build=False), self.state_dir, self.ports, network)
        self._spawn(name, commands[name], detach=detach)
        pki = self.state_dir / "pki"
        api = _Api.admin(self.server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        health = {
            "etcd": f"http://127.0.0.1:{self.ports['etcd']}/health",
            "kube-controller-manager": f"https://127.0.0.1:{self.ports['kube-controller-manager']}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{self.ports['kube-scheduler']}/healthz",
            "kwok": f"http://127.0.0.1:{self.ports['kwok']}/healthz",
        }
        serving = (
            (lambda: api.get("/readyz")[0] == 200) if name == "kube-apiserver" else _Api.healthy(health[name])
        )
        self._wait(f"{name} serving again", serving, time.monotonic() + timeout)


@dataclass
class _Launcher:
    """What the real node borrows from a booting cluster: its process records, its deadline, its admin client."""

    cluster: Cluster
    detach: bool
    deadline: float
    api: _Api | None = None

    def spawn_component(self, name: str, argv: list[str], *, pass_fds: Sequence[int] = ()) -> ProcessRecord:
        return self.cluster._spawn(name, argv, detach=self.detach, pass_fds=pass_fds)

    def wait_until(self, what: str, ready: Callable[[], bool]) -> None:
        self.cluster._wait(what, ready, self.deadline)

    def api_post(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        assert self.api is not None, "the real node's components start after the apiserver"
        return self.api.post(path, body)


def component_commands(
    found: Binaries, state_dir: Path, ports: Mapping[str, int], network: NodeNetwork | None = None
) -> dict[str, list[str]]:
    """The command line of each component, all state under `state_dir`, all ports on loopback; with a real node
    (`network`) the apiserver listens on the host's end of the node's link instead, and talks to its kubelet."""
    pki = state_dir / "pki"
    kubeconfig = str(state_dir / "kubeconfig")
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
    # Controllers authenticate and authorize callers of their own /healthz etc. through the apiserver.
    delegated = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
    ]
    return {
        "etcd": [
            str(found.etcd),
            "--name=harness",
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=harness={peer_url}",
            # The data is thrown away at stop: durability costs only time.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(found.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--secure-port={ports['kube-apiserver']}",
            f"--cert-dir={state_dir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # Fills the requestheader CA that the controllers' delegated authentication expects (and aggregated
            # APIs such as metrics-server would use); without it they log an error every few seconds.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The apiserver's identity towards kubelets (system:masters: allowed logs, exec and port-forward).
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            *(
                _real_node_apiserver_flags(pki, network)
                if network is not None
                else _loopback_apiserver_flags()
            ),
            # The `kubernetes` Service's endpoints: none on loopback (invalid there, and nothing could reach it),
            # written by the real node otherwise; the lease reconciler would stall every stop.
            "--endpoint-reconciler-type=none",
        ],
        "kube-controller-manager": [
            str(found.kube_controller_manager),
            *delegated,
            f"--secure-port={ports['kube-controller-manager']}",
            f"--cert-dir={state_dir / 'kube-controller-manager'}",
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
        ],
        "kube-scheduler": [
            str(found.kube_scheduler),
            *delegated,
            f"--secure-port={ports['kube-scheduler']}",
            f"--cert-dir={state_dir / 'kube-scheduler'}",
        ],
        "kwok": kwok_command(found.kwok, state_dir, kubeconfig, ports["kwok"]),
    }


def _loopback_apiserver_flags() -> list[str]:
    return [
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
    ]


def _real_node_apiserver_flags(pki: Path, network: NodeNetwork) -> list[str]:
    # On the host's end of the node's link the apiserver is reachable from the host (a local address), from the
    # node and, through the `kubernetes` Service (whose endpoints the real node writes), from every pod.
    return [
        f"--bind-address={network.host_ip}",
        f"--advertise-address={network.host_ip}",
        f"--service-cluster-ip-range={network.service_cidr}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--enable-admission-plugins=NodeRestriction",
    ]


def kwok_command(kwok: Path, state_dir: Path, kubeconfig: str, port: int, cidr: str = POD_CIDR) -> list[str]:
    """kwok managing only the nodes annotated as fake; its config file is `state_dir/kwok.yaml`."""
    return [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={state_dir / 'kwok.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}",
        "--manage-nodes-with-label-selector=",
        "--node-ip=127.0.0.1",
        "--node-lease-duration-seconds=40",
        f"--cidr={cidr}",
        f"--server-address=127.0.0.1:{port}",
    ]


# Passed explicitly so a user's ~/.kwok/kwok.yaml never changes the harness. No Stage documents: kwok v0.7 then
# uses its built-in node-initialize/heartbeat and pod-ready/complete/delete stages.
_KWOK_CONFIG: Final = f"""\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  disregardStatusWithAnnotationSelector: {KWOK_CUSTOM_STATUS_ANNOTATION}
"""


def _nodes_ready(node_list: Any, names: Sequence[str]) -> bool:
    by_name = {item["metadata"]["name"]: item for item in node_list.get("items", [])}
    for name in names:
        node = by_name.get(name)
        if node is None:
            return False
        conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = {t["key"] for t in node.get("spec", {}).get("taints", [])}
        if conditions.get("Ready") != "True" or taints & _NOT_READY_TAINTS:
            return False
    return True


def _new_state_dir(requested: Path | None) -> Path:
    if requested is None:
        # tmpfs: etcd's writes and the keys never touch a disk.
        tmpfs = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
        remove_stale_state_dirs(tmpfs)
        return Path(tempfile.mkdtemp(prefix=_STATE_DIR_PREFIX, dir=tmpfs))
    if (requested / STATE_FILE).exists():
        if any(Cluster.attach(requested).status().values()):
            raise ClusterError(f"{requested} already holds a running control plane; stop it first")
        shutil.rmtree(requested)  # a control plane that died without stopping, e.g. at a reboot
    requested.mkdir(parents=True, exist_ok=True)
    return requested


def remove_stale_state_dirs(parent: Path, min_age: float = 60.0) -> list[Path]:
    """Removes state directories of harnesses whose processes are all gone (their owner was SIGKILLed, so the
    kernel killed the components but nobody removed the directory). Young directories may still be starting."""
    removed = []
    for directory in parent.glob(f"{_STATE_DIR_PREFIX}*"):
        try:
            if time.time() - directory.stat().st_mtime < min_age:
                continue
            if (directory / STATE_FILE).exists() and any(Cluster.attach(directory).status().values()):
                continue
        except (OSError, ValueError, KeyError, ClusterError):
            continue  # vanished meanwhile, or not ours to judge
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


class _Api:
    """Just enough HTTP for readiness checks and node creation, with the admin client certificate."""

    def __init__(self, server: str, context: ssl.SSLContext) -> None:
        self._server = server
        # An explicit empty proxy map: an HTTPS_PROXY in the environment must not capture loopback requests.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    @classmethod
    def admin(cls, server: str, ca: Path, cert: Path, key: Path) -> _Api:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        return cls(server, context)

    @classmethod
    def insecure(cls) -> _Api:
        # kube-controller-manager and kube-scheduler serve /healthz with self-signed certificates.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return cls("", context)

    @classmethod
    def healthy(cls, url: str) -> Callable[[], bool]:
        insecure = cls.insecure()
        return lambda: insecure.get(url)[0] == 200

    def get(self, path: str) -> tuple[int, Any]:
        return self._request(urllib.request.Request(self._server + path))

    def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self._server + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        return self._request(request)

    def _request(self, request: urllib.request.Request) -> tuple[int, Any]:
        try:
            with self._opener.open(request, timeout=5) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")
