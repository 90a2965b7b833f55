"""The rendered bird.conf under real BIRD 2 daemons in network namespaces, and the VIP announcer.

Topology (namespaces under one unique prefix; nothing touches the root namespace)::

    router  eth0 10.80.0.1/24  ─┐   BIRD: eBGP AS 65000, BFD, ECMP into its kernel (`merge paths on`)
    lb1     eth0 10.80.0.11/24 ─┼─ br0 (in `sw`)   BIRD from `[bgp]` (AS 65001); the VIP on lo when fit
    lb2     eth0 10.80.0.12/24 ─┘

The links go through a bridge, so an LB's link going down is not seen by the router as a carrier loss:
it has to find out through BFD, as it would behind a switch. Each box's bird.conf comes from `[bgp]`
through `flannel_lb.bgp.bird.write`; the router's is the small test-only config below. Every daemon's
pid file and control socket live in a temporary directory of the test's own. The time the router takes
to drop a dead box's next hop is printed, never asserted (no timing assertions).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from flannel_lb import config, doctor
from flannel_lb.bgp import bird
from flannel_lb.bgp.announce import Announcer
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.daemon.tier import TierSignals
from flannel_lb.kernel.netns import RunError
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.topology import batch, sysctls
from flannel_lb.untrusted import load_json

pytestmark = pytest.mark.netns

VIP = "10.81.0.100"
ROUTER = "10.80.0.1"
LBS = {"lb1": "10.80.0.11", "lb2": "10.80.0.12"}
BFD_MS, BFD_MULT = 100, 3  # the reference measured 265 ms at these (../shared/reference §2)
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root: builds network namespaces"
    for tool in ("ip", "bird", "birdc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/setup.sh installs bird2)"
    return ""


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


# The upstream router: learns the VIP from every LB and installs one route with a next hop per LB.
ROUTER_CONF = f"""\
router id {ROUTER};
log stderr {{ info, remote, warning, error, auth, fatal, bug }};
protocol device {{
}}
protocol kernel {{
    ipv4 {{
        import none;
        export all;
    }};
    merge paths on;
}}
protocol bfd {{
    interface "*" {{
        interval {BFD_MS} ms;
        multiplier {BFD_MULT};
    }};
}}
""" + "".join(
    f"""\
