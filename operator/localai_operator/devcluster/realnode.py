"""The real node: containerd, runc, a CNI bridge, the kubelet, kube-proxy and CoreDNS in PID, mount and network
namespaces of their own beside the control plane, so that pods whose images the harness imported really run.

Addresses live only inside this machine: the node's network namespace is joined to the host by one veth and has
no route beyond it, so nothing can be routed (or NATed) out of the machine; its own mangle rules let through that
link only the apiserver and answers to the host. containerd is told that every registry is a closed
loopback port, so a missing image fails at once; CoreDNS is built without a `forward` plugin and answers only the
cluster domain. Everything the node makes disappears with its init process (see `nodeinit`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from localai_operator.devcluster import nodeinit
from localai_operator.devcluster.binaries import (
    PAUSE_VERSION,
    BinariesError,
    NodeBinaries,
    find_node,
)
from localai_operator.devcluster.errors import RealNodeError, RealNodeUnavailable
from localai_operator.devcluster.kubeconfig import admin_kubeconfig as client_kubeconfig
from localai_operator.devcluster.kubeconfig import write_kubeconfig
from localai_operator.devcluster.nodes import REAL_NODE_LABEL, REAL_NODE_NAME, REAL_NODE_TAINT
from localai_operator.devcluster.oci import ImageFile, archive_image_names, write_image
from localai_operator.devcluster.process import ProcessRecord

CLUSTER_DOMAIN: Final = "cluster.local"
PAUSE_IMAGE: Final = f"localhost/localai-operator/pause:{PAUSE_VERSION}"
CONTAINERD_NAMESPACE: Final = "k8s.io"
# Every registry: a loopback port nothing listens on, in a network namespace with no route out.
CLOSED_REGISTRY: Final = "http://127.0.0.1:1"
KUBELET_PORT: Final = 10250
KUBELET_HEALTHZ_PORT: Final = 10248
KUBE_PROXY_HEALTHZ_PORT: Final = 10256
COREDNS_READY_PORT: Final = 8181
COREDNS_HEALTH_PORT: Final = 8080
NODE_LINK: Final = "eth0"
EGRESS_CHAIN: Final = "LOCALAI-OPERATOR-EGRESS"
INGRESS_CHAIN: Final = "LOCALAI-OPERATOR-INGRESS"
CGROUP_PARENT: Final = "localai-operator"
HOST_TOOLS: Final = ("runc", "iptables", "iptables-restore", "iptables-save", "ip", "unshare", "nsenter")
# The kubelet's kernel settings (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables).
KUBELET_KERNEL_TUNABLES: Final = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
_MAX_SLOTS: Final = 32
_LINK_PREFIX: Final = "lai-node"
_NODE_DIR_PREFIX: Final = "localai-operator-node-"
_REQUIRED_CONTROLLERS: Final = ("cpu", "cpuacct", "cpuset", "memory", "pids")
_CAP_SYS_RESOURCE: Final = 24


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of the node in slot `slot` (one per real node running on this machine): all of them inside
    10.(200+slot).0.0/16, so that real nodes of several harnesses can run side by side."""

    slot: int

    @property
    def prefix(self) -> str:
        return f"10.{200 + self.slot}"

    @property
    def block(self) -> str:
        return f"{self.prefix}.0.0/16"

    @property
    def pod_cidr(self) -> str:
        return f"{self.prefix}.0.0/24"

    @property
    def bridge_ip(self) -> str:
        return f"{self.prefix}.0.1"

    @property
    def service_cidr(self) -> str:
        return f"{self.prefix}.1.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"{self.prefix}.1.1"

    @property
    def dns_service_ip(self) -> str:
        return f"{self.prefix}.1.10"

    @property
    def host_ip(self) -> str:
        """The host's end of the link: the apiserver listens here, so the node and its pods reach it."""
        return f"{self.prefix}.2.1"

    @property
    def node_ip(self) -> str:
        """The node's InternalIP: the kubelet, kube-proxy's healthz and CoreDNS listen here."""
        return f"{self.prefix}.2.2"

    @property
    def host_link(self) -> str:
        return f"{_LINK_PREFIX}{self.slot}"

    def apiserver_ips(self) -> tuple[str, ...]:
        return (self.host_ip, self.kubernetes_service_ip)


