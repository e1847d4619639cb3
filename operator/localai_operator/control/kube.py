"""The only module that talks to the API server: the operator's async client (server-side apply, status, events,
leases; rate-limited, every request counted) and a small synchronous client for the harness, the tests and `dev`.

The operator reads nothing here during a pass: what it knows of the cluster comes from Kopf's watches (cache.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import kopf
import pydantic_core

from localai_operator.api.kinds import CUSTOM_RESOURCE_DEFINITION, EVENT, Kind, of
from localai_operator.constants import APP_NAME, FIELD_MANAGER
from localai_operator.control.kubeconfig import needs_client_library

if TYPE_CHECKING:
    from kubernetes import client

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON = "application/json"
# At most this many requests at once, each on its own keep-alive connection (~150 KB of TLS buffers each). With 32
# (and idle connections closed after 10 s) a run of benchmarks/operator_scale.py measured create -> Deployment p99
# 9.8 s against the peer's 1.7 s, applies waiting 4.2 s on average: the pools' applies queue behind the models'
# status writes.
CONNECTIONS = 128
# etcd's first revision: no stored object carries it (the Java Operator SDK's create-only apply uses it too).
CREATE_ONLY = "1"
# A request counter: (verb, kind, HTTP status or 0 when no response came back, seconds it took).
Count = Callable[[str, str, int, float], None]


class ApiError(Exception):
    """The API server refused a request; `message` is its own explanation (a Status object's message)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def from_response(cls, status: int, text: str) -> ApiError:
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        return cls(status, str(body.get("reason") or ""), str(body.get("message") or text[:500] or status))


def login(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> kopf.ConnectionInfo:
    """The in-cluster ServiceAccount, else the kubeconfig. Kopf's own minimal readers first, so the kubernetes
    client library is never loaded; a kubeconfig whose user runs an exec plugin or an auth provider (EKS, GKE,
    OIDC) goes through that library, the only one that speaks them."""
    info = kopf.login_with_service_account(settings=settings)
    if info is None and not needs_client_library():
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        info = kopf.login_via_client(settings=settings, logger=logger)
    if info is None:
        hint = ""
        if needs_client_library():
            hint = (
                " (the kubeconfig's user runs an exec plugin or an auth provider, which needs the kubernetes"
                " client library: pip install 'localai-operator[dev]')"
            )
        raise kopf.LoginError(f"no in-cluster ServiceAccount and no usable kubeconfig{hint}")
    return info


class Reader(Protocol):
    """The reads some parts of the operator make by name (Api.get): what they need of the API client."""

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None: ...


class TokenBucket:
    """At most `rate` requests per second on average, `burst` at once: a failing pass retried by many workers
    cannot flood the API server."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._tokens, self._stamp = 1.0, time.monotonic()
            self._tokens -= 1


class Api:
    """JSON over one aiohttp session, with the credentials Kopf logs in with; re-logs in once on a 401."""

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo],
        *,
        count: Count,
        rate: float = 200.0,
        burst: int = 400,
        timeout: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._count = count
        self._bucket = TokenBucket(rate, burst)
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=5)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            info = self._credentials()
            self._server = info.server.rstrip("/")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=info.as_ssl_context(), limit=CONNECTIONS, keepalive_timeout=60
                ),
                headers={**info.as_http_headers(), "User-Agent": f"{APP_NAME}/controller"},
                timeout=self._timeout,
                trust_env=info.trust_env,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        verb: str,
        kind: Kind,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = JSON,
        query: dict[str, str] | None = None,
    ) -> Any:
        """One request: rate-limited, counted by verb and kind; raises ApiError unless the answer is 2xx. JSON is
        read and written by pydantic's Rust codec: each status write and apply answers with the whole object, and
        the stdlib's codec took ~5 % of the operator's CPU at 1,000 models (py-spy)."""
        payload = None if body is None else pydantic_core.to_json(body)
        for attempt in (1, 2):
            started = time.monotonic()
            await self._bucket.take()
            session = self._open()
            try:
                async with session.request(
                    method,
                    self._server + path,
                    data=payload,
                    params=query,
                    headers={"Content-Type": content_type, "Accept": JSON},
                ) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                self._count(verb, kind.kind, 0, time.monotonic() - started)
                raise
            self._count(verb, kind.kind, status, time.monotonic() - started)
            if status == 401 and attempt == 1:
                await self.close()  # a rotated ServiceAccount token: log in again and retry once
                continue
            if not 200 <= status < 300:
                raise ApiError.from_response(status, raw.decode(errors="replace"))
            return pydantic_core.from_json(raw) if raw else None
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def apply(
        self, obj: dict[str, Any], *, create: bool = False, uid: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply, forcing our field manager's ownership of its fields; returns the live object.

        `create`: only if nothing holds the name (else 409 Conflict): a resourceVersion no object has is a
        precondition the API server checks on an existing object and ignores when it creates one. `uid`: only
        onto that very object (else 422, metadata.uid is immutable)."""
        kind, meta = of(obj["kind"]), obj["metadata"]
        if create or uid:
            preconditions = {"resourceVersion": CREATE_ONLY} if create else {"uid": uid}
            obj = {**obj, "metadata": {**meta, **preconditions}}
        live: dict[str, Any] = await self.request(
            "apply",
            kind,
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=obj,
            content_type=APPLY,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )
        return live

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> None:
        """Deletes in the background (the garbage collector takes the dependents); gone already is fine. With
        `uid`, only that very object: one created under the same name meanwhile is left alone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("delete", kind, "DELETE", kind.path(namespace, name), body=body)
        except ApiError as err:
            if err.status == 409 and uid:
                return  # not that object any more: ours is gone
            if err.status != 404:
                raise

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        live: dict[str, Any] = await self.request(
            "status",
            kind,
            "PATCH",
            kind.path(namespace, name, "status"),
            body={"status": status},
            content_type=MERGE,
        )
        return live

    async def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        live: dict[str, Any] = await self.request(
            "create", kind, "POST", kind.path(obj["metadata"].get("namespace")), body=obj
        )
        return live

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            live: dict[str, Any] = await self.request("get", kind, "GET", kind.path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return live

    async def replace(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: fails with 409 if someone else changed it meanwhile."""
        meta = obj["metadata"]
        live: dict[str, Any] = await self.request(
            "update", kind, "PUT", kind.path(meta.get("namespace"), meta["name"]), body=obj
        )
        return live

    async def event(
        self, involved: dict[str, Any], *, type_: str, reason: str, message: str, now: str
    ) -> None:
        """Records an Event on `involved`; best effort, a failure is logged and never fails a pass."""
        meta = involved["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": APP_NAME},
            "reportingComponent": APP_NAME,
        }
        try:
            await self.create(EVENT, body)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning(
                "could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err
            )


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server returns some int-or-string fields in the other form (2 vs "2").
    return (
        isinstance(want, (int, float, str)) and isinstance(have, (int, float, str)) and str(want) == str(have)
    )


def contains(live: Any, want: Any) -> bool:
    """True when every field set in `want` has the same value in `live` (defaults the server added are ignored)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(contains, live, want))
    return _same_scalar(want, live)


class Kube:
    """A synchronous client over a kubernetes-library ApiClient, for the harness, the tests and `dev`: the
    operator itself uses Api."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        query: list[tuple[str, Any]] | None = None,
    ) -> Any:
        headers = {"Content-Type": content_type, "Accept": JSON}
        serialized = self.api.param_serialize(
            method,
            url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized)
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            raise ApiError.from_response(response.status, data.decode(errors="replace"))
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", of(kind).path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return result

    def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("GET", of(kind).path(namespace), query=query)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def apply(self, obj: dict[str, Any]) -> bool:
        """Server-side apply `obj` unless the live object already holds every field of it; True if written."""
        meta = obj["metadata"]
        live = self.get(obj["kind"], meta.get("namespace"), meta["name"])
        if live is not None and contains(live, obj):
            return False
        self._call(
            "PATCH",
            of(obj["kind"]).path(meta.get("namespace"), meta["name"]),
            obj,
            content_type=APPLY,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        return True

    def create(self, obj: dict[str, Any]) -> bool:
        """POST `obj` as it is (status included, as a node registers itself); False if it already exists."""
        try:
            self._call("POST", of(obj["kind"]).path(obj["metadata"].get("namespace")), obj)
        except ApiError as err:
            if err.status == 409:
                return False
            raise
        return True

    def apply_all(self, objects: Iterable[dict[str, Any]]) -> int:
        return sum(self.apply(obj) for obj in objects)

    def install_crds(self, timeout: float = 30.0) -> bool:
        """Apply the generated CRDs and wait until the API server serves them; False on timeout."""
        from localai_operator.api.crd import crds

        wanted = crds()
        self.apply_all(wanted)
        names = [c["metadata"]["name"] for c in wanted]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [self.get(CUSTOM_RESOURCE_DEFINITION.kind, None, name) or {} for name in names]
            conditions = [(obj.get("status") or {}).get("conditions") or [] for obj in live]
            if all(
                any(c["type"] == "Established" and c["status"] == "True" for c in cs) for cs in conditions
            ):
                return True
            time.sleep(0.2)
        return False
