"""The pair's side of the flannel overlay, programmed by flannel-lb from the leases it already reads.

Two boxes of an HA pair are one flannel host (docs/ha.md, "The shared overlay identity"): the holder of
a reservation whose PublicIP floats with the VIPs and whose VtepMAC both boxes' `flannel.<VNI>` carry.
flanneld cannot run on both (each rewrites the lease's attributes, and the last writer wins), so the
pair runs none: flannel-lb puts on each box what flanneld would, for every other live lease:

* vxlan: device `flannel.<VNI>` (the reservation's MAC, local = this box's own underlay address,
  nolearning), address `<subnet IP>/32`; per lease a permanent neighbour (subnet IP -> VtepMAC), an FDB
  entry (VtepMAC -> PublicIP) and `route <subnet> via <subnet IP> dev flannel.<VNI> onlink`.
* host-gw: the pair's address on `lo`; per lease `route <subnet> via <PublicIP>` (protocol `PROTO`).

Both boxes hold the same state, so a failover writes nothing: not to etcd (flannel-lb stays read-only
there), not to the kernel. What this module owns is exactly its device's entries and the routes of its
protocol number; nothing else is read back as its own, nor changed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flannel_lb.decode.model import Lease, NetworkConfig
from flannel_lb.kernel.netns import RunError, output

PROTO = 252  # routing protocol number of flannel-lb's host-gw routes: how they are told from others'
VXLAN_PORT = 8472  # flannel's default when the network config names none (Linux's 4789 is not it)
VXLAN_MTU = 1450  # flannel: an underlay MTU of 1500 minus the 50 bytes of VXLAN


@dataclass(frozen=True, slots=True)
class Identity:
    """The reservation both boxes share, and where this box reaches the underlay."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    vtep_mac: str
    underlay: str  # the interface holding this box's own underlay address (and, when master, public_ip)

    @property
    def address(self) -> str:
        return str(self.subnet.network_address)


@dataclass(frozen=True, slots=True)
class Peer:
    """What one other flannel host's lease asks of this box."""

    subnet: str
    public_ip: str
    vtep_mac: str = ""  # vxlan only

    @property
    def subnet_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address)


@dataclass(frozen=True, slots=True)
class Desired:
    backend: str  # "vxlan" | "host-gw"
    vni: int
    port: int
    peers: tuple[Peer, ...]

    @property
    def device(self) -> str:
        return f"flannel.{self.vni}"


class OverlayError(RuntimeError):
    """The overlay could not be programmed (the kernel refused, or the backend is not supported)."""


def desired(network: NetworkConfig | None, leases: Iterable[Lease], me: Identity) -> Desired | None:
    """The state flanneld would keep on this box, or None when there is no network config yet."""
    if network is None or network.network is None:
        return None
    backend = network.backend_type
    if backend not in ("vxlan", "host-gw"):
        raise OverlayError(f"flannel backend {backend!r}: the shared identity is built for vxlan and host-gw")
    peers = []
    for lease in leases:
        if lease.subnet.overlaps(me.subnet) or lease.backend_type != backend:
            continue  # the reservation itself, or a lease flanneld would not program either
        if backend == "vxlan" and not lease.vtep_mac:
            continue
        peers.append(
            Peer(str(lease.subnet), str(lease.public_ip), lease.vtep_mac if backend == "vxlan" else "")
        )
    peers.sort(key=lambda p: ipaddress.IPv4Network(p.subnet))
    return Desired(backend, network.vni, network.port or VXLAN_PORT, tuple(peers))


