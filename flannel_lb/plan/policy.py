"""Who may claim the LB's addresses: the guard against Service hijacking (CVE-2020-8554 class).

Anyone who can create a Service can set `spec.externalIPs`, and so take over traffic to an LB
address:port. The policy limits that: which namespaces may claim LB addresses, optionally only
Services carrying an opt-in annotation, and which ports each address may serve.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from flannel_lb.decode.model import Service
from flannel_lb.untrusted import ascii_decimal

PortRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ExposurePolicy:
    namespaces: tuple[str, ...] = ("*",)  # glob patterns; the default lets every namespace claim
    annotation: str = ""  # when set, a Service must carry `<annotation>: "true"` to be exposed
    ports: Mapping[str, PortRanges] = field(default_factory=dict)  # address (or "*") -> allowed ports

    def service_denial(self, svc: Service) -> str | None:
        """Why this Service may not claim any LB address, or None."""
        if not any(fnmatch.fnmatchcase(svc.namespace, pattern) for pattern in self.namespaces):
            allowed = ", ".join(self.namespaces) or "none"
            return f"namespace {svc.namespace!r} may not claim LB addresses ([policy] namespaces: {allowed})"
        if self.annotation and svc.annotations.get(self.annotation) != "true":
            return f'it lacks the annotation {self.annotation}: "true" ([policy] annotation)'
        return None

    def port_denial(self, address: str, port: int) -> str | None:
        """Why `address` may not serve `port`, or None."""
        ranges = self.ports.get(address, self.ports.get("*"))
        if ranges is None or any(lo <= port <= hi for lo, hi in ranges):
            return None
        allowed = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges) or "none"
        return f"port {port} is not allowed on {address} ([policy.ports] allows {allowed})"


def parse_port_ranges(items: list[object]) -> PortRanges:
    """["80", "8000-8100", 53] -> ((80, 80), (8000, 8100), (53, 53)); ValueError on anything else."""
    out = []
    for item in items:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str):
            raise ValueError(f'{item!r} is not a port or a range like "8000-8100"')
        lo_s, _, hi_s = text.partition("-")
        lo, hi = ascii_decimal(lo_s.strip()), ascii_decimal((hi_s or lo_s).strip())
        if lo is None or hi is None:
            raise ValueError(f'{item!r} is not a port or a range like "8000-8100"')
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"{item!r}: ports run from 1 to 65535, low to high")
        out.append((lo, hi))
    return tuple(out)
