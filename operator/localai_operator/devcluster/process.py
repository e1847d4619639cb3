"""Component processes: each started in its own session (so a terminal's Ctrl-C never reaches it and it can
outlive its starter), identified by pid + start time, and stopped by process group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PORT_RANGE_START, _PORT_RANGE_END = 20000, 32768


@dataclass(frozen=True)
class ProcessRecord:
    """A started component, as saved in the state file; `start_ticks` guards against a recycled pid."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def is_running(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "startTicks": self.start_ticks, "log": self.log}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=data["name"], pid=int(data["pid"]), start_ticks=int(data["startTicks"]), log=data["log"]
        )


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    start_ticks: int


def _stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after its last ")" are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(state=fields[0], pgrp=int(fields[2]), start_ticks=int(fields[19]))


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    die_with_parent: bool,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts `argv` as the leader of a new session, stdout and stderr appended to `log_path` (and the file
    descriptors `pass_fds` left open in it), with `env` added to this process' environment.

    With `die_with_parent` the kernel kills it if the starting *thread* exits, even by SIGKILL: the last line of
    defence for tests. `dev up` passes False so the control plane outlives the command.
    """
    preexec: Callable[[], None] | None = None
    if die_with_parent:
        libc = ctypes.CDLL(None, use_errno=True)
        preexec = lambda: libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # noqa: E731
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            env={**os.environ, **env} if env else None,
        )


def record(name: str, process: subprocess.Popen[bytes], log_path: Path) -> ProcessRecord:
    stat = _stat(process.pid)
    return ProcessRecord(
        name=name, pid=process.pid, start_ticks=stat.start_ticks if stat else -1, log=str(log_path)
    )


def group_members(pgids: Iterable[int]) -> dict[int, list[int]]:
    """Live pids of each of the given process groups. Zombies count as gone: they hold no port or file, and an
    orphan's zombie waits for an init that may reap late (or, in some containers, never)."""
    wanted = set(pgids)
    members: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat.pgrp in wanted and stat.state != "Z":
            members.setdefault(stat.pgrp, []).append(int(entry.name))
    return members


def stop_groups(
    records: Sequence[ProcessRecord],
    children: dict[int, subprocess.Popen[bytes]],
    *,
    grace: float = 3.0,
    timeout: float = 10.0,
) -> None:
    """SIGTERM each record's process group, SIGKILL what is left after `grace`, reap our own children."""
    # Only signal groups whose leader is still the process we started: a recycled pid is someone else's.
    groups = [r.pid for r in records if r.is_running() or r.pid in children]
    _signal_groups(groups, signal.SIGTERM)
    if not _wait_until_gone(groups, children, grace):
        _signal_groups(groups, signal.SIGKILL)
        _wait_until_gone(groups, children, timeout)


def _wait_until_gone(groups: list[int], children: dict[int, subprocess.Popen[bytes]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(children)
        if not group_members(groups):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_groups(pgids: Iterable[int], sig: signal.Signals) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _reap(children: dict[int, subprocess.Popen[bytes]]) -> None:
    """Collects exited children, so they do not linger as zombies."""
    for pid, child in list(children.items()):
        if child.poll() is not None:
            del children[pid]


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now, below Linux's ephemeral range (32768+) so that outgoing
    connections do not grab them between this check and the component's bind."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(_PORT_RANGE_START, _PORT_RANGE_END)
        if port not in ports and port_is_free(port):
            ports.append(port)
    return ports


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the loopback port again (SO_REUSEADDR, like Go servers: TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
