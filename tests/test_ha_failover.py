"""Established flows survive the death of the active box: the pair with its shared overlay identity.

Everything is real: keepalived (VRRPv3) and conntrackd rendered from `[ha]`, `flannel-lb run` in each
box (its rules, and the pair's side of the vxlan overlay from the leases in etcd), a node with a pod
behind its own flannel.1, long-lived TCP flows from a client that keep exchanging data. The active box
then dies (links down, keepalived parent and child, conntrackd and the agent SIGKILLed: reference §1b).

    client 10.77.0.1 ─┐ br0        VIP 10.77.0.100 and the reservation's PublicIP 10.79.0.150 float
    lb1    10.77.0.11 ┤            together (one VRRP instance); both boxes have flannel.1 with the
    lb2    10.77.0.12 ┤            reservation's MAC and 10.246.90.0/32
    etcd   10.77.0.2 ─┘
    lb1    10.79.0.11 ─┐ br1       the node keeps ordinary flannel state for the reservation: its
    lb2    10.79.0.12 ─┤ (underlay) pods' replies to 10.246.90.0 go to whoever holds 10.79.0.150
    node   10.79.0.21 ─┘ ── pod 10.246.1.2:8080 (echo)
    lb1 sync0 10.78.0.1/30 ─── 10.78.0.2/30 lb2 (conntrackd)

Figures (VIP outage, longest stall of a surviving flow) are printed, never asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flannel_lb import config
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.ha import conntrackd, files, keepalived, reservation
from flannel_lb.ha.paths import Paths
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.lab.etcd_writer import EtcdWriter
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.topology import batch, sysctls
from tests.conftest import FAST_ETCD_ARGS
from tests.test_ha_vrrp import TimedAgent, ha_skip_reason
from tests.test_overlay_netns import NODE_IP, NODE_MAC, node_flannel

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

if ha_skip_reason():
    pytest.skip(ha_skip_reason(), allow_module_level=True)

VIP, FLOATING, ETCD = "10.77.0.100", "10.79.0.150", "10.77.0.2"
BOXES = {
    "lb1": ("10.77.0.11", "10.79.0.11", "10.78.0.1", 150),
    "lb2": ("10.77.0.12", "10.79.0.12", "10.78.0.2", 100),
}
POD = "10.246.1.2"
FLOWS = 20

# ECHO_PORT PUSH_PORT: an echo server, and one that pushes a line every 50 ms to each connection (the
# client only reads: the flows a box must keep without the client's next packet to rebuild them).
SERVERS = r"""
import contextlib, socket, sys, threading, time
def echo(c):
    with c, contextlib.suppress(OSError):  # the LB's health checks close with a reset
        while data := c.recv(4096):
            c.sendall(data)
def push(c):
    with c, contextlib.suppress(OSError):
        n = 0
        while True:
            c.sendall(f"push {n}\n".encode())
            n += 1
            time.sleep(0.05)
def listen(port, serve):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
threading.Thread(target=listen, args=(int(sys.argv[2]), push), daemon=True).start()
threading.Thread(target=listen, args=(int(sys.argv[1]), echo), daemon=True).start()
time.sleep(0.2)
print("ready", flush=True)
threading.Event().wait()
"""

# MODE ADDR PORT N STOPFILE: N long-lived flows. echo: each sends a line every 50 ms and waits for its
# echo; push: each only reads what the server pushes. A flow is lost on a reset or 15 s without data;
# on STOPFILE prints JSON per flow: alive, answers, the longest gap between two answers (ms).
FLOWS_CLIENT = r"""
import json, os, socket, sys, threading, time
mode, addr, port, n, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
out = [None] * n
def flow(i):
    alive, echoes, gap, last = True, 0, 0.0, time.monotonic()
    try:
        s = socket.create_connection((addr, port), timeout=5)
        s.settimeout(15)
        while not os.path.exists(stop):
            if mode == "echo":
                msg = f"flow {i} {echoes}\n".encode()
                s.sendall(msg)
                want = len(msg)
            else:
                want = 1
            got = b""
            while len(got) < want:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed")
                got += chunk
            now = time.monotonic()
            gap, last, echoes = max(gap, now - last), now, echoes + 1
            if mode == "echo":
                time.sleep(0.05)
        s.close()
    except OSError as e:
        alive = False
        out[i] = {"alive": False, "echoes": echoes, "gap_ms": gap * 1000, "error": type(e).__name__}
        return
    out[i] = {"alive": alive, "echoes": echoes, "gap_ms": gap * 1000}
