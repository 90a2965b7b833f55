"""The nftables data plane (`dataplane.writer = "nft"`) against a real kernel, in namespaces.

The same topology and the same behaviours as `test_dataplane_netns` (which covers the iptables
writers): balancing and MASQUERADE, UDP and conntrack cleanup, ClientIP affinity, refusals, cluster-ip
frontends from the LB only, partial syncs, drift repair, adoption on restart, failed transactions, and
someone else's firewall (iptables-nft rules and another nftables table) left exactly as it was.

One difference is on purpose: the LB's iptables FORWARD policy is ACCEPT here. An accept in one
nftables table cannot overrule a drop in another (iptables-nft's FORWARD policy), so hosts with a DROP
policy must accept flannel-lb's ctmark themselves; `flannel-lb check` says so.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from flannel_lb.dataplane.nftables.layout import LayoutBuilder
from flannel_lb.dataplane.nftables.writer import NftError, NftWriter
from flannel_lb.dataplane.options import Options
from flannel_lb.kernel.conntrack import clear_stale, stale_flows
from flannel_lb.plan.model import Frontend, Plan
from tests.test_dataplane_netns import (
    CLIENT,
    LB,
    PODS,
    UDP_PORT,
    Lab,
    backends,
    build_lab,
    make_plan,
    normalized_save,
)

pytestmark = pytest.mark.netns

if shutil.which("nft") is None:
    pytest.skip("`nft` is not installed (apt install nftables)", allow_module_level=True)

FOREIGN_NFT = """
table inet other-firewall {
  set admins { type ipv4_addr; elements = { 192.0.2.7 } }
  chain input { type filter hook input priority 10; policy accept; tcp dport 2222 ip saddr != @admins drop; }
}
"""


def ruleset(lab: Lab) -> list[str]:
    """`nft list ruleset` without counters (traffic changes them), the whole kernel side of the LB."""
    text = lab.ns.run("lb", ["nft", "list", "ruleset"]).stdout
    return [re.sub(r"counter packets \d+ bytes \d+ ?", "", ln) for ln in text.splitlines()]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for the_lab in build_lab("nft", forward_policy="ACCEPT"):
        the_lab.ns.run("lb", ["nft", "-f", "-"], input=FOREIGN_NFT)
        the_lab.baseline = the_lab.save()
        yield the_lab


@pytest.fixture
def baseline(lab: Lab) -> Iterator[list[str]]:
    """The LB's firewall before the test; afterwards cleanup must leave exactly that."""
    lab.flush_conntrack()
    before = ruleset(lab)
    assert not [ln for ln in before if "table ip flb" in ln]
    yield before
    NftWriter(netns=lab.lb).cleanup()
    assert ruleset(lab) == before
    assert normalized_save(lab.save()) == normalized_save(lab.baseline)


def writer(lab: Lab, **options: object) -> NftWriter:
    return NftWriter(Options(**options), netns=lab.lb)  # type: ignore[arg-type]


