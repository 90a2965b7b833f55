"""`[dataplane] balance = "maglev"` against a real kernel: two LB boxes, one flow, one pod.

The lab of `test_dataplane_nft` gets a second LB namespace (`lb2`, the standby) wired to the same client
and the same router; a "takeover" takes box 1's links down and box 2's up, as a VRRP failover moves the
address. Each box's table is built by its own writer (box 2's in another process, with another hash
seed), from the same plan. UDP flows with fixed source ports are the same 5-tuples every time, so their
pods can be compared flow by flow; conntrack is flushed so every packet asks the table again. The same
runs with `balance = "random"` are the control: they must move flows, or the test proves nothing.
And the kernel is checked flow by flow against the Python model (`maglev.flow_slot`: Linux's jhash
over the padded 5-tuple, then the frontend's table): every pod observed is the pod predicted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb.dataplane import maglev
from flannel_lb.dataplane.nftables.writer import NftWriter
from flannel_lb.dataplane.options import Options
from tests.test_dataplane_netns import LB, PODS, UDP_PORT, Lab, build_lab, make_plan
from tests.test_dataplane_nft import FOREIGN_NFT

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[1]
FLOWS = 150
CLIENT_ADDRESS = "192.168.121.1"
MAGLEV = Options(balance="maglev")


class Pair:
    """The lab plus a standby box; `active` says which box the client and the router reach."""

    def __init__(self, lab: Lab) -> None:
        self.lab, ns = lab, lab.ns
        ns.add("lb2")
        ns.veth("cl", "eth1", "lb2", "eth0")
        ns.veth("lb2", "pn0", "rt", "up1")
        ns.run("lb2", ["ip", "addr", "add", f"{LB}/24", "dev", "eth0"])
        ns.run("lb2", ["ip", "addr", "add", "10.246.90.1/24", "dev", "pn0"])
        ns.run("lb2", ["ip", "route", "add", "10.246.0.0/16", "via", "10.246.90.254"])
        ns.run("lb2", ["ip", "route", "add", "default", "via", "192.168.121.1"])
        ns.sysctl("lb2", "net.ipv4.ip_forward", "1")
        ns.run("lb2", ["nft", "-f", "-"], input=FOREIGN_NFT)
        self.active = 1
        self.use(1)

    @property
    def lb2(self) -> str:
        return self.lab.ns.name("lb2")

    def use(self, box: int) -> None:
        """Links of the other box down (its connected routes and neighbours go), this box's up."""
        ns = self.lab.ns
        links = {1: (("cl", "eth0"), ("rt", "up0")), 2: (("cl", "eth1"), ("rt", "up1"))}
        for short, dev in links[3 - box]:
            ns.run(short, ["ip", "link", "set", dev, "down"])
        for (short, dev), addr in zip(links[box], ("192.168.121.1/24", "10.246.90.254/24"), strict=True):
            ns.run(short, ["ip", "addr", "replace", addr, "dev", dev])
            ns.run(short, ["ip", "link", "set", dev, "up"])
        self.active = box

    def flows(self, sport: int) -> list[str]:
        """The pod each of FLOWS UDP flows (source ports sport, sport+1, ...) reaches, after a conntrack
        flush on both boxes: the table decides every one."""
        self.flush()
        return self.lab.client("udp", LB, 53, FLOWS, 2.0, str(sport))

    def flush(self) -> None:
        from pyroute2 import Conntrack

        for netns in (self.lab.lb, self.lb2):
            ct = Conntrack(netns=netns)
            try:
                ct.flush()
            finally:
                ct.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    for lab in build_lab("nft", forward_policy="ACCEPT"):
        lab.ns.run("lb", ["nft", "-f", "-"], input=FOREIGN_NFT)
        yield Pair(lab)


@pytest.fixture
def boxes(pair: Pair) -> Iterator[Pair]:
    pair.use(1)
    yield pair
    for netns in (pair.lab.lb, pair.lb2):
        NftWriter(netns=netns).cleanup()
    pair.use(1)


