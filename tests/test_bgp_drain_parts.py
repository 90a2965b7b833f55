"""The drain's parts one by one: the files the verb and the agent share (read as hostile), the verb's
refusals, the signals, the agent's drain over a real flow in a namespace, the second-chance table in a
real kernel. The whole drain under load with real BIRD is tests/test_bgp_drain.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb import cli, config
from flannel_lb.bgp import drain
from flannel_lb.bgp.announce import Announcer
from flannel_lb.bgp.redirect import Redirect
from flannel_lb.daemon.agent import Agent, install_signal_handlers
from flannel_lb.daemon.draining import POLL, Drain
from flannel_lb.dataplane.plane import make_dataplane
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.objects import endpoint, endpoint_slice, port, service
from flannel_lb.source.records import KeyValue, Snapshot

VIP = "10.81.0.100"
ROUTER = "10.80.0.1"


def _bgp(tmp_path: Path, extra: str = "", enabled: bool = True) -> config.Config:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(
        f'[lb]\naddresses = ["{VIP}"]\n'
        '[dataplane]\nwriter = "nft"\nmanage_ip_forward = false\nconntrack_cleanup = false\n'
        f"[bgp]\nenabled = {'true' if enabled else 'false'}\nasn = 65001\n"
        f'neighbors = [{{ address = "{ROUTER}", asn = 65000 }}]\nstate_dir = "{tmp_path / "bgp"}"\n{extra}'
    )
    return config.load(path)


# --- the pid file and the result file -------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line is not a flannel-lb agent's."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"expected a process id, got ''"),
        (b"abc\n", r"expected a process id, got 'abc'"),
        (b"-5\n", r"expected a process id"),
        (b"1\n", r"expected a process id"),  # init: never an agent
        (b"99999999999\n", r"expected a process id"),
        (b"\xff\xfe12\n", r"not ASCII text"),
        (b"1" * 5000, r"longer than 4096 bytes"),
        ("١٢٣\n".encode(), r"not ASCII text"),  # Arabic-Indic digits: int() would take them
    ],
)
def test_a_damaged_pid_file_is_refused_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    cfg = _bgp(tmp_path)
    drain.pid_path(cfg.bgp).parent.mkdir(parents=True)
    drain.pid_path(cfg.bgp).write_bytes(content)
    with pytest.raises(drain.DrainError, match=f"agent.pid: {message}"):
        drain.running_agent(cfg.bgp)


def test_a_stale_pid_file_is_never_signalled(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    cfg = _bgp(tmp_path)
    with pytest.raises(drain.DrainError, match="no agent with \\[bgp\\] enabled is running"):
        drain.running_agent(cfg.bgp)
    drain.pid_path(cfg.bgp).parent.mkdir(parents=True)
    drain.pid_path(cfg.bgp).write_text(f"{sleeper.pid}\n")  # alive, but `sleep`
    with pytest.raises(drain.DrainError, match=f"process {sleeper.pid} is not a flannel-lb agent"):
        drain.running_agent(cfg.bgp)
    dead = subprocess.Popen(["true"])
    dead.wait()
    drain.pid_path(cfg.bgp).write_text(f"{dead.pid}\n")
    with pytest.raises(drain.DrainError, match=f"process {dead.pid} is not running"):
        drain.running_agent(cfg.bgp)


def test_the_pid_file_names_this_process_and_only_it_removes_it(tmp_path: Path) -> None:
    cfg = _bgp(tmp_path)
    path = drain.write_pid(cfg.bgp)
    assert path.read_text() == f"{os.getpid()}\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    path.write_text("12345\n")  # a newer agent's
    drain.remove_pid(cfg.bgp)
    assert path.exists()
    drain.write_pid(cfg.bgp)
    drain.remove_pid(cfg.bgp)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        "",
        "[]",
        "{",
        '{"pid": 1, "open_flows_left": 0, "seconds": NaN, "reason": "deadline"}',
        '{"pid": 1, "open_flows_left": 0, "seconds": 1e300, "reason": "deadline"}',
        '{"pid": true, "open_flows_left": 0, "seconds": 1, "reason": "deadline"}',
        '{"pid": 1, "open_flows_left": -7, "seconds": 1, "reason": "deadline"}',
        '{"pid": 1, "open_flows_left": 0, "seconds": 1, "reason": "' + "x" * 100 + '"}',
        '{"pid": 1, "open_flows_left": 0, "seconds": 1}',
        "[" * 100000,
    ],
)
def test_a_damaged_result_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    cfg = _bgp(tmp_path)
    drain.result_path(cfg.bgp).parent.mkdir(parents=True)
    drain.result_path(cfg.bgp).write_text(content)
    with pytest.raises(drain.DrainError, match=r"drain\.json: "):
        drain.read_result(cfg.bgp)


def test_a_result_reads_back(tmp_path: Path) -> None:
    cfg = _bgp(tmp_path)
    result = drain.DrainResult(4242, 3, 2.5, "deadline")
    drain.write_result(cfg.bgp, result)
    assert drain.read_result(cfg.bgp) == result


# --- the verb -------------------------------------------------------------------------------------


def test_the_verb_refuses_without_bgp_and_without_an_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sleeper: subprocess.Popen[bytes]
) -> None:
    off = _bgp(tmp_path, enabled=False)
    assert cli.main(["--config", off.path, "drain"]) == 2
    assert "[bgp] enabled is false" in capsys.readouterr().err
    on = _bgp(tmp_path)
    assert cli.main(["--config", on.path, "drain"]) == 1
    assert "no agent with [bgp] enabled is running" in capsys.readouterr().err
    drain.pid_path(on.bgp).parent.mkdir(parents=True, exist_ok=True)
    drain.pid_path(on.bgp).write_text(f"{sleeper.pid}\n")
    assert cli.main(["--config", on.path, "drain"]) == 1
    assert "is not a flannel-lb agent" in capsys.readouterr().err
    assert sleeper.poll() is None  # not signalled


def test_the_verb_signals_the_agent_and_reports_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in agent (its command line a `flannel-lb ... run`): on SIGUSR1 it writes its result and
    exits, as the agent does; the verb waits for the exit and prints the result."""
    cfg = _bgp(tmp_path)
    script = (
        "import json, os, signal, sys, time\n"
        "def done(*_):\n"
        f"    open({str(drain.result_path(cfg.bgp))!r}, 'w').write(json.dumps("
        "{'pid': os.getpid(), 'open_flows_left': 2, 'seconds': 0.5, 'reason': 'deadline'}))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGUSR1, done)\n"
        "time.sleep(30)\n"
    )
    drain.result_path(cfg.bgp).parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", script, "flannel-lb", "run"])
    try:
        drain.pid_path(cfg.bgp).write_text(f"{proc.pid}\n")
        time.sleep(0.5)  # its handler is installed
        assert cli.main(["--config", cfg.path, "drain"]) == 1  # flows were left
        out = capsys.readouterr().out
        assert f"draining agent {proc.pid}" in out and "drained in 0.5 s (deadline): 2 open flows left" in out
    finally:
        proc.kill()
        proc.wait()


