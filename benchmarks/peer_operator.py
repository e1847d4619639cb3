"""The peer of benchmarks/operator_scale.py: a minimal, naive Kopf operator of the shape shared/PERF.md measured.

Kopf defaults, sync handlers, the kubernetes client and `kopf.adopt`: a PeerPool gets a ConfigMap, a Deployment and
a Service (created if absent, patched on update); a PeerModel is only accepted, as our LLMModels own no objects.

    PEER_COUNTS_PORT=9099 kopf run --standalone -A benchmarks/peer_operator.py

Every write request the process sends, Kopf's own (annotations, events) and the kubernetes client's, is counted by
method, resource and HTTP status; GET http://127.0.0.1:$PEER_COUNTS_PORT/ returns the counts as JSON.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import kopf
from kopf._cogs.clients import api as kopf_api  # Kopf has no public hook for the requests it sends
from kopf._cogs.clients import errors as kopf_errors
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "bench.example", "v1"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WRITES: Counter[str] = Counter()
HANDLED: Counter[str] = Counter()
_lock = threading.Lock()


def _resource(url: str) -> str:
    parts = urlparse(url).path.strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2 :]
    return parts[0] if len(parts) < 3 else parts[0] + "/" + parts[2]  # e.g. "peerpools/status"


def _count(method: str, url: str, status: int) -> None:
    if method.upper() in WRITE_METHODS:
        with _lock:
            WRITES[f"{method.upper()} {_resource(url)} {status}"] += 1


_kopf_request = kopf_api.request
_client_request = rest.RESTClientObject.request


async def _counted_kopf_request(method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = await _kopf_request(method, url, **kwargs)
    except kopf_errors.APIError as err:
        _count(method, url, err.status)
        raise
    _count(method, url, response.status)
    return response


def _counted_client_request(
    self: rest.RESTClientObject, method: str, url: str, *args: Any, **kwargs: Any
) -> Any:
    response = _client_request(self, method, url, *args, **kwargs)
    _count(method, url, response.status)
    return response


kopf_api.request = _counted_kopf_request
rest.RESTClientObject.request = _counted_client_request


class _Counts(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with _lock:
            body = json.dumps({"writes": dict(WRITES), "handled": dict(HANDLED)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@kopf.on.startup()
def start(memo: kopf.Memo, **_: Any) -> None:
    config.load_kube_config()
    memo.core, memo.apps = client.CoreV1Api(), client.AppsV1Api()
    if port := os.environ.get("PEER_COUNTS_PORT"):
        server = ThreadingHTTPServer(("127.0.0.1", int(port)), _Counts)
        threading.Thread(target=server.serve_forever, daemon=True).start()


def config_map(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-models"},
        "data": {"models": "\n".join(spec.get("models", []))},
    }


def deployment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    container = {
        "name": "server",
        "image": "localai/localai:latest-cpu",
        "ports": [{"containerPort": 8080}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }


@kopf.on.resume(GROUP, VERSION, "peerpools", id="children")
@kopf.on.create(GROUP, VERSION, "peerpools", id="children")
@kopf.on.update(GROUP, VERSION, "peerpools", id="children")
def ensure_children(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    reason: kopf.Reason,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    core, apps = memo.core, memo.apps
    writers: list[tuple[dict[str, Any], Callable[..., Any], Callable[..., Any]]] = [
        (config_map(name, dict(spec)), core.create_namespaced_config_map, core.patch_namespaced_config_map),
        (deployment(name, dict(spec)), apps.create_namespaced_deployment, apps.patch_namespaced_deployment),
        (service(name), core.create_namespaced_service, core.patch_namespaced_service),
    ]
    for obj, create, patch in writers:
        kopf.adopt(obj, owner=body)
        try:
            create(namespace, obj)
        except ApiException as err:
            if err.status != 409:
                raise
            if reason == kopf.Reason.UPDATE:
                patch(obj["metadata"]["name"], namespace, obj)
    with _lock:
        HANDLED["peerpools"] += 1


@kopf.on.resume(GROUP, VERSION, "peermodels", id="accept")
@kopf.on.create(GROUP, VERSION, "peermodels", id="accept")
@kopf.on.update(GROUP, VERSION, "peermodels", id="accept")
def accept_model(**_: Any) -> None:
    with _lock:
        HANDLED["peermodels"] += 1
