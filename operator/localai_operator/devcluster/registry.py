"""An OCI registry on a loopback port for `helm push` / `helm install oci://`: the CNCF distribution registry
(built by binaries.py), serving HTTPS with a CA of its own, its storage in a directory that goes with it."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from localai_operator.devcluster import binaries
from localai_operator.devcluster.errors import ClusterError
from localai_operator.devcluster.process import ProcessRecord, free_ports, record, spawn, stop_groups

HOST: Final = "127.0.0.1"


@dataclass
class Registry:
    """A running registry. `address` is `127.0.0.1:PORT` (what goes after `oci://`), `ca_cert` the CA that signed
    its certificate (helm's `--ca-file`)."""

    directory: Path
    address: str
    ca_cert: Path
    _process: subprocess.Popen[bytes] = field(repr=False)
    _record: ProcessRecord = field(repr=False)

    @classmethod
    def start(cls, directory: Path, *, binary: Path | None = None, timeout: float = 30.0) -> Registry:
        """Starts the registry in `directory` (certificates, config, storage, log) and waits until `/v2/` answers.
        The registry dies with the starting thread, so a killed test leaves no process behind."""
        from localai_operator.devcluster.certs import issue, write_pki  # cryptography: only to start one

        binary = binary or binaries.find_registry()
        directory.mkdir(parents=True, exist_ok=True)
        pki = write_pki(directory / "pki")
        cert, key = issue(pki, "registry", "registry", server_ips=(HOST,), server_dns=("localhost",))
        (port,) = free_ports(1)
        config = directory / "config.json"  # YAML 1.2 reads JSON
        config.write_text(json.dumps(registry_config(directory / "storage", f"{HOST}:{port}", cert, key)))
        log = directory / "registry.log"
        # The registry exports traces over OTLP unless told not to (its tracing package reads the OTEL_* env).
        process = spawn(
            [str(binary), "serve", str(config)],
            log,
            die_with_parent=True,
            env={"OTEL_TRACES_EXPORTER": "none"},
        )
        registry = cls(directory, f"{HOST}:{port}", pki.ca_cert, process, record("registry", process, log))
        registry._wait_ready(timeout)
        return registry

    def stop(self) -> None:
        stop_groups([self._record], {self._process.pid: self._process})

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(Path(self._record.log).read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self.stop()
                raise ClusterError(f"the registry exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with opener.open(f"https://{self.address}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"the registry did not answer on {self.address} in {timeout:.0f} s")
            time.sleep(0.1)


def registry_config(storage: Path, address: str, cert: Path, key: Path) -> dict[str, object]:
    """The registry's configuration: files under `storage`, HTTPS on `address`, no auth (loopback only)."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": address, "tls": {"certificate": str(cert), "key": str(key)}},
    }
