"""A planned drain of one of two LBs behind real BIRD, under load, with the real agents and the real verb.

Topology: tests/test_bgp_bird.py's router and two LBs on a bridge (its `bgp_net`), plus::

    client  eth0 10.90.0.2/24 ── router eth1 10.90.0.1/24 (ECMP, fib_multipath_hash_policy = 1)
    node    eth0 10.80.0.21/24 on the LBs' bridge: etcd, and one pod 10.246.1.2 (a TCP echo server)
            behind a host-gw lease (each LB routes 10.246.1.0/24 via 10.80.0.21, as flanneld would)

Each LB runs `flannel-lb run` (nft data plane, maglev) from its own config file and its own BIRD; the
agents announce the VIP after their first sync. The client runs flannel_lb.lab.flows: long-lived flows
exchanging data every 20 ms plus a steady rate of new connections. `flannel-lb drain` on lb1 then
withdraws lb1, waits for its open flows, and the agent exits. Figures are printed, never asserted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.lab.lbagent import AgentProcess
from flannel_lb.lab.objects import endpoint, endpoint_slice, lease, port, service
from flannel_lb.lab.topology import batch, sysctls
from tests.conftest import FAST_ETCD_ARGS
from tests.test_bgp_bird import LBS, NO_IPV6, ROUTER, VIP, Net, bgp_net

pytestmark = pytest.mark.netns

NODE, POD, PORT = "10.80.0.21", "10.246.1.2", 9000
ETCD = f"http://{NODE}:2379"
SECTIONS = (
    f'[etcd]\nendpoints = ["{ETCD}"]\nretry_budget = 10.0\n'
    '[dataplane]\nwriter = "nft"\nbalance = "maglev"\n'
    '[metrics]\nlisten = ""\n[log]\nlevel = "info"\nformat = "json"\n'
)


def _put(net: Net, key: str, value: bytes) -> None:
    net.ns.run("node", ["etcdctl", f"--endpoints={ETCD}", "put", key], input=value.decode())


def _python(*argv: str) -> list[str]:
    return [sys.executable, "-m", *argv]


class Lab:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.agents: dict[str, AgentProcess] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def config(self, short: str) -> Path:
        return self.net.tmp / f"{short}.toml"

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Both agents serving and announcing; `request.param`: (drain_timeout, second chance on)."""
    timeout, second_chance = getattr(request, "param", (20, True))
    on_sigterm = "drain_on_sigterm = true\n"  # only SIGTERM's test sends one; the verb drains either way
    group = ", ".join(f'"{address}"' for address in LBS.values())  # one list for both: each skips itself
    keys = {
        short: f"drain_timeout = {timeout}\n{on_sigterm}" + (f"peers = [{group}]\n" if second_chance else "")
        for short in LBS
    }
    with bgp_net("bgpd", SECTIONS, keys) as net:
        ns, lab = net.ns, Lab(net)
        etcd = None
        try:
            ns.add("client")
            sysctls(ns, "client", NO_IPV6)
            ns.veth("client", "eth0", "router", "eth1")
            batch(ns, "client", ["addr add 10.90.0.2/24 dev eth0", "route add default via 10.90.0.1"])
            batch(ns, "router", ["addr add 10.90.0.1/24 dev eth1"])
            sysctls(ns, "router", {"net.ipv4.ip_forward": "1", "net.ipv4.fib_multipath_hash_policy": "1"})
            ns.add("node")
            sysctls(ns, "node", NO_IPV6)
            ns.veth("node", "eth0", "sw", "p-node")
            batch(ns, "sw", ["link set p-node master br0"])
            batch(ns, "node", [f"addr add {NODE}/24 dev eth0", f"addr add {POD}/32 dev lo"])
            for short in LBS:
                batch(ns, short, [f"route add default via {ROUTER}", f"route add 10.246.1.0/24 via {NODE}"])
            etcd = EtcdServer(net.tmp / "etcd", host=NODE, netns=ns.name("node"), extra_args=FAST_ETCD_ARGS)
            etcd.start()
            _put(
                net,
                "/coreos.com/network/config",
                b'{"Network": "10.246.0.0/16", "Backend": {"Type": "host-gw"}}',
            )
            _put(net, "/coreos.com/network/subnets/10.246.1.0-24", lease(NODE, backend="host-gw"))
            web = service("web", external_ips=[VIP], ports=[port(PORT)])
            _put(net, "/registry/services/specs/default/web", json.dumps(web).encode())
            eps = endpoint_slice("web-1", "web", [endpoint(POD, "node", pod="web-0")], [("", PORT, "TCP")])
            _put(net, "/registry/endpointslices/default/web-1", json.dumps(eps).encode())
            lab.procs.append(ns.popen("node", _python("flannel_lb.lab.flows", "serve", f"{POD}:{PORT}")))
            for short in LBS:
                log_path = net.tmp / f"{short}-agent.log"
                lab.agents[short] = AgentProcess(ns.name(short), lab.config(short), log_path).start()
            for agent in lab.agents.values():
                agent.wait_for(lambda e: e.get("event") == "bgp_announced", timeout=30)
            net.wait_for("an ECMP route via both LBs", lambda: net.next_hops() == sorted(LBS.values()))
            yield lab
        finally:
            lab.close()
            if etcd is not None:
                etcd.stop()


