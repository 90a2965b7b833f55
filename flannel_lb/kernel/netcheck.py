"""Is the kernel path to each flannel lease in place, the way that lease's backend needs it?

A lease in etcd only says a node *should* be reachable; flanneld on this host still has to program
the device, routes, neighbours and FDB entries (etcd-formats.md §1.6). Until it has, DNATing to a
pod behind that lease blackholes the connection, so the agent admits endpoints only behind leases
whose path checks out. Everything here is read-only: one netlink dump per call, nothing written.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from pyroute2 import netns as pyroute2_netns

from flannel_lb.decode.model import Lease, NetworkConfig

log = structlog.get_logger(__name__)

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
RTN_NAMES = {2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}

_NLMSGHDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=B3xiHBB")

UDP_DEVICE = "flannel0"
WIREGUARD_DEVICE = "flannel-wg"
CHECKED_BACKENDS = ("udp", "vxlan", "host-gw", "wireguard")


def device_for(backend: str, vni: int = 1) -> str | None:
    """The device flanneld creates for `backend` (None: host-gw and unknown backends have none)."""
    if backend == "vxlan":
        return f"flannel.{vni}"
    if backend == "udp":
        return UDP_DEVICE
    if backend == "wireguard":
        return WIREGUARD_DEVICE
    return None


# --- one netlink dump, indexed ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "vxlan", "tun", "wireguard", "veth", ... ("" for plain devices)
    admin_up: bool  # IFF_UP
    lower_up: bool  # IFF_LOWER_UP (carrier); vxlan reports operstate UNKNOWN, so never test operstate


@dataclass(frozen=True, slots=True)
class Hop:
    gateway: IPv4Address | None
    oif: int | None
    onlink: bool


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPv4Network
    type: int
    priority: int
    hops: tuple[Hop, ...]


@dataclass(slots=True)
class KernelView:
    """Links, main-table IPv4 routes, IPv4 neighbours and the FDB, as one dump saw them."""

    links: dict[int, Link] = field(default_factory=dict)
    by_name: dict[str, Link] = field(default_factory=dict)
    routes: dict[IPv4Network, Route] = field(default_factory=dict)  # lowest metric per prefix
    # (ifindex, IP) -> (lladdr, NUD state)
    neighbours: dict[tuple[int, IPv4Address], tuple[str, int]] = field(default_factory=dict)
    fdb: dict[tuple[int, str], set[IPv4Address]] = field(default_factory=dict)  # (ifindex, MAC) -> dsts
    addresses: dict[int, list[ipaddress.IPv4Interface]] = field(default_factory=dict)

    def exact(self, subnet: IPv4Network) -> Route | None:
        return self.routes.get(subnet)

    def lookup(self, subnet: IPv4Network) -> Route | None:
        """The longest-prefix route covering the whole subnet (what a packet to it would follow)."""
        for plen in range(subnet.prefixlen, -1, -1):
            route = self.routes.get(subnet.supernet(new_prefix=plen))
            if route is not None:
                return route
        return None

    def name_of(self, index: int | None) -> str:
        link = self.links.get(index) if index is not None else None
        return link.name if link else f"if{index}"

    def describe(self, route: Route) -> str:
        kind = RTN_NAMES.get(route.type)
        if kind:
            return f"{kind} {route.dst}"
        hops = [(f"via {h.gateway} " if h.gateway else "") + f"dev {self.name_of(h.oif)}" for h in route.hops]
        return f"{route.dst} {' / '.join(hops)}"

    def device_fault(self, name: str, backend: str) -> str | None:
        """Why device `name` cannot carry traffic, or None when it is up with carrier."""
        link = self.by_name.get(name)
        if link is None:
            return f"{name} is missing (is flanneld running here with the {backend} backend?)"
        if not link.admin_up:
            return f"{name} is down (administratively; flanneld sets it up when it starts)"
        if not link.lower_up:
            if link.kind == "tun":
                return f"{name} is down (no flanneld attached?)"
            return f"{name} is down (no carrier)"
        return None


# --- reading rtnetlink directly -------------------------------------------------------------------
# pyroute2 0.9.7 decodes each message through its asyncio core, which dominates a dump of a large
# vxlan host; unpacking the few fields needed with struct is far cheaper (docs/benchmarks.md).
# pyroute2 still enters named namespaces (netns.setns).

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH = 18, 22, 26, 30
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
NDA_DST, NDA_LLADDR = 1, 2

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_DUMP_RETRIES = 5


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]  # strip NLA_F_NESTED/BYTEORDER
        offset += (length + 3) & ~3
    return out


def _u32(raw: bytes | None) -> int | None:
    return _U32.unpack(raw[:4])[0] if raw and len(raw) >= 4 else None


def _ipv4(raw: bytes | None) -> IPv4Address | None:
    return IPv4Address(raw) if raw and len(raw) == 4 else None


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def open_netlink(netns: str | None, protocol: int = socket.NETLINK_ROUTE) -> socket.socket:
    """A netlink socket (NETLINK_ROUTE unless told) inside `netns` (None: ours)."""
    sock = (
        _socket_in(netns, protocol) if netns else socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    )
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _socket_in(netns: str, protocol: int) -> socket.socket:
    """Create the socket on a throwaway thread that enters `netns`; a socket stays in its namespace.

    pyroute2's own netns sockets fork a helper, and forking a process with live gRPC (etcd)
    channels can deadlock; setns(CLONE_NEWNET) on one thread leaves every other thread alone.
    """
    result: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            pyroute2_netns.setns(netns, flags=0)  # flags=0: never create a missing namespace
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol))
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=enter_and_open, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class Rtnl:
    """A NETLINK_ROUTE socket that dumps tables."""

    def __init__(self, netns: str | None) -> None:
        self.sock = open_netlink(netns)
        self.sock.settimeout(10.0)
        self.seq = 0

    def dump(self, msg_type: int, header: bytes) -> list[tuple[bytes, int, int]]:
        """Every message of one dump, as (buffer, payload start, payload end); retried if interrupted."""
        for _ in range(_DUMP_RETRIES):
            messages, interrupted = self._dump_once(msg_type, header)
            if not interrupted:
                return messages
        return messages  # still changing under us: a slightly inconsistent view beats none

    def _dump_once(self, msg_type: int, header: bytes) -> tuple[list[tuple[bytes, int, int]], bool]:
        self.seq += 1
        seq = self.seq
        length = _NLMSGHDR.size + len(header)
        self.sock.send(_NLMSGHDR.pack(length, msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + header)
        out: list[tuple[bytes, int, int]] = []
        interrupted = False
        while True:
            data = self.sock.recv(1 << 18)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, flags, mseq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mseq == seq:
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_DONE:
                        return out, interrupted
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                        raise OSError(code, os.strerror(code))
                    out.append((data, offset + _NLMSGHDR.size, offset + length))
                offset += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def read_view(rtnl: Rtnl) -> KernelView:
    """Links, addresses, routes, neighbours and FDB entries: five dumps on one socket."""
    view = KernelView()
    for data, start, end in rtnl.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        _add_link(view, data, start, end)
    for data, start, end in rtnl.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
        _add_address(view, data, start, end)
    for data, start, end in rtnl.dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
        _add_route(view, data, start, end)
    for family in (socket.AF_INET, socket.AF_BRIDGE):
        for data, start, end in rtnl.dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0)):
            _add_neighbour(view, data, start, end)
    return view


def _add_link(view: KernelView, data: bytes, start: int, end: int) -> None:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, start)
    attrs = _attrs(data, start + _IFINFOMSG.size, end)
    info = attrs.get(IFLA_LINKINFO)
    kind = _text(_attrs(info, 0, len(info)).get(IFLA_INFO_KIND)) if info else ""
    link = Link(index, _text(attrs.get(IFLA_IFNAME)), kind, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP))
    view.links[index] = link
    view.by_name[link.name] = link


def _add_address(view: KernelView, data: bytes, start: int, end: int) -> None:
    family, prefixlen, _, _, index = _IFADDRMSG.unpack_from(data, start)
    attrs = _attrs(data, start + _IFADDRMSG.size, end)
    ip = _ipv4(attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS))  # IFA_ADDRESS is the peer on ptp links
    if family == socket.AF_INET and ip is not None:
        view.addresses.setdefault(index, []).append(ipaddress.IPv4Interface((ip, prefixlen)))


def _add_route(view: KernelView, data: bytes, start: int, end: int) -> None:
    family, dst_len, _, _, table, _, _, rtype, flags = _RTMSG.unpack_from(data, start)
    attrs = _attrs(data, start + _RTMSG.size, end)
    if family != socket.AF_INET or (_u32(attrs.get(RTA_TABLE)) or table) != RT_TABLE_MAIN:
        return  # flanneld only writes the main table; policy routing is not modelled
    dst = IPv4Network((_ipv4(attrs.get(RTA_DST)) or IPv4Address(0), dst_len))
    priority = _u32(attrs.get(RTA_PRIORITY)) or 0
    old = view.routes.get(dst)
    if old is not None and old.priority <= priority:
        return
    multipath = attrs.get(RTA_MULTIPATH)
    if multipath:
        hops = tuple(_nexthops(multipath))
    else:
        hop = Hop(_ipv4(attrs.get(RTA_GATEWAY)), _u32(attrs.get(RTA_OIF)), bool(flags & RTNH_F_ONLINK))
        hops = (hop,)
    view.routes[dst] = Route(dst, rtype, priority, hops)


def _nexthops(raw: bytes) -> Iterable[Hop]:
    offset = 0
    while offset + _RTNEXTHOP.size <= len(raw):
        length, flags, _, oif = _RTNEXTHOP.unpack_from(raw, offset)
        if length < _RTNEXTHOP.size:
            return
        gateway = _ipv4(_attrs(raw, offset + _RTNEXTHOP.size, offset + length).get(RTA_GATEWAY))
        yield Hop(gateway, oif, bool(flags & RTNH_F_ONLINK))
        offset += (length + 3) & ~3


def _add_neighbour(view: KernelView, data: bytes, start: int, end: int) -> None:
    family, index, state, _, _ = _NDMSG.unpack_from(data, start)
    attrs = _attrs(data, start + _NDMSG.size, end)
    dst, lladdr = _ipv4(attrs.get(NDA_DST)), _mac(attrs.get(NDA_LLADDR))
    if dst is None:
        return
    if family == socket.AF_INET:
        view.neighbours[(index, dst)] = (lladdr, state)
    elif family == socket.AF_BRIDGE and lladdr:
        view.fdb.setdefault((index, lladdr), set()).add(dst)


# --- per-backend rules --------------------------------------------------------------------------


def _via(route: Route, gateway: IPv4Address) -> Hop | None:
    return next((h for h in route.hops if h.gateway == gateway), None)


def _on_device(route: Route, index: int) -> Hop | None:
    return next((h for h in route.hops if h.oif == index), None)


def _underlay_fault(view: KernelView, subnet: IPv4Network, hop: Hop) -> str | None:
    """A route via the node's PublicIP (host-gw, vxlan DirectRouting) is only as good as its device."""
    link = view.links.get(hop.oif) if hop.oif is not None else None
    if link is not None and not (link.admin_up and link.lower_up):
        return f"route to {subnet} via {hop.gateway} uses {link.name}, which is down"
    return None


