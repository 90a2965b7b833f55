"""Fail static across a reboot, in the lab: the agent starts while etcd is down and serves its last good plan.

The first agent syncs and saves its plan (`[lb] state_file`), then dies by SIGKILL and etcd is killed.
In the reboot variant the owned rules are removed with `flannel-lb cleanup` as well, as a reboot
would. A new agent started with etcd still down must program the saved plan (adopting what the
kernel holds), tell systemd READY=1, say "stale" on /healthz and in `flannel_lb_serving_stale`, and
serve requests through the VIP; once etcd is back it converges and reports ok.

Also here, since it needs the same lab: `sync --once` prepares the host as `run` does (ip_forward).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from tests.test_agent_e2e import iptables_save, traffic
from tests.test_faults import etcd_pid, fetch, kill_etcd, start_etcd
from tests.test_lab import module_lab

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

VIP = "192.168.121.201"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from module_lab("b")


def etcd_running(lab: Lab) -> bool:
    try:
        etcd_pid(lab)
    except ValueError:
        return False
    return True


def readiness(notify: socket.socket) -> str:
    """The first notify datagram carrying READY=1."""
    while True:
        message = notify.recv(4096).decode()
        if "READY=1" in message:
            return message


@pytest.mark.parametrize(
    ("writer", "reboot"),
    [
        pytest.param("restore", False, id="restore-rules-kept"),
        pytest.param("restore", True, id="restore-reboot"),
        pytest.param("nft", True, id="nft-reboot"),
    ],
)
def test_start_with_etcd_down_serves_the_last_good_plan(
    lab: Lab, tmp_path: Path, writer: str, reboot: bool
) -> None:
    state = tmp_path / "last-good.jsonl"
    config = tmp_path / "flannel-lb.toml"
    config.write_text(
        agent_config(
            lab.etcd_url,
            state_file=str(state),
            min_sync_interval=0.01,
            full_resync_interval=2.0,
            writer=writer,
        )
    )
    first = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent1.log").start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    second: AgentProcess | None = None
    try:
        first.wait_synced(timeout=30)
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
        _wait_saved(first, state)
        first.kill()  # SIGKILL: nothing more is written
        kill_etcd(lab)
        if reboot:
            subprocess.run(first.argv("cleanup"), capture_output=True, check=True)
            rules = iptables_save(lab) + lab.exec_in(LB_HOST, ["nft", "list", "ruleset"], check=True).stdout
            assert "FLB-" not in rules and "table ip flb" not in rules
            assert traffic(lab, "http", f"{VIP}:80", count=3, timeout=1)["failed"] == 3  # nothing serves

        with state.open("ab") as damaged:  # two damaged lines: skipped and counted, the rest served
            damaged.write(b'{"service": "default/x", "frontends": 5}\n\xff\xfe not utf-8\n')
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        second = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent2.log").start(env=env)
        ready = readiness(notify)
        assert "stale" in ready, ready
        booted = second.wait_for(lambda e: e.get("event") == "serving_last_good_plan", timeout=30)
        assert booted["frontends"] == 2, booted  # nginx's 80/TCP and 53/UDP
        if reboot:
            assert any(booted["changed"].values()), booted  # written from the file
        else:
            assert booted["mode"] == "adopt" and not any(booted["changed"].values()), booted
        result = traffic(lab, "http", f"{VIP}:80", count=40)
        assert result["failed"] == 0 and len(result["by_pod"]) >= 2, result
        assert fetch(lab, "/healthz").startswith("stale: serving the last good plan"), fetch(lab, "/healthz")
        assert "flannel_lb_serving_stale 1.0" in fetch(lab, "/metrics")
        assert "flannel_lb_state_file_lines_skipped 2.0" in fetch(lab, "/metrics")

        mark = second.mark()
        start_etcd(lab)
        second.wait_for(lambda e: e.get("event") == "serving_live", after=mark, timeout=60)
        assert fetch(lab, "/healthz").startswith("ok"), fetch(lab, "/healthz")
        assert "flannel_lb_serving_stale 0.0" in fetch(lab, "/metrics")
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
        mark = second.mark()
        lab.scale("nginx", 5)  # and it follows etcd again
        revision = lab.etcd().revision()
        second.wait_for(lambda e: e.get("event") == "sync" and e.get("revision", 0) >= revision, after=mark)
        assert len(traffic(lab, "http", f"{VIP}:80", count=150)["by_pod"]) == 5
        lab.scale("nginx", 4)
    finally:
        first.kill()
        if second is not None:
            second.stop()
        notify.close()
        if not etcd_running(lab):
            start_etcd(lab)
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(first.argv("cleanup"), capture_output=True, check=True)


def test_sync_once_turns_on_forwarding_as_run_does(lab: Lab, tmp_path: Path) -> None:
    """A new user's first try: `sync --once` on a namespace whose forwarding is off. The rules alone
    are not enough; the DNATed packets must be forwarded too."""
    forward = "/proc/sys/net/ipv4/ip_forward"
    lab.exec_in(LB_HOST, ["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)  # the lab's namespace
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    agent = AgentProcess(lab.namespace(LB_HOST), config)
    try:
        assert lab.exec_in(LB_HOST, ["cat", forward], check=True).stdout.strip() == "0"
        lab.exec_in(LB_HOST, agent.argv("sync", "--once")[4:], check=True, timeout=60)
        assert lab.exec_in(LB_HOST, ["cat", forward], check=True).stdout.strip() == "1"
        assert traffic(lab, "http", f"{VIP}:80", count=20)["failed"] == 0
    finally:
        lab.exec_in(LB_HOST, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=True)


def _wait_saved(agent: AgentProcess, state: Path) -> None:
    """The saver thread writes the first plan at once, in the background: wait until it is on disk."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if '"service": "default/nginx"' in state.read_text():
                return
        time.sleep(0.1)
    raise AssertionError(f"{state} never held default/nginx")
