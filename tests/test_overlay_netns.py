"""The pair's side of the flannel overlay (`kernel.overlay`) in network namespaces, vxlan and host-gw.

    lb  eth1 10.79.0.11/24 (+ the floating 10.79.0.150) ─── eth1 10.79.0.21/24 node ─ veth ─ pod 10.246.1.2

The node keeps ordinary flannel state for the pair's reservation (10.246.90.0/24, PublicIP
10.79.0.150, the shared VtepMAC), as flanneld would from the lease; the LB runs no flanneld: `Overlay`
programs its side from the leases. A pod's reply to the pair's address must come back to the box
holding the floating PublicIP.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
from collections.abc import Iterator

import pytest

from flannel_lb.config import derived_vtep_mac
from flannel_lb.decode.model import Lease, NetworkConfig
from flannel_lb.kernel.overlay import PROTO, Identity, Overlay, desired
from flannel_lb.lab import overlay
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.overlay import Backend, SubnetLease
from flannel_lb.lab.topology import batch

pytestmark = pytest.mark.netns

LB_IP, NODE_IP, FLOATING = "10.79.0.11", "10.79.0.21", "10.79.0.150"
RESERVATION = ipaddress.IPv4Network("10.246.90.0/24")
NODE_SUBNET = ipaddress.IPv4Network("10.246.1.0/24")
NODE_MAC = "0e:f1:0a:4f:00:15"
POD = "10.246.1.2"
ME = Identity(RESERVATION, FLOATING, derived_vtep_mac(FLOATING), "eth1")

if sys.platform != "linux" or shutil.which("ip") is None or shutil.which("bridge") is None:
    pytest.skip("needs Linux with iproute2", allow_module_level=True)


def _network(backend: str) -> NetworkConfig:
    return NetworkConfig(ipaddress.IPv4Network("10.246.0.0/16"), backend_type=backend)


def _node_lease(backend: str) -> Lease:
    return Lease(
        NODE_SUBNET, ipaddress.IPv4Address(NODE_IP), backend, vtep_mac=NODE_MAC if backend == "vxlan" else ""
    )


def _own_lease(backend: str) -> Lease:
    mac = ME.vtep_mac if backend == "vxlan" else ""
    return Lease(RESERVATION, ipaddress.IPv4Address(FLOATING), backend, vtep_mac=mac)


@pytest.fixture(params=["vxlan", "host-gw"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[Namespaces, str]]:
    backend: Backend = request.param
    with Namespaces(unique_prefix("ov")) as ns:
        for short in ("lb", "node", "pod"):
            ns.add(short)
        ns.veth("lb", "eth1", "node", "eth1")
        ns.veth("node", "p0", "pod", "eth0")
        batch(ns, "lb", [f"addr add {LB_IP}/24 dev eth1", f"addr add {FLOATING}/32 dev eth1"])
        batch(
            ns, "node", [f"addr add {NODE_IP}/24 dev eth1", "addr add 10.246.1.1/24 dev p0", "link set p0 up"]
        )
        node_flannel(ns, backend, FLOATING, ME.vtep_mac)
        ns.sysctl("node", "net.ipv4.ip_forward", "1")
        batch(ns, "pod", [f"addr add {POD}/24 dev eth0", "route add default via 10.246.1.1"])
        yield ns, backend


def node_flannel(ns: Namespaces, backend: Backend, pair_public_ip: str, pair_mac: str) -> None:
    """What flanneld does on the node (its own lease: 10.246.1.0/24 over eth1) and for the pair's
    reservation, through the lab's own flanneld stand-in."""
    own = SubnetLease("node", str(NODE_SUBNET), NODE_IP, "eth1", backend, vtep_mac=NODE_MAC)
    pair = SubnetLease("pair", str(RESERVATION), pair_public_ip, "eth1", backend, vtep_mac=pair_mac)
    overlay.setup(ns, own, [pair])


def _pod_answers(ns: Namespaces) -> bool:
    """A ping from the pair's flannel address reaches the pod and its reply comes back."""
    proc = ns.run("lb", ["ping", "-c", "1", "-W", "1", "-I", ME.address, POD], check=False)
    return proc.returncode == 0


