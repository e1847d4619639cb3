"""Client keys: the keys a route accepts (`FallbackRoute.spec.auth`), read from mounted Secret directories
(one file per key, the file's name is the key's name) and re-read when they change.

Keys are held as SHA-256 digests and looked up by the digest of what the client sent, so comparing
costs the same whatever the key, and the key itself is never logged, exported or kept in plain text.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from localai_operator.router.upstream import usable_key

log = logging.getLogger(__name__)

MISSING: Final = "missing"
INVALID: Final = "invalid"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("X-Api-Key")
    return api_key.strip() if api_key and api_key.strip() else None


class ClientKeys:
    """The accepted keys of one route. `load` reads the directories; `name_of` answers per request."""

    def __init__(self, directories: Iterable[str]) -> None:
        self.directories = tuple(Path(d) for d in directories)
        self._by_digest: dict[bytes, str] = {}
        self.problems: tuple[str, ...] = ()
        self._signature: tuple[tuple[str, bytes], ...] | None = None

    @property
    def names(self) -> list[str]:
        return sorted(set(self._by_digest.values()))

    def name_of(self, key: str) -> str | None:
        return self._by_digest.get(_digest(key))

    def _read(self) -> tuple[list[tuple[str, str]], list[str]]:
        found: list[tuple[str, str]] = []
        problems: list[str] = []
        for directory in self.directories:
            try:
                files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
            except OSError as err:
                problems.append(f"client key directory {directory} is unreadable: {err.strerror}")
                continue
            for path in files:
                try:
                    raw = path.read_text()
                except (OSError, UnicodeDecodeError) as err:
                    problems.append(f"client key {path.name!r} in {directory} is unreadable: {err}")
                    continue
                key, problem = usable_key(raw, f"client key {path.name!r} in {directory}")
                if key is None:
                    problems.append(f"{problem}: it is ignored")
                else:
                    found.append((path.name, key))
        return found, problems

    def load(self) -> bool:
        """Read the keys again; True when they changed. Unusable entries are reported, never fatal."""
        found, problems = self._read()
        signature = tuple((name, _digest(key)) for name, key in found)
        changed = signature != self._signature
        self._signature = signature
        self._by_digest = {digest: name for name, digest in signature}
        if changed or tuple(problems) != self.problems:
            for problem in problems:
                log.error("%s", problem)
            if changed:
                log.info("client keys loaded: %s", ", ".join(self.names) or "none (every request is refused)")
        self.problems = tuple(problems)
        return changed
