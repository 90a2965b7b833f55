"""The rendered pair under the real daemons: keepalived (VRRPv3) and conntrackd in network namespaces.

Topology (namespaces under one unique prefix; nothing touches the root namespace)::

    client  eth0 10.77.0.1/24  ─┐
    lb1     eth0 10.77.0.11/24 ─┼─ br0 (in `sw`)      VIP 10.77.0.100 floats between lb1 and lb2
    lb2     eth0 10.77.0.12/24 ─┘
    lb1     sync0 10.78.0.1/30 ─── sync0 10.78.0.2/30 lb2   (conntrackd's dedicated link)
    etcd    eth0 10.77.0.2/24  ─── br0                  (only the tests that run the real agent)

Each box gets its config from `[ha]` through `flannel_lb.ha.files.write_all` and runs keepalived and
conntrackd exactly as `keepalived.command` / `conntrackd.command` say. A TCP server bound (IP_FREEBIND) on
the VIP in each box answers with the box's name, so the client sees who holds the VIP. The unplanned
failover is the reference's: the master's links go down, then its keepalived is SIGKILLed parent first
(../shared/reference/ha-and-scale-out.md §1b pitfall 7) and its conntrackd too. The VIP outage seen by
the client is printed, never asserted (no timing assertions).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from flannel_lb import config
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.ha import conntrackd, files, keepalived
from flannel_lb.ha.paths import Paths
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.lab.etcd_writer import EtcdWriter
from flannel_lb.lab.lbagent import AgentProcess
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.topology import batch, sysctls
from tests.conftest import FAST_ETCD_ARGS

pytestmark = pytest.mark.netns

VIP = "10.77.0.100"
PORT = 8080
BOXES = {"lb1": ("10.77.0.11", "10.78.0.1", 150), "lb2": ("10.77.0.12", "10.78.0.2", 100)}
ADVERT = 0.1  # seconds: the reference's measured 389 ms outage is at this interval


def ha_skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root: builds network namespaces"
    for tool in ("ip", "nft", "keepalived", "conntrackd", "conntrack"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/setup.sh installs it)"
    return ""


if ha_skip_reason():
    pytest.skip(ha_skip_reason(), allow_module_level=True)


# NAME ADDR PORT: accept forever; to each client send NAME, then hold the connection until the client
# closes it. IP_FREEBIND: bound before the VIP is ours.
SERVER = r"""
import socket, sys, threading
def serve(c):
    with c:
        c.sendall(sys.argv[1].encode())
        while c.recv(4096):
            pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(128)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# ADDR PORT: one connection, held open until stdin closes; prints the box that answered.
HOLD = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    print(s.recv(64).decode(), flush=True)
    sys.stdin.read()
"""

# ADDR PORT STOPFILE: connect over and over (20 ms timeouts: the outage's resolution) until 20 answers
# have come from a box other than the first one that answered, or STOPFILE exists; print JSON
# [[monotonic time, box name or "!error"], ...]. CLOCK_MONOTONIC is system-wide: comparable with the
# test's own time.monotonic().
PROBE = r"""
import json, os, socket, sys, time
addr, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events, first, after = [], None, 0
print("ready", flush=True)
while after < 20 and not os.path.exists(stop):
    t = time.monotonic()
    try:
        with socket.create_connection((addr, port), timeout=0.02) as s:
            who = s.recv(64).decode() or "!empty"  # the server writes at once: same 20 ms timeout
    except OSError as e:
        who = "!" + type(e).__name__
    events.append((t, who))
    if not who.startswith("!"):
        first = first or who
        after += who != first
    time.sleep(0.002)
