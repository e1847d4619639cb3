"""The egress proxy of the cloud hop: `fallback.proxyURL` (with credentials from the environment the rendered
Deployment fills from a Secret), else HTTPS_PROXY / HTTP_PROXY, with NO_PROXY matched as curl matches it. Pure:
the environment comes in. Local hops never use a proxy, and the cluster's own names never go through one.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from yarl import URL

# Never proxied, whatever NO_PROXY says: the cluster's own Service names.
CLUSTER_SUFFIXES: Final = (".svc", ".cluster.local")


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: https targets through a CONNECT tunnel (TLS inside, to the target), http ones in absolute
    form. `authorization` is the Proxy-Authorization header's value (Basic), if any."""

    host: str
    port: int
    authorization: str | None = None

    @property
    def url(self) -> str:
        """For messages: never the credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def password(self) -> str | None:
        """The password inside the Basic credentials (for log redaction)."""
        if self.authorization is None:
            return None
        decoded = base64.b64decode(self.authorization.removeprefix("Basic ")).decode("utf-8", "replace")
        return decoded.partition(":")[2] or None


class ProxyConfigError(ValueError):
    """A proxy URL the router cannot use; the message names it (without credentials)."""


def parse_proxy(url: str, username: str | None = None, password: str | None = None) -> Proxy:
    """A proxy from its URL (`http://[user:pass@]host[:port]`, a bare `host:port` taken as http), credentials
    given apart winning over those in the URL."""
    parsed = URL(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.host:
        raise ProxyConfigError(
            f"proxy {parsed.scheme}://{parsed.host or ''}: only http:// proxies are supported (the tunnel to an "
            "https target is TLS end to end all the same)"
        )
    user = username if username is not None else (unquote(parsed.raw_user) if parsed.raw_user else None)
    secret = (
        password if password is not None else (unquote(parsed.raw_password) if parsed.raw_password else None)
    )
    authorization = None
    if user is not None:
        token = base64.b64encode(f"{user}:{secret or ''}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    return Proxy(parsed.host, parsed.port or 80, authorization)


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name.lower()) or env.get(name.upper()) or ""


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY names `host` as curl reads it: `*` for every host; otherwise comma- (or space-) separated
    entries, each a domain that matches itself and its subdomains (a leading dot or `*.` is ignored), an IP
    address, or a CIDR range; an entry may end in `:port`, matching that port only."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.startswith("[") and "]" in entry:  # [v6]:port or [v6]
            name, _, rest = entry[1:].partition("]")
            wanted_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, _, wanted_port = entry.partition(":")
        if wanted_port and wanted_port != str(port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(
    url: str,
    env: Mapping[str, str],
    configured: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Proxy | None:
    """The proxy for a cloud base URL: `configured` (fallback.proxyURL), else HTTPS_PROXY or HTTP_PROXY by the
    URL's scheme (ALL_PROXY last), unless NO_PROXY names the host or it is one of the cluster's own names."""
    parsed = URL(url)
    host = (parsed.host or "").lower()
    if not host or host.endswith(CLUSTER_SUFFIXES):
        return None
    chosen = configured or _env(env, f"{parsed.scheme}_proxy") or _env(env, "all_proxy")
    if not chosen:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if bypassed(host, port, _env(env, "no_proxy")):
        return None
    return parse_proxy(chosen, username, password)
