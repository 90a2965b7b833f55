"""The cluster as flannel-lb sees it: typed, immutable records decoded from etcd.

Everything downstream (the plan, the data plane, the CLI) works on these records, never on raw
etcd values, so the decoders are the only place that knows about protobuf, JSON or key layouts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default for sessionAffinity ClientIP
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes' MaxClientIPServiceAffinitySeconds


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str  # a number, or the name of a container port resolved per endpoint
    node_port: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    uid: str = ""
    created: float | None = None  # creationTimestamp as epoch seconds; None sorts after every real time
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ip: str = ""
    ingress_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    health_check_path: str = ""  # [health]: an HTTP GET of this path checks its backends (TCP: a connect)
    # loadBalancerSourceRanges, canonical (IPv4 and IPv6); None: every client is admitted
    source_ranges: tuple[str, ...] | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return not self.cluster_ips or self.cluster_ips[0] == "None"


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int | None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """One EndpointSlice, or one subset of a legacy Endpoints object: endpoints sharing one port list."""

    namespace: str
    service: str
    source: str  # e.g. "EndpointSlice default/nginx-abc12" or "Endpoints default/nginx[0]"
    address_type: str = "IPv4"
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str
    address: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    pod_cidrs: tuple[str, ...] = ()
    addresses: tuple[NodeAddress, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False

    def address_of(self, kind: str) -> str:
        return next((a.address for a in self.addresses if a.type == kind), "")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """flannel's `<prefix>/config`, with the defaults flannel's own code applies."""

    network: ipaddress.IPv4Network | None
    subnet_len: int = 24
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    backend_type: str = "udp"
    vni: int = 1
    port: int = 0
    ipv6_network: ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A flannel subnet lease: which node (PublicIP) owns which pod subnet, and how to reach it."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str = "udp"
    subnet6: ipaddress.IPv6Network | None = None
    public_ipv6: ipaddress.IPv6Address | None = None
    vtep_mac: str = ""  # vxlan
    vni: int | None = None  # vxlan (in BackendData since flannel 0.14)
    wg_public_key: str = ""  # wireguard
    port: int | None = None  # wireguard listen port
    expires: float | None = None  # epoch seconds; None = no expiry known (v3 lease, reservation)
    node: str = ""  # node name, when known (kube subnet manager, or matched via Node addresses)
    key: str = ""  # the etcd key (or Node key) it came from


@dataclass(frozen=True, slots=True)
class Problem:
    """A piece of input flannel-lb could not use, with where it came from and why."""

    key: str
    reason: str
    kind: str = "decode"  # a short metric label: decode, encrypted, invalid, lease, config, ...