threads = [threading.Thread(target=flow, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
print("ready", flush=True)
for t in threads:
    t.join()
print(json.dumps(out))
"""


def _config(tmp: Path, short: str, etcd_url: str) -> config.Config:
    front, _, sync, priority = BOXES[short]
    other = next(o for o in BOXES if o != short)
    path = tmp / f"{short}.toml"
    path.write_text(
        f'[lb]\naddresses = ["{VIP}"]\n'
        f'[etcd]\nendpoints = ["{etcd_url}"]\n'
        f'[ha]\nenabled = true\npeer = "{BOXES[other][0]}"\npriority = {priority}\ninterface = "eth0"\n'
        f'sync_interface = "sync0"\nsync_peer = "{BOXES[other][2]}"\nvirtual_router_id = 79\n'
        f'advert_interval = 0.1\nstate_dir = "{tmp / short}"\n'
        f'overlay_subnet = "10.246.90.0/24"\noverlay_public_ip = "{FLOATING}"\noverlay_interface = "eth1"\n'
        "[health]\nenabled = true\ninterval = 0.5\ntimeout = 0.3\n"
        '[metrics]\nlisten = "127.0.0.1:9842"\n[log]\nlevel = "info"\nformat = "json"\n'
    )
    del front, sync
    return config.load(path)


@dataclass
class Tier:
    ns: Namespaces
    tmp: Path
    cfgs: dict[str, config.Config]
    etcd: EtcdServer
    writer: EtcdWriter
    procs: dict[str, dict[str, subprocess.Popen[Any]]] = field(default_factory=dict)
    agents: dict[str, TimedAgent] = field(default_factory=dict)
    others: list[subprocess.Popen[Any]] = field(default_factory=list)

    def popen(self, short: str, argv: list[str], name: str) -> subprocess.Popen[Any]:
        log = (self.tmp / f"{short}-{name}.log").open("ab")
        proc = self.ns.popen(short, argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.setdefault(short, {})[name] = proc
        return proc

    def holds(self, short: str, address: str) -> bool:
        return f" {address}/32 " in self.ns.run(short, ["ip", "-4", "-o", "addr", "show"]).stdout

    def wait(self, what: str, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.02)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(self.tmp.glob("*.log"))
        )

    def kill(self, short: str) -> float:
        """Unplanned death: links down, then keepalived (parent first: pitfall 7), conntrackd, the agent."""
        batch(self.ns, short, ["link set eth0 down", "link set eth1 down", "link set sync0 down"])
        t = time.monotonic()
        vrrp_child = int(Path(Paths.of(self.cfgs[short].ha).vrrp_pid).read_text())
        procs = self.procs[short]
        agent = self.agents[short].proc
        assert agent is not None
        for pid in (procs["keepalived"].pid, vrrp_child, procs["conntrackd"].pid, agent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return t

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        for procs in self.procs.values():
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        self.writer.close()
        self.etcd.stop()


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Tier]:
    with Namespaces(unique_prefix("hf")) as ns:
        for short in ("sw", "client", "etcd", "node", "pod", *BOXES):
            ns.add(short)
            sysctls(
                ns, short, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
            )
        batch(
            ns,
            "sw",
            ["link add br0 type bridge", "link set br0 up", "link add br1 type bridge", "link set br1 up"],
        )
        front = {"client": "10.77.0.1", "etcd": ETCD, **{s: b[0] for s, b in BOXES.items()}}
        under = {"node": NODE_IP, **{s: b[1] for s, b in BOXES.items()}}
        for bridge, dev, hosts in (("br0", "eth0", front), ("br1", "eth1", under)):
            for short, address in hosts.items():
                ns.veth(short, dev, "sw", f"{bridge[-1]}-{short}")
                batch(ns, "sw", [f"link set {bridge[-1]}-{short} master {bridge}"])
                batch(ns, short, [f"addr add {address}/24 dev {dev}"])
        ns.veth("lb1", "sync0", "lb2", "sync0")
        for short, (_, _, sync, _) in BOXES.items():
            batch(ns, short, [f"addr add {sync}/30 dev sync0"])
        etcd = EtcdServer(tmp_path / "etcd", host=ETCD, netns=ns.name("etcd"), extra_args=FAST_ETCD_ARGS)
        etcd.start()
        writer = EtcdWriter(ns, "etcd", etcd.client_url, tmp_path / "etcd-writer.log")
        cfgs = {short: _config(tmp_path, short, etcd.client_url) for short in BOXES}
        t = Tier(ns, tmp_path, cfgs, etcd, writer)
        try:
            writer.start()
            _cluster(t)
            _node(t)
            yield t
        finally:
            t.close()
            for short in BOXES:
                with contextlib.suppress(OSError):
                    os.rmdir(f"/run/keepalived/{ns.name(short)}")


def _cluster(t: Tier) -> None:
    """flannel's network config, the node's lease, the pair's reservation, and one Service on the VIP."""
    w, cfg = t.writer, t.cfgs["lb1"]
    w.put("/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}')
    w.put("/coreos.com/network/subnets/10.246.1.0-24", k.lease(NODE_IP, NODE_MAC))
    w.put(reservation.key(cfg), reservation.value(cfg).encode())
    ports = [k.port(80, 8080, name="echo"), k.port(81, 8081, name="push")]
    svc = k.service("web", ports=ports, external_ips=[VIP])
    w.put("/registry/services/specs/default/web", encode_protobuf(svc))
    endpoints = [k.endpoint(POD, "node-1")]
    eps = k.endpoint_slice("web-x", "web", endpoints, [("echo", 8080, "TCP"), ("push", 8081, "TCP")])
    w.put("/registry/endpointslices/default/web-x", encode_protobuf(eps))


def _node(t: Tier) -> None:
    """What flanneld does on the node, for its own lease and for the pair's reservation; the pod."""
    ns, mac = t.ns, t.cfgs["lb1"].ha.vtep_mac
    ns.veth("node", "p0", "pod", "eth0")
    batch(ns, "node", ["addr add 10.246.1.1/24 dev p0", "link set p0 up"])
    node_flannel(ns, "vxlan", FLOATING, mac)
    ns.sysctl("node", "net.ipv4.ip_forward", "1")
    batch(ns, "pod", [f"addr add {POD}/24 dev eth0", "route add default via 10.246.1.1"])
    echo = ns.popen("pod", [sys.executable, "-c", SERVERS, "8080", "8081"], stdout=subprocess.PIPE, text=True)
    t.others.append(echo)
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"


def _start(t: Tier) -> None:
    """Both agents (their rules and the overlay, then health 0), conntrackd, keepalived; lb1 is master."""
    for short, cfg in t.cfgs.items():
        files.write_all(cfg, net_namespace=t.ns.name(short))
        agent = TimedAgent(t.ns.name(short), Path(cfg.path), t.tmp / f"{short}-agent.log")
        t.agents[short] = agent.start()
        agent.health_written(0, timeout=60)
    for short, cfg in t.cfgs.items():
        t.popen(short, conntrackd.command(cfg.ha), "conntrackd")
        t.wait(
            f"conntrackd in {short}",
            lambda s=short: t.ns.run(s, conntrackd.client(t.cfgs[s].ha, "-s"), check=False).returncode == 0,
        )
    for short, cfg in t.cfgs.items():
        t.popen(short, keepalived.command(cfg.ha), "keepalived")
    t.wait("lb1 to hold the VIP and the PublicIP", lambda: t.holds("lb1", VIP) and t.holds("lb1", FLOATING))
    t.wait("lb2 to stay backup", lambda: not t.holds("lb2", VIP))


def _flows(t: Tier, mode: str) -> tuple[subprocess.Popen[str], Path]:
    stop = t.tmp / "flows.stop"
    port = "80" if mode == "echo" else "81"
    argv = [sys.executable, "-c", FLOWS_CLIENT, mode, VIP, port, str(FLOWS), str(stop)]
    proc = t.ns.popen("client", argv, stdout=subprocess.PIPE, text=True)
    t.others.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, stop


@pytest.mark.parametrize("mode", ["echo", "push"])
def test_established_flows_survive_the_death_of_the_active_box(tier: Tier, mode: str) -> None:
    """echo: the client speaks, then the pod; push: only the pod speaks, so no client packet rebuilds
    the flow's state on the new master (what conntrackd and the drop of new connections to the pair's
    address are for: reference §1b)."""
    t = tier
    _start(t)
    for short in BOXES:  # both boxes: the same overlay, programmed by their agents, no flanneld
        link = t.ns.run(short, ["ip", "-o", "link", "show", "dev", "flannel.1"]).stdout
        assert t.cfgs[short].ha.vtep_mac in link
    flows, stop = _flows(t, mode)
    time.sleep(2.0)  # flows exchanging data; conntrackd copies their entries to lb2
    synced = t.ns.run("lb2", ["conntrack", "-L", "-p", "tcp", "--orig-dst", VIP], check=False).stdout
    port = 80 if mode == "echo" else 81
    assert synced.count(f"dport={port} ") >= FLOWS, synced  # the standby's kernel holds the master's flows
    killed = t.kill("lb1")
    t.wait("lb2 to take the VIP and the PublicIP", lambda: t.holds("lb2", VIP) and t.holds("lb2", FLOATING))
    took = time.monotonic() - killed
    time.sleep(3.0)  # the flows go on through lb2
    stop.touch()
    out, _ = flows.communicate(timeout=60)
    result = json.loads(out)
    alive = [f for f in result if f and f["alive"]]
    stalls = sorted(f["gap_ms"] for f in alive)
    print(
        f"\n{mode} flows, active box killed: lb2 holds the VIP after {took * 1000:.0f} ms; {len(alive)} of"
        f" {FLOWS} established flows survived, longest stall {stalls[-1] if stalls else 0:.0f} ms"
    )
    assert len(alive) == FLOWS, result
    assert all(f["echoes"] > 40 for f in alive)  # they kept exchanging data after the takeover
    # [health] on both: the standby's checks would all fail (the answers go to the master), so it
    # checked nothing until it held the PublicIP, then started afresh: no backend ever left on it
    kinds = ("health_", "backend_")
    seen = [e["event"] for e in t.agents["lb2"].events if str(e.get("event", "")).startswith(kinds)]
    assert seen[:2] == ["health_checks_paused", "health_checks_resumed"], seen
    assert "backend_check_failing" not in seen


@pytest.mark.parametrize("mode", ["echo", "push"])
def test_a_planned_switchover_and_the_failback_keep_every_flow(tier: Tier, mode: str) -> None:
    """Maintenance: the master's keepalived is stopped (SIGTERM: it hands over with a priority-0 advert),
    the flows run on the backup for a while, then it starts again and takes the addresses back
    (preempt, the higher priority). The old master's entries are the ones conntrackd kept up to date
    while it was backup (`DisableExternalCache On`), so the failback resets nothing either."""
    t = tier
    _start(t)
    flows, stop = _flows(t, mode)
    time.sleep(2.0)
    t.procs["lb1"]["keepalived"].send_signal(signal.SIGTERM)
    handed = time.monotonic()
    t.wait("lb2 to take over", lambda: t.holds("lb2", VIP) and t.holds("lb2", FLOATING))
    over = time.monotonic() - handed
    t.procs["lb1"]["keepalived"].wait(10)
    time.sleep(3.0)  # the flows run through lb2; its conntrackd keeps lb1's table up to date
    t.popen("lb1", keepalived.command(t.cfgs["lb1"].ha), "keepalived")
    back_at = time.monotonic()
    t.wait("lb1 to take the addresses back", lambda: t.holds("lb1", VIP) and t.holds("lb1", FLOATING), 60)
    back = time.monotonic() - back_at
    t.wait("lb2 to let go", lambda: not t.holds("lb2", VIP))
    time.sleep(3.0)
    stop.touch()
    out, _ = flows.communicate(timeout=60)
    alive = [f for f in json.loads(out) if f and f["alive"]]
    stalls = sorted(f["gap_ms"] for f in alive)
    print(
        f"\n{mode} flows, planned switchover: lb2 held the addresses {over * 1000:.0f} ms after lb1's"
        f" keepalived got SIGTERM; failback: lb1 held them {back * 1000:.0f} ms after its keepalived"
        f" started; {len(alive)} of {FLOWS} flows survived both, longest stall"
        f" {stalls[-1] if stalls else 0:.0f} ms"
    )
    assert len(alive) == FLOWS, out


def test_check_shows_the_pair_from_either_box(tier: Tier) -> None:
    """`flannel-lb check` with [ha]: the daemons, which box holds the floating addresses, the peer."""
    from flannel_lb.doctor import run_checks

    t = tier
    _start(t)

    def ha_lines(short: str) -> dict[str, tuple[str, str]]:
        cfg = t.cfgs[short]  # etcd is in a namespace this process is not in: do not wait for it
        cfg = dataclasses.replace(cfg, etcd=dataclasses.replace(cfg.etcd, retry_budget=0.1))
        results = run_checks(cfg, t.ns.name(short))
        return {r.name: (r.status, r.detail) for r in results if r.name.startswith("ha ")}

    lb1, lb2 = ha_lines("lb1"), ha_lines("lb2")
    assert {name: status for name, (status, _) in lb1.items()} == {
        "ha daemons": "ok",
        "ha state": "ok",
        "ha peer": "ok",
    }, lb1
    assert lb1["ha state"][1].startswith(f"master: holds {VIP}, {FLOATING}")
    assert "healthy (the agent holds its plan)" in lb1["ha state"][1]
    assert lb2["ha state"] == ("ok", lb2["ha state"][1]) and lb2["ha state"][1].startswith(
        "backup: holds none"
    )
    t.kill("lb1")
    t.wait("lb2 to take over", lambda: t.holds("lb2", VIP) and t.holds("lb2", FLOATING))
    after = ha_lines("lb2")
    assert after["ha state"][1].startswith("master: holds") and after["ha peer"][0] == "warn", after
    assert "split brain" in after["ha peer"][1]


def _held(t: Tier, short: str) -> float:
    """`flannel_lb_ha_addresses_held` from the box's agent (its metrics on the box's loopback)."""
    fetch = (
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9842/metrics').read().decode())"
    )
    text = t.ns.run(short, [sys.executable, "-c", fetch]).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("flannel_lb_ha_addresses_held "))
    return float(line.split()[1])


def test_the_metric_shows_who_holds_the_addresses_and_a_split_brain(tier: Tier) -> None:
    """Both boxes export how many floating addresses they hold: 2 + 0 normally; the VRRP path cut
    (both become master) makes it 2 + 2, what a Prometheus alert on the sum catches."""
    t = tier
    _start(t)
    t.wait("the agents to sample", lambda: (_held(t, "lb1"), _held(t, "lb2")) == (2.0, 0.0))
    # split brain: each box's VRRP adverts no longer reach the other (eth0 carries VRRP, unicast)
    for short in BOXES:
        other = BOXES[next(o for o in BOXES if o != short)][0]
        rules = f"type filter hook input priority -300;\nip saddr {other} ip protocol vrrp drop\n"
        t.ns.run(short, ["nft", "-f", "-"], input=f"table ip cut {{\nchain in {{\n{rules}}}\n}}\n")
    t.wait("both boxes to hold the addresses", lambda: t.holds("lb1", VIP) and t.holds("lb2", VIP))
    t.wait("both agents to say so", lambda: (_held(t, "lb1"), _held(t, "lb2")) == (2.0, 2.0))
    for short in BOXES:
        t.ns.run(short, ["nft", "delete", "table", "ip", "cut"])
    t.wait("one master again", lambda: t.holds("lb1", VIP) and not t.holds("lb2", VIP))
    t.wait("the metric back to one holder", lambda: (_held(t, "lb1"), _held(t, "lb2")) == (2.0, 0.0))
