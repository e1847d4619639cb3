"""Pure: observed facts -> the status models of api/, with conditions per the Kubernetes API conventions.

No I/O and no clock: `now` comes in. What is written to the API server is exactly a dumped status model, the
same models the CRD schema is generated from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from localai_operator.api.base import Condition, Spec
from localai_operator.api.llmmodel import GGUFStatus, LLMModelStatus
from localai_operator.api.pool import AutoscalingStatus, InferencePoolStatus
from localai_operator.api.route import (
    FallbackRouteStatus,
    HTTPRouteParentStatus,
    HTTPRouteStatus,
    RouteCost,
)
from localai_operator.control.autoscale import ScaleState

READY = "Ready"


@dataclass(frozen=True)
class Check:
    """One kind-specific condition: ok is None while unknown (e.g. pods still starting). An `advisory` one is
    shown but does not decide Ready."""

    type: str
    ok: bool | None
    reason: str
    message: str
    # True: reported, but Ready does not depend on it (what the resource serves works without it).
    advisory: bool = False


def conditions(
    checks: Sequence[Check], previous: Sequence[Mapping[str, Any]], generation: int | None, now: str
) -> list[Condition]:
    """The checks plus a Ready summary; lastTransitionTime moves only when a condition's status flips."""
    deciding = [c for c in checks if not c.advisory]
    failing = next((c for c in deciding if c.ok is False), None) or next(
        (c for c in deciding if c.ok is None), None
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
        out.append(
            Condition(
                type=check.type,
                status=status,
                reason=check.reason,
                message=check.message,
                observed_generation=generation,
                last_transition_time=transition or now,
            )
        )
    return out


def invalid(message: str) -> Check:
    return Check("SpecValid", False, "InvalidSpec", message)


VALID = Check("SpecValid", True, "Valid", "The spec is valid.")


def patch_of(status: Spec) -> dict[str, Any]:
    """The merge patch that makes the stored status equal `status`: fields the model leaves unset are sent as
    null, which removes what an earlier pass wrote."""
    dumped = status.model_dump(by_alias=True, mode="json")
    out: dict[str, Any] = {}
    for key, value in dumped.items():
        if key == "conditions":
            out[key] = [{k: v for k, v in c.items() if v is not None} for c in value]
        else:
            out[key] = value
    return out


def unchanged(stored: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """True when writing `patch` would change nothing but transition times."""
    stored = stored or {}
    for key, value in patch.items():
        if key == "conditions":
            if _without_times(stored.get(key) or []) != _without_times(value):
                return False
        elif value is None:
            if stored.get(key) is not None:
                return False
        elif stored.get(key) != value:
            return False
    return True


def _without_times(conditions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions]


def ready_of(status: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    """(status, reason, message) of the Ready condition, if any."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == READY:
            return (
                str(condition.get("status")),
                str(condition.get("reason", "")),
                str(condition.get("message", "")),
            )
    return None


# --- what a Deployment reports -----------------------------------------------------------------------------------


def ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def replicas(deployment: Mapping[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("replicas") or 0)


def pods_refused(deployment: Mapping[str, Any] | None) -> str | None:
    """The server's message when the Deployment's ReplicaSet cannot create pods (PodSecurity admission, a pod
    quota, a webhook): the Deployment controller copies the ReplicaSet's ReplicaFailure condition."""
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return str(condition.get("message") or condition.get("reason") or "ReplicaFailure")
    return None


# The longest a resource the user must fix waits between two tries (the work queue's slow backoff).
SLOW_RETRY_CAP_SECONDS = 300.0
SLOW_RETRY = (
    f"the operator tries again after a growing delay of up to {SLOW_RETRY_CAP_SECONDS / 60:g} minutes, and at "
    "once when this resource or one it uses changes"
)


@dataclass(frozen=True)
class Applied:
    """How the pass's writes went: the first refusal (naming the object, quoting the server), whether only the
    user can change its outcome (refused, not failed), and the names held by objects that are not ours."""

    error: str | None = None
    refused: bool = False
    conflicts: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and not self.conflicts


def _applied(applied: Applied) -> Check:
    if applied.conflicts:
        return Check("Applied", False, "Conflict", f"{' '.join(applied.conflicts)} Meanwhile {SLOW_RETRY}.")
    if applied.error and applied.refused:
        return Check("Applied", False, "ApplyRefused", f"{applied.error}; {SLOW_RETRY}.")
    if applied.error:
        return Check("Applied", False, "ApplyFailed", f"{applied.error}; retried within seconds.")
    return Check("Applied", True, "Applied", "Every owned object is applied.")


def _pods_created(refused: str | None) -> Check:
    if refused:
        return Check(
            "PodsCreated",
            False,
            "PodsForbidden",
            f"Pods cannot be created: {refused} (the namespace's PodSecurity level, a ResourceQuota or an "
            "admission webhook refuses them; the pool retries once that is changed).",
        )
    return Check("PodsCreated", True, "Created", "Pods are created.")


# --- InferencePool ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolFacts:
    name: str
    namespace: str
    replicas: int = 0
    gpus: int = 0
    models: tuple[str, ...] = ()
    invalid: str | None = None
    missing_models: tuple[str, ...] = ()
    invalid_models: tuple[str, ...] = ()
    # Further pure checks of the pool and its models (plan.POOL_CHECKS): failing ones stop the apply.
    spec_checks: tuple[Check, ...] = ()
    applied: Applied = Applied()
    deployment: Mapping[str, Any] | None = None
    unschedulable: str | None = None
    largest_node_gpus: int | None = None
    endpoint: str | None = None
    autoscaled: bool = False
    scale: ScaleState | None = None
    # The GPU-memory fit (control/gpufit.py); `held`: nothing was applied because of it.
    gpu_memory: Check | None = None
    held: bool = False


def pool_checks(f: PoolFacts) -> list[Check]:
    if f.invalid:
        return [invalid(f.invalid)]
    checks = [VALID]
    if f.missing_models:
        names = ", ".join(f'"{m}"' for m in f.missing_models)
        checks.append(
            Check(
                "ModelsResolved",
                False,
                "ModelMissing",
                f'LLMModel {names} not found in namespace "{f.namespace}"; create it and the pool '
                "reconciles by itself.",
            )
        )
        return checks
    if f.invalid_models:
        names = ", ".join(f'"{m}"' for m in f.invalid_models)
        checks.append(
            Check(
                "ModelsResolved",
                False,
                "ModelInvalid",
                f"LLMModel {names} is invalid: its status says why; the pool reconciles once it is fixed.",
            )
        )
        return checks
    checks.append(Check("ModelsResolved", True, "Resolved", f"Serving {', '.join(f.models)}."))
    for check in f.spec_checks:  # a check of a type already listed (SpecValid) takes its place
        same = next((i for i, c in enumerate(checks) if c.type == check.type), None)
        if same is None:
            checks.append(check)
        else:
            checks[same] = check
    if any(c.ok is False for c in f.spec_checks):
        return checks
    if f.gpu_memory is not None:
        checks.append(f.gpu_memory)
        if f.held:
            return checks
    checks.append(_applied(f.applied))
    if not f.applied.ok:
        return checks
    if f.gpus and f.largest_node_gpus is not None and f.gpus > f.largest_node_gpus:
        checks.append(
            Check(
                "GPUFit",
                False,
                "InsufficientGPU",
                f"Each replica asks for {f.gpus} nvidia.com/gpu but the largest schedulable node offers "
                f"{f.largest_node_gpus}: lower spec.accelerator.gpus or add bigger GPU nodes.",
            )
        )
        return checks
    refused = pods_refused(f.deployment)
    checks.append(_pods_created(refused))
    if refused:
        return checks
    if f.unschedulable:
        checks.append(
            Check(
                "GPUFit" if f.gpus else "Schedulable",
                False,
                "Unschedulable",
                f"Pods cannot be scheduled: {f.unschedulable}",
            )
        )
        return checks
    if f.gpus:
        checks.append(Check("GPUFit", True, "Fits", f"{f.gpus} nvidia.com/gpu per replica fits a node."))
    ready = ready_replicas(f.deployment)
    if f.replicas == 0:
        message = "The pool is scaled to zero replicas."
        if f.autoscaled:
            message = (
                "The autoscaler scaled the pool to zero: its routes answer from the cloud (sensitive ones hold "
                "requests) until demand brings a replica back."
            )
        checks.append(Check("Available", True, "ScaledToZero", message))
    elif ready >= f.replicas:
        checks.append(Check("Available", True, "ReplicasReady", f"{ready}/{f.replicas} replicas are ready."))
    elif ready > 0:
        checks.append(Check("Available", None, "PartiallyReady", f"{ready}/{f.replicas} replicas are ready."))
    else:
        checks.append(
            Check(
                "Available",
                None,
                "Starting",
                f"0/{f.replicas} replicas are ready: models are downloading or loading.",
            )
        )
    return checks


def pool_status(
    f: PoolFacts, previous: Mapping[str, Any] | None, generation: int | None, now: str
) -> InferencePoolStatus:
    return InferencePoolStatus(
        observed_generation=generation,
        replicas=replicas(f.deployment),
        ready_replicas=ready_replicas(f.deployment),
        gpus=f.gpus,
        models=",".join(f.models) or None,
        endpoint=f.endpoint,
        autoscaling=_autoscaling(f),
        conditions=conditions(pool_checks(f), (previous or {}).get("conditions") or [], generation, now),
    )


def _autoscaling(f: PoolFacts) -> AutoscalingStatus | None:
    if not f.autoscaled:
        return None
    scale = f.scale
    if scale is None:
        return AutoscalingStatus(
            desired_replicas=f.replicas,
            current_replicas=replicas(f.deployment),
            reason="Steady",
            message="Waiting for the first look at the routes' demand (every few seconds).",
        )
    return AutoscalingStatus(
        desired_replicas=f.replicas,
        current_replicas=replicas(f.deployment),
        reason=scale.reason,
        message=scale.message,
        in_flight=scale.in_flight,
        slots_per_replica=scale.slots_per_replica,
        last_scale_time=scale.last_scale_time,
    )


# --- FallbackRoute ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayFacts:
    """spec.gateway's HTTPRoute: its name, whether the cluster serves the API, and the live object if any."""

    name: str
    api_served: bool
    live: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RouteFacts:
    name: str
    namespace: str
    primary: str | None = None
    invalid: str | None = None
    name_conflict: str | None = None
    missing_pool: str | None = None
    secret_problem: str | None = None
    client_keys_problem: str | None = None
    sensitive: bool = False
    fallback: bool = False
    applied: Applied = Applied()
    deployment: Mapping[str, Any] | None = None
    replicas: int = 1
    endpoint: str | None = None
    cost: RouteCost | None = None
    # Any pod of the cluster could spend the cloud key: no spec.auth and no NetworkPolicy.
    open_to_cluster: bool = False
    gateway: GatewayFacts | None = None


def route_checks(f: RouteFacts) -> list[Check]:
    if f.invalid:
        return [invalid(f.invalid)]
    checks = [VALID]
    if f.name_conflict:
        checks.append(Check("NameFree", False, "NameConflict", f.name_conflict))
        return checks
    if f.missing_pool:
        checks.append(
            Check(
                "PrimaryResolved",
                False,
                "PoolMissing",
                f'InferencePool "{f.missing_pool}" not found in namespace "{f.namespace}".',
            )
        )
    else:
        checks.append(Check("PrimaryResolved", True, "Resolved", f"Local traffic goes to {f.primary}."))
    if f.client_keys_problem:
        checks.append(Check("ClientKeysResolved", False, "SecretMissing", f.client_keys_problem))
        return checks
    if f.sensitive:
        checks.append(
            Check("FallbackReady", True, "Sensitive", "Sensitive route: traffic never goes to the cloud.")
        )
    elif not f.fallback:
        checks.append(Check("FallbackReady", True, "NoFallback", "No cloud fallback is configured."))
    elif f.secret_problem:
        checks.append(Check("FallbackReady", False, "SecretMissing", f.secret_problem))
        return checks
    else:
        checks.append(Check("FallbackReady", True, "SecretFound", "The fallback API key Secret is present."))
    if f.open_to_cluster:
        # A warning, not a failure: the route works, and anyone who can reach it may spend its cloud key.
        checks.append(
            Check(
                "OpenToCluster",
                True,
                "NoAuthNoNetworkPolicy",
                "Any pod in the cluster can spend this route's cloud key: set spec.auth.clientKeySecrets or "
                "spec.networkPolicy.enabled (on by default without auth).",
            )
        )
    checks.append(_applied(f.applied))
    if f.gateway is not None:
        checks.append(http_route_check(f.gateway, f.namespace))
    if not f.applied.ok:
        return checks
    refused = pods_refused(f.deployment)
    checks.append(_pods_created(refused))
    if refused or any(c.ok is False for c in checks):
        return checks
    ready = ready_replicas(f.deployment)
    if f.replicas == 0 or ready >= f.replicas:
        checks.append(
            Check("Available", True, "RouterReady", f"{ready}/{f.replicas} router replicas are ready.")
        )
    else:
        checks.append(
            Check("Available", None, "Starting", f"{ready}/{f.replicas} router replicas are ready.")
        )
    return checks


HTTP_ROUTE_ACCEPTED = "HTTPRouteAccepted"
# The HTTPRoute's parent conditions copied into the route's status; the rest are the Gateway's business.
PARENT_CONDITIONS = ("Accepted", "ResolvedRefs")
MESSAGE_LIMIT = 1024  # a Gateway controller's message is another program's text: bounded
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _parent_name(ref: Mapping[str, Any], namespace: str) -> str:
    kind = ref.get("kind") or "Gateway"
    return f'{kind} "{ref.get("namespace") or namespace}/{ref.get("name")}"'


def parents_of(live: Mapping[str, Any] | None) -> list[HTTPRouteParentStatus]:
    """The HTTPRoute's status.parents, Accepted and ResolvedRefs only, bounded and with reasons a condition
    accepts (anything else reads as Unknown)."""
    out = []
    for parent in ((live or {}).get("status") or {}).get("parents") or []:
        ref = {str(k): str(v) for k, v in (parent.get("parentRef") or {}).items()}
        copied = []
        for c in parent.get("conditions") or []:
            if c.get("type") not in PARENT_CONDITIONS:
                continue
            status = c.get("status") if c.get("status") in ("True", "False", "Unknown") else "Unknown"
            reason = str(c.get("reason") or "")
            generation = c.get("observedGeneration")
            copied.append(
                Condition(
                    type=c["type"],
                    status=status,
                    reason=reason if REASON.match(reason) else "Unknown",
                    message=str(c.get("message") or "")[:MESSAGE_LIMIT],
                    observed_generation=generation if isinstance(generation, int) else None,
                    last_transition_time=str(c.get("lastTransitionTime") or "")[:64] or None,
                )
            )
        controller = parent.get("controllerName")
        out.append(
            HTTPRouteParentStatus(
                parent_ref=ref,
                controller_name=str(controller)[:253] if controller else None,
                conditions=copied,
            )
        )
    return out


def http_route_check(g: GatewayFacts, namespace: str) -> Check:
    """HTTPRouteAccepted, which Ready does not wait for: the route serves in the cluster either way."""
    if not g.api_served:
        return Check(
            HTTP_ROUTE_ACCEPTED,
            False,
            "GatewayAPINotInstalled",
            "spec.gateway is set but this cluster serves no HTTPRoute (gateway.networking.k8s.io/v1): no "
            "HTTPRoute was made. Install the Gateway API CRDs and the route gets one; it serves in the cluster "
            "meanwhile.",
            advisory=True,
        )
    if g.live is None:
        return Check(
            HTTP_ROUTE_ACCEPTED, None, "Pending", f'HTTPRoute "{g.name}" is being made.', advisory=True
        )
    parents = parents_of(g.live)
    if not parents:
        return Check(
            HTTP_ROUTE_ACCEPTED,
            None,
            "Pending",
            f'No Gateway controller has reported on HTTPRoute "{g.name}" yet.',
            advisory=True,
        )
    for parent in parents:
        for c in parent.conditions:
            if c.status != "True":
                where = _parent_name(parent.parent_ref, namespace)
                return Check(
                    HTTP_ROUTE_ACCEPTED,
                    False if c.status == "False" else None,
                    c.reason,
                    f"{where}: {c.type} is {c.status}: {c.message}",
                    advisory=True,
                )
        if {c.type for c in parent.conditions} != set(PARENT_CONDITIONS):
            where = _parent_name(parent.parent_ref, namespace)
            return Check(
                HTTP_ROUTE_ACCEPTED, None, "Pending", f"{where} has not reported yet.", advisory=True
            )
    names = ", ".join(_parent_name(p.parent_ref, namespace) for p in parents)
    return Check(
        HTTP_ROUTE_ACCEPTED,
        True,
        "Accepted",
        f'HTTPRoute "{g.name}" is accepted by {names}.',
        advisory=True,
    )


def route_status(
    f: RouteFacts, previous: Mapping[str, Any] | None, generation: int | None, now: str
) -> FallbackRouteStatus:
    gateway = f.gateway
    return FallbackRouteStatus(
        observed_generation=generation,
        endpoint=f.endpoint,
        primary=f.primary,
        cost=f.cost,
        http_route=(
            HTTPRouteStatus(name=gateway.name, parents=parents_of(gateway.live))
            if gateway is not None and gateway.live is not None
            else None
        ),
        conditions=conditions(route_checks(f), (previous or {}).get("conditions") or [], generation, now),
    )


# --- LLMModel -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    invalid: str | None = None
    served_by: tuple[str, ...] = ()
    file: str | None = None
    # The GGUF header: its condition (None when the operator reads no headers), and what it says.
    header: Check | None = None
    gguf: GGUFStatus | None = None
    context_size: int | None = None


def model_checks(f: ModelFacts) -> list[Check]:
    if f.invalid:
        return [invalid(f.invalid)]
    if f.served_by:
        checks = [Check("Served", True, "Served", f"Served by InferencePool {', '.join(f.served_by)}.")]
    else:
        checks = [Check("Served", True, "NotReferenced", "Valid; no InferencePool serves this model yet.")]
    if f.header is not None:
        checks.append(f.header)
    trained = f.gguf.trained_context if f.gguf is not None else 0
    if trained and f.context_size is not None:
        if f.context_size > trained:
            message = (
                f"spec.contextSize {f.context_size} is more than the {trained} tokens the model was trained for: "
                "llama.cpp runs it, but answers past the trained context degrade (lower contextSize, or use a "
                "model trained for a longer context)."
            )
            checks.append(Check("ContextFits", False, "ContextBeyondTraining", message, advisory=True))
        else:
            message = f"spec.contextSize {f.context_size} is within the trained context of {trained} tokens."
            checks.append(Check("ContextFits", True, "WithinTraining", message, advisory=True))
    return checks


def model_status(
    f: ModelFacts, previous: Mapping[str, Any] | None, generation: int | None, now: str
) -> LLMModelStatus:
    return LLMModelStatus(
        observed_generation=generation,
        served_by=list(f.served_by),
        file=f.file,
        gguf=f.gguf,
        conditions=conditions(model_checks(f), (previous or {}).get("conditions") or [], generation, now),
    )
