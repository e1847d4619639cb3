"""Whether the operator needs the kubernetes client library to log in, decided before Kopf is imported.

Only a kubeconfig whose user runs an exec plugin or an auth provider (EKS, GKE, OIDC) needs it; the in-cluster
ServiceAccount and plain kubeconfigs do not. Kopf imports that library whenever it is installed (dev and test
environments have it), which costs the operator ~10 MiB and a third of a second at every start: where it is not
needed, the operator runs as its image does, without it.
"""

from __future__ import annotations

import os
import sys

import yaml


def needs_client_library() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        return False
    paths = [p for p in os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep) if p]
    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as file:
                config = yaml.safe_load(file) or {}
        except (OSError, yaml.YAMLError):
            continue
        if any(
            "exec" in (u.get("user") or {}) or "auth-provider" in (u.get("user") or {})
            for u in config.get("users") or []
            if isinstance(u, dict)
        ):
            return True
    return False


def leave_out_the_client_library() -> None:
    """Keeps `import kubernetes` from loading it, unless login needs it; call before importing Kopf."""
    if "kubernetes" not in sys.modules and not needs_client_library():
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # the import system's "not available"
