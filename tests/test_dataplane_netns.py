"""The data plane against real kernels: namespaces, real TCP/UDP servers, both iptables backends.

Topology (one per iptables backend), rebuilding the seed's failure on purpose:

    client 192.168.121.1 --- 192.168.121.201 LB 10.246.90.1 --- 10.246.90.254 router --- 10.246.{1,2,3}.2 pods

The router knows the pod subnets and the LB's pod-side network, but not the client network: a pod's reply
to a client address is lost there, exactly like the seed's DNAT-only setup. Only MASQUERADE (replies go
to 10.246.90.1) makes it work. Everything happens inside namespaces created here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flannel_lb.dataplane.iptables.changes import compute_changes
from flannel_lb.dataplane.iptables.restore import RestoreError, RestoreWriter, diff
from flannel_lb.dataplane.iptables.rules import Chain, Rule, RuleBuilder, RuleSet, build_ruleset
from flannel_lb.dataplane.iptables.savefile import foreign_lines, parse_save
from flannel_lb.dataplane.iptables.sync_state import SyncState
from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.plane import IptablesPlane
from flannel_lb.kernel.conntrack import ConntrackCounts, clear_stale, stale_flows
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.plan.model import Affinity, Backend, Frontend, Plan

pytestmark = pytest.mark.netns

LB = "192.168.121.201"
PODS = {"pod1": "10.246.1.2", "pod2": "10.246.2.2", "pod3": "10.246.3.2"}
HTTP_PORT, UDP_PORT = 8080, 5353


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root: builds network namespaces"
    for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return ""


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


POD_SERVER = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer.allow_reuse_address = True
http = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), H)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", int(sys.argv[3])))
def echo():
    while True:
        _, peer = udp.recvfrom(2048); udp.sendto(name.encode(), peer)
threading.Thread(target=echo, daemon=True).start()
print("ready", flush=True)
http.serve_forever()
"""

# tcp|udp ADDR PORT N TIMEOUT [FIRST_SOURCE_PORT] -> JSON list of pod names or "!error" per attempt.
# loop ADDR PORT STOPFILE -> JSON {"ok": n, "failed": [errors]} of back-to-back TCP requests until STOPFILE.
CLIENT = r"""
import errno, json, os, socket, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def tcp(i, timeout):
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()
def udp(i, timeout):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", sport + i))
        s.connect((addr, port)); s.send(b"ping")
        return s.recv(2048).decode()
def attempt(fn, i, timeout):
    try:
        return fn(i, timeout)
    except socket.timeout:
        return "!timeout"
    except ConnectionRefusedError:
        return "!refused"
    except OSError as e:
        return "!" + errno.errorcode.get(e.errno or 0, str(e))
if mode == "loop":
    ok, failed = 0, []
    while not os.path.exists(sys.argv[4]):
        r = attempt(tcp, 0, 2.0)
        if r.startswith("!"): failed.append(r)
        else: ok += 1
    print(json.dumps({"ok": ok, "failed": failed}))
else:
    n, timeout = int(sys.argv[4]), float(sys.argv[5])
    sport = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    print(json.dumps([attempt(tcp if mode == "tcp" else udp, i, timeout) for i in range(n)]))
"""


