"""loadBalancerSourceRanges against a real kernel, for both data planes (iptables-restore, nftables).

The topology of `test_dataplane_netns`, with a second client address on the client's link: one
client inside a Service's ranges and one outside, side by side, real TCP and UDP servers in the pods.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from flannel_lb.dataplane.iptables.restore import RestoreWriter
from flannel_lb.dataplane.nftables.writer import NftWriter
from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.plane import DataPlane, IptablesPlane
from flannel_lb.plan.model import Frontend, Plan
from tests.test_dataplane_netns import LB, PODS, UDP_PORT, Lab, backends, build_lab, normalized_save

pytestmark = pytest.mark.netns

INSIDE, OUTSIDE = "192.168.121.1", "192.168.121.77"

# One connection (TCP: an HTTP GET, UDP: a datagram) from a chosen source address; the pod's name or
# why not ("!timeout": dropped, "!refused": rejected).
CLIENT = r"""
import json, socket, sys
mode, src, addr, port, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
def once():
    kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((addr, port))
        if mode == "udp":
            s.send(b"ping")
            return s.recv(2048).decode()
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()
try:
    print(json.dumps(once()))
except socket.timeout:
    print(json.dumps("!timeout"))
except ConnectionRefusedError:
    print(json.dumps("!refused"))
"""


def _skip_reason() -> str:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2"
    if shutil.which("nft") is None:
        return "`nft` is not installed (apt install nftables)"
    return ""


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


@dataclass
class Setup:
    lab: Lab
    plane: DataPlane

    def connect(self, src: str, port: int, mode: str = "tcp", timeout: float = 1.0) -> str:
        argv = [sys.executable, "-c", CLIENT, mode, src, LB, str(port), str(timeout)]
        answer: str = json.loads(self.lab.ns.run("cl", argv, timeout=30).stdout)
        return answer


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for the_lab in build_lab("nft", forward_policy="ACCEPT"):
        the_lab.ns.run("cl", ["ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0"])
        yield the_lab


@pytest.fixture(params=["restore", "nft"])
def setup(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Setup]:
    lab.flush_conntrack()
    before = normalized_save(lab.save())
    plane: DataPlane
    if request.param == "nft":
        plane = NftWriter(Options(), netns=lab.lb)
    else:
        plane = IptablesPlane(RestoreWriter(backend="nft", netns=lab.lb), Options())
    yield Setup(lab, plane)
    plane.cleanup()
    plane.close()
    assert normalized_save(lab.save()) == before
    assert "table ip flb" not in lab.ns.run("lb", ["nft", "list", "ruleset"]).stdout


def web(ranges: tuple[str, ...] | None, port: int = 80, service: str = "default/web") -> Frontend:
    return Frontend(LB, port, "TCP", service, "http", backends=backends(*PODS), source_ranges=ranges)


def dns(ranges: tuple[str, ...] | None) -> Frontend:
    pods = backends(*PODS, port=UDP_PORT)
    return Frontend(LB, 53, "UDP", "default/dns", "dns", backends=pods, source_ranges=ranges)


def plan(*frontends: Frontend, rev: int = 1) -> Plan:
    return Plan(rev, tuple(frontends))


def test_only_clients_inside_the_ranges_get_through_and_the_others_are_dropped(setup: Setup) -> None:
    s = setup
    s.plane.sync(plan(web((f"{INSIDE}/32",)), dns(("192.168.121.0/28",)), web(None, 8080, "default/open")))
    assert s.connect(INSIDE, 80) in PODS
    assert s.connect(OUTSIDE, 80) == "!timeout"  # dropped, not refused: nothing is said to the outside
    assert s.connect(INSIDE, 53, "udp") in PODS
    assert s.connect(OUTSIDE, 53, "udp") == "!timeout"
    assert s.connect(OUTSIDE, 8080) in PODS  # no ranges: open to everyone
    drops = s.plane.source_range_drops()
    assert drops.get((LB, 80, "TCP"), 0) >= 1 and drops.get((LB, 53, "UDP"), 0) >= 1, drops
    assert (LB, 8080, "TCP") not in drops


def test_a_range_change_applies_without_touching_the_other_services(setup: Setup) -> None:
    s = setup
    other = web((OUTSIDE + "/32",), 8080, "default/other")
    s.plane.sync(plan(web((f"{INSIDE}/32",)), other))
    assert s.connect(INSIDE, 80) in PODS and s.connect(OUTSIDE, 80) == "!timeout"
    everything = s.plane.render(plan(web((f"{INSIDE}/32",)), other), full=True)
    changed = plan(web(("192.168.121.64/26",)), other, rev=2)  # now OUTSIDE (.77) is in, INSIDE out
    delta = s.plane.render(changed)
    s.plane.sync(changed)
    assert s.connect(OUTSIDE, 80) in PODS and s.connect(INSIDE, 80) == "!timeout"
    assert s.connect(OUTSIDE, 8080) in PODS and s.connect(INSIDE, 8080) == "!timeout"
    if isinstance(s.plane, NftWriter):
        assert "8080" not in delta and "192.168.121.64/26" in delta, delta
    else:  # the other Service's chains are neither rewritten nor renamed; only the dispatch names it
        theirs = re.findall(rf"-A (FLB-FW-\w+) -s {OUTSIDE}/32 .*-j (FLB-FE-\w+)", everything)
        assert len(theirs) == 1, everything
        assert not [c for c in theirs[0] if f":{c} " in delta], delta
        assert all(ln.startswith("-A FLB-SERVICES ") for ln in delta.splitlines() if "8080" in ln), delta
    assert s.plane.diff(changed) == ""


def test_ranges_that_admit_nobody_drop_everyone_and_no_ranges_mean_open(setup: Setup) -> None:
    s = setup
    s.plane.sync(plan(web(())))  # a Service whose every range was malformed: fails closed
    assert (s.connect(INSIDE, 80), s.connect(OUTSIDE, 80)) == ("!timeout", "!timeout")
    s.plane.sync(plan(web(None), rev=2))
    assert s.connect(INSIDE, 80) in PODS and s.connect(OUTSIDE, 80) in PODS
    s.plane.sync(plan(web(("0.0.0.0/0",)), rev=3))  # everyone, written as a range
    assert s.connect(OUTSIDE, 80) in PODS
    assert s.plane.diff(plan(web(("0.0.0.0/0",)), rev=3)) == ""


def test_a_restricted_frontend_without_backends_refuses_its_clients_and_drops_the_rest(setup: Setup) -> None:
    s = setup
    empty = replace(web((f"{INSIDE}/32",)), backends=())
    s.plane.sync(plan(empty))
    assert s.connect(INSIDE, 80) == "!refused"
    assert s.connect(OUTSIDE, 80) == "!timeout"
    assert s.plane.diff(plan(empty)) == ""