def check_vxlan(view: KernelView, lease: Lease, vni: int) -> str | None:
    subnet, public_ip = lease.subnet, lease.public_ip
    dev = device_for("vxlan", vni) or ""
    route = view.exact(subnet)
    direct = _via(route, public_ip) if route else None
    if direct is not None:  # DirectRouting: flanneld routes same-L2 peers host-gw style
        return _underlay_fault(view, subnet, direct)
    fault = view.device_fault(dev, "vxlan")
    if fault:
        return fault
    link = view.by_name[dev]
    gateway = subnet.network_address
    if route is None:
        covering = view.lookup(subnet)
        if covering and _old_style(covering, link):
            return None
        missing = f"no route to {subnet} via {gateway} dev {dev} (onlink)"
        return missing + (f"; packets would follow {view.describe(covering)}" if covering else "")
    hop = _via(route, gateway)
    if route.type != RTN_UNICAST or hop is None or hop.oif != link.index:
        return f"route to {subnet} is {view.describe(route)}, expected via {gateway} dev {dev} onlink"
    if not lease.vtep_mac:
        return None
    return _neighbour_fault(view, link, gateway, lease.vtep_mac) or _fdb_fault(
        view, link, lease.vtep_mac.lower(), public_ip
    )


def _old_style(route: Route, link: Link) -> bool:
    """flannel <= 0.8: one Network-wide route on the device; ARP and FDB are filled on L2/L3 misses."""
    hop = _on_device(route, link.index)
    return route.type == RTN_UNICAST and hop is not None and hop.gateway is None


