"""The overload guard, Envoy's overload manager in miniature: caps on client connections and on waiting requests,
sized by the operator from the router container's memory limit, so that load beyond what fits is refused with
`503 router_overloaded` and `Retry-After` instead of growing the process until the kernel kills it.

A connection over the cap is served nothing but its refusal: its first request under /v1 gets the 503 and the
connection is closed (the probes, `/healthz` and `/readyz`, still answer, so the kubelet does not restart a pod
that sheds load). A request that would wait (for a slot, a pod or room for its body) while `maxWaiting` others
already do gets the 503 at once.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

RETRY_AFTER_SECONDS: Final = 1
CONNECTIONS: Final = "connections"
WAITING: Final = "waiting"


class Overloaded(Exception):
    """A request refused by the guard; `what` is the cap it hit (connections, waiting)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class Guard:
    """Counts the client connections of one aiohttp server and says which are over the cap."""

    def __init__(self, max_connections: int, max_waiting: int) -> None:
        self.max_connections = max_connections
        self.max_waiting = max_waiting
        self.connections = 0
        # The protocol objects (aiohttp's RequestHandler) of connections admitted over the cap.
        self.over: set[object] = set()
        self.refused: dict[str, int] = {CONNECTIONS: 0, WAITING: 0}

    def watch(self, server: web.Server) -> web.Server:
        """Count `server`'s connections (aiohttp calls these two for each one)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            self.connections += 1
            if self.connections > self.max_connections:
                self.over.add(handler)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.connections -= 1
            self.over.discard(handler)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        return server

    def admits(self, request: web.BaseRequest) -> bool:
        return not self.over or request.protocol not in self.over

    def check_waiting(self, waiting: int) -> None:
        """Raise Overloaded when `waiting` requests already wait."""
        if waiting >= self.max_waiting:
            self.refused[WAITING] += 1
            raise Overloaded(
                WAITING,
                f"{waiting} requests already wait (server.maxWaiting, from the router's memory limit)",
            )

    def refuse_connection(self) -> Overloaded:
        self.refused[CONNECTIONS] += 1
        return Overloaded(
            CONNECTIONS,
            f"the router holds {self.connections} client connections, more than server.maxConnections "
            f"({self.max_connections}, from its memory limit)",
        )


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server's connections the guard counts."""

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        return self.guard.watch(await super()._make_server())
