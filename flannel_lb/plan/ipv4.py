"""IPv4 addresses as integers: the hot paths check 100k endpoint addresses per full sync at 10k services,
where `ipaddress` objects cost many times what `inet_pton` does (docs/benchmarks.md)."""

from __future__ import annotations

import socket


def ipv4_int(ip: str) -> int | None:
    """A dotted-quad IPv4 address as an integer; None if `ip` is anything else (inet_pton is as
    strict as `ipaddress`: no shorthand, no leading zeros, no spaces)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError, TypeError):
        return None
