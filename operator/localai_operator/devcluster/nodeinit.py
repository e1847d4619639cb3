"""PID 1 of the real node: it holds the node's PID, mount and network namespaces, in which containerd, the kubelet,
kube-proxy, CoreDNS and every container run, and tears them down so that nothing of the node survives it.

Started as `unshare --pid --fork --mount-proc --net --propagation private --kill-child=SIGTERM python -m
localai_operator.devcluster.nodeinit NODE_DIR HOST_MOUNT_NS_FD`: when its starter dies, even by SIGKILL, `unshare` dies with it and
the kernel sends this process SIGTERM. On SIGTERM it kills everything in its PID namespace, leaves its mount
namespace (the kernel then drops every mount the node made, and with them the pods' network namespaces), removes
the node's cgroups and directory, and exits; its own network namespace, with every iptables rule kube-proxy wrote
and the veth to the host, goes with it. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Final

READY_FILE: Final = "init.ready"
LAYOUT_FILE: Final = "node.json"
_MS_BIND, _MS_REC, _MS_NOSUID, _MS_NODEV = 4096, 16384, 2, 4
_CLONE_NEWNS: Final = 0x00020000
_TERMINATE: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Host paths the node's components write to whatever their flags say (the kubelet's /var/log/containers, CNI's
# cache in /var/lib/cni, runc's state in /run): inside the node they are its own directories.
_PRIVATE_DIRS: Final = {"/var/lib": "var-lib", "/var/log": "var-log"}


def main(argv: list[str]) -> int:
    # PID 1 of a namespace ignores every signal it has no handler for: block them before anything else, so a
    # SIGTERM during setup waits for sigwaitinfo instead of being lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*_TERMINATE, signal.SIGCHLD})
    node_dir, host_mount_ns = Path(argv[0]), int(argv[1])
    try:
        _mount_private_dirs(node_dir)
        _mount_kernel_tunables(node_dir)
    except OSError as err:
        print(f"node init: setting up the node's mounts failed: {err}", file=sys.stderr, flush=True)
        _teardown(node_dir, host_mount_ns)
        return 1
    (node_dir / READY_FILE).write_text("ready\n")
    while True:
        info = signal.sigwaitinfo({*_TERMINATE, signal.SIGCHLD})
        if info.si_signo == signal.SIGCHLD:
            _reap()
            continue
        print(
            f"node init: {signal.Signals(info.si_signo).name}: stopping the node", file=sys.stderr, flush=True
        )
        _teardown(node_dir, host_mount_ns)
        return 0


def remove_node_leftovers(node_dir: Path, timeout: float = 10.0) -> list[str]:
    """Removes the node's cgroups (listed in its layout file) and its directory; returns what could not be removed.
    Run by the init on its way out and, idempotently, by the harness after it (in case the init was SIGKILLed)."""
    left: list[str] = []
    try:
        cgroups = json.loads((node_dir / LAYOUT_FILE).read_text()).get("cgroups", [])
    except (OSError, ValueError):
        cgroups = []
    deadline = time.monotonic() + timeout
    for cgroup in cgroups:
        while (remaining := _remove_cgroup(Path(cgroup))) and time.monotonic() < deadline:
            time.sleep(0.05)  # a killed task leaves its cgroup a little after it is reaped
        left += remaining
        with contextlib.suppress(OSError):  # the parent all real nodes share, once the last one is gone
            Path(cgroup).parent.rmdir()
    shutil.rmtree(node_dir, ignore_errors=True)
    if node_dir.exists():
        left.append(f"{node_dir} exists")
    return left


def _remove_cgroup(root: Path) -> list[str]:
    if not root.exists():
        return []
    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -entry[0].count("/")):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(directory)
    return [f"cgroup {root} exists"] if root.exists() else []


def _mount_private_dirs(node_dir: Path) -> None:
    _mount("tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755")
    for target, name in _PRIVATE_DIRS.items():
        source = node_dir / name
        source.mkdir(exist_ok=True)
        _mount(str(source), target, None, _MS_BIND | _MS_REC, None)


def _mount_kernel_tunables(node_dir: Path) -> None:
    """The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops, which are not namespaced:
    inside the node it reads files already holding the values it wants, so the shared host is left as it is."""
    tunables = json.loads((node_dir / LAYOUT_FILE).read_text()).get("kernelTunables", {})
    directory = node_dir / "kernel-tunables"
    directory.mkdir(exist_ok=True)
    for key, value in tunables.items():
        target = Path("/proc/sys") / key
        if target.read_text().strip() == str(value):
            continue
        stand_in = directory / key.replace("/", ".")
        stand_in.write_text(f"{value}\n")
        _mount(str(stand_in), str(target), None, _MS_BIND, None)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    encoded = [value.encode() if value is not None else None for value in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _others_alive() -> bool:
    return any(entry.isdigit() and entry != "1" for entry in os.listdir("/proc"))


def _teardown(node_dir: Path, host_mount_ns: int) -> None:
    # kill(-1) from a namespace's init reaches every other process in it, containers and shims included.
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _others_alive() and time.monotonic() < deadline:
        _reap()
        time.sleep(0.02)
    _reap()
    # Back in the host's mount namespace the node's is left without a process, so the kernel unmounts all of it;
    # only then can the node's directory be removed without reaching into live mounts.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(host_mount_ns, _CLONE_NEWNS) != 0:
        print(f"node init: setns: {os.strerror(ctypes.get_errno())}", file=sys.stderr, flush=True)
        return
    for left in remove_node_leftovers(node_dir):
        print(f"node init: could not remove {left}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
