"""The seed lab's machines and wires, rebuilt as network namespaces on one host.

Layout (every name below is `<prefix><short>`; nothing touches the root namespace)::

    client        eth0 192.168.121.1/24 ─┐
                                         ├─ br-infra ┐
    loadbalancer  eth0 192.168.121.201/24┘           │   (both bridges live in the
                  eth1 10.245.1.142/24  ─┐           ├── `switch` namespace)
    master        eth0 10.245.1.2/24    ─┼─ br-kube ─┘
    node-N        eth0 10.245.1.(2+N)/24─┘

* client: only its /24; it has no route to pods, nodes or the kubernetes net (the seed's laptop).
* loadbalancer: two legs like the seed's VM, default route via 192.168.121.1 (the seed's eth0 default,
  metric 100), ip_forward=1, strict rp_filter like the seed's CentOS.
* master: etcd on 10.245.1.2:4379; no default route.
* nodes: ip_forward=1, default route via 10.245.1.1, the kubernetes net's upstream gateway, which
  deliberately exists nowhere in the lab. A pod reply to 192.168.121.1 that did not come through the
  LB's MASQUERADE therefore leaves the node towards a gateway that never answers ARP and is dropped:
  the seed's "DNAT alone times out". rp_filter is loose (2) on nodes so the DNATed request still
  reaches the pod; it is the reply that is lost, as in the seed's analysis.

IPv6 is switched off in every lab namespace: no router solicitations or DAD noise on the bridges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from flannel_lb.lab.netns import Namespaces, delete_namespace

Role = Literal["client", "loadbalancer", "master", "node"]

INFRA_NET = ipaddress.IPv4Network("192.168.121.0/24")
KUBE_NET = ipaddress.IPv4Network("10.245.1.0/24")
CLIENT_IP = "192.168.121.1"
LB_INFRA_IP = "192.168.121.201"
LB_KUBE_IP = "10.245.1.142"
MASTER_IP = "10.245.1.2"
KUBE_GATEWAY = "10.245.1.1"  # never assigned: the black hole behind every node's default route
ETCD_CLIENT_PORT = 4379
ETCD_PEER_PORT = 4380
MAX_NODES = 100  # 10.245.1.3 .. 10.245.1.102, clear of the LB's .142

SWITCH = "switch"
BRIDGES = {"infra": "br-infra", "kube": "br-kube"}


@dataclass(frozen=True, slots=True)
class Nic:
    """One host interface and the switch port it is cabled to."""

    name: str
    net: Literal["infra", "kube"]
    address: str  # with prefix length, e.g. "10.245.1.3/24"
    port: str  # interface name of the other end, inside the switch namespace

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True, slots=True)
class Host:
    name: str  # also the namespace's short name
    role: Role
    nics: tuple[Nic, ...]
    default_via: str | None
    forwarding: bool
    rp_filter: int

    @property
    def kube_nic(self) -> Nic | None:
        return next((n for n in self.nics if n.net == "kube"), None)

    @property
    def kube_ip(self) -> str | None:
        nic = self.kube_nic
        return nic.ip if nic else None


@dataclass(frozen=True, slots=True)
class Topology:
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in the lab (hosts: {', '.join(h.name for h in self.hosts)})")

    @property
    def nodes(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == "node")


def node_name(i: int) -> str:
    return f"node-{i}"


def plan(nodes: int) -> Topology:
    """The hosts of a lab with `nodes` worker nodes (pure; nothing is created)."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be 1..{MAX_NODES}, got {nodes}")
    infra, kube = INFRA_NET.prefixlen, KUBE_NET.prefixlen
    hosts = [
        Host("client", "client", (Nic("eth0", "infra", f"{CLIENT_IP}/{infra}", "i-client"),), None, False, 2),
        Host(
            "loadbalancer",
            "loadbalancer",
            (
                Nic("eth0", "infra", f"{LB_INFRA_IP}/{infra}", "i-lb"),
                Nic("eth1", "kube", f"{LB_KUBE_IP}/{kube}", "k-lb"),
            ),
            CLIENT_IP,
            True,
            1,
        ),
        Host("master", "master", (Nic("eth0", "kube", f"{MASTER_IP}/{kube}", "k-master"),), None, False, 2),
    ]
    for i in range(1, nodes + 1):
        ip = KUBE_NET.network_address + 2 + i
        nic = Nic("eth0", "kube", f"{ip}/{kube}", f"k-n{i}")
        hosts.append(Host(node_name(i), "node", (nic,), KUBE_GATEWAY, True, 2))
    return Topology(tuple(hosts))


def batch(ns: Namespaces, short: str, lines: Iterable[str], tool: str = "ip") -> None:
    """Run many `ip` (or `bridge`) commands in one process: one fork instead of dozens per host."""
    text = "".join(f"{line}\n" for line in lines)
    if text:
        ns.run(short, [tool, "-batch", "-"], input=text)


def sysctls(ns: Namespaces, short: str, values: dict[str, str]) -> None:
    """Per-namespace sysctls in one `sysctl` call (these keys are per network namespace)."""
    ns.run(short, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])


def build(ns: Namespaces, topo: Topology) -> None:
    """Create the switch, every host namespace, their cabling, addresses and routes."""
    ns.add(SWITCH)
    sysctls(ns, SWITCH, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
    batch(ns, SWITCH, [f"link add {br} type bridge" for br in BRIDGES.values()])
    batch(ns, SWITCH, [f"link set {br} up" for br in BRIDGES.values()])
    for host in topo.hosts:
        ns.add(host.name)
        sysctls(
            ns,
            host.name,
            {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                # `all` and `default` both: the kernel uses max(all, interface) for rp_filter.
                "net.ipv4.conf.all.rp_filter": str(host.rp_filter),
                "net.ipv4.conf.default.rp_filter": str(host.rp_filter),
                "net.ipv4.ip_forward": "1" if host.forwarding else "0",
            },
        )
        for nic in host.nics:
            ns.veth(host.name, nic.name, SWITCH, nic.port)
        batch(ns, SWITCH, [f"link set {nic.port} master {BRIDGES[nic.net]}" for nic in host.nics])
        lines = [f"addr add {nic.address} dev {nic.name}" for nic in host.nics]
        if host.default_via:
            lines.append(f"route add default via {host.default_via}")
        batch(ns, host.name, lines)


class LabNamespaces(Namespaces):
    """`Namespaces` that a later process (a CLI verb) can re-open by name, and shrink one at a time."""

    def attach(self, short: str) -> str:
        """Adopt an existing namespace `<prefix><short>` without creating it."""
        name = self.prefix + short
        self._names[short] = name
        return name

    def has(self, short: str) -> bool:
        return short in self._names

    def remove(self, short: str) -> None:
        """Kill the namespace's processes and delete it (a deleted pod)."""
        name = self._names.pop(short, self.prefix + short)
        delete_namespace(name)
