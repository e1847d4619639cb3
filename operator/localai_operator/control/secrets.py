"""The Secrets the operator's resources name, read by name (GET) when a pass needs them: the operator may only
`get` Secrets, never list or watch them, so it reads no Secret that no resource of its names.

Only a Secret's resourceVersion and key names are kept (SecretInfo), never its values. A read is shared by the
passes that ask for the same Secret within FRESH_SECONDS (a burst of routes naming one key costs one GET). A
missing or unreadable Secret reads as None: the pass reports SecretMissing and asks to be run again after
RECHECK_SECONDS, so a Secret created later is found without a watch. A rotated key is seen at the next pass of each
resource that reads it (at the latest the next resync).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from localai_operator.api.kinds import SECRET
from localai_operator.control.kube import ApiError, Reader
from localai_operator.control.plan import SecretInfo

FRESH_SECONDS: Final = 5.0
RECHECK_SECONDS: Final = 10.0


def secret_info(secret: Mapping[str, Any]) -> SecretInfo:
    keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
    return SecretInfo(str((secret.get("metadata") or {}).get("resourceVersion", "")), frozenset(keys))


class Secrets:
    def __init__(self, reader: Reader, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.clock = clock
        self._read: dict[tuple[str, str], tuple[float, asyncio.Future[SecretInfo | None]]] = {}

    async def read(self, namespace: str, names: Iterable[str]) -> dict[str, SecretInfo | None]:
        """Each named Secret of `namespace` (None: missing, or the operator may not read it)."""
        wanted = sorted(set(names))
        found = await asyncio.gather(*(self._one(namespace, name) for name in wanted))
        return dict(zip(wanted, found, strict=True))

    async def _one(self, namespace: str, name: str) -> SecretInfo | None:
        now = self.clock()
        for key in [k for k, (at, _) in self._read.items() if now - at > FRESH_SECONDS]:
            del self._read[key]
        key = (namespace, name)
        if key not in self._read:
            future: asyncio.Future[SecretInfo | None] = asyncio.ensure_future(self._get(namespace, name))
            self._read[key] = (now, future)
        _, future = self._read[key]
        try:
            return await asyncio.shield(future)
        except BaseException:
            if self._read.get(key, (None, None))[1] is future:
                del self._read[key]  # a failed read is not shared: the next pass asks again
            raise

    async def _get(self, namespace: str, name: str) -> SecretInfo | None:
        try:
            body = await self.reader.get(SECRET, namespace, name)
        except ApiError as err:
            if err.status == 403:
                return None  # not readable: to the resource, the same as missing
            raise
        return secret_info(body) if body is not None else None