@dataclass
class Lab:
    ns: Namespaces
    backend: str  # "nft" | "legacy": the iptables family used in the LB namespace
    servers: list[subprocess.Popen[Any]] = field(default_factory=list)
    baseline: str = ""  # iptables-save of the LB before flannel-lb, normalised

    @property
    def lb(self) -> str:
        return self.ns.name("lb")

    def iptables(self, rule: str) -> None:
        self.ns.run("lb", [f"iptables-{self.backend}", "-w", *shlex.split(rule)])

    def save(self, *, counters: bool = False) -> str:
        return self.ns.run("lb", [f"iptables-{self.backend}-save", *(["-c"] if counters else [])]).stdout

    def client(
        self, mode: str, addr: str, port: int, n: int = 1, timeout: float = 2.0, *extra: str
    ) -> list[str]:
        return self.run_client("cl", mode, addr, port, n, timeout, *extra)

    def run_client(
        self, where: str, mode: str, addr: str, port: int, n: int, timeout: float, *extra: str
    ) -> list[str]:
        argv = [sys.executable, "-c", CLIENT, mode, addr, str(port), str(n), str(timeout), *extra]
        out = self.ns.run(where, argv, timeout=120).stdout
        result: list[str] = json.loads(out)
        return result

    def flush_conntrack(self) -> None:
        from pyroute2 import Conntrack

        ct = Conntrack(netns=self.lb)
        try:
            ct.flush()
        finally:
            ct.close()

    def conntrack(self, proto: int) -> list[tuple[str, int, str, int, int]]:
        """(orig dst, orig dport, reply src, reply sport, mark) of the LB's entries for one protocol."""
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        ct = Conntrack(netns=self.lb)
        try:
            return [
                (
                    e.tuple_orig.daddr,
                    e.tuple_orig.dport,
                    e.tuple_reply.saddr,
                    e.tuple_reply.sport,
                    e.mark or 0,
                )
                for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=proto))
            ]
        finally:
            ct.close()


def normalized_save(text: str) -> list[str]:
    """iptables-save without comment headers and counters (they legitimately change)."""
    import re

    return [re.sub(r" \[\d+:\d+\]$", "", ln) for ln in text.splitlines() if ln and not ln.startswith("#")]


