"""NetChecker against real kernel state: a vxlan flannel.1, a tun flannel0 and host-gw routes, in namespaces.

The "LB" namespace is programmed exactly the way flanneld (>= 0.9) programs a host (etcd-formats.md
§1.6); each test then breaks one piece and expects a fault that names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb.decode.model import Lease, NetworkConfig
from flannel_lb.kernel.netcheck import NetChecker
from flannel_lb.lab.netns import Namespaces
from flannel_lb.lab.topology import batch

pytestmark = pytest.mark.netns

Net = ipaddress.IPv4Network

LB_IP = "10.245.1.142"
NETWORK = NetworkConfig(network=Net("10.246.0.0/16"), backend_type="vxlan", vni=1)
OWN = Lease(Net("10.246.90.0/24"), ipaddress.IPv4Address(LB_IP), "vxlan", vtep_mac="0e:f1:0a:f5:01:8e", vni=1)
VX = Lease(
    Net("10.246.92.0/24"), ipaddress.IPv4Address("10.245.1.3"), "vxlan", vtep_mac="aa:bb:cc:dd:ee:01", vni=1
)
VX_NO_VNI = Lease(
    Net("10.246.93.0/24"), ipaddress.IPv4Address("10.245.1.6"), "vxlan", vtep_mac="aa:bb:cc:dd:ee:02"
)
DIRECT = Lease(
    Net("10.246.60.0/24"), ipaddress.IPv4Address("10.245.1.5"), "vxlan", vtep_mac="aa:bb:cc:dd:ee:05"
)
HOST_GW = Lease(Net("10.246.55.0/24"), ipaddress.IPv4Address("10.245.1.4"), "host-gw")
VXLAN_LEASES = [OWN, VX, VX_NO_VNI, DIRECT]

UDP_NETWORK = NetworkConfig(network=Net("10.250.0.0/16"), backend_type="udp")
UDP = Lease(Net("10.250.3.0/24"), ipaddress.IPv4Address("10.245.1.7"), "udp")
OLD_NETWORK = NetworkConfig(network=Net("10.248.0.0/16"), backend_type="vxlan")
OLD_VX = Lease(
    Net("10.248.5.0/24"), ipaddress.IPv4Address("10.245.1.8"), "vxlan", vtep_mac="aa:bb:cc:dd:ee:08"
)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces, vxlan and tun devices")
    for tool in ("ip", "bridge"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` (iproute2) is not installed")


def _peer_lines(lease: Lease, dev: str = "flannel.1") -> tuple[list[str], list[str]]:
    """What flanneld installs for one remote vxlan lease: neighbour, onlink route; and the FDB entry."""
    ip = lease.subnet.network_address
    return (
        [
            f"neigh replace {ip} lladdr {lease.vtep_mac} dev {dev} nud permanent",
            f"route replace {lease.subnet} via {ip} dev {dev} onlink",
        ],
        [f"fdb replace {lease.vtep_mac} dev {dev} dst {lease.public_ip} self permanent"],
    )


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    """LB and node namespaces joined by a veth, the LB programmed like a healthy flanneld host."""
    _require_root()
    with Namespaces() as spaces:
        for short in ("lb", "node"):
            spaces.add(short)
            spaces.sysctl(short, "net.ipv6.conf.all.disable_ipv6", "1")
            spaces.sysctl(short, "net.ipv6.conf.default.disable_ipv6", "1")
        spaces.veth("lb", "eth1", "node", "eth1")
        spaces.run("node", ["ip", "addr", "add", "10.245.1.3/24", "dev", "eth1"])
        ip_lines = [
            f"addr add {LB_IP}/24 dev eth1",
            f"link add flannel.1 address {OWN.vtep_mac} type vxlan id 1 local {LB_IP} dev eth1"
            " dstport 8472 nolearning",
            f"addr add {OWN.subnet.network_address}/32 dev flannel.1",
            "link set flannel.1 up",
            f"route replace {HOST_GW.subnet} via {HOST_GW.public_ip}",
            f"route replace {DIRECT.subnet} via {DIRECT.public_ip}",  # vxlan DirectRouting
        ]
        fdb_lines: list[str] = []
        for lease in (VX, VX_NO_VNI):
            more_ip, more_fdb = _peer_lines(lease)
            ip_lines += more_ip
            fdb_lines += more_fdb
        batch(spaces, "lb", ip_lines)
        batch(spaces, "lb", fdb_lines, tool="bridge")
        yield spaces


@pytest.fixture
def checker(ns: Namespaces) -> Iterator[NetChecker]:
    c = NetChecker(ns.name("lb"))
    yield c
    c.close()


def ip(ns: Namespaces, *argv: str) -> None:
    ns.run("lb", ["ip", *argv])


def test_healthy_host_has_no_faults(checker: NetChecker) -> None:
    unknown = Lease(Net("10.246.70.0/24"), ipaddress.IPv4Address("10.245.1.9"), "ipip")
    assert checker.check([*VXLAN_LEASES, HOST_GW, unknown], NETWORK, OWN.subnet) == {}
    assert checker.notes == ("backend ipip not checked",)
    assert checker.check(VXLAN_LEASES, NETWORK, OWN.subnet) == {}
    assert not checker.notes


def test_backend_mismatch_is_explained(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "route", "del", str(HOST_GW.subnet))
    fault = checker.check([HOST_GW], NETWORK)[HOST_GW.subnet]
    assert fault == (
        "no route to 10.246.55.0/24 via 10.245.1.4 (host-gw) (this lease is host-gw, but the network"
        " config says vxlan: flanneld ignores leases of another backend type)"
    )


def test_own_lease_is_never_faulted(checker: NetChecker) -> None:
    # No route, neighbour or FDB entry exists for the LB's own subnet, and none should.
    assert checker.check([OWN], NETWORK, OWN.subnet) == {}
    # recognised without being told, too: its PublicIP is one of this host's addresses
    assert checker.check([OWN], NETWORK, None) == {}
    foreign = dataclasses.replace(OWN, public_ip=ipaddress.IPv4Address("10.245.1.99"))
    assert OWN.subnet in checker.check([foreign], NETWORK, None)


def test_missing_onlink_route_then_route_readded(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "route", "del", str(VX.subnet))
    faults = checker.check(VXLAN_LEASES, NETWORK, OWN.subnet)
    assert faults == {VX.subnet: "no route to 10.246.92.0/24 via 10.246.92.0 dev flannel.1 (onlink)"}
    # flanneld re-adds it later: the next check picks it up, nothing is cached.
    ip(ns, "route", "replace", str(VX.subnet), "via", "10.246.92.0", "dev", "flannel.1", "onlink")
    assert checker.check(VXLAN_LEASES, NETWORK, OWN.subnet) == {}


def test_route_through_the_wrong_device(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "route", "replace", str(VX.subnet), "via", "10.245.1.20", "dev", "eth1")
    fault = checker.check([VX], NETWORK, OWN.subnet)[VX.subnet]
    assert fault == (
        "route to 10.246.92.0/24 is 10.246.92.0/24 via 10.245.1.20 dev eth1,"
        " expected via 10.246.92.0 dev flannel.1 onlink"
    )


def test_blackhole_route(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "route", "replace", "blackhole", str(VX.subnet))
    assert "blackhole 10.246.92.0/24" in checker.check([VX], NETWORK, OWN.subnet)[VX.subnet]


def test_wrong_neighbour_mac(ns: Namespaces, checker: NetChecker) -> None:
    ip(
        ns,
        "neigh",
        "replace",
        "10.246.92.0",
        "lladdr",
        "aa:bb:cc:dd:ee:99",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    )
    assert checker.check(VXLAN_LEASES, NETWORK, OWN.subnet) == {
        VX.subnet: "neighbour 10.246.92.0 on flannel.1 has lladdr aa:bb:cc:dd:ee:99"
        " but the lease says VtepMAC aa:bb:cc:dd:ee:01"
    }


def test_missing_neighbour(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "neigh", "del", "10.246.92.0", "dev", "flannel.1")
    assert checker.check([VX], NETWORK, OWN.subnet) == {
        VX.subnet: "no neighbour entry for 10.246.92.0 on flannel.1 (expected lladdr aa:bb:cc:dd:ee:01)"
    }


def test_missing_fdb_entry(ns: Namespaces, checker: NetChecker) -> None:
    ns.run("lb", ["bridge", "fdb", "del", VX.vtep_mac, "dev", "flannel.1", "dst", "10.245.1.3", "self"])
    assert checker.check(VXLAN_LEASES, NETWORK, OWN.subnet) == {
        VX.subnet: "no FDB entry for aa:bb:cc:dd:ee:01 -> 10.245.1.3 on flannel.1"
    }


def test_fdb_entry_to_another_node(ns: Namespaces, checker: NetChecker) -> None:
    ns.run("lb", ["bridge", "fdb", "del", VX.vtep_mac, "dev", "flannel.1", "dst", "10.245.1.3", "self"])
    ns.run("lb", ["bridge", "fdb", "append", VX.vtep_mac, "dev", "flannel.1", "dst", "10.245.1.33", "self"])
    assert checker.check([VX], NETWORK, OWN.subnet) == {
        VX.subnet: "FDB entry for aa:bb:cc:dd:ee:01 on flannel.1 points to 10.245.1.33,"
        " but the lease says PublicIP 10.245.1.3"
    }


def test_vxlan_device_down_and_missing(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "link", "set", "flannel.1", "down")  # the kernel also drops the onlink routes
    faults = checker.check(VXLAN_LEASES, NETWORK, OWN.subnet)
    assert set(faults) == {VX.subnet, VX_NO_VNI.subnet}  # DirectRouting does not use flannel.1
    assert faults[VX.subnet].startswith("flannel.1 is down")
    ip(ns, "link", "del", "flannel.1")
    faults = checker.check(VXLAN_LEASES, NETWORK, OWN.subnet)
    assert faults[VX.subnet].startswith("flannel.1 is missing")


def test_device_name_follows_the_vni(checker: NetChecker) -> None:
    # A lease without VNI (flannel < 0.14) uses the network's VNI: 2 -> flannel.2, which is absent.
    faults = checker.check([VX_NO_VNI], NetworkConfig(Net("10.246.0.0/16"), backend_type="vxlan", vni=2))
    assert faults[VX_NO_VNI.subnet].startswith("flannel.2 is missing")
    assert checker.check([VX], NetworkConfig(Net("10.246.0.0/16"), backend_type="vxlan", vni=2)) == {}


def test_old_vxlan_single_network_route(ns: Namespaces, checker: NetChecker) -> None:
    assert OLD_VX.subnet in checker.check([OLD_VX], OLD_NETWORK)
    ip(ns, "route", "add", "10.248.0.0/16", "dev", "flannel.1")  # flannel <= 0.8: ARP/FDB on demand
    assert checker.check([OLD_VX], OLD_NETWORK) == {}


def test_host_gw_route_missing_and_wrong(ns: Namespaces, checker: NetChecker) -> None:
    hg = NetworkConfig(Net("10.246.0.0/16"), backend_type="host-gw")
    assert checker.check([HOST_GW], hg) == {}
    ip(ns, "route", "del", str(HOST_GW.subnet))
    assert checker.check([HOST_GW], hg) == {
        HOST_GW.subnet: "no route to 10.246.55.0/24 via 10.245.1.4 (host-gw)"
    }
    ip(ns, "route", "add", str(HOST_GW.subnet), "via", "10.245.1.40")
    assert "but the lease says via 10.245.1.4 (host-gw)" in checker.check([HOST_GW], hg)[HOST_GW.subnet]


def test_direct_routing_route_missing(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "route", "del", str(DIRECT.subnet))
    fault = checker.check([DIRECT], NETWORK)[DIRECT.subnet]
    assert fault.startswith("no route to 10.246.60.0/24 via 10.246.60.0 dev flannel.1 (onlink)")


TUN_HOLDER = """
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"flannel0", 0x0001 | 0x1000))  # TUNSETIFF, TUN|NO_PI
print("attached", flush=True)
time.sleep(600)
"""


def test_udp_flannel0_without_process_is_down(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "tuntap", "add", "flannel0", "mode", "tun")
    ip(ns, "link", "set", "flannel0", "up")
    ip(ns, "route", "add", str(UDP_NETWORK.network), "dev", "flannel0")
    assert checker.check([UDP], UDP_NETWORK) == {UDP.subnet: "flannel0 is down (no flanneld attached?)"}
    holder = ns.popen("lb", [sys.executable, "-c", TUN_HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "attached"
        ip(ns, "route", "replace", str(UDP_NETWORK.network), "dev", "flannel0")  # the carrier-down drop
        assert checker.check([UDP], UDP_NETWORK) == {}
    finally:
        holder.kill()
        holder.wait()


def test_udp_route_missing(ns: Namespaces, checker: NetChecker) -> None:
    ip(ns, "tuntap", "add", "flannel0", "mode", "tun")
    holder = ns.popen("lb", [sys.executable, "-c", TUN_HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "attached"
        ip(ns, "link", "set", "flannel0", "up")
        assert checker.check([UDP], UDP_NETWORK) == {
            UDP.subnet: "no route to 10.250.3.0/24 through flannel0"
            " (udp: flanneld adds 10.250.0.0/16 dev flannel0)"
        }
    finally:
        holder.kill()
        holder.wait()


def test_wireguard_device_and_network_route(ns: Namespaces, checker: NetChecker) -> None:
    network = NetworkConfig(Net("10.251.0.0/16"), backend_type="wireguard")
    lease = Lease(Net("10.251.4.0/24"), ipaddress.IPv4Address("10.245.1.10"), "wireguard", wg_public_key="k")
    assert checker.check([lease], network)[lease.subnet].startswith("flannel-wg is missing")
    if ns.run("lb", ["ip", "link", "add", "flannel-wg", "type", "wireguard"], check=False).returncode != 0:
        # No wireguard module in this kernel: a veth named flannel-wg stands in, since netcheck reads
        # only the device's name, flags and the routes through it (peers are not checked).
        ip(ns, "link", "add", "flannel-wg", "type", "veth", "peer", "name", "wg-peer")
        ip(ns, "link", "set", "wg-peer", "up")
    ip(ns, "link", "set", "flannel-wg", "up")
    assert checker.check([lease], network) == {
        lease.subnet: "no route to 10.251.4.0/24 through flannel-wg"
        " (wireguard: flanneld adds 10.251.0.0/16 dev flannel-wg)"
    }
    ip(ns, "route", "add", "10.251.0.0/16", "dev", "flannel-wg")
    assert checker.check([lease], network) == {}
    assert checker.notes == (
        "wireguard peers (keys, endpoints, AllowedIPs) not checked: device and route only",
    )


def test_missing_namespace_is_an_error_and_not_created() -> None:
    _require_root()
    name = "flb-t-netcheck-absent"
    with NetChecker(name) as c, pytest.raises(FileNotFoundError):
        c.check([VX], NETWORK)
    assert not Path(f"/run/netns/{name}").exists()


@pytest.mark.slow
def test_thousand_leases_cost(ns: Namespaces, checker: NetChecker) -> None:
    """1,000 vxlan leases, programmed as flanneld would; prints the cost of one check()."""
    leases: list[Lease] = []
    ip_lines: list[str] = []
    fdb_lines: list[str] = []
    for i in range(1000):
        subnet = Net((int(ipaddress.IPv4Address("10.200.0.0")) + ((i + 1) << 8), 24))
        mac = f"aa:00:00:00:{i >> 8:02x}:{i & 255:02x}"
        lease = Lease(subnet, ipaddress.IPv4Address("10.245.100.1") + i, "vxlan", vtep_mac=mac)
        leases.append(lease)
        more_ip, more_fdb = _peer_lines(lease)
        ip_lines += more_ip
        fdb_lines += more_fdb
    batch(ns, "lb", ip_lines)
    batch(ns, "lb", fdb_lines, tool="bridge")
    network = NetworkConfig(Net("10.200.0.0/13"), backend_type="vxlan")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        assert checker.check(leases, network) == {}
        timings.append(time.perf_counter() - start)
    print(f"\ncheck() with 1000 vxlan leases: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")
    ip(ns, "route", "del", str(leases[500].subnet))
    assert set(checker.check(leases, network)) == {leases[500].subnet}


def test_raw_dump_agrees_with_pyroute2(ns: Namespaces) -> None:
    """The struct-based reader sees what pyroute2's decoder sees (links, main routes, neighbours, FDB)."""
    from pyroute2 import IPRoute

    from flannel_lb.kernel.netcheck import Rtnl, read_view

    ip(ns, "route", "add", "10.246.7.0/24", "nexthop", "via", "10.245.1.3", "nexthop", "via", "10.245.1.4")
    rtnl = Rtnl(ns.name("lb"))
    try:
        view = read_view(rtnl)
    finally:
        rtnl.close()
    with IPRoute(netns=ns.name("lb"), flags=0) as ipr:
        links = {m["index"]: (m.get_attr("IFLA_IFNAME"), m["flags"] & 0x10001) for m in ipr.get_links()}
        routes = {
            f"{m.get_attr('RTA_DST') or '0.0.0.0'}/{m['dst_len']}": m.get_attr("RTA_GATEWAY")
            for m in ipr.get_routes(family=socket.AF_INET)
            if m.get_attr("RTA_TABLE") == 254
        }
        neighbours = {
            (m["ifindex"], m.get_attr("NDA_DST")): m.get_attr("NDA_LLADDR")
            for m in ipr.get_neighbours(family=socket.AF_INET)
        }
        fdb = {
            (m["ifindex"], m.get_attr("NDA_LLADDR")): m.get_attr("NDA_DST")
            for m in ipr.get_neighbours(family=socket.AF_BRIDGE)
            if m.get_attr("NDA_DST")
        }
        addresses = {(m["index"], m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(family=socket.AF_INET)}
    assert {i: (lk.name, lk.admin_up | (lk.lower_up << 16)) for i, lk in view.links.items()} == links
    single = {str(dst): r.hops[0].gateway if len(r.hops) == 1 else None for dst, r in view.routes.items()}
    assert {dst: gw and str(gw) for dst, gw in single.items()} == routes  # pyroute2: no gateway if multipath
    assert [str(h.gateway) for h in view.routes[Net("10.246.7.0/24")].hops] == ["10.245.1.3", "10.245.1.4"]
    assert {(i, str(d)): mac for (i, d), (mac, _) in view.neighbours.items()} == neighbours
    assert {key: str(d) for key, dsts in view.fdb.items() for d in dsts} == fdb
    assert {(i, str(a.ip)) for i, ifaces in view.addresses.items() for a in ifaces} == addresses