protocol bgp {short} {{
    local as 65000;
    neighbor {address} as 65001;
    hold time 9;
    bfd on;
    ipv4 {{
        import all;
        export none;
    }};
}}
"""
    for short, address in LBS.items()
)


@dataclass
class Net:
    ns: Namespaces
    tmp: Path
    cfgs: dict[str, config.Config]
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    logs: list[IO[Any]] = field(default_factory=list)

    def announcer(self, short: str) -> Announcer:
        return Announcer.of(self.cfgs[short].bgp, self.ns.name(short))

    def start_bird(self, short: str, argv: list[str]) -> None:
        out = (self.tmp / f"{short}.log").open("ab")
        self.logs.append(out)
        self.procs[short] = self.ns.popen(short, argv, stdout=out, stderr=subprocess.STDOUT)

    def birdc(self, short: str, *words: str) -> str:
        socket = str(self.tmp / "router" / "bird.ctl") if short == "router" else None
        argv = ["birdc", "-s", socket, *words] if socket else bird.client(self.cfgs[short].bgp, *words)
        return self.ns.run(short, argv, check=False, timeout=30).stdout

    def next_hops(self) -> list[str]:
        """The router's gateways for the VIP: one per LB it currently routes to ([] = no route)."""
        text = self.ns.run("router", ["ip", "-j", "-4", "route", "show", f"{VIP}/32"]).stdout
        routes = load_json(text) or []
        hops: list[str] = []
        for route in routes:
            if "nexthops" in route:
                hops += [hop["gateway"] for hop in route["nexthops"]]
            elif "gateway" in route:
                hops.append(route["gateway"])
        return sorted(hops)

    def wait_for(
        self, what: str, predicate: Callable[[], bool], timeout: float = 30.0, every: float = 0.02
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.daemon_logs()}")
            time.sleep(every)

    def established(self, short: str, protocol: str) -> bool:
        lines = self.birdc(short, "show", "protocols", protocol).splitlines()
        return any(line.split()[:1] == [protocol] and "Established" in line for line in lines)

    def bfd_up(self, neighbor: str) -> bool:
        lines = self.birdc("router", "show", "bfd", "sessions").splitlines()
        return any(line.split()[:1] == [neighbor] and " Up " in f" {line} " for line in lines)

    def daemon_logs(self) -> str:
        parts = []
        for path in sorted(self.tmp.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        parts.append(f"--- router: birdc show protocols\n{self.birdc('router', 'show', 'protocols')}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for out in self.logs:
            out.close()


def _bgp_config(tmp: Path, short: str, sections: str = "", bgp_keys: str = "") -> config.Config:
    path = tmp / f"{short}.toml"
    path.write_text(
        f'{sections}[lb]\naddresses = ["{VIP}"]\n[bgp]\nenabled = true\nasn = 65001\n'
        f'neighbors = [{{ address = "{ROUTER}", asn = 65000 }}]\n'
        f'bfd_interval_ms = {BFD_MS}\nbfd_multiplier = {BFD_MULT}\nstate_dir = "{tmp / short}"\n{bgp_keys}'
    )
    return config.load(path)  # router_id: the default, the VIP, on both boxes (as one shared file gives)


@contextmanager
def bgp_net(tag: str = "bgp", sections: str = "", bgp_keys: dict[str, str] | None = None) -> Iterator[Net]:
    """The router and two LBs on a bridge, BIRD running in each, sessions up; no VIP announced yet.

    `sections` (TOML tables) are added to both LBs' config files (`tmp / "lb1.toml"`, `tmp / "lb2.toml"`),
    `bgp_keys[short]` (lines of [bgp]) to that LB's."""
    tmp = Path(tempfile.mkdtemp(prefix="flb-bgp-"))  # short: BIRD's socket path must fit sockaddr_un
    try:
        with Namespaces(unique_prefix(tag)) as ns:
            ns.add("sw")
            sysctls(ns, "sw", NO_IPV6)
            batch(ns, "sw", ["link add br0 type bridge", "link set br0 up"])
            for short, address in {"router": ROUTER, **LBS}.items():
                ns.add(short)
                sysctls(ns, short, NO_IPV6)
                ns.veth(short, "eth0", "sw", f"p-{short}")
                batch(ns, "sw", [f"link set p-{short} master br0"])
                batch(ns, short, [f"addr add {address}/24 dev eth0"])
            keys = bgp_keys or {}
            cfgs = {short: _bgp_config(tmp, short, sections, keys.get(short, "")) for short in LBS}
            n = Net(ns, tmp, cfgs)
            try:
                (tmp / "router").mkdir()
                (tmp / "router" / "bird.conf").write_text(ROUTER_CONF)
                sock, pid = tmp / "router" / "bird.ctl", tmp / "router" / "bird.pid"
                n.start_bird(
                    "router",
                    ["bird", "-f", "-c", str(tmp / "router/bird.conf"), "-s", str(sock), "-P", str(pid)],
                )
                for short, cfg in cfgs.items():
                    bird.write(cfg.bgp)
                    n.start_bird(short, bird.command(cfg.bgp))
                for short in LBS:
                    n.wait_for(
                        f"the router's session with {short}", lambda s=short: n.established("router", s)
                    )
                    n.wait_for(f"{short}'s session", lambda s=short: n.established(s, bird.protocol_name(1)))
                yield n
            finally:
                n.close()  # then the namespaces go, with anything left running in them
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def net() -> Iterator[Net]:
    with bgp_net() as n:
        yield n


def test_the_router_learns_the_vip_only_once_announced_and_routes_ecmp_over_both_lbs(net: Net) -> None:
    time.sleep(1)  # sessions are up: give a wrongly exported route time to show (not a timing assertion)
    assert net.next_hops() == []  # established sessions announce nothing until the VIP is on lo
    assert net.announcer("lb1").announce() == [f"+{VIP}"]
    net.wait_for("a route via lb1", lambda: net.next_hops() == [LBS["lb1"]])
    assert net.announcer("lb2").announce() == [f"+{VIP}"]
    net.wait_for("an ECMP route via both LBs", lambda: net.next_hops() == sorted(LBS.values()))
    route = net.ns.run("router", ["ip", "route", "show", f"{VIP}/32"]).stdout
    assert "proto bird" in route and route.count("nexthop via") == 2, route
    # only the VIP: lo's 127.0.0.1/8 and the LB's own link address are not exported
    learned = load_json(net.ns.run("router", ["ip", "-j", "-4", "route", "show", "proto", "bird"]).stdout)
    assert [route["dst"] for route in learned] == [VIP], learned


def test_withdrawing_the_vip_on_one_lb_drops_its_next_hop(net: Net) -> None:
    for short in LBS:
        net.announcer(short).announce()
    net.wait_for("an ECMP route via both LBs", lambda: net.next_hops() == sorted(LBS.values()))
    t = time.monotonic()
    assert net.announcer("lb2").withdraw() == [VIP]
    net.wait_for("the route via lb1 alone", lambda: net.next_hops() == [LBS["lb1"]])
    took = time.monotonic() - t
    print(f"\nplanned withdraw (VIP off lb2's lo) -> router drops lb2's next hop: {took * 1000:.0f} ms")
    assert net.established("router", "lb2")  # the session stays: only the route went
    assert net.announcer("lb2").withdraw() == []  # idempotent
    assert net.announcer("lb2").announce() == [f"+{VIP}"]
    net.wait_for("both next hops again", lambda: net.next_hops() == sorted(LBS.values()))


def test_a_dead_lb_is_routed_around_by_bfd(net: Net) -> None:
    for short in LBS:
        net.announcer(short).announce()
    net.wait_for("an ECMP route via both LBs", lambda: net.next_hops() == sorted(LBS.values()))
    for address in LBS.values():
        net.wait_for(f"the router's BFD session with {address}", lambda a=address: net.bfd_up(a))
    # unplanned death: its link down (the bridge port, not the router's: no carrier loss there), then
    # SIGKILL of its BIRD, so nothing says goodbye
    batch(net.ns, "lb1", ["link set eth0 down"])
    t = time.monotonic()
    os.kill(net.procs["lb1"].pid, signal.SIGKILL)
    polls = 0

    def one_hop() -> bool:
        nonlocal polls
        polls += 1
        return net.next_hops() == [LBS["lb2"]]

    net.wait_for("the router to drop lb1's next hop", one_hop, timeout=30, every=0.001)
    lost = time.monotonic() - t
    print(
        f"\nLB killed -> router's route has one next hop: {lost * 1000:.0f} ms "
        f"(BFD {BFD_MS} ms x {BFD_MULT}; {polls} route polls, each a fork of `ip` in the router's namespace)"
    )
    assert "Established" not in net.birdc("router", "show", "protocols", "lb1")
    assert net.established("router", "lb2")


# --- the announcer alone (no BIRD) ------------------------------------------------------------------


@pytest.fixture
def box() -> Iterator[tuple[Namespaces, str]]:
    with Namespaces(unique_prefix("bgpa")) as ns:
        ns.add("lb")
        sysctls(ns, "lb", NO_IPV6)
        yield ns, ns.name("lb")


def _addrs(ns: Namespaces, dev: str = "lo") -> list[tuple[str, int, str]]:
    text = ns.run("lb", ["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout
    return sorted(
        (a["local"], a["prefixlen"], a.get("label", ""))
        for link in load_json(text)
        for a in link["addr_info"]
    )


def test_announce_is_idempotent_and_labels_what_it_adds(box: tuple[Namespaces, str]) -> None:
    ns, name = box
    a = Announcer("lo", ("10.81.0.1", "10.81.0.2"), name)
    assert a.announce() == ["+10.81.0.1", "+10.81.0.2"]
    assert a.announce() == []
    assert _addrs(ns) == [("10.81.0.1", 32, "lo:flb"), ("10.81.0.2", 32, "lo:flb"), ("127.0.0.1", 8, "lo")]
    assert a.announced() == ["10.81.0.1", "10.81.0.2"]
    assert a.withdraw() == ["10.81.0.1", "10.81.0.2"]
    assert a.withdraw() == []
    assert _addrs(ns) == [("127.0.0.1", 8, "lo")]


def test_announce_never_touches_an_address_it_did_not_add(box: tuple[Namespaces, str]) -> None:
    ns, name = box
    # an operator's address that is also a VIP, and one that is not: neither is flannel-lb's
    batch(ns, "lb", ["addr add 10.81.0.1/32 dev lo", "addr add 10.82.0.9/32 dev lo label lo:op"])
    a = Announcer("lo", ("10.81.0.1", "10.81.0.2"), name)
    assert a.announce() == ["+10.81.0.2"]
    assert a.foreign() == ["10.81.0.1"]
    assert a.withdraw() == ["10.81.0.2"]
    assert _addrs(ns) == [("10.81.0.1", 32, "lo"), ("10.82.0.9", 32, "lo:op"), ("127.0.0.1", 8, "lo")]


def test_announce_removes_its_own_address_the_config_no_longer_lists(box: tuple[Namespaces, str]) -> None:
    _, name = box
    Announcer("lo", ("10.81.0.1", "10.81.0.2"), name).announce()  # a previous run, another config
    a = Announcer("lo", ("10.81.0.2", "10.81.0.3"), name)
    assert a.announce() == ["-10.81.0.1", "+10.81.0.3"]
    assert a.announced() == ["10.81.0.2", "10.81.0.3"]


def test_announce_on_a_missing_interface_says_so(box: tuple[Namespaces, str]) -> None:
    _, name = box
    with pytest.raises(RunError, match="vip0"):
        Announcer("vip0", ("10.81.0.1",), name).announce()


# --- check and metrics: the sessions as BIRD reports them -------------------------------------------


def _check(net: Net, short: str) -> dict[str, tuple[str, str]]:
    """`check`'s BGP lines for one LB (no etcd here: its check gives up at once)."""
    cfg = net.cfgs[short]
    cfg = dataclasses.replace(cfg, etcd=dataclasses.replace(cfg.etcd, retry_budget=0.1, timeout=0.1))
    results = doctor.run_checks(cfg, net.ns.name(short))
    return {r.name: (r.status, r.detail) for r in results if r.name.startswith("bgp")}


def test_check_shows_each_session_its_bfd_state_and_what_is_announced(net: Net) -> None:
    net.wait_for("lb1's BFD session", lambda: "Up" in net.birdc("lb1", "show", "bfd", "sessions"))
    found = _check(net, "lb1")
    status, detail = found["bgp sessions"]
    assert status == "ok", detail
    assert detail.startswith("1 of 1 sessions established with BFD up\n")
    assert f"flannel_lb_peer1 {ROUTER} AS65000: BGP up Established since " in detail
    assert "BFD Up on eth0" in detail
    assert found["bgp announced"][0] == "warn" and f"not announced: {VIP}" in found["bgp announced"][1]
    net.announcer("lb1").announce()
    assert found["bgp announced"] != _check(net, "lb1")["bgp announced"]
    assert _check(net, "lb1")["bgp announced"] == ("ok", f"announced on lo: {VIP}")
    # the router goes away: the session and BFD go down, and `check` says so
    net.procs["router"].kill()
    net.wait_for("lb1's session to drop", lambda: not net.established("lb1", bird.protocol_name(1)))
    status, detail = _check(net, "lb1")["bgp sessions"]
    assert status == "fail" and detail.startswith("0 of 1 sessions established"), detail
    net.procs["lb1"].kill()
    net.procs["lb1"].wait(10)
    status, detail = _check(net, "lb1")["bgp sessions"]
    assert status == "fail" and "BIRD does not answer on its control socket" in detail, detail


def _metric(metrics: Metrics, line_start: str) -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in the metrics")


def test_the_session_and_announcement_metrics_follow_bird(net: Net) -> None:
    net.wait_for("lb1's BFD session", lambda: "Up" in net.birdc("lb1", "show", "bfd", "sessions"))
    metrics = Metrics()
    tier = TierSignals(net.cfgs["lb1"], metrics, net.announcer("lb1"))
    tier.serving(live=True)
    tier.poll_sessions(0.0)
    assert _metric(metrics, "flannel_lb_bgp_announced_vips ") == 1
    assert _metric(metrics, f'flannel_lb_bgp_session_up{{neighbor="{ROUTER}"}}') == 1
    assert _metric(metrics, f'flannel_lb_bgp_bfd_up{{neighbor="{ROUTER}"}}') == 1
    tier.drain()
    assert _metric(metrics, "flannel_lb_bgp_announced_vips ") == 0
    assert _metric(metrics, "flannel_lb_bgp_draining ") == 1
    net.procs["lb1"].kill()
    net.procs["lb1"].wait(10)
    tier.poll_sessions(10.0)
    assert _metric(metrics, f'flannel_lb_bgp_session_up{{neighbor="{ROUTER}"}}') == 0
    assert _metric(metrics, "flannel_lb_bgp_status_failures_total ") == 1
