"""The flannel overlay, programmed the way flanneld (>= v0.9) programs it, with real kernel devices.

There is no flanneld in the lab: this module plays it for every host (nodes and the LB). What it
writes to etcd (network config, lease JSON) and what it puts on a host match etcd-formats.md §1:

* vxlan: device `flannel.<VNI>` (UDP 8472, nolearning, local = the host's kubernetes-net IP, MTU 1450),
  address `<own subnet IP>/32`, and per remote lease a permanent neighbour (subnet IP -> VtepMAC),
  an FDB entry (VtepMAC -> PublicIP) and `route <subnet> via <subnet IP> dev flannel.1 onlink`.
* host-gw: no device; per remote lease `route <subnet> via <PublicIP>`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from flannel_lb.lab import objects
from flannel_lb.lab.netns import Namespaces
from flannel_lb.lab.topology import batch

Backend = Literal["vxlan", "host-gw"]
BACKENDS: tuple[Backend, ...] = ("vxlan", "host-gw")

NETWORK = ipaddress.IPv4Network("10.246.0.0/16")
SUBNET_LEN = 24
ETCD_PREFIX = "/coreos.com/network"
CONFIG_KEY = f"{ETCD_PREFIX}/config"
SUBNETS_PREFIX = f"{ETCD_PREFIX}/subnets/"
LEASE_TTL = 24 * 3600  # flannel's hard-coded subnetTTL
VNI = 1
VXLAN_PORT = 8472
VXLAN_MTU = 1450  # flannel: underlay MTU 1500 minus 50 bytes of VXLAN encapsulation
# The seed's leases: the LB got 10.246.90.0/24, the nginx pod lived in 10.246.92.0/24, a third was .55.
SEED_SUBNETS = {"loadbalancer": 90, "node-1": 92, "node-2": 55}


def vxlan_dev(vni: int = VNI) -> str:
    return f"flannel.{vni}"


@dataclass(frozen=True, slots=True)
class SubnetLease:
    """One host's flannel lease and how it is realised on that host."""

    host: str
    subnet: str  # "10.246.92.0/24"
    public_ip: str
    ext_dev: str  # the host interface that holds public_ip
    backend: Backend
    vni: int = VNI
    vtep_mac: str = ""
    lease_id: int = 0  # the etcd lease the key is attached to (0: none)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def subnet_ip(self) -> str:
        """The subnet's first address: the flannel.1 address and the vxlan route's next hop."""
        return str(self.network.network_address)

    @property
    def gateway(self) -> str:
        """The first host address: cni0 on a node, the pods' default gateway."""
        return str(self.network.network_address + 1)

    @property
    def key(self) -> str:
        ip, length = self.subnet.split("/")
        return f"{SUBNETS_PREFIX}{ip}-{length}"

    def value(self) -> bytes:
        return objects.lease(self.public_ip, self.vtep_mac, backend=self.backend, vni=self.vni)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SubnetLease:
        return cls(**doc)


def network_config(backend: Backend, vni: int = VNI) -> bytes:
    be: dict[str, Any] = {"Type": backend}
    if backend == "vxlan":
        be["VNI"] = vni
    doc = {"Network": str(NETWORK), "SubnetLen": SUBNET_LEN, "Backend": be}
    return json.dumps(doc, separators=(",", ":")).encode()


def allocate_subnets(hosts: list[str]) -> dict[str, str]:
    """The seed's subnets where the seed had them, then the lowest free ones (flannel skips the first)."""
    taken = {SEED_SUBNETS[h] for h in hosts if h in SEED_SUBNETS}
    free = (i for i in range(1, 256) if i not in taken)
    out: dict[str, str] = {}
    for h in hosts:
        third = SEED_SUBNETS[h] if h in SEED_SUBNETS else next(free)
        out[h] = str(ipaddress.IPv4Network((int(NETWORK.network_address) + (third << 8), SUBNET_LEN)))
    return out


def vtep_mac(public_ip: str) -> str:
    """A stable, locally administered unicast MAC derived from the host's IP (easier to read in dumps)."""
    octets = ipaddress.IPv4Address(public_ip).packed
    return ":".join(f"{b:02x}" for b in (0x0E, 0xF1, *octets))


def _peer_lines(own: SubnetLease, peer: SubnetLease, add: bool) -> tuple[list[str], list[str]]:
    """(`ip` lines, `bridge` lines) that add or remove what flanneld installs for one remote lease."""
    if own.backend == "host-gw":
        if add:
            return [f"route replace {peer.subnet} via {peer.public_ip} dev {own.ext_dev}"], []
        return [f"route del {peer.subnet} via {peer.public_ip} dev {own.ext_dev}"], []
    dev = vxlan_dev(own.vni)
    if add:
        ip_lines = [
            f"neigh replace {peer.subnet_ip} lladdr {peer.vtep_mac} dev {dev} nud permanent",
            f"route replace {peer.subnet} via {peer.subnet_ip} dev {dev} onlink",
        ]
        return ip_lines, [f"fdb replace {peer.vtep_mac} dev {dev} dst {peer.public_ip} self permanent"]
    ip_lines = [f"route del {peer.subnet} dev {dev}", f"neigh del {peer.subnet_ip} dev {dev}"]
    return ip_lines, [f"fdb del {peer.vtep_mac} dev {dev} dst {peer.public_ip} self"]


def setup(ns: Namespaces, own: SubnetLease, peers: list[SubnetLease]) -> None:
    """What flanneld does on start: its own device (vxlan), then one set of entries per remote lease."""
    ip_lines: list[str] = []
    bridge_lines: list[str] = []
    if own.backend == "vxlan":
        dev = vxlan_dev(own.vni)
        ip_lines += [
            f"link add {dev} address {own.vtep_mac} mtu {VXLAN_MTU} type vxlan id {own.vni}"
            f" local {own.public_ip} dev {own.ext_dev} dstport {VXLAN_PORT} nolearning",
            f"addr add {own.subnet_ip}/32 dev {dev}",
            f"link set {dev} up",
        ]
    for peer in peers:
        if peer.host != own.host and peer.backend == own.backend:
            more_ip, more_bridge = _peer_lines(own, peer, add=True)
            ip_lines += more_ip
            bridge_lines += more_bridge
    batch(ns, own.host, ip_lines)
    batch(ns, own.host, bridge_lines, tool="bridge")


def forget(ns: Namespaces, own: SubnetLease, peer: SubnetLease) -> None:
    """What flanneld does when a remote lease disappears from etcd (EventRemoved)."""
    ip_lines, bridge_lines = _peer_lines(own, peer, add=False)
    batch(ns, own.host, bridge_lines, tool="bridge")
    batch(ns, own.host, ip_lines)


def mtu(backend: Backend) -> int:
    """The MTU flannel hands to its CNI plugin for cni0 and pod interfaces."""
    return VXLAN_MTU if backend == "vxlan" else 1500