def test_the_overlay_reaches_the_pods_and_is_kept_in_step(lab: tuple[Namespaces, str]) -> None:
    ns, backend = lab
    overlay = Overlay(ME, netns=ns.name("lb"))
    leases = [_own_lease(backend), _node_lease(backend)]
    want = desired(_network(backend), leases, ME)
    assert want is not None and [p.subnet for p in want.peers] == [str(NODE_SUBNET)]  # not the reservation
    assert not _pod_answers(ns)  # nothing programmed yet: no route to the pod
    assert overlay.apply(want)
    assert _pod_answers(ns)
    assert overlay.apply(want) == []  # in step: nothing to send

    routes = ns.run("lb", ["ip", "route", "show", str(NODE_SUBNET)]).stdout
    assert routes.strip(), routes
    ns.run("lb", ["ip", "route", "del", str(NODE_SUBNET)])  # someone removes it: the next apply repairs
    assert not _pod_answers(ns)
    assert overlay.apply(want) and _pod_answers(ns)

    gone = desired(_network(backend), [_own_lease(backend)], ME)  # the node's lease expired
    assert gone is not None and overlay.apply(gone)
    assert not _pod_answers(ns) and not ns.run("lb", ["ip", "route", "show", str(NODE_SUBNET)]).stdout.strip()
    if backend == "vxlan":
        link = ns.run("lb", ["ip", "-o", "link", "show", "dev", "flannel.1"]).stdout
        assert ME.vtep_mac in link  # the reservation's MAC: the node's FDB entry points at this device
        assert not ns.run("lb", ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout.count(NODE_MAC)


def test_only_its_own_entries_are_changed(lab: tuple[Namespaces, str]) -> None:
    """Routes of other protocols, and other devices' entries, are never read as its own nor removed."""
    ns, backend = lab
    ns.run("lb", ["ip", "route", "add", "10.246.7.0/24", "via", NODE_IP])  # someone else's (proto boot)
    overlay = Overlay(ME, netns=ns.name("lb"))
    overlay.apply(desired(_network(backend), [_node_lease(backend)], ME))  # type: ignore[arg-type]
    overlay.apply(desired(_network(backend), [], ME))  # type: ignore[arg-type]
    assert "10.246.7.0/24 via" in ns.run("lb", ["ip", "route", "show"]).stdout
    if backend == "host-gw":
        mine = ns.run("lb", ["ip", "route", "show", "proto", str(PROTO)]).stdout
        assert mine.strip() == ""


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_a_device_with_another_mac_is_replaced(lab: tuple[Namespaces, str]) -> None:
    """A flannel.1 that flanneld made (a random MAC) cannot carry the pair's identity: it is remade."""
    ns, backend = lab
    device = f"flannel.1 address 0e:00:00:00:00:01 type vxlan id 1 local {LB_IP} dev eth1 dstport 8472"
    batch(ns, "lb", [f"link add {device}"])
    overlay = Overlay(ME, netns=ns.name("lb"))
    overlay.apply(desired(_network(backend), [_node_lease(backend)], ME))  # type: ignore[arg-type]
    assert ME.vtep_mac in ns.run("lb", ["ip", "-o", "link", "show", "dev", "flannel.1"]).stdout
    assert _pod_answers(ns)


def test_the_agents_keeper_reports_a_kernel_it_cannot_read_and_goes_on() -> None:
    """`ip` failing inside the read-back (here: a namespace that does not exist) is logged and counted,
    never raised into the agent's loop."""
    from flannel_lb.config import HAConfig
    from flannel_lb.daemon.metrics import Metrics
    from flannel_lb.daemon.overlay_keeper import OverlayKeeper
    from flannel_lb.state.cluster import ClusterState

    ha = HAConfig(enabled=True, overlay_subnet=str(RESERVATION), overlay_public_ip=FLOATING)
    ha = HAConfig(
        **{
            **{f: getattr(ha, f) for f in ha.__dataclass_fields__},
            "vtep_mac": ME.vtep_mac,
            "overlay_interface": "eth1",
        }
    )
    metrics = Metrics()
    keeper = OverlayKeeper(ha, metrics, netns="flb-no-such-namespace")
    state = ClusterState()
    state.put("/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}')
    keeper.turn(state)
    assert metrics.registry.get_sample_value("flannel_lb_ha_overlay_updates_total", {"result": "error"}) == 1