print(json.dumps(events))
"""


# A table of the test's own in each box: any rule matching `ct` turns connection tracking on there.
CONNTRACK_ON = """
table inet flb_ha_test {
    chain pre {
        type filter hook prerouting priority 0; policy accept;
        ct state established,related accept
    }
}
"""


@dataclass
class Box:
    name: str
    cfg: config.Config
    keepalived: subprocess.Popen[Any] | None = None
    conntrackd: subprocess.Popen[Any] | None = None
    log: Path | None = None

    @property
    def paths(self) -> Paths:
        return Paths.of(self.cfg.ha)


@dataclass
class Pair:
    ns: Namespaces
    tmp: Path
    boxes: dict[str, Box]
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    logs: list[IO[Any]] = field(default_factory=list)

    def popen(self, short: str, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[Any]:
        out = log.open("ab")
        self.logs.append(out)
        proc = self.ns.popen(short, argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self.procs.append(proc)
        return proc

    def has_vip(self, short: str) -> bool:
        out = self.ns.run(short, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        return f" {VIP}/32 " in out

    def holder(self) -> list[str]:
        return [short for short in self.boxes if self.has_vip(short)]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.daemon_logs()}")
            time.sleep(0.02)

    def daemon_logs(self) -> str:
        parts = []
        for box in self.boxes.values():
            for path in (box.log, Path(box.paths.notify_log), Path(box.paths.conntrackd_log)):
                if path is not None and path.exists():
                    parts.append(f"--- {box.name}: {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def start_conntrackd(self, short: str) -> None:
        box = self.boxes[short]
        box.conntrackd = self.popen(short, conntrackd.command(box.cfg.ha), self.tmp / f"{short}-ctd.out")
        self.wait_for(f"conntrackd in {short}", lambda: self.conntrackd_stats(short).returncode == 0)

    def conntrackd_stats(self, short: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(short, conntrackd.client(self.boxes[short].cfg.ha, "-s"), check=False)

    def start_keepalived(self, short: str) -> None:
        box = self.boxes[short]
        box.log = self.tmp / f"{short}-keepalived.log"
        box.keepalived = self.popen(short, keepalived.command(box.cfg.ha), box.log)

    def set_health(self, short: str, value: int) -> None:
        """What the agent does (flannel_lb.daemon.ha_health): 0 = synced, 1 = let a healthy peer serve."""
        path = Path(self.boxes[short].paths.health_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        tmp.replace(path)  # keepalived watches the file with inotify: one complete write

    def health(self, short: str) -> str:
        return Path(self.boxes[short].paths.health_file).read_text().strip()

    def kill_box(self, short: str) -> float:
        """Unplanned death: links down, then SIGKILL keepalived's parent, its VRRP child, conntrackd."""
        box = self.boxes[short]
        assert box.keepalived is not None and box.conntrackd is not None
        vrrp_child = int(Path(box.paths.vrrp_pid).read_text())
        batch(self.ns, short, ["link set eth0 down", "link set sync0 down"])
        t = time.monotonic()
        for pid in (box.keepalived.pid, vrrp_child, box.conntrackd.pid):
            os.kill(pid, signal.SIGKILL)  # parent first: a killed child alone is respawned (pitfall 7)
        box.keepalived.wait(10)
        box.conntrackd.wait(10)
        return t

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for out in self.logs:
            out.close()