def test_tcp_spreads_over_all_pods_and_needs_masquerade(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    assert w.sync(make_plan()).mode == "adopt"  # nothing to adopt: the table is created
    answers = Counter(lab.client("tcp", LB, 80, 300))
    assert set(answers) == set(PODS), answers
    assert all(answers[p] > 30 for p in PODS), answers
    foreign = [ln for ln in ruleset(lab) if ln not in baseline]
    assert foreign and all("flb" in ln or not ln.startswith("table") for ln in foreign)

    w.options = Options(masquerade=False)  # the seed's failure: replies are lost behind the router
    assert w.sync(make_plan()).mode == "full"
    assert lab.client("tcp", LB, 80, 3, 0.5) == ["!timeout"] * 3
    w.options = Options()
    w.sync(make_plan())
    assert lab.client("tcp", LB, 80, 3)[0] in PODS


def test_udp_and_conntrack_cleanup_of_a_removed_backend(lab: Lab, baseline: list[str]) -> None:
    w, opts = writer(lab), Options()
    old = make_plan()
    w.sync(old)
    first = lab.client("udp", LB, 53, 60, 2.0, "41000")
    assert set(first) == set(PODS), first
    assert all(e[4] & opts.mark for e in lab.conntrack(socket.IPPROTO_UDP) if e[1] == 53)
    new = make_plan(2, web=("pod1", "pod3"), dns=("pod1", "pod3"))
    result = w.sync(new)
    assert result.mode == "partial"
    assert clear_stale(stale_flows(old, new), netns=lab.lb, mark=opts.mark).deleted == first.count("pod2")
    again = lab.client("udp", LB, 53, 60, 2.0, "41000")
    assert set(again) <= {"pod1", "pod3"} and not [a for a in again if a.startswith("!")]


def test_client_ip_affinity_sticks_and_survives_endpoint_churn(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    w.sync(make_plan())
    answers = set(lab.client("tcp", LB, 8080, 30))
    assert len(answers) == 1 and answers <= set(PODS), answers
    (pod,) = answers
    others = tuple(p for p in PODS if p != pod)
    # Another endpoint leaves: this client's pod is still there, so it stays on it.
    w.sync(make_plan(2, web=(pod, others[0])))
    assert set(lab.client("tcp", LB, 8080, 20)) == {pod}
    # Its pod leaves: the client moves, and sticks to the new one.
    w.sync(make_plan(3, web=others))
    moved = set(lab.client("tcp", LB, 8080, 20))
    assert len(moved) == 1 and moved <= set(others), moved


def test_empty_frontend_is_refused_not_timed_out(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    w.sync(make_plan())
    # The foreign iptables firewall DROPs 81/tcp and 82/udp: only flannel-lb's refusal answers.
    assert lab.client("tcp", LB, 81, 2, 1.0) == ["!refused"] * 2
    assert lab.client("udp", LB, 82, 2, 1.0) == ["!refused"] * 2
    assert lab.run_client("lb", "tcp", LB, 81, 1, 1.0) == ["!refused"]
    w.options = Options(reject_empty=False)
    w.sync(make_plan())
    assert lab.client("tcp", LB, 81, 1, 0.5) == ["!timeout"]


def test_cluster_ip_only_from_the_lb_itself(lab: Lab, baseline: list[str]) -> None:
    writer(lab).sync(make_plan())
    assert set(lab.run_client("lb", "tcp", "10.96.0.10", 80, 30, 2.0)) == set(PODS)
    assert lab.run_client("lb", "tcp", LB, 80, 1, 2.0)[0] in PODS
    assert lab.client("tcp", "10.96.0.10", 80, 1, 0.5)[0].startswith("!")


def test_partial_sync_sends_only_the_changed_elements_and_verify_repairs_drift(
    lab: Lab, baseline: list[str]
) -> None:
    w = writer(lab)
    w.sync(make_plan())
    result = w.sync(make_plan(2, dns=("pod1", "pod3")))
    assert result.mode == "partial"
    lines = result.text.splitlines()
    assert all(ln.startswith(("add element", "delete element", "add chain", "add rule")) for ln in lines)
    assert not any(f" . {port} " in ln for ln in lines for port in (80, 8080, 81))  # others untouched
    assert result.summary() == {
        "elements_added": 2,  # 53/udp now goes to balance-2-udp; its endpoint 1 is pod3
        "elements_deleted": 3,  # the old dispatch element, endpoints 1 (pod2) and 2 (pod3)
        "objects_added": 0,
        "objects_deleted": 0,
    }
    assert set(lab.client("udp", LB, 53, 30)) == {"pod1", "pod3"}
    assert not w.sync(make_plan(2, dns=("pod1", "pod3"))).applied  # nothing changed: no transaction

    # Drift: an admin empties the dispatch chain and deletes an endpoint. Memory cannot see it; a
    # verify sync reads the table back and replaces it.
    lab.ns.run("lb", ["nft", "flush", "chain", "ip", "flb", "prerouting"])
    lab.ns.run("lb", ["nft", "delete", "element", "ip", "flb", "endpoints-tcp", "{ " + LB + " . 80 . 0 }"])
    assert lab.client("tcp", LB, 80, 1, 0.5)[0].startswith("!")
    assert not w.sync(make_plan(2, dns=("pod1", "pod3"))).applied
    repair = w.sync(make_plan(2, dns=("pod1", "pod3")), verify=True)
    assert repair.mode == "verify" and repair.applied
    assert any("prerouting" in d for d in w.last_drift) and any("1 missing" in d for d in w.last_drift)
    assert set(lab.client("tcp", LB, 80, 30)) == set(PODS)
    # Nobody committed since the repair: the next verify trusts the generation and reads nothing back.
    reads = w.verify_reads
    assert not w.sync(make_plan(2, dns=("pod1", "pod3")), verify=True).applied
    assert w.verify_reads == reads
    lab.iptables("-t nat -A OTHER-NAT -p tcp --dport 9998 -j DNAT --to-destination 10.9.9.8")
    try:  # someone else's commit (here iptables-nft's) makes the next verify read the table back
        assert not w.sync(make_plan(2, dns=("pod1", "pod3")), verify=True).applied
        assert w.verify_reads == reads + 1
    finally:
        lab.iptables("-t nat -D OTHER-NAT -p tcp --dport 9998 -j DNAT --to-destination 10.9.9.8")


def test_restart_adopts_the_table_without_rewriting_it(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    w.sync(make_plan())
    stop = f"/tmp/{lab.lb}-stop"
    loop = lab.ns.popen("cl", [sys.executable, "-c", CLIENT, "loop", LB, "80", stop], stdout=subprocess.PIPE)
    try:
        time.sleep(0.3)
        restarted = writer(lab)  # a new agent process: knows nothing, reads the kernel
        result = restarted.sync(make_plan())
        assert result.mode == "adopt" and not result.applied and result.text == ""
        # A table left by an older agent with other content is replaced in one transaction.
        changed = writer(lab).sync(make_plan(2, web=("pod1",)))
        assert changed.mode == "adopt" and changed.summary()["tables_replaced"] == 1
        time.sleep(0.3)
    finally:
        with open(stop, "w"):
            pass
        out, _ = loop.communicate(timeout=30)
        subprocess.run(["rm", "-f", stop], check=False)
    report = json.loads(out)
    assert report["failed"] == [] and report["ok"] > 0


def test_failed_transaction_changes_nothing_and_next_sync_is_full(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    w.sync(make_plan())
    lab.ns.run("lb", ["nft", "delete", "table", "ip", "flb"])  # an admin removes the table
    with pytest.raises(NftError, match=r"at line 1: add chain ip flb balance-1-udp: .* No such file"):
        w.sync(make_plan(2, dns=("pod1",)))  # the partial sync has no table to change
    assert ruleset(lab) == baseline  # the failed transaction left no trace
    assert w.sync(make_plan(2, dns=("pod1",))).mode == "full"
    assert set(lab.client("udp", LB, 53, 10)) == {"pod1"}
    assert w.sync(make_plan(3)).mode == "partial"


def test_adopted_table_keeps_its_leftover_balance_chains(lab: Lab, baseline: list[str]) -> None:
    w = writer(lab)
    w.sync(make_plan())  # balance-3-*
    w.sync(make_plan(2, web=("pod1", "pod2")))  # adds balance-2-tcp; balance-3-tcp stays unused
    restarted = writer(lab)
    assert restarted.sync(make_plan(2, web=("pod1", "pod2"))).mode == "adopt"
    back = restarted.sync(make_plan(3))  # balance-3-tcp is there already: elements only
    assert back.mode == "partial" and "chain ip flb balance" not in back.text
    assert "rule ip flb balance" not in back.text
    assert not restarted.drift(restarted.read_kernel(), restarted.builder.build(make_plan(3)))
    assert set(lab.client("tcp", LB, 80, 30)) == set(PODS)


def test_layout_builder_reuses_unchanged_frontends() -> None:
    builder = LayoutBuilder(Options())
    plan = make_plan()
    first = builder.build(plan)
    changed = Frontend(LB, 53, "UDP", "default/dns", "dns", backends=backends("pod1", port=UDP_PORT))
    second = builder.build(Plan(2, tuple(changed if f.port == 53 else f for f in plan.frontends)))
    reused = [k for k, e in second.frontends.items() if first.frontends.get(k) is e]
    assert sorted(reused) == sorted(k for k in first.frontends if k != (LB, 53, "UDP"))
    assert second.frontends[(LB, 53, "UDP")] != first.frontends[(LB, 53, "UDP")]
    assert second.changed == {(LB, 53, "UDP")} and second.base is first
    again = builder.build(Plan(3, tuple(changed if f.port == 53 else f for f in plan.frontends)))
    assert again.changed == set() and again.base is second and second.base is None  # no history chain
    third = builder.build(Plan(3, plan.frontends[1:]))  # a frontend went: rebuilt, entries reused
    assert third.changed is None and (LB, 80, "TCP") not in third.frontends
    assert third.frontends[(LB, 8080, "TCP")] is second.frontends[(LB, 8080, "TCP")]