def _neighbour_fault(view: KernelView, link: Link, ip: IPv4Address, vtep_mac: str) -> str | None:
    entry = view.neighbours.get((link.index, ip))
    if entry is None:
        return f"no neighbour entry for {ip} on {link.name} (expected lladdr {vtep_mac})"
    lladdr, state = entry
    if not lladdr or state & (NUD_FAILED | NUD_INCOMPLETE):
        return f"neighbour {ip} on {link.name} is unresolved (expected permanent lladdr {vtep_mac})"
    if lladdr != vtep_mac.lower():
        return f"neighbour {ip} on {link.name} has lladdr {lladdr} but the lease says VtepMAC {vtep_mac}"
    return None


def _fdb_fault(view: KernelView, link: Link, vtep_mac: str, public_ip: IPv4Address) -> str | None:
    dsts = view.fdb.get((link.index, vtep_mac))
    if not dsts:
        return f"no FDB entry for {vtep_mac} -> {public_ip} on {link.name}"
    if public_ip not in dsts:
        found = ", ".join(sorted(map(str, dsts)))
        return (
            f"FDB entry for {vtep_mac} on {link.name} points to {found},"
            f" but the lease says PublicIP {public_ip}"
        )
    return None


def check_host_gw(view: KernelView, lease: Lease) -> str | None:
    subnet, public_ip = lease.subnet, lease.public_ip
    route = view.exact(subnet)
    if route is None:
        return f"no route to {subnet} via {public_ip} (host-gw)"
    hop = _via(route, public_ip)
    if route.type != RTN_UNICAST or hop is None:
        return f"route to {subnet} is {view.describe(route)}, but the lease says via {public_ip} (host-gw)"
    return _underlay_fault(view, subnet, hop)


