"""The agent end to end, in the lab: client -> 192.168.121.201 -> flannel-lb's rules -> pods over vxlan.

Everything is real: namespaces, veth/bridge/vxlan devices, etcd in `master`, pod servers, iptables in
the LB's namespace, and `flannel-lb run` as a process there. Needs root; skipped otherwise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from flannel_lb.lab.netns import namespace_pids
from tests.test_lab import module_lab

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

VIP = "192.168.121.201"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from module_lab("a")


@pytest.fixture(params=["restore", "nft"])
def agent(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    """The agent with each data plane: iptables (iptables-restore) and the nftables table."""
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url, min_sync_interval=0.01, writer=request.param))
    proc = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent.log").start()
    try:
        proc.wait_synced()
        yield proc
    finally:
        proc.stop()
        # leave the LB namespace as the next test expects it: no flannel-lb rules
        subprocess.run(proc.argv("cleanup"), capture_output=True, check=False)


def traffic(lab: Lab, mode: str, target: str, **opts: Any) -> dict[str, Any]:
    argv = [sys.executable, "-m", "flannel_lb.lab.traffic", mode, target]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    out = lab.exec_in("client", argv, check=True, timeout=300)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Background:
    """A traffic loop running while the test does something else."""

    def __init__(self, lab: Lab, mode: str, target: str, **opts: Any) -> None:
        self.result: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(lab, mode, target, opts), daemon=True)
        self.thread.start()

    def _run(self, lab: Lab, mode: str, target: str, opts: dict[str, Any]) -> None:
        self.result = traffic(lab, mode, target, **opts)

    def join(self) -> dict[str, Any]:
        self.thread.join(600)
        assert self.result is not None
        return self.result


def running_pods(lab: Lab, deployment: str = "nginx") -> list[str]:
    return sorted(
        p.name for p in lab.cluster().pods.values() if p.deployment == deployment and not p.terminating
    )


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def iptables_save(lab: Lab) -> str:
    return lab.exec_in(LB_HOST, ["iptables-save"], check=True).stdout


def test_requests_spread_over_every_pod(lab: Lab, agent: AgentProcess) -> None:
    result = traffic(lab, "http", f"{VIP}:80", count=200, timeout=2)
    assert result["failed"] == 0, result
    assert sorted(result["by_pod"]) == running_pods(lab)
    assert min(result["by_pod"].values()) > 200 / 4 * 0.5, result["by_pod"]  # each pod ~50 of 200
    udp = traffic(lab, "udp", f"{VIP}:53", count=40, timeout=2)  # the same source port throughout
    assert udp["failed"] == 0 and len(udp["by_pod"]) == 1  # one UDP flow sticks to one pod (conntrack)


def test_removed_pod_stops_receiving_and_its_udp_conntrack_goes(lab: Lab, agent: AgentProcess) -> None:
    first = traffic(lab, "udp", f"{VIP}:53", count=5, source_port=40053)
    (pinned,) = first["by_pod"]  # the pod this client's UDP flow is pinned to
    pod_ip = next(p.ip for p in lab.cluster().pods.values() if p.name == pinned)
    mark = agent.mark()
    t0 = time.monotonic()
    lab.kill_pod(pinned)
    agent.wait_synced(after=mark, timeout=5)
    live = traffic(lab, "http", f"{VIP}:80", count=60)
    converged = time.monotonic() - t0
    assert pinned not in live["by_pod"] and live["failed"] == 0
    print(f"\npod removed -> rules live and verified in {converged:.2f} s")
    # same UDP source port again: without conntrack cleanup it would stay pinned to the dead pod
    again = traffic(lab, "udp", f"{VIP}:53", count=5, source_port=40053)
    assert again["failed"] == 0 and pinned not in again["by_pod"], again
    conntrack = lab.exec_in(LB_HOST, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    assert f"src={pod_ip} " not in conntrack


def test_node_whose_route_disappears_is_excluded(lab: Lab, agent: AgentProcess) -> None:
    pods = lab.cluster().pods.values()
    node1 = {p.name for p in pods if p.node == "node-1" and p.deployment == "nginx" and not p.terminating}
    subnet = next(p.ip for p in pods if p.node == "node-1").rsplit(".", 1)[0] + ".0/24"
    route = lab.exec_in(LB_HOST, ["ip", "route", "show", subnet], check=True).stdout.strip()
    assert "flannel.1" in route
    mark = agent.mark()
    lab.exec_in(LB_HOST, ["ip", "route", "del", subnet], check=True)
    try:
        agent.wait_for(lambda e: e.get("event") == "lease_paths_changed", after=mark, timeout=10)
        agent.wait_synced(after=mark, timeout=10)
        result = traffic(lab, "http", f"{VIP}:80", count=40)
        assert result["failed"] == 0 and not (set(result["by_pod"]) & node1), result
        plan = lab.exec_in(LB_HOST, agent.argv("explain", "default/nginx")[4:], check=True).stdout
        assert f"no kernel path to lease {subnet}" in plan
    finally:
        lab.exec_in(LB_HOST, ["ip", "route", "replace", *route.split()], check=True)
    mark = agent.mark()
    agent.wait_for(lambda e: e.get("event") == "lease_paths_changed", after=mark, timeout=10)
    agent.wait_synced(after=mark, timeout=10)
    assert set(traffic(lab, "http", f"{VIP}:80", count=60)["by_pod"]) >= node1  # the route came back


_FETCH = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())"


def _fetch(lab: Lab, path: str) -> str:
    """GET the agent's metrics listener (the lab config's 127.0.0.1:9842) from inside the LB."""
    url = f"http://127.0.0.1:9842{path}"
    return lab.exec_in(LB_HOST, [sys.executable, "-c", _FETCH, url], check=True).stdout


def _metrics(lab: Lab) -> str:
    return _fetch(lab, "/metrics")


def test_source_ranges_admit_only_their_clients_and_a_change_applies(lab: Lab, agent: AgentProcess) -> None:
    """A Service with loadBalancerSourceRanges, written to etcd as kube-apiserver would: clients outside
    are dropped (and counted), the Service's other clients and every other Service are unaffected."""
    mark = agent.mark()
    lab.expose("nginx", VIP, ["web:8088:http"], name="office", source_ranges=["198.51.100.0/24"])
    try:
        agent.wait_synced(after=mark, timeout=10)
        shut = traffic(lab, "http", f"{VIP}:8088", count=3, timeout=0.5)
        assert shut["failed"] == 3, shut  # the lab's client (192.168.121.1) is outside the range
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
        labels = f'frontend="{VIP}:8088/TCP",service="default/office"'
        series = f"flannel_lb_source_range_drops_total{{{labels}}}"
        deadline = time.monotonic() + 10
        while series not in _metrics(lab) and time.monotonic() < deadline:
            time.sleep(0.5)  # sampled with the netcheck, every 2 s
        line = next(ln for ln in _metrics(lab).splitlines() if ln.startswith(series))
        assert float(line.split()[-1]) >= 3, line
        mark = agent.mark()
        lab.set_source_ranges("office", ["192.168.121.1/32", "2001:db8::/32"])
        agent.wait_synced(after=mark, timeout=10)
        assert traffic(lab, "http", f"{VIP}:8088", count=20)["failed"] == 0
        story = lab.exec_in(LB_HOST, agent.argv("explain", "default/office")[4:], check=True).stdout
        assert "clients: only from 192.168.121.1/32 (loadBalancerSourceRanges)" in story, story
        mark = agent.mark()
        lab.set_source_ranges("office", [])
        agent.wait_synced(after=mark, timeout=10)
        assert traffic(lab, "http", f"{VIP}:8088", count=20)["failed"] == 0  # no ranges: open
    finally:
        mark = agent.mark()
        lab.unexpose("office")
        agent.wait_synced(after=mark, timeout=10)