def _open_flows(net: Net, short: str) -> int:
    """Established TCP flows to the VIP in a box's conntrack (conntrack-tools, as an operator counts)."""
    out = net.ns.run(short, ["conntrack", "-L", "-p", "tcp", "-d", VIP, "--state", "ESTABLISHED"])
    return sum(1 for line in out.stdout.splitlines() if line.startswith("tcp"))


def _counter(nft_table: str) -> int:
    """Packets the second-chance rule sent on (its first counter)."""
    for line in nft_table.splitlines():
        if "dup to" in line and "counter packets" in line:
            return int(line.split("counter packets", 1)[1].split()[0])
    raise AssertionError(f"no second-chance rule in\n{nft_table}")


@dataclass
class Drained:
    before: dict[str, int]  # established flows to the VIP on each box when the drain began
    verb: subprocess.CompletedProcess[str]
    took: float  # the verb, from the signal to the agent's exit
    started: dict[str, Any]  # the agent's drain_started line
    finished: dict[str, Any]
    load: dict[str, Any]  # the client's summary (flows.Summary)
    redirected: int  # packets lb2 passed on to lb1 (second chance)

    def show(self, what: str) -> None:
        print(
            f"\n{what}: established flows when the drain began {self.before}\n"
            f"  verb ({self.took:.1f} s, exit {self.verb.returncode}): {self.verb.stdout.strip()!r}\n"
            f"  drain_started: open_flows={self.started['open_flows']}, "
            f"withdrawn {self.started['withdrawn']}\n"
            f"  drain_finished: {self.finished['reason']} after {self.finished['seconds']} s, "
            f"open_flows_left={self.finished['open_flows_left']}\n"
            f"  load: new connections ok {self.load['new_ok']} failed {self.load['new_failed']}; long-lived "
            f"flows completed {self.load['flows_completed']} broken {self.load['flows_broken']} "
            f"{self.load['flow_errors']} closed at the end {self.load['flows_closed_at_stop']}; "
            f"packets lb2 passed to lb1: {self.redirected}"
        )


