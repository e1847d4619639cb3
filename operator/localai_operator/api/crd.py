"""CustomResourceDefinitions generated from the pydantic models: structural OpenAPI v3 with CEL rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from localai_operator.api.base import CustomResource
from localai_operator.api.llmmodel import LLMModel, LLMModelSpec, LLMModelStatus
from localai_operator.api.pool import InferencePool, InferencePoolSpec, InferencePoolStatus
from localai_operator.api.route import FallbackRoute, FallbackRouteSpec, FallbackRouteStatus
from localai_operator.constants import CATEGORY, GROUP, VERSION

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


def _ready(json_path: str = '.status.conditions[?(@.type=="Ready")].status') -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": json_path}


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "LLMModel": [
        _ready(),
        {"name": "File", "type": "string", "jsonPath": ".status.file"},
        {"name": "Context", "type": "integer", "jsonPath": ".spec.contextSize"},
        {"name": "Pools", "type": "string", "jsonPath": ".status.servedBy"},
        _AGE,
    ],
    "InferencePool": [
        _ready(),
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.accelerator.gpus"},
        {"name": "Models", "type": "string", "jsonPath": ".status.models"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "priority": 1,
        },
        _AGE,
    ],
    "FallbackRoute": [
        _ready(),
        {"name": "Primary", "type": "string", "jsonPath": ".status.primary"},
        {"name": "Fallback", "type": "string", "jsonPath": ".spec.fallback.provider"},
        {"name": "Sensitive", "type": "boolean", "jsonPath": ".spec.policy.sensitive"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        _AGE,
    ],
}

_KINDS: list[tuple[type[CustomResource], type[BaseModel], type[BaseModel], str]] = [
    (LLMModel, LLMModelSpec, LLMModelStatus, "One GGUF model: its source, checksum and LocalAI settings."),
    (InferencePool, InferencePoolSpec, InferencePoolStatus, "LocalAI replicas serving a set of LLMModels."),
    (
        FallbackRoute,
        FallbackRouteSpec,
        FallbackRouteStatus,
        "Local pool first, a cloud provider on failure or delay.",
    ),
]


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON schema node into a Kubernetes structural schema node."""
    if "$ref" in schema:
        # A copy: a definition used twice must not become a shared object (YAML would emit an anchor).
        merged = {
            **copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[-1]]),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        if len(options) == 1:
            return structural({**options[0], **rest}, defs)
        assert rest.get("x-kubernetes-int-or-string"), f"unsupported union in schema: {schema}"
        return {k: v for k, v in rest.items() if k in _KEEP and k != "type"}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "const":
            out["enum"] = [value]
            out.setdefault("type", "string")
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties" and isinstance(value, dict):
            out["additionalProperties"] = structural(value, defs)
        elif key in _KEEP:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _conditions_schema() -> dict[str, Any]:
    return {
        "type": "array",
        "description": "Ready (the summary Argo CD, Flux and kubectl wait read) and kind-specific conditions.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "reason"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
                "observedGeneration": {"type": "integer", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
            },
        },
    }


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd(
    kind: type[CustomResource], spec: type[BaseModel], status: type[BaseModel], doc: str
) -> dict[str, Any]:
    status_schema = model_schema(status)
    status_schema["properties"]["conditions"] = _conditions_schema()
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": _COLUMNS[kind.KIND],
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": doc,
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": model_schema(spec),
                    "status": status_schema,
                },
            }
        },
    }
    if kind is InferencePool:
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.KIND,
                "listKind": f"{kind.KIND}List",
                "plural": kind.PLURAL,
                "singular": kind.KIND.lower(),
                "shortNames": kind.SHORT_NAMES,
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [crd(*entry) for entry in _KINDS]


def crd_files() -> dict[str, str]:
    """File name -> YAML, as `crds/` and the chart's `crds/` hold them."""
    return {
        f"{obj['metadata']['name']}.yaml": yaml.safe_dump(obj, sort_keys=False, width=120) for obj in crds()
    }


def write_crds(directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_files().items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def crds_yaml() -> str:
    return yaml.safe_dump_all(crds(), sort_keys=False, width=120)