def _ha_config(tmp: Path, short: str, peer: str, sync_peer: str, priority: int) -> config.Config:
    path = tmp / f"{short}.toml"
    path.write_text(
        f'[lb]\naddresses = ["{VIP}"]\n[ha]\nenabled = true\npeer = "{peer}"\npriority = {priority}\n'
        f'interface = "eth0"\nsync_interface = "sync0"\nsync_peer = "{sync_peer}"\n'
        f'virtual_router_id = 77\nadvert_interval = {ADVERT}\nstate_dir = "{tmp / short}"\n'
    )
    return config.load(path)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Two boxes and a client on a bridge, each box's files rendered; no daemon started yet."""
    with Namespaces(unique_prefix("ha")) as ns:
        for short in ("sw", "client", *BOXES):
            ns.add(short)
            sysctls(
                ns, short, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
            )
        batch(ns, "sw", ["link add br0 type bridge", "link set br0 up"])
        hosts = {"client": "10.77.0.1", **{short: lan for short, (lan, _, _) in BOXES.items()}}
        for short, address in hosts.items():
            ns.veth(short, "eth0", "sw", f"p-{short}")
            batch(ns, "sw", [f"link set p-{short} master br0"])
            batch(ns, short, [f"addr add {address}/24 dev eth0"])
        ns.veth("lb1", "sync0", "lb2", "sync0")
        for short in BOXES:  # conntrack runs in a namespace only once a rule needs it (later: the NAT rules)
            ns.run(short, ["nft", "-f", "-"], input=CONNTRACK_ON)
        boxes = {}
        for short, (_, sync, priority) in BOXES.items():
            batch(ns, short, [f"addr add {sync}/30 dev sync0"])
            other = next(o for o in BOXES if o != short)
            cfg = _ha_config(tmp_path, short, BOXES[other][0], BOXES[other][1], priority)
            files.write_all(cfg, net_namespace=ns.name(short))
            boxes[short] = Box(short, cfg)
        p = Pair(ns, tmp_path, boxes)
        try:
            yield p
        finally:
            p.close()  # then the namespaces go, with anything a daemon or hook left running
            for short in BOXES:  # keepalived's `net_namespace` leaves an empty /run/keepalived/NAME
                with contextlib.suppress(FileNotFoundError, OSError):
                    os.rmdir(f"/run/keepalived/{ns.name(short)}")


def _start(pair: Pair, *, healthy: tuple[str, ...] = tuple(BOXES), master: str = "lb1") -> None:
    """conntrackd then keepalived in each box, the TCP servers; `healthy` boxes get 0 in their health
    file first (the others' files are their agents'); waits until `master` holds the VIP alone."""
    for short in pair.boxes:
        if short in healthy:
            pair.set_health(short, 0)
        pair.start_conntrackd(short)
        server = [sys.executable, "-c", SERVER, short, VIP, str(PORT)]
        proc = pair.ns.popen(short, server, stdout=subprocess.PIPE, text=True)
        pair.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for short in pair.boxes:
        pair.start_keepalived(short)
    pair.wait_for(f"{master} to hold the VIP alone", lambda: pair.holder() == [master])


def _probe(pair: Pair, stop: Path | None = None) -> subprocess.Popen[str]:
    """PROBE from the client, running once this returns; `communicate()` gives its JSON."""
    stop = stop or pair.tmp / "probe.stop"
    probe = pair.ns.popen(
        "client", [sys.executable, "-c", PROBE, VIP, str(PORT), str(stop)], stdout=subprocess.PIPE, text=True
    )
    pair.procs.append(probe)
    assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
    return probe


def _steps(pair: Pair, short: str) -> list[list[str]]:
    """The notify hook's log: [state, "conntrackd", flag, "exit", code] per step, oldest first."""
    log = Path(pair.boxes[short].paths.notify_log)
    return [line.split()[1:] for line in log.read_text().splitlines()] if log.exists() else []


def _client_sees(pair: Pair) -> str:
    argv = [
        sys.executable,
        "-c",
        "import socket,sys; print(socket.create_connection(sys.argv[1:3]).recv(64).decode())",
    ]
    return pair.ns.run("client", [*argv, VIP, str(PORT)], timeout=30).stdout.strip()


# keepalived -t's one complaint about the rendered file, and why it stays: the sync group holds one
# instance today; the floating overlay identity of later slices joins it (reference §1b), and the group is
# where the hooks and the health track_file already live. keepalived runs it as it should (tests below).
ONE_MEMBER_GROUP = "Sync group flannel_lb has only 1 virtual router(s) - this probably isn't what you want"