# --- the signals ----------------------------------------------------------------------------------


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("drain_on_sigterm", [True, False])
def test_sigterm_drains_only_when_configured_and_a_second_one_stops(
    tmp_path: Path, handlers: None, drain_on_sigterm: bool
) -> None:
    cfg = _bgp(tmp_path, f"drain_on_sigterm = {'true' if drain_on_sigterm else 'false'}\n")
    agent = Agent(cfg, dataplane=make_dataplane(cfg))  # never synced: nothing touches the kernel
    stop = threading.Event()
    install_signal_handlers(agent, stop)
    os.kill(os.getpid(), signal.SIGTERM)
    assert agent.drain_requested is drain_on_sigterm
    assert stop.is_set() is not drain_on_sigterm
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.is_set()


def test_sigusr1_asks_for_a_drain(tmp_path: Path, handlers: None) -> None:
    cfg = _bgp(tmp_path)
    agent = Agent(cfg, dataplane=make_dataplane(cfg))
    stop = threading.Event()
    install_signal_handlers(agent, stop)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert agent.drain_requested and not stop.is_set()
    assert type(agent.inbox.get_nowait()).__name__ == "_Drain"


# --- the agent's drain over a real flow (namespaces) ------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces")


POD = "10.246.1.2"


def _snapshot() -> Snapshot:
    """VIP:9000 served by a "pod" at 10.246.1.2, an address on the box itself (a local DNAT target)."""
    svc = json.dumps(service("web", external_ips=[VIP], ports=[port(9000)])).encode()
    eps = endpoint_slice("web-1", "web", [endpoint(POD)], [("", 9000, "TCP")])
    lease = b'{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    return Snapshot(
        2,
        [
            KeyValue("/coreos.com/network/config", b'{"Network": "10.246.0.0/16"}', 1),
            KeyValue("/coreos.com/network/subnets/10.246.1.0-24", lease, 1),
            KeyValue("/registry/services/specs/default/web", svc, 2),
            KeyValue("/registry/endpointslices/default/web-1", json.dumps(eps).encode(), 2),
        ],
    )


CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9000), timeout=5)
s.sendall(b"x"); assert s.recv(1) == b"x"
print("open", flush=True)
sys.stdin.readline()
s.sendall(b"y"); assert s.recv(1) == b"y"  # still served after the withdraw
s.shutdown(socket.SHUT_WR)
while s.recv(100): pass
"""


@pytest.fixture
def box() -> Iterator[Namespaces]:
    """The LB `lb` (the VIP on lo once announced, the pod's address on lo too) and a client `cl` whose
    route to the VIP leads there whether it is announced or not (a router that still sends a flow)."""
    with Namespaces(unique_prefix("bgpdr")) as ns:
        ns.add("lb")
        ns.add("cl")
        ns.veth("cl", "eth0", "lb", "eth0")
        ns.run("lb", ["ip", "addr", "add", "10.99.0.1/24", "dev", "eth0"])
        ns.run("lb", ["ip", "addr", "add", f"{POD}/32", "dev", "lo"])
        ns.run("cl", ["ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"])
        ns.run("cl", ["ip", "route", "add", f"{VIP}/32", "via", "10.99.0.1"])
        yield ns


def _step_until_drained(agent: Agent, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not agent.drained:
        assert time.monotonic() < deadline, f"no end of drain within {timeout} s"
        agent.step()


@needs_root
def test_the_agent_drains_waits_for_the_open_flow_and_never_announces_again(
    tmp_path: Path, box: Namespaces
) -> None:
    cfg = _bgp(tmp_path, "drain_timeout = 30\n")
    name = box.name("lb")
    agent = Agent(cfg, dataplane=make_dataplane(cfg, name), announcer=Announcer.of(cfg.bgp, name))
    agent.handle(_snapshot())
    assert agent.sync(full=False) is not None
    assert Announcer.of(cfg.bgp, name).announced() == [VIP]
    server = box.popen("lb", [sys.executable, "-m", "flannel_lb.lab.flows", "serve", f"{POD}:9000"])
    client = None
    try:
        time.sleep(0.5)
        client = box.popen(
            "cl",
            [sys.executable, "-c", CLIENT, VIP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdout.readline() == "open\n"
        agent.request_drain()
        agent.step()
        assert agent.drain is not None and agent.drain.open == 1 and not agent.drained
        assert Announcer.of(cfg.bgp, name).announced() == []  # withdrawn
        assert agent.sync(full=True) is not None  # the loop keeps the rules in step...
        assert Announcer.of(cfg.bgp, name).announced() == []  # ...and never announces again
        time.sleep(0.5)
        agent.step()
        assert not agent.drained  # the flow is still open
        assert client.stdin is not None
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.wait(10) == 0
        _step_until_drained(agent)
        result = drain.read_result(cfg.bgp)
        assert (result.pid, result.open_flows_left, result.reason) == (os.getpid(), 0, "flows finished")
        assert 0.5 < result.seconds < 30
    finally:
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        agent.close()


@needs_root
def test_a_drain_with_bgp_off_is_ignored_and_the_agent_serves_on(tmp_path: Path, box: Namespaces) -> None:
    cfg = _bgp(tmp_path, enabled=False)
    agent = Agent(cfg, dataplane=make_dataplane(cfg, box.name("lb")))
    agent.handle(_snapshot())
    assert agent.sync(full=False) is not None
    agent.request_drain()
    agent.step()
    assert agent.drain is None and not agent.drained and not agent.drain_requested
    agent.close()


# --- the second-chance table ----------------------------------------------------------------------


def test_no_peers_no_redirect(tmp_path: Path) -> None:
    assert Redirect.of(_bgp(tmp_path).bgp) is None


def test_the_redirect_passes_mid_stream_packets_from_a_router_on_and_drops_the_rest(tmp_path: Path) -> None:
    r = Redirect.of(_bgp(tmp_path, 'peers = ["10.80.0.12", "10.80.0.13"]\n').bgp)
    assert r is not None
    text = r.render(("02:00:00:00:00:01",))
    assert "ether saddr @routers counter dup to 10.80.0.12 dup to 10.80.0.13 drop" in text
    assert "ether saddr != @routers counter drop" in text
    assert "ct state { new, invalid } tcp flags & syn == 0" in text  # never a SYN: new flows stay here
    assert text.startswith("table ip flb_bgp\ndelete table ip flb_bgp\n")  # one transaction replaces it
    unresolved = r.render(())
    assert "dup to" not in unresolved and "syn == 0 counter drop" in unresolved
    alone = r.render(("02:00:00:00:00:01",), ())  # every peer listed is this box
    assert "dup to" not in alone and alone.count("drop") == 1


@needs_root
def test_the_redirect_table_loads_reads_the_routers_macs_and_is_replaced_whole(
    tmp_path: Path, box: Namespaces
) -> None:
    name = box.name("lb")
    box.run("lb", ["ip", "addr", "add", "10.80.0.11/24", "dev", "eth0"])  # the routers' link
    neigh = [
        "ip",
        "neigh",
        "replace",
        ROUTER,
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]
    box.run("lb", neigh)
    box.run("lb", ["ip", "neigh", "replace", "10.80.0.99", "lladdr", "02:00:00:00:00:09", "dev", "eth0"])
    r = Redirect.of(_bgp(tmp_path, 'peers = ["10.80.0.11", "10.80.0.12"]\n').bgp, name)
    assert r is not None
    assert r.router_macs() == ("02:00:00:00:00:01",)  # only the neighbours' (the routers')
    assert r.others() == ("10.80.0.12",)  # 10.80.0.11 is this box: one list serves the whole group
    r.apply(r.router_macs(), r.others())
    listed = box.run("lb", ["nft", "list", "table", "ip", "flb_bgp"]).stdout
    assert "dup to 10.80.0.12 drop" in listed and "10.80.0.11" not in listed
    r.apply(())  # replaced, not added to
    listed = box.run("lb", ["nft", "list", "table", "ip", "flb_bgp"]).stdout
    assert "dup to" not in listed and listed.count("drop") == 1
    assert box.run("lb", ["nft", "list", "tables"]).stdout == "table ip flb_bgp\n"
    assert r.remove() and not r.remove()
    assert box.run("lb", ["nft", "list", "tables"]).stdout == ""
    r.apply(())
    cfg = tmp_path / "flannel-lb.toml"
    out = box.run("lb", [sys.executable, "-m", "flannel_lb", "--config", str(cfg), "cleanup"]).stdout
    assert "removed nftables table ip flb_bgp" in out  # `cleanup` takes it with the rules
    assert box.run("lb", ["nft", "list", "tables"]).stdout == ""


# --- the drain's clock (no kernel: the count is given) ---------------------------------------------


def test_a_drain_that_cannot_count_waits_for_its_deadline_and_never_guesses() -> None:
    def broken(_addresses: tuple[str, ...], _netns: str | None) -> int:
        raise OSError("netlink refused")

    d = Drain((VIP,), None, started=100.0, timeout=5.0, count=broken)
    assert d.tally(100.0) == -1 and d.finished(100.0) is None
    assert d.tally(104.9) == -1 and d.finished(104.9) is None
    assert d.finished(105.0) == "deadline"


def test_a_drain_ends_at_zero_or_at_its_deadline() -> None:
    left = iter([3, 1, 0])
    d = Drain((VIP,), None, started=0.0, timeout=60.0, count=lambda _a, _n: next(left))
    assert [d.tally(t) for t in (0.0, 1.0, 2.0)] == [3, 1, 0]
    assert d.finished(2.0) == "flows finished"
    stuck = Drain((VIP,), None, started=0.0, timeout=0.0, count=lambda _a, _n: 4)
    stuck.tally(0.0)
    assert stuck.finished(0.0) == "deadline"  # drain_timeout = 0: withdraw and go
    assert stuck.due(0.0) and stuck.next_check >= POLL
