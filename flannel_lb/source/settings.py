"""How to reach etcd: endpoints, TLS files and credentials (built by the config loader)."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

DEFAULT_PORT = 2379


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # bare host; IPv6 without brackets
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        return self.url


def parse_endpoint(url: str) -> Endpoint:
    """Parse `http(s)://host[:port]` (a bare `host[:port]` means http); the default port is 2379."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"etcd endpoint {url!r}: must not have a path or query")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:  # urlsplit raises on a bad port only when asked for it
        raise ValueError(f"etcd endpoint {url!r}: {exc}") from None
    return Endpoint(scheme, parts.hostname, port)


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Connection settings shared by the v3 (gRPC) and v2 (HTTP) clients."""

    endpoints: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0  # per request; also bounds how long a hung etcd can stall a (re)list page
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            raise TypeError("endpoints must be a sequence of URLs, not one string")
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        eps = self.parsed_endpoints()
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if any(ep.tls for ep in eps) and self.ca_file is None:
            # etcd3 0.12.0 only builds a TLS channel when given a CA bundle.
            raise ValueError("https endpoints need ca_file")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read {path}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    def parsed_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(parse_endpoint(u) for u in self.endpoints)