def test_a_rolling_update_under_load_loses_no_request(lab: Lab, agent: AgentProcess) -> None:
    """`lab rollout`: each pod replaced in turn, the old one terminating (still serving) for its grace
    period. The LB sends it no new connection from the moment it is terminating (draining) and leaves
    its established ones alone, so a client sending request after request sees no failure."""
    before = running_pods(lab)
    result = lab.rollout_under_load("nginx", f"{VIP}:80", grace=1.0)
    after = running_pods(lab)
    load = result["load"]
    print(
        f"\nrolling update of {len(before)} pods ({result['seconds']} s, grace 1 s): {load['ok']} requests"
        f" answered, {load['failed']} failed"
    )
    assert load["failed"] == 0, load["errors"]
    assert sorted(result["old"]) == before and sorted(result["new"]) == after
    assert not set(before) & set(after)  # every pod replaced
    assert set(after) <= set(load["by_pod"])  # and the new ones took over the requests


def test_agent_restart_under_load_loses_no_request(lab: Lab, agent: AgentProcess, tmp_path: Path) -> None:
    loop = Background(lab, "http", f"{VIP}:80", duration=6, interval=0.005, timeout=2)
    time.sleep(1)
    assert agent.stop() == 0  # SIGTERM: the rules stay in place
    rules = iptables_save(lab) + lab.exec_in(LB_HOST, ["nft", "list", "ruleset"], check=True).stdout
    assert "FLB-SERVICES" in rules or "table ip flb" in rules
    time.sleep(1)
    restarted = AgentProcess(agent.netns, agent.config, tmp_path / "agent2.log").start()
    try:
        sync = restarted.wait_synced()
        assert sync["mode"] == "adopt" and not any(sync["changed"].values()), sync  # nothing rewritten
        result = loop.join()
    finally:
        restarted.stop()
    assert result["failed"] == 0 and result["ok"] > 100, result