def build_lab(backend: str, forward_policy: str = "DROP") -> Iterator[Lab]:
    with Namespaces(unique_prefix("dp")) as ns:
        for short in ("cl", "lb", "rt", *PODS):
            ns.add(short)
        ns.veth("cl", "eth0", "lb", "eth0")
        ns.veth("lb", "pn0", "rt", "up0")
        ns.run("cl", ["ip", "addr", "add", "192.168.121.1/24", "dev", "eth0"])
        ns.run("cl", ["ip", "route", "add", "10.96.0.0/12", "via", LB])  # cluster IPs must NOT work from here
        ns.run("lb", ["ip", "addr", "add", f"{LB}/24", "dev", "eth0"])
        ns.run("lb", ["ip", "addr", "add", "10.246.90.1/24", "dev", "pn0"])
        ns.run("lb", ["ip", "route", "add", "10.246.0.0/16", "via", "10.246.90.254"])
        # As on the seed's LB. Also needed by cluster-ip frontends: a local connect() must find *a* route
        # before nat OUTPUT rewrites the destination (else ENETUNREACH).
        ns.run("lb", ["ip", "route", "add", "default", "via", "192.168.121.1"])
        ns.run("rt", ["ip", "addr", "add", "10.246.90.254/24", "dev", "up0"])
        for short in ("lb", "rt"):
            ns.sysctl(short, "net.ipv4.ip_forward", "1")
        for i, (pod, ip) in enumerate(PODS.items(), 1):
            ns.veth("rt", f"p{i}", pod, "eth0")
            ns.run("rt", ["ip", "addr", "add", f"10.246.{i}.1/24", "dev", f"p{i}"])
            ns.run(pod, ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
            ns.run(pod, ["ip", "route", "add", "default", "via", f"10.246.{i}.1"])
        lab = Lab(ns, backend)
        for pod in PODS:
            argv = [sys.executable, "-c", POD_SERVER, pod, str(HTTP_PORT), str(UDP_PORT)]
            proc = ns.popen(pod, argv, stdout=subprocess.PIPE, text=True)
            lab.servers.append(proc)
        for proc in lab.servers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        _add_foreign_rules(lab, forward_policy)
        lab.baseline = lab.save()
        try:
            yield lab
        finally:
            for proc in lab.servers:
                proc.kill()
                proc.wait()


def _add_foreign_rules(lab: Lab, forward_policy: str = "DROP") -> None:
    """Someone else's firewall on the LB: must be left byte-identical by install, syncs and cleanup."""
    for rule in (
        "-t nat -N OTHER-NAT",
        "-t nat -A OTHER-NAT -p tcp --dport 9999 -j DNAT --to-destination 10.9.9.9",
        "-t nat -A PREROUTING -j OTHER-NAT",
        "-t nat -A POSTROUTING -s 10.99.0.0/16 -j MASQUERADE",
        f"-t filter -P FORWARD {forward_policy}",  # DROP like Docker: flannel-lb must ACCEPT its own flows
        "-t filter -A FORWARD -s 10.99.0.0/16 -j ACCEPT",
        "-t filter -N OTHER-F",
        "-t filter -A OTHER-F -p tcp --dport 22 -j ACCEPT",
        "-t filter -A INPUT -j OTHER-F",
        # A firewalled LB silently drops closed ports: only flannel-lb's REJECT turns them into a refusal.
        f"-t filter -A INPUT -d {LB} -p tcp --dport 81 -j DROP",
        f"-t filter -A INPUT -d {LB} -p udp --dport 82 -j DROP",
        f"-t filter -A OUTPUT -d {LB} -p tcp --dport 81 -j DROP",
    ):
        lab.iptables(rule)


@pytest.fixture(scope="module")
def lab_nft() -> Iterator[Lab]:
    yield from build_lab("nft")


@pytest.fixture(scope="module")
def lab_legacy() -> Iterator[Lab]:
    yield from build_lab("legacy")


def _make_writer(kind: str, lab: Lab) -> SyncState:
    if kind == "libiptc":
        pytest.importorskip("iptc", reason="python-iptables is not installed")
        from flannel_lb.dataplane.iptables.libiptc import LibiptcWriter

        return LibiptcWriter(backend=lab.backend, netns=lab.lb)
    return RestoreWriter(backend=lab.backend, netns=lab.lb)


WriterFactory = Callable[[], SyncState]


@dataclass
class Setup:
    lab: Lab
    kind: str
    new_writer: WriterFactory


@pytest.fixture(params=["restore-nft", "restore-legacy", "libiptc-legacy"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    """A writer variant on its lab; afterwards: cleanup, and the LB's firewall is exactly as before."""
    kind, backend = request.param.split("-")
    lab: Lab = request.getfixturevalue(f"lab_{backend}")
    lab.flush_conntrack()  # flows of the previous test would pin this test's source ports
    writers: list[SyncState] = []

    def new_writer() -> SyncState:
        w = _make_writer(kind, lab)
        writers.append(w)
        return w

    yield Setup(lab, kind, new_writer)
    if writers:
        writers[-1].cleanup()
    for w in writers:
        w.close()
    assert normalized_save(lab.save()) == normalized_save(lab.baseline)


def backends(*pods: str, port: int = HTTP_PORT) -> tuple[Backend, ...]:
    return tuple(Backend(PODS[p], port, node=p) for p in pods)


def make_plan(
    rev: int = 1,
    web: tuple[str, ...] = ("pod1", "pod2", "pod3"),
    dns: tuple[str, ...] = ("pod1", "pod2", "pod3"),
    extra: tuple[Frontend, ...] = (),
) -> Plan:
    return Plan(
        revision=rev,
        frontends=(
            Frontend(LB, 80, "TCP", "default/web", "http", backends=backends(*web)),
            Frontend(LB, 53, "UDP", "default/dns", "dns", backends=backends(*dns, port=UDP_PORT)),
            Frontend(LB, 8080, "TCP", "default/sticky", "http", Affinity("ClientIP", 600), backends(*web)),
            Frontend(LB, 81, "TCP", "default/empty", "http"),
            Frontend(LB, 82, "UDP", "default/empty-udp", "dns"),
            Frontend(
                "10.96.0.10", 80, "TCP", "default/web", "http", backends=backends(*web), kind="cluster-ip"
            ),
            *extra,
        ),
    )


def test_tcp_spreads_over_all_pods_and_needs_masquerade(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    w.sync(build_ruleset(make_plan()))
    answers = Counter(lab.client("tcp", LB, 80, 300))
    assert set(answers) == set(PODS), answers  # no errors, every pod answered
    assert all(answers[p] > 30 for p in PODS), answers

    # The seed's failure: DNAT alone, replies go to the pod's default route and are lost there.
    w.sync(build_ruleset(make_plan(), Options(masquerade=False)))
    assert lab.client("tcp", LB, 80, 3, 0.5) == ["!timeout"] * 3
    w.sync(build_ruleset(make_plan()))
    assert lab.client("tcp", LB, 80, 3)[0] in PODS


def test_udp_and_conntrack_cleanup_of_a_removed_backend(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    opts = Options()
    old = make_plan()
    w.sync(build_ruleset(old, opts))
    first = lab.client("udp", LB, 53, 60, 2.0, "41000")  # fixed source ports: flows we can resend on
    assert set(first) == set(PODS), first
    assert set(lab.client("tcp", LB, 80, 60)) == set(PODS)  # TIME_WAIT entries to every pod
    tcp_before = Counter(e[2] for e in lab.conntrack(socket.IPPROTO_TCP) if e[1] == 80)
    udp_before = Counter(e[2] for e in lab.conntrack(socket.IPPROTO_UDP) if e[1] == 53)
    assert udp_before == Counter(PODS[p] for p in first)
    assert all(e[4] & opts.mark for e in lab.conntrack(socket.IPPROTO_UDP) if e[1] == 53)

    new = make_plan(2, web=("pod1", "pod3"), dns=("pod1", "pod3"))
    w.sync(build_ruleset(new, opts))
    counts = clear_stale(stale_flows(old, new), netns=lab.lb, mark=opts.mark)
    assert counts == ConntrackCounts(deleted=first.count("pod2"))

    udp_after = Counter(e[2] for e in lab.conntrack(socket.IPPROTO_UDP) if e[1] == 53)
    assert udp_after == Counter({ip: n for ip, n in udp_before.items() if ip != PODS["pod2"]})
    tcp_after = Counter(e[2] for e in lab.conntrack(socket.IPPROTO_TCP) if e[1] == 80)
    assert tcp_after == tcp_before  # TCP is never touched, not even towards the removed pod
    # The flows that were pinned to pod2 are balanced again on their next packet; the others stick.
    again = lab.client("udp", LB, 53, 60, 2.0, "41000")
    assert all(
        a == (b if b != "pod2" else a) and a in ("pod1", "pod3") for a, b in zip(again, first, strict=True)
    )

    # N -> 0, then 0 -> N: the frontend's entries go, and un-NATed ones from before its rules too.
    empty = make_plan(3, dns=())
    w.sync(build_ruleset(empty, opts))
    assert clear_stale(stale_flows(new, empty), netns=lab.lb, mark=opts.mark).deleted == 60
    assert not [e for e in lab.conntrack(socket.IPPROTO_UDP) if e[1] == 53]
    late = Frontend(LB, 54, "UDP", "default/late", "dns", backends=backends("pod1", port=UDP_PORT))
    assert lab.client("udp", LB, 54, 1, 0.5, "42000") == ["!refused"]  # no frontend yet: an un-NATed entry
    with_late = make_plan(4, dns=(), extra=(late,))
    w.sync(build_ruleset(with_late, opts))
    assert clear_stale(stale_flows(empty, with_late), netns=lab.lb, mark=opts.mark).unnatted == 1
    assert lab.client("udp", LB, 54, 1, 2.0, "42000") == ["pod1"]


def test_client_ip_affinity_sticks(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    w.sync(build_ruleset(make_plan()))
    answers = set(lab.client("tcp", LB, 8080, 30))
    assert len(answers) == 1 and answers <= set(PODS), answers


def test_empty_frontend_is_refused_not_timed_out(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    w.sync(build_ruleset(make_plan()))
    # The foreign firewall DROPs 81/tcp and 82/udp: only flannel-lb's REJECT answers.
    assert lab.client("tcp", LB, 81, 2, 1.0) == ["!refused"] * 2
    assert lab.client("udp", LB, 82, 2, 1.0) == ["!refused"] * 2
    assert lab.run_client("lb", "tcp", LB, 81, 1, 1.0) == ["!refused"]  # from the LB itself (OUTPUT)
    w.sync(build_ruleset(make_plan(), Options(reject_empty=False)))
    assert lab.client("tcp", LB, 81, 1, 0.5) == ["!timeout"]


def test_cluster_ip_only_from_the_lb_itself(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    w.sync(build_ruleset(make_plan()))
    assert set(lab.run_client("lb", "tcp", "10.96.0.10", 80, 30, 2.0)) == set(PODS)
    assert lab.run_client("lb", "tcp", LB, 80, 1, 2.0)[0] in PODS  # external frontends too
    assert lab.client("tcp", "10.96.0.10", 80, 1, 0.5)[0].startswith("!")


def test_partial_sync_rewrites_only_the_changed_frontend(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    before = build_ruleset(make_plan())
    w.sync(before)
    assert foreign_lines(lab.save(), "FLB-") == foreign_lines(lab.baseline, "FLB-")
    after = build_ruleset(make_plan(2, dns=("pod1", "pod3")))
    result = w.sync(after)
    old_fe, new_fe = _fe(before, f"{LB}:53/UDP"), _fe(after, f"{LB}:53/UDP")
    assert result.mode == "partial" and old_fe != new_fe
    declared = {ln[1:].split()[0] for ln in result.text.splitlines() if ln.startswith(":")}
    assert declared == {"FLB-SERVICES", new_fe, old_fe}
    assert f"-X {old_fe}" in result.text.splitlines() and "*filter" not in result.text
    assert diff(after, lab_tools(lab)) == ""
    assert foreign_lines(lab.save(), "FLB-") == foreign_lines(lab.baseline, "FLB-")
    assert set(lab.client("udp", LB, 53, 30)) == {"pod1", "pod3"}

    # Drift: someone empties an owned chain. Memory-based syncs cannot see it; a verify sync repairs
    # exactly that chain from a read-back of the kernel.
    web = _fe(after, f"{LB}:80/TCP")
    lab.iptables(f"-t nat -F {web}")
    assert not w.sync(after).applied
    repair = w.sync(after, verify=True)
    assert repair.mode == "verify"
    assert {c.name for c in repair.changes.write} == {web}
    assert set(lab.client("tcp", LB, 80, 30)) == set(PODS)
    # Nobody committed since the repair: with iptables-nft the next verify trusts the nf_tables
    # generation and reads nothing back; x_tables (legacy) has no generation, so it reads again.
    assert isinstance(w, SyncState)
    reads = w.read_backs
    assert not w.sync(after, verify=True).applied
    assert w.read_backs == reads + (0 if lab.backend == "nft" else 1)
    lab.iptables("-t nat -A OTHER-NAT -p tcp --dport 9998 -j DNAT --to-destination 10.9.9.8")
    try:  # someone else's commit: read back again
        assert not w.sync(after, verify=True).applied
        assert w.read_backs == reads + (1 if lab.backend == "nft" else 2)
    finally:
        lab.iptables("-t nat -D OTHER-NAT -p tcp --dport 9998 -j DNAT --to-destination 10.9.9.8")
    # A change in both tables (web loses its pods: a REJECT in filter, a dispatch change in nat) is two
    # commits, both ours: still no read-back.
    empty = build_ruleset(make_plan(3, web=(), dns=("pod1", "pod3")))
    assert w.sync(empty).changes.tables() == ("filter", "nat")
    reads = w.read_backs
    assert not w.sync(empty, verify=True).applied
    assert w.read_backs == reads + (0 if lab.backend == "nft" else 1)


def test_restart_adopts_rules_without_a_flush(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    rs = build_ruleset(make_plan())
    w.sync(rs)
    assert set(lab.client("tcp", LB, 80, 30)) == set(PODS)
    web = _fe(rs, f"{LB}:80/TCP")
    hits = _packets(lab, web)
    assert hits >= 30

    stop = f"/tmp/{lab.lb}-stop"
    loop = lab.ns.popen("cl", [sys.executable, "-c", CLIENT, "loop", LB, "80", stop], stdout=subprocess.PIPE)
    try:
        time.sleep(0.3)  # let the loop get going before the takeover
        restarted = setup.new_writer()  # a new agent process: knows nothing, reads the kernel
        result = restarted.sync(rs)
        assert result.mode == "adopt" and not result.applied and result.text == ""
        assert _packets(lab, web) >= hits  # counters not reset: nothing was rewritten
        time.sleep(0.3)
    finally:
        with open(stop, "w"):
            pass
        out, _ = loop.communicate(timeout=30)
        os.unlink(stop)
    report = json.loads(out)
    assert report["failed"] == [] and report["ok"] > 0

    # Stale state from an older agent: an unknown FLB chain and a duplicated jump, replaced in one go.
    lab.iptables("-t nat -N FLB-FE-STALE00000000000")
    lab.iptables("-t nat -A FLB-FE-STALE00000000000 -j RETURN")
    lab.iptables('-t nat -A PREROUTING -m comment --comment "flannel-lb frontends" -j FLB-SERVICES')
    again = setup.new_writer()
    result = again.sync(rs)
    assert result.mode == "adopt"
    assert result.changes.delete == (("nat", "FLB-FE-STALE00000000000"),)
    assert len(result.changes.del_jumps) == 2 and len(result.changes.add_jumps) == 1  # one copy, at the top
    assert result.changes.write == ()  # nothing else differs: nothing else is rewritten
    assert _packets(lab, web) >= hits
    assert compute_changes(rs, again.read_owned()).empty


def test_two_level_dispatch_and_the_overlay_guard_in_the_kernel(setup: Setup) -> None:
    lab, w = setup.lab, setup.new_writer()
    opts = Options(bucket_size=4, overlay_udp_port=8472)  # small buckets: a few dozen frontends suffice
    pods = backends("pod1", "pod2", "pod3")
    many = tuple(Frontend(LB, 10000 + 7 * i, "TCP", f"default/many{i}", backends=pods) for i in range(24))
    local = tuple(
        Frontend(f"10.96.1.{i + 1}", 80, "TCP", f"default/cip{i}", backends=pods[:1], kind="cluster-ip")
        for i in range(6)
    )
    empty = tuple(Frontend(LB, 83 + i, "TCP", f"default/none{i}") for i in range(6))
    builder = RuleBuilder()
    rs = builder.build(make_plan(extra=many + local + empty), opts)
    buckets = {c.name.split("-")[1] for c in rs.chains if c.role == "bucket"}
    assert buckets == {"SVC", "LCL", "REJ"}
    w.sync(rs)
    assert compute_changes(rs, w.read_owned()).empty  # the kernel prints every bucket rule back as built
    for port in (80, 8080, 10000, 10000 + 7 * 12, 10000 + 7 * 23):
        assert lab.client("tcp", LB, port, 1)[0] in PODS, port
    assert set(lab.client("udp", LB, 53, 10)) <= set(PODS)
    assert lab.client("tcp", LB, 81, 1, 1.0) == ["!refused"]  # through a REJECT bucket, past the DROP
    assert lab.run_client("lb", "tcp", "10.96.1.4", 80, 1, 2.0) == ["pod1"]
    assert lab.run_client("lb", "tcp", "10.96.0.10", 80, 1, 2.0)[0] in PODS  # flat: 1 cluster-ip in LOCAL
    # flannel's vxlan port: returned by the first rule, before any dispatch
    lab.client("udp", LB, 8472, 2, 0.3)
    guard = [ln for ln in lab.save(counters=True).splitlines() if "FLB-SERVICES" in ln and "-j RETURN" in ln]
    assert len(guard) == 1 and int(guard[0][1:].split(":", 1)[0]) >= 2, guard

    changed = dataclasses.replace(many[10], backends=backends("pod2"))
    after = builder.build(make_plan(2, extra=(*many[:10], changed, *many[11:], *local, *empty)), opts)
    result = w.sync(after)
    bucket = next(c.name for c in after.chains if c.role == "bucket" and _fe(after, changed.label) in str(c))
    declared = {ln[1:].split()[0] for ln in result.text.splitlines() if ln.startswith(":")}
    assert declared == {bucket, _fe(after, changed.label), _fe(rs, changed.label)}
    assert lab.client("tcp", LB, changed.port, 3) == ["pod2"] * 3
    assert compute_changes(after, w.read_owned()).empty


def test_forward_accept_auto_follows_the_forward_chain(lab_nft: Lab) -> None:
    """FORWARD that accepts everything needs no per-packet accept; a Docker-style DROP brings it back."""
    lab = lab_nft
    plane = IptablesPlane(RestoreWriter(backend="nft", netns=lab.lb), Options(forward_accept="auto"))
    lab.iptables("-D FORWARD -s 10.99.0.0/16 -j ACCEPT")
    lab.iptables("-P FORWARD ACCEPT")
    try:
        plane.sync(make_plan())
        assert plane.forward_filtered is False and "-j FLB-FORWARD" not in lab.save()
        auto = build_ruleset(make_plan(), Options(forward_accept="auto"))
        assert diff(auto, lab_tools(lab)) == ""  # `flannel-lb diff`: optional there
        # With "always" (the default) the jump is required whatever FORWARD does: diff says it is missing.
        assert "-j FLB-FORWARD" in diff(build_ruleset(make_plan()), lab_tools(lab))
        assert set(lab.client("tcp", LB, 80, 20)) == set(PODS)

        lab.iptables("-P FORWARD DROP")
        assert lab.client("tcp", LB, 80, 1, 0.5) == ["!timeout"]  # until the next verifying sync...
        repaired = plane.sync(make_plan(), verify=True)
        assert [j.chain for j in repaired.changes.add_jumps] == ["FORWARD"]
        assert set(lab.client("tcp", LB, 80, 20)) == set(PODS)
        lab.iptables("-P FORWARD ACCEPT")
        assert not plane.sync(make_plan(), verify=True).applied  # ...and then it stays
        assert "-j FLB-FORWARD" in lab.save() and diff(auto, lab_tools(lab)) == ""
    finally:
        plane.cleanup()
        plane.close()
        lab.iptables("-P FORWARD DROP")
        lab.iptables("-A FORWARD -s 10.99.0.0/16 -j ACCEPT")
    assert normalized_save(lab.save()) == normalized_save(lab.baseline)


def test_failed_transaction_reports_the_line_and_next_sync_is_full(lab_nft: Lab) -> None:
    w = RestoreWriter(backend="nft", netns=lab_nft.lb)
    try:
        good = build_ruleset(make_plan())
        w.sync(good)
        bad_chain = Chain(
            "nat", "FLB-FE-BROKEN0000000000", (Rule(("-p", "tcp"), ("NO-SUCH-TARGET",)),), "frontend"
        )
        bad = RuleSet(good.prefix, (*good.chains, bad_chain), good.jumps)
        with pytest.raises(RestoreError) as exc:
            w.sync(bad)
        assert "NO-SUCH-TARGET" in exc.value.line and exc.value.stderr
        assert diff(good, lab_tools(lab_nft)) == ""  # the failed transaction left no trace
        assert w.sync(good).mode == "full"
        assert w.sync(good).mode == "partial"
    finally:
        w.cleanup()
    assert normalized_save(lab_nft.save()) == normalized_save(lab_nft.baseline)


def test_every_writer_programs_the_same_rules(lab_nft: Lab, lab_legacy: Lab) -> None:
    rs = build_ruleset(make_plan())
    saves: dict[str, list[str]] = {}
    for name, lab, kind in (
        ("restore-nft", lab_nft, "restore"),
        ("restore-legacy", lab_legacy, "restore"),
        ("libiptc-legacy", lab_legacy, "libiptc"),
    ):
        w = _make_writer(kind, lab)
        try:
            w.sync(rs)
            text = lab.save()
            saves[name] = sorted(ln for ln in normalized_save(text) if "FLB-" in ln)
            assert compute_changes(rs, parse_save(text, "FLB-")).empty
        finally:
            w.cleanup()
            w.close()
    assert saves["restore-nft"] == saves["restore-legacy"] == saves["libiptc-legacy"]


def test_staged_transactions_program_the_same_rules(lab_nft: Lab) -> None:
    """iptables-nft writes frontend chains in early transactions (`changes.transactions`): the kernel
    ends up with exactly the rule set, traffic and affinity work, and the generation check still
    counts every commit as ours (no read-back on the next verify)."""
    lab = lab_nft
    extra = tuple(
        Frontend(LB, 9000 + i, "TCP", f"default/bulk-{i}", "http", backends=backends("pod1", "pod2", "pod3"))
        for i in range(6)
    )
    w = RestoreWriter(backend="nft", netns=lab.lb)
    w.leaf_block = 2
    try:
        rs = build_ruleset(make_plan(extra=extra))
        result = w.sync(rs)
        assert result.text.count("COMMIT") > 3, result.text  # staged: more than filter + nat
        assert compute_changes(rs, parse_save(lab.save(), "FLB-")).empty
        assert set(lab.client("tcp", LB, 9003, 30)) == set(PODS)
        assert len(set(lab.client("tcp", LB, 8080, 10))) == 1  # ClientIP affinity: its SEP chains made it
        reads = w.read_backs
        assert not w.sync(rs, verify=True).applied and w.read_backs == reads
        # A change that writes new frontend chains for most services is staged too.
        moved = tuple(dataclasses.replace(f, backends=backends("pod2", "pod3")) for f in extra)
        changed = build_ruleset(make_plan(2, web=("pod1", "pod3"), extra=moved))
        assert w.sync(changed).text.count("COMMIT") > 2
        assert compute_changes(changed, parse_save(lab.save(), "FLB-")).empty
        assert set(lab.client("tcp", LB, 9005, 30)) == {"pod2", "pod3"}
        assert not w.sync(changed, verify=True).applied and w.read_backs == reads
        assert foreign_lines(lab.save(), "FLB-") == foreign_lines(lab.baseline, "FLB-")
    finally:
        w.cleanup()
        w.close()
    assert normalized_save(lab.save()) == normalized_save(lab.baseline)


def test_libiptc_refuses_an_nft_host(lab_nft: Lab) -> None:
    pytest.importorskip("iptc", reason="python-iptables is not installed")
    from flannel_lb.dataplane.iptables.libiptc import LibiptcWriter, UnsupportedHost

    with pytest.raises(UnsupportedHost, match="nf_tables"):
        LibiptcWriter(backend="nft", netns=lab_nft.lb)
    with pytest.raises(UnsupportedHost, match="nftables tables exist"):
        LibiptcWriter(backend="legacy", netns=lab_nft.lb)  # the LB namespace has iptables-nft rules


def lab_tools(lab: Lab) -> Any:
    from flannel_lb.dataplane.tools import Tools

    return Tools("nft" if lab.backend == "nft" else "legacy", lab.lb)


def _fe(rs: RuleSet, label: str) -> str:
    return dict(rs.frontend_chains)[label]


def _packets(lab: Lab, chain: str) -> int:
    """Packets that went through the DNAT rules of `chain` (iptables-save -c)."""
    total = 0
    for ln in lab.save(counters=True).splitlines():
        if f"-A {chain} " in ln and "DNAT" in ln:
            total += int(ln[1:].split(":", 1)[0])
    return total