def test_the_rendered_keepalived_conf_passes_keepaliveds_own_check(pair: Pair) -> None:
    """keepalived -t parses the file as the daemon will (net_namespace included): no unknown keyword,
    no missing interface, nothing but the known one-member-group remark."""
    for short, box in pair.boxes.items():
        proc = pair.ns.run(short, ["keepalived", "-t", "-f", box.paths.keepalived_conf], check=False)
        assert proc.stderr.splitlines() == [ONE_MEMBER_GROUP], proc.stderr
        assert proc.returncode in (0, 5), proc.returncode  # 5: keepalived counts that remark as an error
    broken = (
        Path(pair.boxes["lb1"].paths.keepalived_conf).read_text().replace("check_unicast_src", "check_it")
    )
    Path(pair.tmp / "broken.conf").write_text(broken)
    proc = pair.ns.run("lb1", ["keepalived", "-t", "-f", str(pair.tmp / "broken.conf")], check=False)
    assert "Unknown keyword 'check_it'" in proc.stderr  # the check does read our keywords


def test_the_master_holds_the_vip_and_its_connections_reach_the_backups_kernel(pair: Pair) -> None:
    _start(pair)
    assert _client_sees(pair) == "lb1"
    for short in pair.boxes:
        stats = pair.conntrackd_stats(short)
        assert stats.returncode == 0 and "cache internal" in stats.stdout, stats.stderr
    # the backup ran the backup half of the hook against its running conntrackd
    backup = [["backup", "conntrackd", "-t", "exit", "0"], ["backup", "conntrackd", "-n", "exit", "0"]]
    pair.wait_for("lb2's backup hook (-t, -n)", lambda: _steps(pair, "lb2")[-2:] == backup)
    # a connection to the VIP on the master shows up in the backup's kernel table: FTFW over the sync
    # link, injected straight into the kernel (DisableExternalCache On), the VIP not ignored
    hold = pair.ns.popen(
        "client",
        [sys.executable, "-c", HOLD, VIP, str(PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pair.procs.append(hold)
    assert hold.stdout is not None and hold.stdout.readline().strip() == "lb1"
    listed = [
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "--orig-dst",
        VIP,
        "--dport",
        str(PORT),
        "--state",
        "ESTABLISHED",
    ]
    pair.wait_for(
        "the held connection in lb2's conntrack table",
        lambda: "src=10.77.0.1 dst=10.77.0.100" in pair.ns.run("lb2", listed, check=False).stdout,
    )
    assert hold.stdin is not None
    hold.stdin.close()
    assert hold.wait(30) == 0


def test_an_unhealthy_agent_hands_the_vip_over_and_takes_it_back_when_healthy(pair: Pair) -> None:
    _start(pair)
    pair.set_health("lb1", 1)  # lb1's agent: "my rules are not verified"
    pair.wait_for("lb2 to take the VIP", lambda: pair.holder() == ["lb2"])
    assert _client_sees(pair) == "lb2"
    pair.set_health("lb1", 0)
    pair.wait_for("lb1 to take the VIP back (higher priority)", lambda: pair.holder() == ["lb1"])
    assert _client_sees(pair) == "lb1"


def test_killing_the_master_moves_the_vip_to_the_backup_and_the_client_follows(pair: Pair) -> None:
    _start(pair)
    stop = pair.tmp / "probe.stop"
    probe = _probe(pair, stop)
    time.sleep(0.5)  # a baseline of answers from lb1 (not a timing assertion: the probe only records)
    before = len(_steps(pair, "lb2"))  # lb2 may have been master for a moment at start-up
    killed_at = pair.kill_box("lb1")
    pair.wait_for("lb2 to take the VIP", lambda: pair.has_vip("lb2"))
    primary = [["primary", "conntrackd", flag, "exit", "0"] for flag in ("-c", "-f", "-R", "-B")]

    def hook_done() -> bool:
        return _steps(pair, "lb2")[before:] == primary

    pair.wait_for("lb2's primary hook (-c -f -R -B, in that order, against its conntrackd)", hook_done)
    try:
        out, _ = probe.communicate(timeout=60)  # it stops by itself after 20 answers from lb2
    finally:
        stop.touch()
    assert _client_sees(pair) == "lb2"
    events: list[tuple[float, str]] = [(t, who) for t, who in json.loads(out)]
    answers = [(t, who) for t, who in events if not who.startswith("!")]
    assert {who for _, who in answers} == {"lb1", "lb2"}
    last_lb1 = max(t for t, who in answers if who == "lb1")
    first_lb2 = min(t for t, who in answers if who == "lb2")
    assert last_lb1 < first_lb2  # never both: lb1 answered until it died, lb2 only after
    failed = sum(1 for t, who in events if who.startswith("!") and last_lb1 < t < first_lb2)
    print(
        f"\nVIP outage seen by the client: {(first_lb2 - last_lb1) * 1000:.0f} ms "
        f"(kill -> first answer from lb2: {(first_lb2 - killed_at) * 1000:.0f} ms; "
        f"{failed} probe connects failed in between; VRRPv3 advert_int {ADVERT} s, priorities 150/100)"
    )
    assert pair.conntrackd_stats("lb2").returncode == 0  # the survivor's conntrackd is still serving


def test_two_unhealthy_boxes_still_keep_a_master(pair: Pair) -> None:
    """The same plan and the same code run on both boxes, so a failure that hits one may hit both. A 1
    lowers a box to priority 1 (track_file weight -253), not into FAULT: with both unhealthy the master
    keeps the VIP (a backup does not preempt an equal priority) and serves its last good rules. With
    weight 0 both would be in FAULT and nobody would hold the VIP."""
    _start(pair)
    pair.set_health("lb1", 1)
    pair.set_health("lb2", 1)
    for short, priority in (("lb1", 150), ("lb2", 100)):
        box = pair.boxes[short]
        assert box.log is not None
        lowered = f"Changing effective priority from {priority} to 1"
        pair.wait_for(f"{short} at priority 1", lambda: lowered in box.log.read_text())  # noqa: B023
    assert pair.holder() == ["lb1"]
    assert _client_sees(pair) == "lb1"
    assert not any(step[0] == "fault" for short in pair.boxes for step in _steps(pair, short))
    pair.set_health("lb2", 0)  # one healthy again: it takes over
    pair.wait_for("lb2 (healthy, 100) to take the VIP from lb1 (1)", lambda: pair.holder() == ["lb2"])


# --- the real agent writes the health file -----------------------------------------------------------

ETCD_HOST = "10.77.0.2"  # the `etcd` namespace on the bridge: both boxes see the same etcd
SERVICE_PORT = 80  # the agent's frontends: not the test servers' PORT, which the client probes


class TimedAgent(AgentProcess):
    """`flannel-lb run` in a box; each log event gets `_t`, its arrival (monotonic) time."""

    def _stamp(self, event: dict[str, Any], arrived: float) -> None:
        event["_t"] = arrived

    def health_written(self, value: int, after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_for(
            lambda e: e.get("event") == "ha_health" and e.get("value") == value, timeout, after
        )


# iptables-restore that fails while FLAG exists (an injected data-plane failure for one agent only:
# the wrapper is first on that agent's PATH, the real binary and the namespace's rules are untouched).
FAILING_RESTORE = """#!/bin/sh
if [ -e {flag} ]; then
    echo "iptables-restore: injected failure (tests/test_ha_vrrp.py)" >&2
    exit 1
fi
exec {real} "$@"
"""


@dataclass
class Cluster:
    """A real etcd in its own namespace on the bridge, a writer into it, and agents in the boxes."""

    pair: Pair
    etcd: EtcdServer
    writer: EtcdWriter
    agents: dict[str, TimedAgent] = field(default_factory=dict)

    def put_service(self, name: str, port: int) -> None:
        svc = k.service(name, ports=[k.port(port)], external_ips=[VIP])
        self.writer.put(f"/registry/services/specs/default/{name}", encode_protobuf(svc))

    def agent(self, short: str, *, fail_flag: Path | None = None) -> TimedAgent:
        """`flannel-lb run` in `short` with the box's [ha] config (plus etcd, metrics and logs); with
        `fail_flag`, its iptables-restore fails while that file exists."""
        box = self.pair.boxes[short]
        path = self.pair.tmp / f"{short}-agent.toml"
        path.write_text(
            Path(box.cfg.path).read_text()
            + f'[etcd]\nendpoints = ["{self.etcd.client_url}"]\n'
            + "[dataplane]\nfull_resync_interval = 1.0\n"  # verifying resyncs during the etcd outage
            + '[metrics]\nlisten = "127.0.0.1:9842"\n[log]\nlevel = "info"\nformat = "json"\n'
        )
        env = dict(os.environ)
        if fail_flag is not None:
            bin_dir = self.pair.tmp / f"{short}-bin"
            bin_dir.mkdir()
            for name in ("iptables-nft-restore", "iptables-legacy-restore", "iptables-restore"):
                real = shutil.which(name)
                if real is not None:
                    wrapper = bin_dir / name
                    wrapper.write_text(FAILING_RESTORE.format(flag=fail_flag, real=real))
                    wrapper.chmod(0o755)
            env["PATH"] = f"{bin_dir}:{env['PATH']}"
        agent = TimedAgent(self.pair.ns.name(short), path, self.pair.tmp / f"{short}-agent.log")
        self.agents[short] = agent.start(env)
        return agent

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.writer.close()
        self.etcd.stop()


@pytest.fixture
def cluster(pair: Pair, tmp_path: Path) -> Iterator[Cluster]:
    """`pair` plus etcd (10.77.0.2) holding flannel's network config and one Service on the VIP."""
    ns = pair.ns
    ns.add("etcd")
    ns.veth("etcd", "eth0", "sw", "p-etcd")
    batch(ns, "sw", ["link set p-etcd master br0"])
    batch(ns, "etcd", [f"addr add {ETCD_HOST}/24 dev eth0"])
    etcd = EtcdServer(tmp_path / "etcd", host=ETCD_HOST, netns=ns.name("etcd"), extra_args=FAST_ETCD_ARGS)
    etcd.start()
    writer = EtcdWriter(ns, "etcd", etcd.client_url, tmp_path / "etcd-writer.log")
    c = Cluster(pair, etcd, writer)
    try:
        writer.start()
        writer.put(
            "/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}'
        )
        c.put_service("web", SERVICE_PORT)
        yield c
    finally:
        c.close()


def test_an_agent_whose_sync_fails_hands_the_vip_to_the_backup(pair: Pair, cluster: Cluster) -> None:
    """The real `flannel-lb run` in each box. A box whose agent has not synced yet does not take the VIP
    from a healthy peer; once synced it does (higher priority); a failed sync hands it to the backup,
    the next successful one takes it back."""
    lb2 = cluster.agent("lb2")
    lb2.health_written(0)
    _start(pair, healthy=(), master="lb2")  # lb1 has no agent yet: keepalived's init_file 1
    assert pair.health("lb1") == "1" and pair.health("lb2") == "0"
    flag = pair.tmp / "lb1-restore-fails"
    lb1 = cluster.agent("lb1", fail_flag=flag)
    synced = lb1.health_written(0)
    pair.wait_for("lb1 (synced, 150) to take the VIP", lambda: pair.holder() == ["lb1"])
    took = time.monotonic()
    assert _client_sees(pair) == "lb1"

    probe = _probe(pair)  # records who answers through the handover; stops after 20 answers from lb2
    flag.touch()  # lb1's iptables-restore now fails; lb2's does not
    mark1, mark2 = lb1.mark(), lb2.mark()
    cluster.put_service("api", SERVICE_PORT + 1)
    failed = lb1.wait_for(lambda e: e.get("event") == "sync_failed", after=mark1)
    unhealthy = lb1.health_written(1, after=mark1)
    pair.wait_for("lb2 to take the VIP from lb1's failed sync", lambda: pair.holder() == ["lb2"])
    handed = time.monotonic()
    out, _ = probe.communicate(timeout=60)
    events: list[tuple[float, str]] = [(t, who) for t, who in json.loads(out)]
    assert [who for _, who in events if not who.startswith("!")][:1] == ["lb1"]  # lb1 served until...
    lb2_from = min(t for t, who in events if who == "lb2")  # ...lb2 took over
    lb1_until = max(t for t, who in events if who == "lb1")
    lost = sum(1 for t, who in events if who.startswith("!") and t > unhealthy["_t"])
    assert _client_sees(pair) == "lb2"
    assert "injected failure" in failed["error"]
    lb2.wait_synced(after=mark2)  # the backup holds the change lb1 could not program

    mark1 = lb1.mark()
    flag.unlink()
    healthy = lb1.health_written(0, after=mark1)  # the retry (a full sync) goes through
    assert lb1.wait_synced(after=mark1)["frontends"] == 2
    pair.wait_for("lb1 to take the VIP back", lambda: pair.holder() == ["lb1"])
    back = time.monotonic()
    assert _client_sees(pair) == "lb1"
    print(
        f"\nlb1's health file 0 -> lb1 holds the VIP: {(took - synced['_t']) * 1000:.0f} ms (at most: "
        f"polled); sync failed -> health 1: {(unhealthy['_t'] - failed['_t']) * 1000:.0f} ms; "
        f"health 1 -> lb2 holds the VIP: {(handed - unhealthy['_t']) * 1000:.0f} ms; "
        f"health 0 again -> lb1 holds it: {(back - healthy['_t']) * 1000:.0f} ms "
        f"(VRRPv3 advert_int {ADVERT} s); through the handover {lost} of "
        f"{sum(1 for t, _ in events if t > unhealthy['_t'])} probe connects failed, "
        f"last answer from lb1 -> first from lb2: {(lb2_from - lb1_until) * 1000:.0f} ms"
    )


def test_etcd_down_and_a_stopped_agent_cause_no_failover(pair: Pair, cluster: Cluster) -> None:
    """Both boxes see the same etcd: its outage leaves both healthy (each keeps verifying its rules)
    and the master keeps the VIP. The master's agent stopped (keepalived alive) leaves its 0 in place:
    fail static, no failover."""
    agents = {short: cluster.agent(short) for short in BOXES}
    for agent in agents.values():
        agent.health_written(0)
    _start(pair, healthy=(), master="lb1")
    stop = pair.tmp / "probe.stop"
    probe = _probe(pair, stop)
    steps = {short: len(_steps(pair, short)) for short in BOXES}
    marks = {short: agent.mark() for short, agent in agents.items()}
    cluster.etcd.kill()
    down = time.monotonic()
    for short, agent in agents.items():
        lost = agent.wait_for(lambda e: e.get("event") == "etcd_unavailable", after=marks[short])
        after = agents[short].events.index(lost)
        for _ in range(2):  # two verifying resyncs of the rules during the outage, both fine
            after = agents[short].events.index(agent.wait_synced(after=after + 1))
            assert agents[short].events[after]["mode"] == "verify"
    mark = agents["lb2"].mark()
    assert agents["lb1"].stop() == 0  # SIGTERM: the agent goes, its rules and its verdict stay
    assert pair.health("lb1") == "0" and pair.health("lb2") == "0"
    agents["lb2"].wait_synced(after=mark)  # another verifying resync on lb2, lb1's agent gone
    stop.touch()
    out, _ = probe.communicate(timeout=60)
    events: list[tuple[float, str]] = [(t, who) for t, who in json.loads(out)]
    answers = {who for _, who in events if not who.startswith("!")}
    failed = [t for t, who in events if who.startswith("!")]
    assert answers == {"lb1"}  # lb2 never answered: no failover
    for short, agent in agents.items():  # neither agent changed its verdict, not even for a moment
        assert [e for e in agent.events[marks[short] :] if e.get("event") == "ha_health"] == [], short
    assert pair.holder() == ["lb1"]
    for short in BOXES:  # no state change at all after the start: neither hook ran again
        assert len(_steps(pair, short)) == steps[short], _steps(pair, short)
    print(
        f"\netcd down and lb1's agent stopped: {len(events)} probe connects over "
        f"{(events[-1][0] - down) * 1000:.0f} ms after the kill, {len(failed)} failed, all answered by lb1"
    )