def test_restart_with_an_undecodable_spec_keeps_serving_it(lab: Lab, tmp_path: Path) -> None:
    """Bad input never drops working rules, also across a restart (the saved last good frontends)."""
    state = tmp_path / "last-good.jsonl"
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url, state_file=str(state), min_sync_interval=0.01))
    first = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent1.log").start()
    try:
        first.wait_synced()
    finally:
        assert first.stop() == 0  # SIGTERM saves the last plan
    assert '"service": "default/nginx"' in state.read_text()

    key = "/registry/services/specs/default/nginx"
    good = lab.etcd().get(key)
    assert good is not None
    lab.etcd().put(key, good.value[:40])  # a truncated protobuf: the spec no longer decodes
    loop = Background(lab, "http", f"{VIP}:80", duration=6, interval=0.01, timeout=2)
    second = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent2.log").start()
    try:
        held = second.wait_for(lambda e: e.get("event") == "service_held_over", timeout=20)
        assert held["service"] == "default/nginx"
        sync = second.wait_synced()
        assert sync["problems"] == 1 and not any(sync["changed"].values()), sync  # adopted, nothing removed
        result = loop.join()
        assert result["failed"] == 0 and result["ok"] > 100, result
        mark = second.mark()
        lab.etcd().put(key, good.value)  # fixed: served from the live spec again
        second.wait_for(lambda e: e.get("event") == "service_no_longer_held", timeout=10, after=mark)
    finally:
        second.stop()
        lab.etcd().put(key, good.value)
        subprocess.run(second.argv("cleanup"), capture_output=True, check=False)


