"""Kubeconfig files for the harness: the admin one (client certificate) and token ones (to act as a ServiceAccount)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

CONTEXT_NAME = "localai-operator-dev"


def admin_kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    return _kubeconfig(
        server, ca_pem, {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}, "admin"
    )


def token_kubeconfig(server: str, ca_pem: bytes, token: str, user: str = "service-account") -> dict[str, Any]:
    """A kubeconfig acting with a bearer token, e.g. from the TokenRequest API (`kubectl create token SA`)."""
    return _kubeconfig(server, ca_pem, {"token": token}, user)


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    # Created owner-only before the secret is written into it. JSON is YAML, and keeps this package importable
    # (for the binaries build) with the standard library alone.
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _kubeconfig(server: str, ca_pem: bytes, user: dict[str, str], user_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CONTEXT_NAME, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": user_name}}],
        "current-context": CONTEXT_NAME,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
