"""Knobs of the iptables rule layout (everything `build_ruleset` needs besides the plan)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# kube-proxy marks packets with 0x4000 (masquerade) and 0x8000 (drop); Calico takes 0xffff0000, Cilium
# 0x0f00 and Weave 0x20000/0x40000. flannel-lb marks the *connection* (ctmark), a separate space from
# the packet mark, but keeping clear of those bits avoids surprises with CONNMARK --save/--restore-mark.
DEFAULT_MARK = 0x2000

MAX_PREFIX = 8  # chain names are limited to 28 characters; the longest suffix is 20 (SEP- + 16)


@dataclass(frozen=True, slots=True)
class Options:
    """How flannel-lb's chains look; a change here renames/rewrites the affected chains on the next sync."""

    prefix: str = "FLB-"
    mark: int = DEFAULT_MARK  # one connmark bit: set on every connection flannel-lb DNATs
    masquerade: bool = True  # False leaves replies to the pods' default route (the seed's failure)
    random_fully: bool = True  # fully randomised source ports (avoids SNAT port-collision drops)
    snat_pool: tuple[str, ...] = ()  # SNAT to these IPv4 addresses instead of MASQUERADE
    reject_empty: bool = True  # refuse connections to frontends without backends (else: time out)
    comments: bool = True  # `-m comment` on dispatch and frontend rules (readable iptables-save)

    def __post_init__(self) -> None:
        if not (1 <= len(self.prefix) <= MAX_PREFIX) or not all(
            c.isalnum() or c in "-_" for c in self.prefix
        ):
            raise ValueError(f"chain prefix {self.prefix!r}: 1 to {MAX_PREFIX} letters, digits, '-' or '_'")
        if not (0 < self.mark < 2**32) or self.mark & (self.mark - 1):
            raise ValueError(f"mark {self.mark:#x}: must be a single bit of a 32-bit mark")
        for a in self.snat_pool:
            if not isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address):
                raise ValueError(f"snat_pool address {a!r} is not IPv4")
        if len(set(self.snat_pool)) != len(self.snat_pool):
            raise ValueError("snat_pool has duplicate addresses")

    @property
    def mark_match(self) -> str:
        """`value/mask` for the connmark match and the CONNMARK target (as iptables-save prints it)."""
        return f"{self.mark:#x}/{self.mark:#x}"