class Launcher(Protocol):
    """What a booting cluster lends the node: recorded processes, its deadline, its admin client (cluster.py)."""

    def spawn_component(
        self, name: str, argv: list[str], *, pass_fds: Sequence[int] = ()
    ) -> ProcessRecord: ...

    def wait_until(self, what: str, ready: Callable[[], bool]) -> None: ...

    def api_post(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]: ...


@dataclass
class RealNode:
    """A running (or stopped) real node. `prepare()` creates its namespaces and network before the control plane
    starts (the apiserver listens on the node link); `start()` runs its components once the apiserver is up."""

    name: str
    node_dir: Path
    network: NodeNetwork
    binaries_dir: Path
    init_pid: int = 0
    init_start_ticks: int = 0
    namespaces: dict[str, int] | None = None
    cgroups: tuple[str, ...] = ()

    @property
    def containerd_socket(self) -> Path:
        return self.node_dir / "containerd" / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's --cgroup-root: the same relative path in every cgroup hierarchy."""
        return f"/{CGROUP_PARENT}/node{self.network.slot}"

    @property
    def binaries(self) -> NodeBinaries:
        return NodeBinaries.in_directory(self.binaries_dir)

    @classmethod
    def prepare(cls, launcher: Launcher, binaries: NodeBinaries, *, name: str = REAL_NODE_NAME) -> RealNode:
        """Starts the node's init in new namespaces, claims a free network slot (its veth) and creates the node's
        cgroups. Raises RealNodeUnavailable before touching anything when this machine cannot run it."""
        reason = unavailable_reason(build=False)
        if reason is not None:
            raise RealNodeUnavailable(reason)
        remove_stale_nodes()
        node_dir = Path(tempfile.mkdtemp(prefix=_NODE_DIR_PREFIX, dir=node_dir_parent()))
        node = cls(name=name, node_dir=node_dir, network=NodeNetwork(-1), binaries_dir=binaries.directory)
        node._write_layout()
        try:
            node._boot_namespaces(launcher)
        except BaseException:
            node.stop()  # the caller stops the init's process (unshare); this removes what the node made
            raise
        return node

    def _boot_namespaces(self, launcher: Launcher) -> None:
        host_mount_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
        try:
            init = launcher.spawn_component(
                "node-init",
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--net",
                    "--propagation",
                    "private",
                    "--kill-child=SIGTERM",
                    "--",
                    sys.executable,
                    nodeinit.__file__,
                    str(self.node_dir),
                    str(host_mount_ns),
                ],
                pass_fds=(host_mount_ns,),
            )
        finally:
            os.close(host_mount_ns)
        launcher.wait_until(
            "the real node's init to set up its namespaces", (self.node_dir / nodeinit.READY_FILE).exists
        )
        self.init_pid = _only_child(init.pid)
        self.init_start_ticks = _start_ticks(self.init_pid)
        self.namespaces = {
            kind: os.stat(f"/proc/{self.init_pid}/ns/{kind}").st_ino for kind in ("pid", "mnt", "net")
        }
        self.network = _claim_slot(self.init_pid)
        self._write_layout()
        self._configure_network()
        # Recorded before they exist, so that whoever cleans up after a failure removes each one made.
        self.cgroups = tuple(
            str(hierarchy / self.cgroup_root.strip("/")) for hierarchy in _cgroup_hierarchies()
        )
        self._write_layout()
        _create_cgroups([Path(cgroup) for cgroup in self.cgroups])

    def start(self, launcher: Launcher, *, server: str, pki_dir: Path, admin_kubeconfig: Path) -> None:
        """Runs containerd (with the pause image imported), the kubelet, kube-proxy and CoreDNS, and creates the
        kube-dns Service and the `kubernetes` Service's endpoint; returns once each answers its health check (the caller then waits for the node Ready)."""
        from localai_operator.devcluster.certs import Pki, issue  # cryptography: only to start one

        pki = Pki.in_directory(pki_dir)
        ca = pki.ca_cert.read_bytes()
        kubeconfigs: dict[str, Path] = {}
        for component, user, group in (
            ("kubelet", f"system:node:{self.name}", "system:nodes"),
            ("kube-proxy", "system:kube-proxy", None),
        ):
            cert, key = issue(pki, f"{self.name}-{component}-client", user, organization=group, client=True)
            kubeconfigs[component] = write_kubeconfig(
                self.node_dir / f"{component}.kubeconfig",
                client_kubeconfig(server, ca, cert.read_bytes(), key.read_bytes()),
            )
        serving_cert, serving_key = issue(
            pki,
            f"{self.name}-kubelet-serving",
            f"system:node:{self.name}",
            organization="system:nodes",
            server_ips=(self.network.node_ip,),
            server_dns=(self.name,),
        )
        self._write_configs(pki.ca_cert, serving_cert, serving_key, kubeconfigs, admin_kubeconfig)
        port = urllib.parse.urlsplit(server).port
        assert port is not None, f"the apiserver URL {server} names its port"
        self._guard_link(port)
        binaries = self.binaries

        launcher.spawn_component(
            "containerd",
            self._in_node(
                [
                    "prlimit",
                    "--nofile={}:{}".format(*containerd_nofile()),
                    "--",
                    str(binaries.containerd),
                    f"--config={self.node_dir / 'containerd.toml'}",
                ]
            ),
        )
        launcher.wait_until("containerd to serve its socket", self._containerd_answers)
        pause = write_image(
            self.node_dir / "pause.tar",
            PAUSE_IMAGE,
            [ImageFile("pause", source=binaries.pause)],
            entrypoint=["/pause"],
        )
        self.import_image(pause)
        launcher.spawn_component("kubelet", self._in_node(self._kubelet_command(kubeconfigs["kubelet"])))
        launcher.spawn_component(
            "kube-proxy",
            self._in_node([str(binaries.kube_proxy), f"--config={self.node_dir / 'kube-proxy.yaml'}"]),
        )
        launcher.spawn_component(
            "coredns", self._in_node([str(binaries.coredns), "-conf", str(self.node_dir / "Corefile")])
        )
        for path, body in service_objects(self.network, port):
            code, answer = launcher.api_post(path, body)
            if code not in (201, 409):
                name = f"{body['kind']} {body['metadata']['namespace']}/{body['metadata']['name']}"
                raise RealNodeError(f"creating {name} failed with HTTP {code}: {answer}")
        ip = self.network.node_ip
        for what, url in (
            ("the kubelet's /healthz", f"http://{ip}:{KUBELET_HEALTHZ_PORT}/healthz"),
            ("kube-proxy's /healthz", f"http://{ip}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"),
            ("CoreDNS's /ready", f"http://{ip}:{COREDNS_READY_PORT}/ready"),
        ):
            launcher.wait_until(what, _http_ok(url))

    def import_image(self, archive: Path) -> list[str]:
        """Imports an OCI image layout or Docker archive (a tar file) into the node's containerd, unpacked for the
        kubelet, and returns the image names it holds (normalised: `localhost/x:1`, `docker.io/library/y:2`).

        The archive must name its images: `io.containerd.image.name` or a full `org.opencontainers.image.ref.name`
        (buildah: `buildah push IMG oci-archive:FILE:localhost/NAME:TAG`; skopeo likewise), or Docker RepoTags."""
        names = [normalize_image_name(name) for name in archive_image_names(archive)]
        if not names:
            raise RealNodeError(
                f"{archive} names no image: write it with a full name, e.g. "
                f"`buildah push IMAGE oci-archive:{archive}:localhost/NAME:TAG`"
            )
        result = self._ctr(
            "images", "import", "--snapshotter=overlayfs", "--platform=linux/amd64", str(archive)
        )
        if result.returncode != 0:
            raise RealNodeError(f"importing {archive} into the real node failed: {result.stderr.strip()}")
        missing = sorted(set(names) - set(self.images()))
        if missing:
            raise RealNodeError(f"after importing {archive} the node still lacks {', '.join(missing)}")
        return names

    def images(self) -> list[str]:
        """The names of the images in the node's containerd (the kubelet's namespace), digests left out."""
        result = self._ctr("images", "list", "--quiet")
        if result.returncode != 0:
            raise RealNodeError(f"listing the real node's images failed: {result.stderr.strip()}")
        return [line for line in result.stdout.split() if not line.startswith("sha256:")]

    def run_in_node(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Runs a command in the node's namespaces (e.g. `ip route get ...`); never raises on a non-zero exit."""
        return subprocess.run(
            self._in_node(list(argv)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def is_running(self) -> bool:
        return self.init_pid > 0 and _start_ticks(self.init_pid) == self.init_start_ticks

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the init, which kills every process of the node and removes what it made; then removes
        whatever a SIGKILLed init could not."""
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, 15)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.is_running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.init_pid, 9)  # the kernel still kills the whole PID namespace
                while self.is_running() and time.monotonic() < deadline + 5:
                    time.sleep(0.05)
        nodeinit.remove_node_leftovers(self.node_dir)
        _remove_empty_cgroup_parents()

    def leftovers(self) -> list[str]:
        """What remains of this node: its init, any process in its namespaces (containers included), its veth,
        cgroups and directory, mounts of its directory on the host."""
        found = [f"the real node's init (pid {self.init_pid}) is running"] if self.is_running() else []
        if self.namespaces:
            holders = _namespace_holders(self.namespaces)
            found += [
                f"{len(pids)} processes in the real node's {kind} namespace: {pids[:10]}"
                for kind, pids in holders.items()
            ]
        if self.network.slot >= 0 and Path(f"/sys/class/net/{self.network.host_link}").exists():
            found.append(f"the real node's link {self.network.host_link} exists")
        found += [f"cgroup {cgroup} exists" for cgroup in self.cgroups if Path(cgroup).exists()]
        if self.node_dir.exists():
            found.append(f"{self.node_dir} exists")
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.node_dir) in mounts:
            found.append(f"a mount under {self.node_dir} exists on the host")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodeDir": str(self.node_dir),
            "slot": self.network.slot,
            "binariesDir": str(self.binaries_dir),
            "initPid": self.init_pid,
            "initStartTicks": self.init_start_ticks,
            "namespaces": self.namespaces,
            "cgroups": list(self.cgroups),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RealNode:
        return cls(
            name=data["name"],
            node_dir=Path(data["nodeDir"]),
            network=NodeNetwork(int(data["slot"])),
            binaries_dir=Path(data["binariesDir"]),
            init_pid=int(data["initPid"]),
            init_start_ticks=int(data["initStartTicks"]),
            namespaces=data.get("namespaces"),
            cgroups=tuple(data.get("cgroups", ())),
        )

    def _write_layout(self) -> None:
        layout = {**self.to_json(), "kernelTunables": KUBELET_KERNEL_TUNABLES}
        partial = self.node_dir / f"{nodeinit.LAYOUT_FILE}.tmp"
        partial.write_text(json.dumps(layout, indent=2))
        partial.replace(self.node_dir / nodeinit.LAYOUT_FILE)

    def _in_node(self, argv: list[str]) -> list[str]:
        # With --pid nsenter forks, so the command is a member of the node's PID namespace (and dies with it) and
        # sees itself in the node's /proc.
        return ["nsenter", f"--target={self.init_pid}", "--mount", "--net", "--pid", "--", *argv]

    def _configure_network(self) -> None:
        net = self.network
        _run(
            ["ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_link],
            "configuring the host's end of the link",
        )
        _run(["ip", "link", "set", net.host_link, "up"], "bringing the host's end of the link up")
        # Tests on the host reach pods and Services through the node, which routes (and kube-proxy DNATs) them.
        for cidr in (net.pod_cidr, net.service_cidr):
            _run(
                ["ip", "route", "add", cidr, "via", net.node_ip, "dev", net.host_link],
                f"routing {cidr} to the node",
            )
        script = "\n".join(
            [
                "set -e",
                "ip link set lo up",
                f"ip addr add {net.node_ip}/30 dev {NODE_LINK}",
                f"ip link set {NODE_LINK} up",
                # Per network namespace: the host's own settings stay as they are.
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
                "if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then"
                " echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables; fi",
            ]
        )
        result = self.run_in_node(["sh", "-c", script])
        if result.returncode != 0:
            raise RealNodeError(f"configuring the real node's network failed: {result.stderr.strip()}")

    def _guard_link(self, apiserver_port: int) -> None:
        """Rules of the node's own (in the mangle table, which kube-proxy leaves alone): through the link to the
        host only the apiserver and answers to the host's connections go out, and only the host comes in. There
        is no route beyond the host anyway; these keep pods off the host's other listeners too."""
        host = self.network.host_ip
        rules = "\n".join(
            [
                "*mangle",
                f":{EGRESS_CHAIN} - [0:0]",
                f":{INGRESS_CHAIN} - [0:0]",
                f"-A {EGRESS_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                f"-A {EGRESS_CHAIN} -d {host}/32 -p tcp --dport {apiserver_port} -j RETURN",
                f'-A {EGRESS_CHAIN} -m comment --comment "only the apiserver, and nothing off the machine" -j DROP',
                f"-A {INGRESS_CHAIN} -s {host}/32 -j RETURN",
                f'-A {INGRESS_CHAIN} -m comment --comment "only the host comes in" -j DROP',
                f"-A POSTROUTING -o {NODE_LINK} -j {EGRESS_CHAIN}",
                f"-A PREROUTING -i {NODE_LINK} -j {INGRESS_CHAIN}",
                "COMMIT",
                "",
            ]
        )
        result = subprocess.run(
            self._in_node(["iptables-restore", "--noflush"]),
            input=rules,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RealNodeError(f"writing the real node's link rules failed: {result.stderr.strip()}")

    def _write_configs(
        self, ca: Path, serving_cert: Path, serving_key: Path, kubeconfigs: Mapping[str, Path], admin: Path
    ) -> None:
        d, net, binaries = self.node_dir, self.network, self.binaries
        for directory in ("containerd", "cni/net.d", "certs.d/_default", "kubelet"):
            (d / directory).mkdir(parents=True, exist_ok=True)
        (d / "certs.d" / "_default" / "hosts.toml").write_text(
            "# Every registry is a closed loopback port: a missing image fails at once, with no network attempt.\n"
            f'server = "{CLOSED_REGISTRY}"\n'
        )
        (d / "containerd.toml").write_text(containerd_config(d, binaries, self.containerd_socket))
        (d / "cni" / "net.d" / "10-localai-operator.conflist").write_text(
            json.dumps(cni_config(d, net), indent=2)
        )
        # ClusterFirst pods get only CoreDNS; pods with dnsPolicy Default get no nameserver at all.
        (d / "resolv.conf").write_text(
            "# the real node's pods resolve only the cluster domain, through CoreDNS\n"
        )
        (d / "kubelet.yaml").write_text(
            json.dumps(kubelet_config(self, ca, serving_cert, serving_key), indent=2)
        )
        (d / "kube-proxy.yaml").write_text(
            json.dumps(kube_proxy_config(self, kubeconfigs["kube-proxy"]), indent=2)
        )
        (d / "Corefile").write_text(corefile(net, admin))

    def _kubelet_command(self, kubeconfig: Path) -> list[str]:
        d = self.node_dir
        label = ",".join(f"{key}={value}" for key, value in REAL_NODE_LABEL.items())
        return [
            str(self.binaries.kubelet),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet' / 'pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.network.node_ip}",
            f"--node-labels={label}",
        ]

    def _ctr(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.binaries.ctr),
            f"--address={self.containerd_socket}",
            f"--namespace={CONTAINERD_NAMESPACE}",
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def _containerd_answers(self) -> bool:
        return self.containerd_socket.exists() and self._ctr("version", timeout=10).returncode == 0


def unavailable_reason(*, build: bool = True) -> str | None:
    """Why this machine cannot run the real node (one sentence saying what to do), or None when it can.

    `build=False` also requires the node's binaries to be built already (`make node-binaries`)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "amd64"):
        return f"the real node runs on linux/amd64 only (this is {platform.system()}/{platform.machine()})"
    if os.geteuid() != 0:
        return (
            "the real node needs root (containerd, runc and the kubelet create cgroups, mounts and network "
            "namespaces): run as root, or use the kwok-only cluster"
        )
    missing_tools = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing_tools:
        return f"the real node needs {', '.join(missing_tools)} on PATH: run `make node-packages` as root"
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        return (
            "the real node needs the br_netfilter kernel module (Services between pods on its bridge): "
            "run `make node-packages` as root, or `modprobe br_netfilter`"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        return (
            "the real node needs overlayfs (containerd's snapshotter): run `make node-packages` as root, or "
            "`modprobe overlay`"
        )
    controllers = _available_controllers()
    missing_controllers = [c for c in _REQUIRED_CONTROLLERS if c not in controllers]
    if missing_controllers:
        return (
            f"the real node needs the cgroup controllers {', '.join(missing_controllers)} mounted under "
            "/sys/fs/cgroup (cgroup v1 hierarchies or cgroup v2)"
        )
    try:
        find_node(build=False)
    except BinariesError as err:
        if not build:
            return str(err)
        if shutil.which("go") is None:
            return f"{err}; Go is needed to build them"
    return None


def node_dir_parent(env: Mapping[str, str] = os.environ) -> Path:
    """Where node directories live: on disk (images can be large), not tmpfs. $LOCALAI_OPERATOR_NODE_DIR wins."""
    return Path(env.get("LOCALAI_OPERATOR_NODE_DIR") or "/var/tmp")


def normalize_image_name(name: str) -> str:
    """The name containerd stores for a reference: `busybox` -> `docker.io/library/busybox:latest`."""
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def remove_stale_nodes(min_age: float = 60.0) -> None:
    """Removes node directories and cgroups left by real nodes whose init was SIGKILLed (so nobody cleaned up)."""
    for directory in node_dir_parent().glob(f"{_NODE_DIR_PREFIX}*"):
        try:
            if time.time() - directory.stat().st_mtime < min_age:
                continue
            layout = json.loads((directory / nodeinit.LAYOUT_FILE).read_text())
            pid, ticks = int(layout.get("initPid", 0)), int(layout.get("initStartTicks", 0))
        except (OSError, ValueError):
            continue  # vanished meanwhile, or not ours to judge
        if pid > 0 and _start_ticks(pid) == ticks:
            continue
        nodeinit.remove_node_leftovers(directory, timeout=1)
    for hierarchy in _cgroup_hierarchies():
        for cgroup in (hierarchy / CGROUP_PARENT).glob("node*"):
            if not Path(f"/sys/class/net/{_LINK_PREFIX}{cgroup.name.removeprefix('node')}").exists():
                nodeinit._remove_cgroup(cgroup)
    _remove_empty_cgroup_parents()


# The open-files limit containerd runs with, and so every container (its CRI plugin drops the default spec's
# 1,024 and the containers inherit the shim's): systemd's default for a unit that sets none, as containerd 2's own
# containerd.service no longer does, with the hard limit lowered to the caller's where that is less (raising it
# needs CAP_SYS_RESOURCE). LocalAI v4.9.0 holds a pidfd per check of its backend until Go's garbage collector
# closes it (~1,000 in two idle minutes) and stalls its accept loop at a hard limit of 1,024; as a Go program it
# raises its soft limit to the hard one, which is what keeps it clear on a real node (test_real_node.py reads it).
CONTAINERD_NOFILE: Final = (1024, 524288)


def containerd_nofile() -> tuple[int, int]:
    """(soft, hard) open files for containerd: CONTAINERD_NOFILE within what this process may give."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = CONTAINERD_NOFILE[1]
    hard = min(hard, CONTAINERD_NOFILE[1])
    return min(CONTAINERD_NOFILE[0], hard), hard


def containerd_config(node_dir: Path, binaries: NodeBinaries, socket: Path) -> str:
    """containerd's config: every path under `node_dir` (nothing on the host's /var/lib, /opt or /etc), every
    registry the closed port of `certs.d/_default`, for the CRI's pulls and the transfer service's alike."""
    runc = shutil.which("runc") or "runc"
    state = node_dir / "containerd"
    cri_images = "plugins.'io.containerd.cri.v1.images'"
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""\
version = 4
root = '{state / "root"}'
state = '{state / "state"}'
temp = '{state / "tmp"}'
imports = []
# NRI would open a socket and plugin directories on the host; nothing here uses it.
disabled_plugins = ['io.containerd.nri.v1.nri']

[plugins.'io.containerd.server.v1.grpc']
  address = '{socket}'

[plugins.'io.containerd.server.v1.ttrpc']
  address = '{socket}.ttrpc'

[plugins.'io.containerd.internal.v1.opt']
  path = '{state / "opt"}'

[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '{state / "image-verifier"}'

[plugins.'io.containerd.transfer.v1.local']
  config_path = '{node_dir / "certs.d"}'

[{cri_images}]
  snapshotter = 'overlayfs'

[{cri_images}.pinned_images]
  sandbox = '{PAUSE_IMAGE}'

[{cri_images}.registry]
  config_path = '{node_dir / "certs.d"}'

[{cri_runtime}]
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  # Without CAP_SYS_RESOURCE (some VMs drop it even for root) no process may lower its OOM score: containers
  # then keep containerd's instead of failing to start.
  restrict_oom_score_adj = {"false" if _has_capability(_CAP_SYS_RESOURCE) else "true"}

[{cri_runtime}.containerd]
  default_runtime_name = 'runc'

[{cri_runtime}.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[{cri_runtime}.containerd.runtimes.runc.options]
  BinaryName = '{runc}'
  SystemdCgroup = false

[{cri_runtime}.cni]
  bin_dirs = ['{binaries.cni_dir}']
  conf_dir = '{node_dir / "cni" / "net.d"}'
"""


def cni_config(node_dir: Path, net: NodeNetwork) -> dict[str, Any]:
    # No ipMasq: pod traffic is never NATed; the pods' default route ends in the node, which routes nowhere else.
    return {
        "cniVersion": "1.0.0",
        "name": "localai-operator",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr, "gateway": net.bridge_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: RealNode, ca: Path, serving_cert: Path, serving_key: Path) -> dict[str, Any]:
    net = node.network
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": net.node_ip,
        "healthzPort": KUBELET_HEALTHZ_PORT,
        # The apiserver's logs/exec/port-forward calls authenticate with a client certificate of the harness CA.
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [net.dns_service_ip],
        "resolvConf": str(node.node_dir / "resolv.conf"),
        "registerWithTaints": [dict(REAL_NODE_TAINT)],
        # Imported images are all there is: never garbage-collect them, and never evict for a full shared disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "volumePluginDir": str(node.node_dir / "kubelet" / "volume-plugins"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
    }


def kube_proxy_config(node: RealNode, kubeconfig: Path) -> dict[str, Any]:
    net = node.network
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": net.pod_cidr,
        "hostnameOverride": node.name,
        "healthzBindAddress": f"{net.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
        "nodePortAddresses": ["primary"],
        "metricsBindAddress": "127.0.0.1:10249",
        # Zeros leave the conntrack sysctls alone: nf_conntrack_max is the whole machine's, not the node's.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(net: NodeNetwork, kubeconfig: Path) -> str:
    # The cluster domain and reverse zones from the API; every other name NXDOMAIN. The binary has no `forward`.
    return f"""\
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {net.node_ip}
    errors
    ready {net.node_ip}:{COREDNS_READY_PORT}
    health {net.node_ip}:{COREDNS_HEALTH_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {net.node_ip}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def service_objects(net: NodeNetwork, apiserver_port: int) -> list[tuple[str, dict[str, Any]]]:
    """The kube-dns Service (the kubelet's clusterDNS address) with CoreDNS, on the node's IP, as its endpoint,
    and the endpoint of the `kubernetes` Service: the apiserver on the host's end of the link."""
    dns_ports = [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "clusterIP": net.dns_service_ip,
            "ports": [
                {"name": name, "protocol": protocol, "port": port, "targetPort": port}
                for name, protocol, port in dns_ports
            ],
        },
    }
    slices = [
        _endpoint_slice("kube-system", "kube-dns", net.node_ip, dns_ports),
        _endpoint_slice("default", "kubernetes", net.host_ip, [("https", "TCP", apiserver_port)]),
    ]
    return [
        ("/api/v1/namespaces/kube-system/services", service),
        *(
            (f"/apis/discovery.k8s.io/v1/namespaces/{s['metadata']['namespace']}/endpointslices", s)
            for s in slices
        ),
    ]


def _endpoint_slice(
    namespace: str, service: str, address: str, ports: Sequence[tuple[str, str, int]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "localai-operator-harness",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": name, "protocol": protocol, "port": port} for name, protocol, port in ports],
    }


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RealNodeError(f"{what} failed: `{' '.join(argv)}`: {result.stderr.strip()}")


def _http_ok(url: str) -> Callable[[], bool]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ok() -> bool:
        try:
            with opener.open(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return ok


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _start_ticks(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    fields = raw[raw.rindex(")") + 2 :].split()
    return -1 if fields[0] == "Z" else int(fields[19])


def _only_child(parent: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == parent:
                return int(entry.name)
    raise RealNodeError(f"the real node's init (a child of unshare, pid {parent}) is not running")


def _namespace_holders(namespaces: Mapping[str, int]) -> dict[str, list[int]]:
    holders: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for kind, inode in namespaces.items():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / kind).st_ino == inode:
                    holders.setdefault(kind, []).append(int(entry.name))
    return holders


def _claim_slot(init_pid: int) -> NodeNetwork:
    """The first slot whose addresses no host route or address uses, claimed by creating its veth: the kernel
    refuses a second link of the same name, so two harnesses starting at once never get the same slot."""
    used = _host_networks()
    for slot in range(_MAX_SLOTS):
        net = NodeNetwork(slot)
        block = ipaddress.ip_network(net.block)
        if any(block.overlaps(network) for network in used):
            continue
        result = subprocess.run(
            [
                "ip",
                "link",
                "add",
                net.host_link,
                "type",
                "veth",
                "peer",
                "name",
                NODE_LINK,
                "netns",
                str(init_pid),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return net
        if "File exists" not in result.stderr:
            raise RealNodeError(f"creating the real node's veth failed: {result.stderr.strip()}")
    raise RealNodeError(
        f"no free network slot for a real node: {_MAX_SLOTS} are in use or overlap host routes"
    )


def _host_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    out += subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    networks = []
    for match in re.finditer(r"(?:^|\s)((?:\d+\.){3}\d+(?:/\d+)?)", out):
        with contextlib.suppress(ValueError):
            network = ipaddress.IPv4Network(match.group(1), strict=False)
            if not network.is_loopback and network.prefixlen > 0:
                networks.append(network)
    return networks


def _cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, named ones, and v2)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] in ("cgroup", "cgroup2"):
            found.append(Path(left.split(" ")[4]))
    return found


def _available_controllers() -> set[str]:
    controllers: set[str] = set()
    for hierarchy in _cgroup_hierarchies():
        if (hierarchy / "cgroup.controllers").exists():
            controllers |= set((hierarchy / "cgroup.controllers").read_text().split())
            controllers.add("cpuacct")  # cgroup v2 accounts CPU in the cpu controller
        else:
            controllers |= set(hierarchy.name.split(","))
    return controllers


def _create_cgroups(cgroups: Sequence[Path]) -> None:
    for path in cgroups:
        for directory in (path.parent, path):
            directory.mkdir(exist_ok=True)
            if (directory / "cpuset.cpus").exists() and not (directory / "cpuset.cpus").read_text().strip():
                # A new cpuset cgroup accepts no task until it has CPUs and memory nodes: inherit the parent's.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (directory / name).write_text((directory.parent / name).read_text())
            if (directory.parent / "cgroup.subtree_control").exists():
                # cgroup v2: a child gets only the controllers its parent delegates.
                controllers = (directory.parent / "cgroup.controllers").read_text().split()
                with contextlib.suppress(OSError):
                    (directory.parent / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in controllers)
                    )


def _remove_empty_cgroup_parents() -> None:
    for hierarchy in _cgroup_hierarchies():
        with contextlib.suppress(OSError):
            (hierarchy / CGROUP_PARENT).rmdir()
