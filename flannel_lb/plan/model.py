"""The desired state: what the load balancer should do, as plain data.

A `Plan` is computed by pure functions (`flannel_lb.plan.compute`) from the cluster records and read by
everything that acts or reports: the data plane renders it into rules, the CLI prints it.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from flannel_lb.decode.model import Problem


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    ip: str
    port: int
    node: str = ""


class Exclusion(enum.Enum):
    """Why an endpoint is left out, as a type: its value is the `excluded_endpoints{reason}` label.

    The planner sets it next to the human text (which carries the details), so the metric counts by
    what the planner decided, not by words found in a message.
    """

    NOT_READY = "not_ready"
    TERMINATING = "terminating"
    ADDRESS = "address"  # not an IPv4 address (or an IPv6/FQDN slice)
    PORT = "port"  # no usable endpoint port for the service port
    NO_NETWORK = "no_network"  # the flannel network is unknown
    OUTSIDE_NETWORK = "outside_network"
    NO_LEASE = "no_lease"  # no live lease covers it (or its lease expired)
    NO_PATH = "no_path"  # netcheck: no kernel path to its lease
    HEALTH = "health_failing"  # the LB's own checks ([health]) fail, while others of its frontend pass
    NODE_PATH = "node_path_failing"  # no backend on its node's lease answers the LB's checks ([health])
    LEASE_OVERLAP = "lease_overlap"  # two leases cover it: neither is trusted there
    LEASE_ADDRESS = "lease_address"  # the network or broadcast address of its lease
    LB_ADDRESS = "lb_address"  # one of the LB's own addresses
    OTHER = "other"  # a saved (holdover) entry whose kind is unknown


@dataclass(frozen=True, slots=True)
class Excluded:
    ip: str
    reason: str  # for humans, with the details
    port: int | None = None
    node: str = ""
    kind: Exclusion = field(kw_only=True)  # required: every exclusion says what kind it is


@dataclass(frozen=True, slots=True)
class Affinity:
    mode: str  # "ClientIP"
    timeout: int  # seconds


@dataclass(frozen=True, slots=True)
class Frontend:
    """One exposed address:port/protocol and the pod endpoints it balances over."""

    address: str
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"
    service: str  # "namespace/name"
    port_name: str = ""
    affinity: Affinity | None = None
    backends: tuple[Backend, ...] = ()
    excluded: tuple[Excluded, ...] = ()
    kind: str = "external"  # "external" (an LB address) or "cluster-ip" (reachable from the LB itself)
    check_path: str = ""  # [health]: GET this path on each backend; "" = a TCP connect
    # loadBalancerSourceRanges: the IPv4 client networks admitted (disjoint, sorted); None: everyone.
    # () admits nobody: the Service restricts its clients, but to none an IPv4 frontend can admit.
    source_ranges: tuple[str, ...] | None = None
    # (address, port, protocol), computed once: every sync looks up every frontend by it, at 10k
    # frontends building the tuple on each access was a third of a sync's Python time.
    key: tuple[str, int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port, self.protocol))

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"

    def fingerprint(self) -> str:
        """Stable identity of this frontend's rules: equal fingerprints mean identical chains."""
        h = hashlib.sha256(
            repr((self.key, self.service, self.port_name, self.affinity, self.backends, self.kind)).encode()
        )
        return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Conflict:
    address: str
    port: int
    protocol: str
    winner: str
    loser: str
    reason: str


@dataclass(frozen=True, slots=True)
class Denial:
    """A claim on an LB address the exposure policy refused (a possible hijack attempt)."""

    service: str
    address: str
    port: int
    protocol: str
    reason: str


@dataclass(frozen=True, slots=True)
class ServiceVerdict:
    """Why a Service is, or is not, exposed on the LB (for `explain`)."""

    service: str
    exposed: bool
    reason: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    revision: int
    frontends: tuple[Frontend, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    problems: tuple[Problem, ...] = ()
    verdicts: dict[str, ServiceVerdict] = field(default_factory=dict)
    denied: tuple[Denial, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "frontends": [frontend_json(f) for f in self.frontends],
            "conflicts": [
                {
                    "address": c.address,
                    "port": c.port,
                    "protocol": c.protocol,
                    "winner": c.winner,
                    "loser": c.loser,
                    "reason": c.reason,
                }
                for c in self.conflicts
            ],
            "problems": [{"key": p.key, "kind": p.kind, "reason": p.reason} for p in self.problems],
            "denied": [
                {
                    "service": d.service,
                    "address": d.address,
                    "port": d.port,
                    "protocol": d.protocol,
                    "reason": d.reason,
                }
                for d in self.denied
            ],
        }


def frontend_json(f: Frontend) -> dict[str, Any]:
    return {
        "address": f.address,
        "port": f.port,
        "protocol": f.protocol,
        "service": f.service,
        "port_name": f.port_name,
        "kind": f.kind,
        "source_ranges": None if f.source_ranges is None else list(f.source_ranges),
        "affinity": None if f.affinity is None else {"mode": f.affinity.mode, "timeout": f.affinity.timeout},
        "backends": [{"ip": b.ip, "port": b.port, "node": b.node} for b in f.backends],
        "excluded": [
            {"ip": e.ip, "port": e.port, "node": e.node, "reason": e.reason, "kind": e.kind.value}
            for e in f.excluded
        ],
    }
