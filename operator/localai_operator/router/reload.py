"""Hot reload: poll the config file's content and apply a valid change; keep the old config otherwise.

A mounted ConfigMap changes by swapping the `..data` symlink, which leaves the mounted path's own
mtime untouched, so the watcher compares content rather than file metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

import yaml

from localai_operator.wire import RouterConfig

log = logging.getLogger(__name__)

DEFAULT_INTERVAL: Final = 1.0


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[RouterConfig], None],
        on_result: Callable[[bool], None] = lambda applied: None,
        interval: float = DEFAULT_INTERVAL,
        loaded: bytes | None = None,
    ) -> None:
        """`loaded` is the content the current config came from; without it, what the file holds now."""
        self.path = Path(path)
        self.apply = apply
        self.on_result = on_result
        self.interval = interval
        content = loaded if loaded is not None else self._read()
        self._digest = hashlib.sha256(content).digest() if content is not None else None
        self._missing_logged = False

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def check(self) -> bool | None:
        """Look once: None when unchanged (or unreadable), True when applied, False when rejected."""
        content = self._read()
        if content is None:
            # Briefly absent during an atomic swap; only a lasting absence is worth a line.
            if not self._missing_logged:
                log.warning("config file %s is unreadable; keeping the current config", self.path)
                self._missing_logged = True
            return None
        self._missing_logged = False
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            config = RouterConfig.from_yaml(content)
        except (yaml.YAMLError, ValueError) as err:
            log.error("config file %s changed but is invalid; keeping the current config: %s", self.path, err)
            self.on_result(False)
            return False
        self.apply(config)
        log.info("config file %s changed; new config applied", self.path)
        self.on_result(True)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                # A bug in apply must not stop future reloads; the old config stays in force.
                log.exception("applying the changed config %s failed", self.path)
