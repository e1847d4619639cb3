"""Shared pieces of every rendered object: settings, labels, owner references, hashing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from localai_operator import __version__
from localai_operator.api.base import CustomResource
from localai_operator.constants import (
    APP_NAME,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_VERSION,
)

# The LocalAI release the operator is tested against (docs/localai-facts.md says why v4.9.0). Its backends are pinned
# to the same release through the rendered backend gallery (render/pool.py).
LOCALAI_VERSION = "v4.9.0"
# Where LocalAI's CI pushes backend images, tagged <release>-<variant> (.github/workflows/backend_build.yml at v4.9.0:
# `type=semver,pattern={{raw}}` + the tag suffix of .github/backend-matrix.yml), and the Docker Hub copy it also pushes.
LOCALAI_BACKEND_REPOSITORY = "quay.io/go-skynet/local-ai-backends"
LOCALAI_BACKEND_MIRROR = "docker.io/localai/localai-backends"
# The image of the fetch-models init container is pinned apart from the operator's own version, so an operator
# upgrade does not restart every LocalAI pod. Bump it only when fetch-models' arguments, manifest or behaviour change
# (that bump rolls every pool once, on purpose); the chart's `downloader.image.tag` carries the same value.
DOWNLOADER_VERSION = "0.1.0"


@dataclass(frozen=True)
class RenderSettings:
    """What the renderer needs beyond the custom resources: the images and versions the operator was configured
    with."""

    operator_image: str = f"localai-operator:{__version__}"
    operator_version: str = __version__
    # None: the operator image's repository at DOWNLOADER_VERSION.
    downloader_image: str | None = None
    localai_cpu_image: str = f"localai/localai:{LOCALAI_VERSION}"
    localai_gpu_image: str = f"localai/localai:{LOCALAI_VERSION}-gpu-nvidia-cuda-12"
    localai_version: str = LOCALAI_VERSION
    # None: LocalAI's own repository with its Docker Hub copy as a mirror; set it to an internal mirror.
    backend_repository: str | None = None
    # Where routers send spans and GenAI metrics unless their route's spec.telemetry says otherwise (the chart's
    # telemetry.otlpEndpoint; None: nowhere), and the fraction of traces they sample (None: every one).
    router_otlp_endpoint: str | None = None
    router_sampling_ratio: float | None = None

    def fetch_image(self) -> str:
        """The image of the fetch-models init container."""
        if self.downloader_image:
            return self.downloader_image
        return f"{image_repository(self.operator_image)}:{DOWNLOADER_VERSION}"


def image_repository(image: str) -> str:
    """`registry:5000/a/b:tag@sha256:...` -> `registry:5000/a/b`."""
    name = image.partition("@")[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.partition(':')[0]}" if head else last.partition(":")[0]


# The router pods' labels (render/route.py renders them): a pool's NetworkPolicy admits pods carrying these.
ROUTER_APP = "localai-router"
ROUTER_COMPONENT = "router"


def labels(
    owner: CustomResource, *, name: str, component: str, version: str | None = __version__
) -> dict[str, str]:
    """Only our own labels: copying the CR's labels would make Argo CD track children as its own objects.
    `version=None` leaves the operator's version out, for pod templates that must not change on upgrades."""
    out = {
        LABEL_NAME: name,
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: APP_NAME,
        LABEL_MANAGED_BY: APP_NAME,
    }
    if version is not None:
        out[LABEL_VERSION] = version
    return out


def selector(owner: CustomResource, *, name: str, component: str) -> dict[str, str]:
    """The immutable subset of labels used by Deployment and Service selectors."""
    return {LABEL_NAME: name, LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component}


def owner_references(owner: CustomResource) -> list[dict[str, Any]]:
    if not owner.metadata.uid:
        return []  # offline render: the object has not been created yet
    return [
        {
            "apiVersion": owner.api_version,
            "kind": owner.KIND,
            "name": owner.name,
            "uid": owner.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def meta(
    owner: CustomResource, obj_name: str, *, name: str, component: str, version: str = __version__
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": obj_name,
        "namespace": owner.namespace,
        "labels": labels(owner, name=name, component=component, version=version),
    }
    refs = owner_references(owner)
    if refs:
        out["ownerReferences"] = refs
    return out


def http_service(
    owner: CustomResource, obj_name: str, *, name: str, component: str, port: int, version: str = __version__
) -> dict[str, Any]:
    """A ClusterIP Service on `port`, to the pods' port named http."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(owner, obj_name, name=name, component=component, version=version),
        "spec": {
            "selector": selector(owner, name=name, component=component),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def content_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
