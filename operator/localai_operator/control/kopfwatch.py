"""A watch whose resource stops being served ends quietly instead of ending the operator.

Kopf (1.45) stops every watch of a resource whose CRD is deleted, but only once its CRD watch has seen the deletion.
The API server closes the resource's open watches at the same moment, and Kopf re-opens a closed watch at once: when
that request comes first it answers 404, Kopf takes it as an unrecoverable error, and the whole operator exits
("Multidimensional multitasker has failed: 404 page not found"), for every namespace. It happened on removing the
Gateway API's CRDs, which the operator watches (HTTPRoutes) only while the cluster serves them.

Here a 404 ends that one stream: Kopf's own loop opens it again after a pause, and its CRD watch cancels it once it
knows the resource is gone (or the next request succeeds, when the CRD came back). Every other error still ends
the operator, as Kopf intends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

# The pause before a resource that answered 404 is asked again, on top of Kopf's reconnect backoff: a request a
# second while Kopf's CRD watch catches up, which takes milliseconds.
GONE_PAUSE_SECONDS = 1.0


def install() -> bool:
    """Installs the change (once); False, and a warning, if this Kopf's watch loop is not of the known shape. Kopf's
    loop looks `continuous_watch` up in its module at every (re)connection."""
    try:
        from kopf._cogs.clients import errors, watching
    except ImportError:
        log.warning("Kopf's watch loop is not where expected: a removed CRD may still stop the operator")
        return False
    original: Callable[..., AsyncIterator[Any]] | None = getattr(watching, "continuous_watch", None)
    if original is None or not hasattr(errors, "APINotFoundError"):
        log.warning("Kopf's watch loop has changed: a removed CRD may still stop the operator")
        return False
    if getattr(original, "_until_gone", False):
        return True

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for event in original(**kwargs):
                yield event
        except errors.APINotFoundError:
            log.info(
                "%s is not served (404), its CRD was removed: asked again in %.0f s until Kopf stops watching it",
                kwargs.get("resource"),
                GONE_PAUSE_SECONDS,
            )
            await asyncio.sleep(GONE_PAUSE_SECONDS)

    continuous_watch._until_gone = True  # type: ignore[attr-defined]
    watching.continuous_watch = continuous_watch
    return True