def check_device_route(
    view: KernelView, lease: Lease, backend: str, dev: str, network: IPv4Network | None
) -> str | None:
    """udp and wireguard: the device is up and the route covering the subnet goes through it."""
    fault = view.device_fault(dev, backend)
    if fault:
        return fault
    route = view.lookup(lease.subnet)
    if route and route.type == RTN_UNICAST and _on_device(route, view.by_name[dev].index):
        return None
    expected = f"flanneld adds {network or 'the flannel network'} dev {dev}"
    found = f"; packets would follow {view.describe(route)}" if route else ""
    return f"no route to {lease.subnet} through {dev} ({backend}: {expected}){found}"


# --- the LB's own lease: the one definition the agent's netcheck and `flannel-lb check` share --------


def lease_hint(leases: Iterable[Lease], lb_addresses: Iterable[str]) -> IPv4Network | None:
    """The lease the config points at: the one lease whose PublicIP is one of the [lb] addresses.

    Anyone who can write a lease can give it the LB's PublicIP, so with several such leases none is
    taken on trust (None); `own_lease` then lets the kernel tell.
    """
    mine = set(lb_addresses)
    subnets = {lease.subnet for lease in leases if str(lease.public_ip) in mine}
    return subnets.pop() if len(subnets) == 1 else None


def own_lease_candidates(
    leases: Iterable[Lease], own_subnet: IPv4Network | None, local: set[IPv4Address]
) -> list[Lease]:
    """The leases that could be this host's own (`own_lease` says which one is).

    It must be exactly `own_subnet` (without one: a lease whose PublicIP is local), and this kernel
    must hold an address in it, as flanneld gives the flannel device its lease's address. A PublicIP
    alone proves nothing, since any lease can name the LB's: a forged lease elsewhere would skip the
    check and admit endpoints no path leads to. host-gw puts no address on the LB, so there the
    subnet (or the PublicIP) has to do.
    """
    return [
        lease
        for lease in leases
        if (lease.subnet == own_subnet if own_subnet is not None else lease.public_ip in local)
        and (lease.backend_type == "host-gw" or any(ip in lease.subnet for ip in local))
    ]