def sync_in_another_process(netns: str, balance: str, hash_seed: str) -> str:
    """Box 2's agent: its own interpreter (another PYTHONHASHSEED), its own writer, the same plan."""
    code = (
        "import sys; from flannel_lb.dataplane.nftables.writer import NftWriter;"
        "from flannel_lb.dataplane.options import Options; from tests.test_dataplane_netns import make_plan;"
        "print(NftWriter(Options(balance=sys.argv[2]), netns=sys.argv[1]).sync(make_plan()).mode)"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run(
        [sys.executable, "-c", code, netns, balance],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def table_text(pair: Pair, netns: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "flb"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.sub(r"counter packets \d+ bytes \d+ ?", "", out)


def test_a_flow_reaches_the_same_pod_through_either_box(boxes: Pair) -> None:
    NftWriter(MAGLEV, netns=boxes.lab.lb).sync(make_plan())
    assert sync_in_another_process(boxes.lb2, "maglev", "12345") == "adopt"  # created: nothing to adopt
    # Two kernels, two writers, two processes: the very same table, Maglev slots included.
    assert table_text(boxes, boxes.lab.lb) == table_text(boxes, boxes.lb2)
    assert "jhash ip saddr . udp sport . ip daddr . udp dport mod 251 seed 0x666c62" in table_text(
        boxes, boxes.lb2
    )

    first = boxes.flows(44000)
    assert first == predicted(("pod1", "pod2", "pod3"), 44000)  # the kernel hashes as the model says
    spread = Counter(first)
    assert set(spread) == set(PODS), spread  # still a load balancer: every pod gets flows
    assert all(spread[p] > FLOWS / 6 for p in PODS), spread
    sticky = set(boxes.lab.client("tcp", LB, 8080, 5))  # ClientIP affinity: one pod for this client

    boxes.use(2)  # the takeover: box 1 is gone, box 2 has none of its conntrack entries nor affinity sets
    assert boxes.flows(44000) == first
    assert set(boxes.lab.client("tcp", LB, 8080, 5)) == sticky and len(sticky) == 1
    tcp = Counter(boxes.lab.client("tcp", LB, 80, 60))
    assert set(tcp) == set(PODS), tcp


def test_random_balance_moves_flows_at_a_takeover(boxes: Pair) -> None:
    """The control: the same takeover with `balance = "random"` sends many flows elsewhere."""
    NftWriter(Options(), netns=boxes.lab.lb).sync(make_plan())
    sync_in_another_process(boxes.lb2, "random", "12345")
    first = boxes.flows(44000)
    boxes.use(2)
    again = boxes.flows(44000)
    assert not [a for a in again if a.startswith("!")], again
    assert sum(a != b for a, b in zip(first, again, strict=True)) > FLOWS / 4


def test_a_restarted_agent_adopts_the_maglev_table_as_it_is(boxes: Pair) -> None:
    NftWriter(MAGLEV, netns=boxes.lab.lb).sync(make_plan())
    again = NftWriter(MAGLEV, netns=boxes.lab.lb)
    result = again.sync(make_plan())
    assert (result.mode, result.applied) == ("adopt", False), again.last_drift
    assert again.sync(make_plan(), verify=True).applied is False
    # A restart with the other balance setting rebuilds the table (its chains and elements differ).
    other = NftWriter(Options(), netns=boxes.lab.lb)
    assert other.sync(make_plan()).applied and other.last_drift


def _owners(pods: tuple[str, ...], size: int) -> list[str]:
    names = [f"{PODS[p]}:{UDP_PORT}" for p in pods]
    order = maglev.canonical(names)
    return [order[i] for i in maglev.populate(names, size)]


def predicted(pods: tuple[str, ...], sport: int) -> list[str]:
    """The pod of each flow of `Pair.flows(sport)` by the Python model alone: jhash -> slot -> owner."""
    by_address = {f"{ip}:{UDP_PORT}": pod for pod, ip in PODS.items()}
    size = maglev.table_size(len(pods))
    owners = _owners(pods, size)
    slots = (maglev.flow_slot(CLIENT_ADDRESS, sport + i, LB, 53, size) for i in range(FLOWS))
    return [by_address[owners[s]] for s in slots]


@pytest.mark.parametrize("balance", ["maglev", "random"])
def test_removing_a_backend_moves_only_its_own_flows(boxes: Pair, balance: str) -> None:
    w = NftWriter(Options(balance=balance), netns=boxes.lab.lb)  # type: ignore[arg-type]
    w.sync(make_plan())
    before = boxes.flows(45000)
    result = w.sync(make_plan(2, dns=("pod1", "pod3")))
    assert result.mode == "partial"
    after = boxes.flows(45000)
    assert not [a for a in after if a.startswith("!")] and "pod2" not in after, after
    kept = [(a, b) for a, b in zip(before, after, strict=True) if a != "pod2"]
    moved = sum(a != b for a, b in kept)
    if balance == "random":  # the control: half of the other pods' flows re-pick elsewhere
        assert moved > len(kept) / 4, (moved, len(kept))
        return
    # Element-level: exactly the slots whose owner changed were rewritten (delete + add), ~1/3 of 251.
    size = maglev.table_size(3)
    changed = sum(
        a != b
        for a, b in zip(_owners(("pod1", "pod2", "pod3"), size), _owners(("pod1", "pod3"), size), strict=True)
    )
    assert result.counts["elements_added"] == result.counts["elements_deleted"] == changed
    assert (before, after) == (predicted(("pod1", "pod2", "pod3"), 45000), predicted(("pod1", "pod3"), 45000))
    assert changed <= 3 * -(-size // 3)
    # The kernel agrees: flows of pod1 and pod3 stay where they were (a slot or two of theirs may move).
    assert moved <= len(kept) * 0.1, (moved, len(kept))
