"""The pair's systemd units and `flannel-lb ha exec`, the command they run."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from flannel_lb import config
from flannel_lb.ha import conntrackd, keepalived
from flannel_lb.ha.cli import cmd_exec
from flannel_lb.ha.paths import Paths
from flannel_lb.lab.netns import Namespaces, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("flannel-lb-keepalived.service", "flannel-lb-conntrackd.service")


def _config(tmp: Path) -> Path:
    path = tmp / "flannel-lb.toml"
    path.write_text(
        '[lb]\naddresses = ["10.77.0.100"]\n[ha]\nenabled = true\npeer = "10.77.0.12"\n'
        f'interface = "eth0"\nsync_interface = "sync0"\nsync_peer = "10.78.0.2"\nstate_dir = "{tmp / "ha"}"\n'
    )
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_the_units_pass_systemds_own_check_and_run_the_verb(unit: str) -> None:
    text = (ROOT / "systemd" / unit).read_text()
    exec_start = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    daemon = unit.removeprefix("flannel-lb-").removesuffix(".service")
    assert exec_start == [
        f"ExecStart=/usr/local/bin/flannel-lb --config /etc/flannel-lb/flannel-lb.toml ha exec {daemon}"
    ]
    assert f"Conflicts={daemon}.service" in text  # Debian's own unit reads another config
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(ROOT / "systemd" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("daemon", ["keepalived", "conntrackd"])
def test_exec_renders_the_files_then_becomes_the_daemon(tmp_path: Path, daemon: str) -> None:
    path = _config(tmp_path)
    cfg = config.load(path)
    paths = Paths.of(cfg.ha)
    Path(cfg.ha.state_dir).mkdir()
    Path(paths.conntrackd_lock).write_text("")  # what a SIGKILLed conntrackd leaves behind
    ran: list[tuple[str, list[str]]] = []
    cmd_exec(argparse.Namespace(config=str(path), daemon=daemon), lambda f, a: ran.append((f, a)))
    want = keepalived.command(cfg.ha) if daemon == "keepalived" else conntrackd.command(cfg.ha)
    assert ran == [(want[0], want)]
    assert all(Path(p).exists() for p in (paths.keepalived_conf, paths.conntrackd_conf, paths.notify_script))
    assert Path(paths.conntrackd_lock).exists() == (daemon == "keepalived")


def test_exec_refuses_a_box_without_a_pair(tmp_path: Path) -> None:
    path = tmp_path / "flannel-lb.toml"
    path.write_text('[lb]\naddresses = ["10.77.0.100"]\n')
    from flannel_lb.verbs import CommandError

    with pytest.raises(CommandError, match=r"\[ha\] enabled is false"):
        cmd_exec(argparse.Namespace(config=str(path), daemon="keepalived"), lambda f, a: None)


@pytest.mark.netns
def test_conntrackd_starts_through_the_verb_despite_a_stale_lock(tmp_path: Path) -> None:
    if shutil.which("conntrackd") is None or shutil.which("ip") is None:
        pytest.skip("needs conntrackd and iproute2")
    path = _config(tmp_path)
    cfg = config.load(path)
    Path(cfg.ha.state_dir).mkdir()
    Path(Paths.of(cfg.ha).conntrackd_lock).write_text("")
    with Namespaces(unique_prefix("hu")) as ns:
        ns.add("lb")
        ns.add("peer")
        ns.veth("lb", "sync0", "peer", "sync0")
        ns.run("lb", ["ip", "addr", "add", "10.78.0.1/30", "dev", "sync0"])
        flb = shutil.which("flannel-lb") or str(ROOT / ".venv" / "bin" / "flannel-lb")
        proc = ns.popen("lb", [flb, "--config", str(path), "ha", "exec", "conntrackd"])
        try:
            stats = conntrackd.client(cfg.ha, "-s")
            deadline = time.monotonic() + 20
            while ns.run("lb", stats, check=False).returncode != 0:
                assert proc.poll() is None, "conntrackd exited"
                assert time.monotonic() < deadline, "conntrackd never answered"
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.netns
def test_check_fails_a_box_holding_only_some_of_the_floating_addresses(tmp_path: Path) -> None:
    """The addresses float together (one VRRP instance): a box with some of them is a broken takeover;
    no keepalived or conntrackd running is a failure that says how to start them."""
    import dataclasses

    from flannel_lb.doctor import run_checks

    path = _config(tmp_path)
    path.write_text(
        path.read_text() + 'overlay_subnet = "10.246.90.0/24"\noverlay_public_ip = "10.79.0.150"\n'
        '[etcd]\nretry_budget = 0.1\nendpoints = ["http://127.0.0.1:9"]\n'
    )
    cfg = config.load(path)
    assert dataclasses.asdict(cfg.ha)["overlay_interface"] == "eth0"
    with Namespaces(unique_prefix("hc")) as ns:
        ns.add("lb")
        ns.add("peer")
        ns.veth("lb", "eth0", "peer", "eth0")
        ns.run("lb", ["ip", "addr", "add", "10.77.0.100/32", "dev", "eth0"])
        results = {r.name: r for r in run_checks(cfg, ns.name("lb")) if r.name.startswith("ha ")}
    assert results["ha state"].status == "fail", results
    assert "holds 10.77.0.100 but not 10.79.0.150" in results["ha state"].detail
    assert results["ha daemons"].status == "fail"
    assert "systemctl start flannel-lb-conntrackd flannel-lb-keepalived" in results["ha daemons"].detail
    assert results["ha peer"].status == "warn"  # nobody at 10.77.0.12
