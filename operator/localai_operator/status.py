"""Pure: observed facts -> status, with conditions per the Kubernetes API conventions. No I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

READY = "Ready"


@dataclass(frozen=True)
class Check:
    """One kind-specific condition: ok is None while unknown (e.g. pods still starting)."""

    type: str
    ok: bool | None
    reason: str
    message: str


def conditions(
    checks: list[Check], previous: list[dict[str, Any]], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The checks plus a Ready summary; lastTransitionTime moves only when a condition's status flips."""
    failing = next((c for c in checks if c.ok is False), None) or next(
        (c for c in checks if c.ok is None), None
    )
    if failing is None:
        ready = Check(READY, True, "Ready", "All conditions are met.")
    else:
        ready = Check(READY, failing.ok, failing.reason, failing.message)
    old = {c.get("type"): c for c in previous}
    out = []
    for check in [ready, *checks]:
        status = {True: "True", False: "False", None: "Unknown"}[check.ok]
        before = old.get(check.type, {})
        transition = before.get("lastTransitionTime") if before.get("status") == status else None
        condition: dict[str, Any] = {
            "type": check.type,
            "status": status,
            "reason": check.reason,
            "message": check.message,
            "lastTransitionTime": transition or now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
    return out


def ready_of(status: dict[str, Any] | None) -> str | None:
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == READY:
            return str(condition.get("status"))
    return None


def without_times(status: dict[str, Any]) -> dict[str, Any]:
    """A status with transition times dropped, to decide whether a write is needed."""
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return out


def invalid(kind_field: str, message: str) -> Check:
    return Check("SpecValid", False, "InvalidSpec", f"{kind_field}: {message}")


@dataclass(frozen=True)
class PoolFacts:
    name: str
    namespace: str
    replicas: int
    gpus: int
    models: list[str]
    missing_models: list[str] = field(default_factory=list)
    invalid: str | None = None
    deployment: dict[str, Any] | None = None
    unschedulable: str | None = None
    largest_node_gpus: int | None = None
    endpoint: str | None = None


def pool_checks(f: PoolFacts) -> list[Check]:
    if f.invalid:
        return [invalid("spec", f.invalid)]
    checks = [Check("SpecValid", True, "Valid", "The spec is valid.")]
    if f.missing_models:
        names = ", ".join(f'"{m}"' for m in f.missing_models)
        checks.append(Check("ModelsResolved", False, "ModelMissing",
                            f"LLMModel {names} not found in namespace \"{f.namespace}\"; create it and the pool "
                            "reconciles by itself."))  # fmt: skip
        return checks
    checks.append(Check("ModelsResolved", True, "Resolved", f"Serving {', '.join(f.models)}."))
    if f.gpus and f.largest_node_gpus is not None and f.gpus > f.largest_node_gpus:
        checks.append(Check("GPUFit", False, "InsufficientGPU",
                            f"Each replica asks for {f.gpus} nvidia.com/gpu but the largest schedulable node offers "
                            f"{f.largest_node_gpus}: lower spec.accelerator.gpus or add bigger GPU nodes."))  # fmt: skip
        return checks
    if f.unschedulable:
        checks.append(Check("GPUFit" if f.gpus else "Schedulable", False, "Unschedulable",
                            f"Pods cannot be scheduled: {f.unschedulable}"))  # fmt: skip
        return checks
    if f.gpus:
        checks.append(Check("GPUFit", True, "Fits", f"{f.gpus} nvidia.com/gpu per replica fits a node."))
    ready = int((f.deployment or {}).get("status", {}).get("readyReplicas") or 0)
    if f.replicas == 0:
        checks.append(Check("Available", True, "ScaledToZero", "The pool is scaled to zero replicas."))
    elif ready >= f.replicas:
        checks.append(Check("Available", True, "ReplicasReady", f"{ready}/{f.replicas} replicas are ready."))
    elif ready > 0:
        checks.append(Check("Available", None, "PartiallyReady", f"{ready}/{f.replicas} replicas are ready."))
    else:
        checks.append(Check("Available", None, "Starting",
                            f"0/{f.replicas} replicas are ready: models are downloading or loading."))  # fmt: skip
    return checks


def pool_status(
    f: PoolFacts, previous: dict[str, Any] | None, generation: int | None, now: str
) -> dict[str, Any]:
    dep_status = (f.deployment or {}).get("status", {})
    return {
        "observedGeneration": generation,
        "replicas": int(dep_status.get("replicas") or 0),
        "readyReplicas": int(dep_status.get("readyReplicas") or 0),
        "gpus": f.gpus,
        "models": ",".join(f.models),
        "endpoint": f.endpoint,
        "conditions": conditions(pool_checks(f), (previous or {}).get("conditions") or [], generation, now),
    }


@dataclass(frozen=True)
class RouteFacts:
    name: str
    namespace: str
    primary: str | None = None
    invalid: str | None = None
    missing_pool: str | None = None
    secret_problem: str | None = None
    name_conflict: str | None = None
    sensitive: bool = False
    fallback: bool = False
    deployment: dict[str, Any] | None = None
    replicas: int = 1
    endpoint: str | None = None


def route_checks(f: RouteFacts) -> list[Check]:
    if f.invalid:
        return [invalid("spec", f.invalid)]
    checks = [Check("SpecValid", True, "Valid", "The spec is valid.")]
    if f.name_conflict:
        checks.append(Check("NameFree", False, "NameConflict", f.name_conflict))
        return checks
    if f.missing_pool:
        checks.append(Check("PrimaryResolved", False, "PoolMissing",
                            f'InferencePool "{f.missing_pool}" not found in namespace "{f.namespace}".'))  # fmt: skip
    else:
        checks.append(Check("PrimaryResolved", True, "Resolved", f"Local traffic goes to {f.primary}."))
    if f.sensitive:
        checks.append(
            Check("FallbackReady", True, "Sensitive", "Sensitive route: traffic never goes to the cloud.")
        )
    elif not f.fallback:
        checks.append(Check("FallbackReady", True, "NoFallback", "No cloud fallback is configured."))
    elif f.secret_problem:
        checks.append(Check("FallbackReady", False, "SecretMissing", f.secret_problem))
    else:
        checks.append(Check("FallbackReady", True, "SecretFound", "The fallback API key Secret is present."))
    if any(c.ok is False for c in checks):
        return checks
    ready = int((f.deployment or {}).get("status", {}).get("readyReplicas") or 0)
    if f.replicas == 0 or ready >= f.replicas:
        checks.append(
            Check("Available", True, "RouterReady", f"{ready}/{f.replicas} router replicas are ready.")
        )
    else:
        checks.append(
            Check("Available", None, "Starting", f"{ready}/{f.replicas} router replicas are ready.")
        )
    return checks


def route_status(
    f: RouteFacts, previous: dict[str, Any] | None, generation: int | None, now: str
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "endpoint": f.endpoint,
        "primary": f.primary,
        "conditions": conditions(route_checks(f), (previous or {}).get("conditions") or [], generation, now),
    }


def model_status(
    *, invalid_message: str | None, served_by: list[str], file: str | None, previous: dict[str, Any] | None,
    generation: int | None, now: str,
) -> dict[str, Any]:  # fmt: skip
    if invalid_message:
        checks = [invalid("spec", invalid_message)]
    elif served_by:
        checks = [Check("Served", True, "Served", f"Served by InferencePool {', '.join(served_by)}.")]
    else:
        checks = [Check("Served", True, "NotReferenced", "Valid; no InferencePool serves this model yet.")]
    return {
        "observedGeneration": generation,
        "servedBy": served_by,
        "file": file,
        "conditions": conditions(checks, (previous or {}).get("conditions") or [], generation, now),
    }