def own_lease(
    leases: Iterable[Lease], own_subnet: IPv4Network | None, local: set[IPv4Address]
) -> Lease | None:
    """This host's own lease, which needs no path (netcheck skips it), or None.

    Of several candidates only the most specific is taken (a forged /23 around the LB's /24 holds the
    same address), so at most one subnet is ever skipped.
    """
    found = own_lease_candidates(leases, own_subnet, local)
    return min(found, key=lambda x: (-x.subnet.prefixlen, int(x.subnet.network_address)), default=None)


def own_lease_subnet(
    leases: Iterable[Lease], own_subnet: IPv4Network | None, local: set[IPv4Address]
) -> IPv4Network | None:
    """The subnet of `own_lease`."""
    lease = own_lease(leases, own_subnet, local)
    return lease.subnet if lease is not None else None


def local_addresses(view: KernelView) -> set[IPv4Address]:
    """Every IPv4 address of the namespace (what `own_lease` calls local)."""
    return {iface.ip for ifaces in view.addresses.values() for iface in ifaces}


# --- the checker --------------------------------------------------------------------------------


class NetChecker:
    """Checks lease paths in one network namespace (None: the one this process runs in)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.notes: tuple[str, ...] = ()  # what the last check() could not verify, for humans
        self._logged_unchecked: set[str] = set()
        self._dump_lock = threading.Lock()
        self._rtnl: Rtnl | None = None

    # -- dumps

    def dump(self) -> KernelView:
        """One netlink dump of links, addresses, routes, neighbours and the FDB."""
        with self._dump_lock:
            if self._rtnl is None:
                self._rtnl = Rtnl(self.netns)
            try:
                return read_view(self._rtnl)
            except OSError:
                self._rtnl.close()  # a fresh socket next time (e.g. after a receive overrun)
                self._rtnl = None
                raise

    def check(
        self, leases: Iterable[Lease], network: NetworkConfig | None, own_subnet: IPv4Network | None = None
    ) -> dict[IPv4Network, str]:
        """lease subnet -> why its path is missing; subnets with a good path are absent."""
        view = self.dump()
        faults: dict[IPv4Network, str] = {}
        unchecked: set[str] = set()
        seen: set[str] = set()
        leases = list(leases)
        own = own_lease_subnet(leases, own_subnet, local_addresses(view))
        for lease in leases:
            if own is not None and lease.subnet == own:
                continue  # this host's own lease: its pods (if any) are local, no overlay path needed
            seen.add(lease.backend_type)
            if lease.backend_type not in CHECKED_BACKENDS:
                unchecked.add(lease.backend_type)
                continue
            fault = self._check_one(view, lease, network)
            if fault:
                faults[lease.subnet] = fault + _backend_hint(lease, network)
        self._set_notes(unchecked, wireguard="wireguard" in seen)
        return faults

    def _check_one(self, view: KernelView, lease: Lease, network: NetworkConfig | None) -> str | None:
        net = network.network if network else None
        if lease.backend_type == "vxlan":
            vni = lease.vni if lease.vni is not None else (network.vni if network else 1)
            return check_vxlan(view, lease, vni)
        if lease.backend_type == "host-gw":
            return check_host_gw(view, lease)
        if lease.backend_type == "udp":
            return check_device_route(view, lease, "udp", UDP_DEVICE, net)
        return check_device_route(view, lease, "wireguard", WIREGUARD_DEVICE, net)

    def _set_notes(self, unchecked: set[str], *, wireguard: bool) -> None:
        notes = [f"backend {b} not checked" for b in sorted(unchecked)]
        if wireguard:
            notes.append("wireguard peers (keys, endpoints, AllowedIPs) not checked: device and route only")
        for backend in unchecked - self._logged_unchecked:
            log.warning("netcheck_backend_not_checked", backend=backend)
        self._logged_unchecked |= unchecked
        self.notes = tuple(notes)

    def close(self) -> None:
        with self._dump_lock:
            if self._rtnl is not None:
                self._rtnl.close()
                self._rtnl = None

    def __enter__(self) -> NetChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _backend_hint(lease: Lease, network: NetworkConfig | None) -> str:
    """flanneld programs only leases of its own backend type; say so when they differ."""
    if network is None or network.backend_type == lease.backend_type:
        return ""
    return (
        f" (this lease is {lease.backend_type}, but the network config says {network.backend_type}:"
        f" flanneld ignores leases of another backend type)"
    )
