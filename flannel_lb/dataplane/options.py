"""Knobs of the iptables rule layout (everything `build_ruleset` needs besides the plan)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

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
    # flannel's own UDP port (vxlan 8472, udp 8285; None for host-gw): its packets skip the dispatch chains
    overlay_udp_port: int | None = None
    # a dispatch chain with more entries is split into bucket chains of at most this many (0: never)
    bucket_size: int = 128
    # the filter FORWARD -> FLB-FORWARD (ctmark ACCEPT) jump: "always", or "auto": only while FORWARD could
    # drop flannel-lb's flows (policy DROP or other rules, seen in the kernel's read-back). It costs every
    # forwarded packet two rule evaluations (docs/benchmarks.md, throughput) where nothing needs it; "auto"
    # saves that but leaves a window (until the next verifying sync) when a firewall turns FORWARD to
    # DROP later, e.g. Docker starting after the agent. Safety first: "always" by default.
    forward_accept: Literal["auto", "always"] = "always"
    # how a new flow picks its backend: "random" (numgen/statistic), or "maglev" (nftables only): a
    # per-frontend Maglev table indexed by a seeded jhash of the 5-tuple, the same on every box
    balance: Literal["random", "maglev"] = "random"
    # [ha] shared overlay identity: the pair's flannel address. New connections to it are dropped: a
    # pod's packet of a flow this box has no entry for yet (the moment of a takeover) must not be taken
    # for a new connection to a local address and answered with a reset (docs/ha.md)
    shared_address: str | None = None

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
        if self.forward_accept not in ("auto", "always"):
            raise ValueError(f"forward_accept {self.forward_accept!r}: must be 'auto' or 'always'")
        if self.balance not in ("random", "maglev"):
            raise ValueError(f"balance {self.balance!r}: must be 'random' or 'maglev'")
        if self.bucket_size < 0:
            raise ValueError(f"bucket_size {self.bucket_size}: must be 0 (no buckets) or more")
        if self.shared_address is not None:
            ipaddress.IPv4Address(self.shared_address)  # ValueError names it
        if self.overlay_udp_port is not None and not 0 < self.overlay_udp_port < 65536:
            raise ValueError(f"overlay_udp_port {self.overlay_udp_port}: must be a UDP port (1-65535)")

    @property
    def mark_match(self) -> str:
        """`value/mask` for the connmark match and the CONNMARK target (as iptables-save prints it)."""
        return f"{self.mark:#x}/{self.mark:#x}"


# flannel's defaults (backend/vxlan: 8472, the Linux kernel's pre-IANA port; backend/udp: 8285;
# backend/wireguard: ListenPort 51820 for its IPv4 device)
OVERLAY_DEFAULT_PORTS = {"vxlan": 8472, "udp": 8285, "wireguard": 51820}


def overlay_udp_port(backend_type: str, port: int = 0) -> int | None:
    """The UDP port flannel's overlay uses for a network config's Backend (Type, Port; 0 = default), or
    None for backends that do not encapsulate in UDP on a fixed port (host-gw, ipip, ...)."""
    default = OVERLAY_DEFAULT_PORTS.get(backend_type)
    if default is None:
        return None
    return port if 0 < port < 65536 else default
