"""Kopf's start-up gate, made linear in the number of objects listed at start.

Until every indexed object is indexed, Kopf holds each object's worker on a ToggleSet; every toggle it adds or
drops (two per listed object) wakes every worker already waiting, and each wakeup re-takes one shared lock. That
is quadratic: ~4 s of CPU when the operator restarts over 1,500 objects, minutes over 15,000. The waiters only
wait for the set as a whole to turn on or off, so waking them only when that flips wakes them exactly when
their condition can have changed: the same behaviour, linear. Kopf 1.45's own code is otherwise untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def make_linear() -> bool:
    """Installs the change (once); False, and a warning, if this Kopf has no ToggleSet of the known shape."""
    try:
        from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet
    except ImportError:
        log.warning("Kopf's start-up gate is not where expected: start-up stays quadratic in the objects")
        return False
    if getattr(ToggleSet, "_linear", False):
        return True
    if not all(hasattr(ToggleSet, name) for name in ("make_toggle", "drop_toggle", "drop_toggles", "is_on")):
        log.warning("Kopf's ToggleSet has changed: start-up stays quadratic in the objects")
        return False

    async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Toggle:
        toggle = Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: Toggle) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[Toggle]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    ToggleSet.make_toggle = make_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggle = drop_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggles = drop_toggles  # type: ignore[method-assign]
    ToggleSet._linear = True  # type: ignore[attr-defined]
    return True
