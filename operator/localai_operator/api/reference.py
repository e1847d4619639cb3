"""docs/reference.md: every field of the three kinds, generated from the same schemas as the CRDs."""

from __future__ import annotations

import json
from typing import Any

from localai_operator.api.base import QUANTITY
from localai_operator.api.crd import crds

HEADER = """# API reference

Generated from the pydantic models by `make docs` (the same source as the CRDs); a test fails when it is stale.
Group `llm.localai-operator.io`, version `v1alpha1`. `kubectl explain <short name>.spec` shows the same text
(`kubectl explain ipool.spec`). Name the kinds by short name or by full resource name
(`inferencepools.llm.localai-operator.io`): the Gateway API Inference Extension has an `InferencePool` too.
"""


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return kind


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
        ("maxLength", "length <="),
    ):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if node.get("pattern") == QUANTITY:
        parts.append("a Kubernetes quantity (e.g. `500m`, `2`, `16Gi`)")
    elif "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations", []):
        parts.append(f"rule: {rule['message']}")
    return "; ".join(parts)


def _rows(node: dict[str, Any], prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        description = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        req = "yes" if name in required else ""
        constraints = _constraints(sub)
        if isinstance(sub.get("additionalProperties"), dict) and _constraints(sub["additionalProperties"]):
            constraints = "; ".join(
                filter(None, [constraints, "values: " + _constraints(sub["additionalProperties"])])
            )
        constraints = constraints.replace("|", "\\|")
        rows.append(f"| `{path}` | {_type(sub)} | {req} | {default} | {description} | {constraints} |")
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        rows.extend(
            _rows(target, path + ("[]" if target is not sub else ""), set(target.get("required", [])))
        )
    return rows


def reference_markdown() -> str:
    out = [HEADER]
    for crd in crds():
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        out.append(f"\n## {names['kind']}\n")
        out.append(f"{schema['description']} Short name `{names['shortNames'][0]}`, category `llm`.\n")
        for part in ("spec", "status"):
            node = schema["properties"][part]
            rules = "; ".join(r["message"] for r in node.get("x-kubernetes-validations", []))
            out.append(f"\n### {names['kind']}.{part}\n")
            if rules:
                out.append(f"Rules: {rules}.\n")
            out.append("| field | type | required | default | description | constraints |")
            out.append("|---|---|---|---|---|---|")
            out.extend(_rows(node, part, set(node.get("required", []))))
    return "\n".join(out) + "\n"
