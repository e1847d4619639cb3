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

LOCALAI_VERSION = "v3.12.0"


@dataclass(frozen=True)
class RenderSettings:
    """What the renderer needs beyond the custom resources: images the operator was configured with."""

    operator_image: str = f"localai-operator:{__version__}"
    localai_cpu_image: str = f"localai/localai:{LOCALAI_VERSION}"
    localai_gpu_image: str = f"localai/localai:{LOCALAI_VERSION}-gpu-nvidia-cuda-12"


def labels(owner: CustomResource, *, name: str, component: str) -> dict[str, str]:
    # Only our own labels: copying the CR's labels would make Argo CD track children as its own objects.
    return {
        LABEL_NAME: name,
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: APP_NAME,
        LABEL_MANAGED_BY: APP_NAME,
        LABEL_VERSION: __version__,
    }


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


def meta(owner: CustomResource, obj_name: str, *, name: str, component: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": obj_name,
        "namespace": owner.namespace,
        "labels": labels(owner, name=name, component=component),
    }
    refs = owner_references(owner)
    if refs:
        out["ownerReferences"] = refs
    return out


def http_service(
    owner: CustomResource, obj_name: str, *, name: str, component: str, port: int
) -> dict[str, Any]:
    """A ClusterIP Service on `port`, to the pods' port named http."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(owner, obj_name, name=name, component=component),
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