def test_etcd_down_loses_no_request_and_the_agent_catches_up(lab: Lab, agent: AgentProcess) -> None:
    loop = Background(lab, "http", f"{VIP}:80", duration=12, interval=0.01, timeout=2)
    time.sleep(1)
    (etcd_pid,) = [pid for pid in namespace_pids(lab.namespace("master")) if process_name(pid) == "etcd"]
    mark = agent.mark()
    lab.exec_in("master", ["kill", "-STOP", str(etcd_pid)], check=True)  # hung etcd (worst case)
    try:
        agent.wait_for(lambda e: e.get("event") == "etcd_unavailable", after=mark, timeout=30)
    finally:
        lab.exec_in("master", ["kill", "-CONT", str(etcd_pid)], check=True)
    result = loop.join()
    assert result["failed"] == 0, result
    lab.scale("nginx", 5)  # a change made right after etcd is back is applied
    revision = lab.etcd().revision()
    agent.wait_for(lambda e: e.get("event") == "sync" and e.get("revision", 0) >= revision, timeout=40)
    assert len(traffic(lab, "http", f"{VIP}:80", count=150)["by_pod"]) == 5
    lab.scale("nginx", 4)


def test_foreign_rules_are_untouched_by_install_sync_and_cleanup(lab: Lab, tmp_path: Path) -> None:
    foreign = [
        [
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "REDIRECT",
            "--to-ports",
            "22",
        ],
        ["-t", "nat", "-A", "POSTROUTING", "-s", "172.30.0.0/16", "-j", "MASQUERADE"],
        ["-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "23", "-j", "DROP"],
        ["-t", "filter", "-P", "FORWARD", "DROP"],  # a Docker host: the agent must still forward its flows
    ]
    for rule in foreign:
        lab.exec_in(LB_HOST, ["iptables", "-w", *rule], check=True)

    def foreign_state() -> list[str]:
        lines = iptables_save(lab).splitlines()
        return [ln for ln in lines if "FLB-" not in ln and not ln.startswith("#") and not ln.startswith(":")]

    def policies() -> list[str]:
        return [
            ln.split(" [")[0]
            for ln in iptables_save(lab).splitlines()
            if ln.startswith(":") and "FLB-" not in ln
        ]

    before, before_policies = foreign_state(), policies()
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    proc = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent.log").start()
    try:
        proc.wait_synced()
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0  # works despite FORWARD DROP
        assert (foreign_state(), policies()) == (before, before_policies)
        mark = proc.mark()
        lab.scale("nginx", 3)
        proc.wait_synced(after=mark)
        assert (foreign_state(), policies()) == (before, before_policies)
    finally:
        proc.stop()
    cleaned = subprocess.run(proc.argv("cleanup"), capture_output=True, text=True, check=True)
    assert "removed" in cleaned.stdout
    assert "FLB-" not in iptables_save(lab)
    assert (foreign_state(), policies()) == (before, before_policies)
    lab.scale("nginx", 4)
    for rule in foreign[:3]:
        lab.exec_in(LB_HOST, ["iptables", "-w", *[("-D" if a == "-A" else a) for a in rule]], check=True)
    lab.exec_in(LB_HOST, ["iptables", "-w", "-t", "filter", "-P", "FORWARD", "ACCEPT"], check=True)


def test_sync_once_and_render(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    agent = AgentProcess(lab.namespace(LB_HOST), config)
    rendered = lab.exec_in(LB_HOST, agent.argv("render")[4:], check=True).stdout
    assert "*nat" in rendered and "-j DNAT --to-destination" in rendered
    pending = lab.exec_in(LB_HOST, agent.argv("diff")[4:], check=False)
    assert pending.returncode == 1 and pending.stdout.endswith("\n"), pending
    rendered = lab.exec_in(LB_HOST, agent.argv("render", "--all")[4:], check=True).stdout.splitlines()
    added = [line[1:] for line in pending.stdout.splitlines() if line.startswith("+-A FLB-")]
    assert added and not set(added) - set(rendered)  # render and diff spell every rule alike
    once = lab.exec_in(LB_HOST, agent.argv("sync", "--once")[4:], check=True, timeout=60)
    assert "sync:" in once.stdout
    # one measurement, reported alike in the text and the JSON log line
    logged = next(json.loads(line) for line in once.stderr.splitlines() if '"event": "sync"' in line)
    assert f"({logged['seconds'] * 1000:.1f} ms: plan, rules and conntrack cleanup)" in once.stdout
    try:
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
        # flannel's vxlan packets (the lab's network config: vxlan, port 8472) skip the dispatch chains
        save = iptables_save(lab)
        comment = '-m comment --comment "flannel-lb: skip flannel overlay packets"'
        guard = f"-p udp {comment} -m udp --dport 8472 -j RETURN"
        assert f"-A FLB-SERVICES {guard}" in save and f"-A FLB-LOCAL {guard}" in save, save
        again = lab.exec_in(LB_HOST, agent.argv("render")[4:], check=True).stdout
        assert "the next sync changes nothing" in again
        diff = lab.exec_in(LB_HOST, agent.argv("diff")[4:], check=False)
        assert diff.returncode == 0 and "nothing to change" in diff.stdout, diff.stdout
        # the kernel prints back exactly what render wrote (probabilities included)
        assert {line for line in rendered if line.startswith("-A FLB-")} <= set(save.splitlines()), save
    finally:
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=True)


def test_render_and_diff_through_the_nft_data_plane(lab: Lab, tmp_path: Path) -> None:
    """The same verbs, the same interface, with `writer = "nft"`: no branch of the CLI knows the writer."""
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url, writer="nft"))
    agent = AgentProcess(lab.namespace(LB_HOST), config)

    def verb(*argv: str) -> subprocess.CompletedProcess[str]:
        return lab.exec_in(LB_HOST, agent.argv(*argv)[4:], check=False)

    try:
        pending = verb("diff")
        assert pending.returncode == 1 and pending.stdout == "the table does not exist\n", pending
        whole = verb("render", "--all").stdout
        assert whole.startswith("table ip flb\n") and "map services" in whole, whole[:400]
        assert verb("sync", "--once").returncode == 0
        in_step = verb("diff")
        assert in_step.returncode == 0 and "nothing to change" in in_step.stdout, in_step
        assert "the next sync changes nothing" in verb("render").stdout
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
    finally:
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=True)