def _drain_under_load(lab: Lab, life: float, second_chance: bool = True, sigterm: bool = False) -> Drained:
    """20 long-lived flows of `life` s each (one after the other) and 50 new connections/s through both
    boxes, `flannel-lb drain` on lb1, 2 s more load through lb2 alone, then the client's summary."""
    net = lab.net
    stop = net.tmp / "stop-load"
    argv = ["flannel_lb.lab.flows", "load", f"{VIP}:{PORT}", "--stop-file", str(stop)]
    load = net.ns.popen(
        "client", _python(*argv, "--flows", "20", "--rate", "50", "--life", str(life)), stdout=subprocess.PIPE
    )
    lab.procs.append(load)
    time.sleep(4)  # flows through both boxes
    before = {short: _open_flows(net, short) for short in LBS}
    t = time.monotonic()
    agent = lab.agents["lb1"]
    if sigterm:  # what `systemctl stop` sends; the unit's drain_on_sigterm = true
        agent.signal(signal.SIGTERM)
        assert agent.proc is not None
        agent.proc.wait(60)
        verb = subprocess.CompletedProcess(["kill", "-TERM"], 0, "(SIGTERM)", "")
    else:
        verb = net.ns.run(
            "lb1", _python("flannel_lb", "--config", str(lab.config("lb1")), "drain"), check=False, timeout=90
        )
    took = time.monotonic() - t
    assert agent.proc is not None and agent.proc.wait(10) == 0, verb.stderr
    assert net.next_hops() == [LBS["lb2"]]
    assert VIP not in net.ns.run("lb1", ["ip", "-4", "addr", "show", "dev", "lo"]).stdout
    time.sleep(2)  # new connections keep coming, all through lb2
    table = net.ns.run("lb2", ["nft", "list", "table", "ip", "flb_bgp"], check=False).stdout
    stop.touch()
    out, _ = load.communicate(timeout=60)
    events = agent.events
    return Drained(
        before,
        verb,
        took,
        next(e for e in events if e.get("event") == "drain_started"),
        next(e for e in events if e.get("event") == "drain_finished"),
        json.loads(out),
        _counter(table) if second_chance else 0,
    )


def test_draining_one_of_two_lbs_under_load_fails_nothing_and_resets_nothing(lab: Lab) -> None:
    d = _drain_under_load(lab, life=3)
    d.show("drain, flows of 3 s, second chance on")
    events = [e.get("event") for e in lab.agents["lb2"].events]
    assert "bgp_redirect_written" in events and "bgp_status_unreadable" not in events  # BIRD polled fine
    assert d.before["lb1"] > 0 and d.before["lb2"] > 0  # the router spread the flows over both
    assert d.load["new_failed"] == 0, d.load
    assert d.load["flows_broken"] == 0, d.load
    assert d.load["flows_completed"] > 0
    assert d.finished["reason"] == "flows finished" and d.finished["open_flows_left"] == 0
    assert d.verb.returncode == 0 and "0 open flows left" in d.verb.stdout
    assert d.redirected > 0  # lb1's flows reached lb2 after the withdraw, and went on to lb1


def test_sigterm_drains_when_configured(lab: Lab) -> None:
    d = _drain_under_load(lab, life=3, sigterm=True)
    d.show("SIGTERM with drain_on_sigterm, flows of 3 s, second chance on")
    assert d.load["new_failed"] == 0 and d.load["flows_broken"] == 0, d.load
    assert d.finished["reason"] == "flows finished"


@pytest.mark.parametrize("lab", [(2, True)], indirect=True)
def test_a_drain_reports_the_flows_still_open_at_its_deadline(lab: Lab) -> None:
    d = _drain_under_load(lab, life=60)  # no flow ends by itself during the test
    d.show("drain with a 2 s deadline, flows of 60 s")
    assert d.finished["reason"] == "deadline"
    assert d.finished["open_flows_left"] > 0 and d.started["open_flows"] > 0
    assert d.verb.returncode == 1 and f"{d.finished['open_flows_left']} open flows left" in d.verb.stdout
    # the agent is gone, its rules are not: lb2 still hands lb1's flows on, and lb1 still serves them
    assert d.load["flows_broken"] == 0 and d.load["new_failed"] == 0, d.load


@pytest.mark.parametrize("lab", [(2, False)], indirect=True)
def test_without_second_chance_the_router_moves_the_drained_boxs_flows_and_they_are_reset(lab: Lab) -> None:
    """Why `[bgp] peers` exists: ECMP is stateless, so the withdrawn box's flows go to the other box,
    which has no state for them; the pod resets each one (the reference measured 0 of 10 surviving)."""
    d = _drain_under_load(lab, life=60, second_chance=False)
    d.show("drain without second chance")
    assert d.load["flows_broken"] > 0, d.load  # (a new connection caught mid-handshake may fail too)
    assert d.finished["reason"] == "deadline"  # lb1's entries stay established: nothing ends them