class Overlay:
    """Keeps this box's overlay equal to `Desired`, through `ip -batch` and `bridge -batch` (in `netns`).

    Each `apply` reads back what it owns and sends only the difference, so it is cheap to call after
    every change of the leases and repairs anything someone removed.
    """

    def __init__(self, me: Identity, netns: str | None = None) -> None:
        self.me = me
        self.netns = netns

    def apply(self, want: Desired) -> list[str]:
        """Make the kernel hold `want`; returns the `ip`/`bridge` lines it ran (empty: in step)."""
        if want.backend == "vxlan":
            ip_lines, bridge_lines = self._vxlan(want)
        else:
            ip_lines, bridge_lines = self._host_gw(want), []
        self._batch("ip", ip_lines)
        self._batch("bridge", bridge_lines)
        return [*ip_lines, *(f"bridge {line}" for line in bridge_lines)]

    # --- vxlan ----------------------------------------------------------------------------------

    def _vxlan(self, want: Desired) -> tuple[list[str], list[str]]:
        dev, me = want.device, self.me
        link = self._link(dev)
        ip_lines: list[str] = []
        if link is None or link.get("address") != me.vtep_mac:
            local = self._own_address(me.underlay)
            if link is not None:
                ip_lines.append(f"link del {dev}")
            ip_lines += [
                f"link add {dev} address {me.vtep_mac} mtu {VXLAN_MTU} type vxlan id {want.vni}"
                f" local {local} dev {me.underlay} dstport {want.port} nolearning",
            ]
            link = None
        if link is None or f"{me.address}/32" not in self._addresses(dev):
            ip_lines.append(f"addr replace {me.address}/32 dev {dev}")
        flags = link.get("flags") if link is not None else None
        if not isinstance(flags, list) or "UP" not in flags:
            ip_lines.append(f"link set {dev} up")
        have_routes = {} if link is None else self._routes(["dev", dev])
        have_neigh = {} if link is None else self._neighbours(dev)
        have_fdb = set() if link is None else self._fdb(dev)
        wanted = {p.subnet: p for p in want.peers}
        bridge_lines: list[str] = []
        for p in want.peers:
            if have_neigh.get(p.subnet_ip) != p.vtep_mac:
                ip_lines.append(f"neigh replace {p.subnet_ip} lladdr {p.vtep_mac} dev {dev} nud permanent")
            if have_routes.get(p.subnet) != p.subnet_ip:
                ip_lines.append(f"route replace {p.subnet} via {p.subnet_ip} dev {dev} onlink")
            if (p.vtep_mac, p.public_ip) not in have_fdb:
                bridge_lines.append(f"fdb replace {p.vtep_mac} dev {dev} dst {p.public_ip} self permanent")
        for subnet in sorted(have_routes.keys() - wanted.keys()):
            ip_lines.append(f"route del {subnet} dev {dev}")
        for ip in sorted(have_neigh.keys() - {p.subnet_ip for p in want.peers}):
            ip_lines.append(f"neigh del {ip} dev {dev}")
        for mac, dst in sorted(have_fdb - {(p.vtep_mac, p.public_ip) for p in want.peers}):
            bridge_lines.append(f"fdb del {mac} dev {dev} dst {dst} self")
        return ip_lines, bridge_lines

    # --- host-gw --------------------------------------------------------------------------------

    def _host_gw(self, want: Desired) -> list[str]:
        lines: list[str] = []
        if f"{self.me.address}/32" not in self._addresses("lo"):
            lines.append(f"addr replace {self.me.address}/32 dev lo")
        have = self._routes(["proto", str(PROTO)])
        for p in want.peers:
            if have.get(p.subnet) != p.public_ip:
                lines.append(
                    f"route replace {p.subnet} via {p.public_ip} dev {self.me.underlay} proto {PROTO}"
                )
        for subnet in sorted(have.keys() - {p.subnet for p in want.peers}):
            lines.append(f"route del {subnet} proto {PROTO}")
        return lines

    # --- the kernel -----------------------------------------------------------------------------

    def _json(self, argv: Sequence[str]) -> list[dict[str, object]]:
        text = output(argv, self.netns, timeout=30).strip()
        doc = json.loads(text) if text else []
        return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []

    def _link(self, dev: str) -> dict[str, object] | None:
        try:
            links = self._json(["ip", "-j", "link", "show", "dev", dev])
        except RunError:  # `ip` says "does not exist" (exit 1): no device yet
            return None
        return links[0] if links else None

    def _addresses(self, dev: str) -> set[str]:
        out = set()
        for link in self._json(["ip", "-j", "-4", "addr", "show", "dev", dev]):
            info = link.get("addr_info")
            for a in info if isinstance(info, list) else []:
                if isinstance(a, dict):
                    out.add(f"{a.get('local')}/{a.get('prefixlen')}")
        return out

    def _own_address(self, dev: str) -> str:
        """This box's own address on the underlay: the first that is not the floating PublicIP."""
        for address in sorted(self._addresses(dev)):
            ip = address.split("/")[0]
            if ip != self.me.public_ip:
                return ip
        raise OverlayError(f"no IPv4 address of this box's own on {dev} (the vxlan's local address)")

    def _routes(self, selector: list[str]) -> dict[str, str]:
        routes = self._json(["ip", "-j", "-4", "route", "show", *selector])
        return {str(r["dst"]): str(r.get("gateway", "")) for r in routes if "/" in str(r.get("dst", ""))}

    def _neighbours(self, dev: str) -> dict[str, str]:
        return {
            str(n["dst"]): str(n.get("lladdr", ""))
            for n in self._json(["ip", "-j", "-4", "neigh", "show", "dev", dev])
            if "dst" in n
        }

    def _fdb(self, dev: str) -> set[tuple[str, str]]:
        return {
            (str(f["mac"]), str(f["dst"]))
            for f in self._json(["bridge", "-j", "fdb", "show", "dev", dev])
            if "mac" in f and "dst" in f
        }

    def _batch(self, tool: str, lines: list[str]) -> None:
        if lines:
            try:
                output([tool, "-batch", "-"], self.netns, input="\n".join(lines) + "\n", timeout=30)
            except RunError as e:
                raise OverlayError(f"{tool} -batch refused the overlay update: {e}") from None
