"""The only module that talks to the API server: reads, drift-aware server-side apply, status, events."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.constants import (
    ANNOTATION_APPLIED,
    APP_NAME,
    FIELD_MANAGER,
    GROUP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    VERSION,
)
from localai_operator.render.common import content_hash

log = logging.getLogger(__name__)

_CORE = {"ConfigMap": "configmaps", "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims",
         "Secret": "secrets", "Pod": "pods", "Event": "events", "Node": "nodes", "Namespace": "namespaces"}  # fmt: skip
_GROUPED = {"Deployment": ("apps/v1", "deployments"), "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
            "LLMModel": (f"{GROUP}/{VERSION}", "llmmodels"), "InferencePool": (f"{GROUP}/{VERSION}", "inferencepools"),
            "FallbackRoute": (f"{GROUP}/{VERSION}", "fallbackroutes"),
            "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
            "Lease": ("coordination.k8s.io/v1", "leases"),
            "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies")}  # fmt: skip
# Kinds a custom resource may own at one time and not the next (storage removed, replicas down to 1).
PRUNABLE = ("PersistentVolumeClaim", "PodDisruptionBudget", "NetworkPolicy")


def path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    if kind in _CORE:
        base, plural = "/api/v1", _CORE[kind]
    else:
        group_version, plural = _GROUPED[kind]
        base = f"/apis/{group_version}"
    out = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return out + (f"/{name}" if name else "")


@dataclass
class WriteCounter:
    """API writes this process sent, by verb and kind: what the no-op resync test and metrics read."""

    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, verb: str, kind: str) -> None:
        with self.lock:
            key = f"{verb} {kind}"
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


WRITES = WriteCounter()


class Kube:
    """A thin, thread-safe wrapper over one ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(self, method: str, url: str, body: Any = None, *, content_type: str = "application/json",
              query: list[tuple[str, Any]] | None = None) -> Any:  # fmt: skip
        headers = {"Content-Type": content_type, "Accept": "application/json"}
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
            raise ApiException(http_resp=response)
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", path(kind, namespace, name))
            return result
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("GET", path(kind, namespace), query=query)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def apply(self, obj: dict[str, Any]) -> bool:
        """Server-side apply `obj` unless the live object already holds every field of it; True if written."""
        # The hash catches fields removed from the desired state, which a containment check alone cannot see.
        obj = {**obj, "metadata": {**obj["metadata"]}}
        obj["metadata"]["annotations"] = {
            **obj["metadata"].get("annotations", {}),
            ANNOTATION_APPLIED: content_hash(obj),
        }
        kind, meta = obj["kind"], obj["metadata"]
        live = self.get(kind, meta.get("namespace"), meta["name"])
        if live is not None and contains(live, obj):
            return False
        self._call("PATCH", path(kind, meta.get("namespace"), meta["name"]), obj,
                   content_type="application/apply-patch+yaml",
                   query=[("fieldManager", FIELD_MANAGER), ("force", "true")])  # fmt: skip
        WRITES.add("apply", kind)
        return True

    def create(self, obj: dict[str, Any]) -> bool:
        """POST `obj` as it is (status included, as a node registers itself); False if it already exists."""
        try:
            self._call("POST", path(obj["kind"], obj["metadata"].get("namespace")), obj)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def install_crds(self, timeout: float = 30.0) -> bool:
        """Apply the generated CRDs and wait until the API server serves them; False on timeout."""
        from localai_operator.api.crd import crds

        wanted = crds()
        for crd in wanted:
            self.apply(crd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [self.get("CustomResourceDefinition", None, c["metadata"]["name"]) or {} for c in wanted]
            conditions = [(obj.get("status") or {}).get("conditions") or [] for obj in live]
            if all(
                any(c["type"] == "Established" and c["status"] == "True" for c in cs) for cs in conditions
            ):
                return True
            time.sleep(0.2)
        return False

    def apply_all(self, objects: Iterable[dict[str, Any]]) -> int:
        return sum(self.apply(obj) for obj in objects)

    def prune(self, owner_uid: str, namespace: str, instance: str, keep: Iterable[dict[str, Any]]) -> int:
        """Delete objects of PRUNABLE kinds this owner no longer renders."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in keep}
        selector = f"{LABEL_MANAGED_BY}={APP_NAME},{LABEL_INSTANCE}={instance}"
        deleted = 0
        for kind in PRUNABLE:
            for live in self.list(kind, namespace, selector):
                refs = live["metadata"].get("ownerReferences", [])
                if (kind, live["metadata"]["name"]) in wanted or not any(
                    r.get("uid") == owner_uid for r in refs
                ):
                    continue
                self.delete(kind, namespace, live["metadata"]["name"])
                deleted += 1
        return deleted

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", path(kind, namespace, name))
            WRITES.add("delete", kind)
        except ApiException as err:
            if err.status != 404:
                raise

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call("PATCH", path(kind, namespace, name) + "/status", {"status": status},
                   content_type="application/merge-patch+json")  # fmt: skip
        WRITES.add("status", kind)

    def event(self, involved: dict[str, Any], *, type_: str, reason: str, message: str, now: str) -> None:
        meta = involved["metadata"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": APP_NAME}, "reportingComponent": APP_NAME,
        }  # fmt: skip
        try:
            self._call("POST", path("Event", meta["namespace"]), body)
            WRITES.add("create", "Event")
        except ApiException as err:  # an event is best effort: never fail a reconcile for it
            log.warning(
                "could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err.status
            )


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server normalises numbers in quantities and int-or-string fields ("2" -> 2 is not done, but 2 vs "2" is).
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


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaderElector:
    """Lease-based leader election (coordination.k8s.io), so a second replica stays a hot standby.

    Lease renewals are not counted as reconcile writes: they are the price of having a standby at all.
    """

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, lease_seconds: int = 15) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds = lease_seconds
        self.leading = threading.Event()

    def try_acquire_or_renew(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        url = path("Lease", self.namespace, self.name)
        lease = self.kube.get("Lease", self.namespace, self.name)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": _micro_time(now)}  # fmt: skip
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {**spec, "acquireTime": _micro_time(now), "leaseTransitions": 0}}  # fmt: skip
                self.kube._call("POST", path("Lease", self.namespace), body)
            else:
                current = lease.get("spec") or {}
                holder = current.get("holderIdentity")
                renewed = _parse_time(current.get("renewTime"))
                duration = int(current.get("leaseDurationSeconds") or self.lease_seconds)
                expired = renewed is None or renewed + timedelta(seconds=duration) < now
                if holder not in (None, "", self.identity) and not expired:
                    self.leading.clear()
                    return False
                if holder != self.identity:
                    spec["acquireTime"] = _micro_time(now)
                    spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
                lease["spec"] = {**current, **spec}
                # PUT with the read resourceVersion: two candidates racing for an expired lease cannot both win.
                self.kube._call("PUT", url, lease)
        except ApiException as err:
            if err.status != 409:
                raise
            self.leading.clear()
            return False
        self.leading.set()
        return True

    def release(self) -> None:
        lease = self.kube.get("Lease", self.namespace, self.name)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            with contextlib.suppress(ApiException):
                self.kube._call("PUT", path("Lease", self.namespace, self.name), lease)
        self.leading.clear()