def test_sighup_reloads_the_config(lab: Lab, agent: AgentProcess) -> None:
    original = agent.config.read_text()

    def reload(text: str) -> None:
        agent.config.write_text(text)
        mark = agent.mark()
        agent.signal(signal.SIGHUP)
        agent.wait_for(lambda e: e.get("event") in ("config_reloaded", "config_reload_failed"), after=mark)
        agent.wait_synced(after=mark)

    reload(original.replace(f'addresses = ["{VIP}", ', "addresses = ["))  # VIP is no longer an LB address
    assert traffic(lab, "http", f"{VIP}:80", count=3, timeout=1)["failed"] == 3  # refused now
    mark = agent.mark()
    agent.config.write_text(original.replace("[lb]", "[lb]\nbogus = 1"))  # a broken config is refused
    agent.signal(signal.SIGHUP)
    failed = agent.wait_for(lambda e: e.get("event") == "config_reload_failed", after=mark)
    assert "bogus: unknown key" in failed["error"]
    reload(original)
    assert traffic(lab, "http", f"{VIP}:80", count=3)["failed"] == 0


def test_metrics_healthz_and_systemd_notify(lab: Lab, tmp_path: Path) -> None:
    """/metrics and /healthz on the configured loopback address, and READY=1/WATCHDOG=1 to systemd."""
    import os
    import socket

    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(20)
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    proc = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent.log")
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    proc.start(env=env)
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(notify.recv(4096).decode())
        messages.append(notify.recv(4096).decode())
        assert any("WATCHDOG=1" in m for m in messages), messages
        text = _metrics(lab)
        assert "flannel_lb_frontends 2.0" in text
        assert "flannel_lb_etcd_watch_connected 1.0" in text
        assert 'flannel_lb_syncs_total{kind="partial",result="ok"}' in text
        assert "flannel_lb_sync_duration_seconds_bucket" in text
        assert _fetch(lab, "/healthz").startswith("ok")
    finally:
        proc.stop()
        notify.close()
        subprocess.run(proc.argv("cleanup"), capture_output=True, check=False)
