"""The pair's rendered files (keepalived.conf, conntrackd.conf, the notify hook), from `[ha]`; no root.

The daemons themselves read these files in tests/test_ha_vrrp.py; here: the exact text, that every [ha]
key reaches it, that no config value can add a line, and the `flannel-lb ha` verbs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb import config
from flannel_lb.ha import conntrackd, files, keepalived
from flannel_lb.ha.paths import Paths

SAMPLE = """\
[lb]
addresses = ["192.168.121.201", "10.245.1.142"]
[ha]
enabled = true
peer = "10.245.1.143"
priority = 150
interface = "eth1"
sync_interface = "eth2"
sync_peer = "10.0.99.2"
virtual_router_id = 61
advert_interval = 0.05
state_dir = "/run/flb-ha"
"""

KEEPALIVED = """\
# Rendered by flannel-lb from the [ha] section of its config: edit that, not this file.

net_namespace flb-lb1

global_defs {
    vrrp_version 3
    # the notify hook runs conntrackd as root; refuse it if anyone else could rewrite it
    script_user root
    enable_script_security
    # one reader gets every state change in order (separate notify_* scripts run concurrently)
    vrrp_notify_fifo /run/flb-ha/notify.fifo
    vrrp_notify_fifo_script /run/flb-ha/notify.sh
}

track_file flannel_lb_agent {
    file "/run/flb-ha/agent-health"
    weight -253
    init_file 1
}

vrrp_sync_group flannel_lb {
    group {
        flannel_lb_vip
    }
    track_file {
        flannel_lb_agent
    }
}

vrrp_instance flannel_lb_vip {
    state BACKUP
    interface eth1
    virtual_router_id 61
    priority 150
    advert_int 0.05
    unicast_peer {
        10.245.1.143
    }
    check_unicast_src
    virtual_ipaddress {
        192.168.121.201/32 dev eth1
        10.245.1.142/32 dev eth1
    }
}
"""

CONNTRACKD = """\
# Rendered by flannel-lb from the [ha] section of its config: edit that, not this file.

Sync {
    Mode FTFW {
        DisableExternalCache On
        StartupResync On
    }
    UDP {
        IPv4_Destination_Address 10.0.99.2
        Port 3780
        Interface eth2
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum On
    }
}
General {
    HashSize 32768
    HashLimit 262144
    LogFile /run/flb-ha/conntrackd.log
    Syslog Off
    LockFile /run/flb-ha/conntrackd.lock
    UNIX {
        Path /run/flb-ha/conntrackd.ctl
    }
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {
        Protocol Accept {
            TCP
            SCTP
            UDP
        }
        Address Ignore {
            IPv4_address 127.0.0.0/8
            IPv4_address 10.0.99.2/32
        }
    }
}
"""


def load(tmp_path: Path, text: str = SAMPLE) -> config.Config:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(text)
    return config.load(path)


def test_keepalived_conf_is_vrrp3_unicast_one_sync_group(tmp_path: Path) -> None:
    assert keepalived.render(load(tmp_path).ha, net_namespace="flb-lb1") == KEEPALIVED


def test_keepalived_conf_without_a_namespace_has_no_net_namespace_line(tmp_path: Path) -> None:
    text = keepalived.render(load(tmp_path).ha)
    assert "net_namespace" not in text
    assert text == KEEPALIVED.replace("net_namespace flb-lb1\n\n", "")


def test_conntrackd_conf_is_ftfw_over_udp_and_never_ignores_the_floating_addresses(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    text = files.render(cfg, "conntrackd")
    assert text == CONNTRACKD
    ignored = text.split("Address Ignore {")[1].split("}")[0]
    for address in cfg.ha.addresses:  # Debian's example ignores its VIPs: a DNAT LB would sync nothing
        assert address not in ignored


def test_conntrackd_hash_limit_follows_the_conntrack_section(tmp_path: Path) -> None:
    cfg = load(tmp_path, SAMPLE + "[conntrack]\nmin = 500000\n")
    assert "    HashLimit 1000000\n" in files.render(cfg, "conntrackd")


def test_notify_hook_runs_conntrackds_primary_backup_sequence_in_debians_order(tmp_path: Path) -> None:
    """Run the rendered hook for real: each step is a real conntrackd client call (no daemon is up, so
    each one fails), and the log shows which ran, in which order, against the rendered config."""
    state_dir = tmp_path / "ha"
    cfg = load(tmp_path, SAMPLE.replace('"/run/flb-ha"', f'"{state_dir}"'))
    files.write_all(cfg)
    paths = Paths.of(cfg.ha)
    for state in ("primary", "backup", "fault"):
        proc = subprocess.run([paths.notify_script, state], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    steps = [line.split()[1:4] for line in Path(paths.notify_log).read_text().splitlines()]
    assert steps == [
        ["primary", "conntrackd", "-c"],
        ["primary", "conntrackd", "-f"],
        ["primary", "conntrackd", "-R"],
        ["primary", "conntrackd", "-B"],
        ["backup", "conntrackd", "-t"],
        ["backup", "conntrackd", "-n"],
        ["fault", "conntrackd", "-t"],
    ]
    bad = subprocess.run([paths.notify_script, "master"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_notify_hook_reads_keepalived_fifo_in_order_and_only_its_group(tmp_path: Path) -> None:
    """As keepalived runs it: one process on the FIFO, events handled one after the other, in order."""
    state_dir = tmp_path / "ha"
    cfg = load(tmp_path, SAMPLE.replace('"/run/flb-ha"', f'"{state_dir}"'))
    files.write_all(cfg)
    paths = Paths.of(cfg.ha)
    os.mkfifo(paths.notify_fifo)
    hook = subprocess.Popen([paths.notify_script, paths.notify_fifo], stderr=subprocess.PIPE, text=True)
    with open(paths.notify_fifo, "w") as fifo:  # what keepalived writes, state change by state change
        fifo.write(
            'INSTANCE "flannel_lb_vip" MASTER 150\n'
            'GROUP "flannel_lb" MASTER 150\n'
            'GROUP "someone_else" FAULT 0\n'
            'GROUP "flannel_lb" BACKUP 150\n'
            'GROUP "flannel_lb" FAULT 150\n'
        )
    _, err = hook.communicate(timeout=60)  # the FIFO closed: the hook is done
    assert hook.returncode == 0, err
    steps = [line.split()[1:4] for line in Path(paths.notify_log).read_text().splitlines()]
    assert [f"{state} {flag}" for state, _, flag in steps] == [
        "primary -c",
        "primary -f",
        "primary -R",
        "primary -B",
        "backup -t",
        "backup -n",
        "fault -t",
    ]


def test_daemon_commands_keep_their_pid_files_and_config_in_state_dir(tmp_path: Path) -> None:
    ha = load(tmp_path).ha
    assert keepalived.command(ha) == [
        "keepalived",
        "--vrrp",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        "--use-file=/run/flb-ha/keepalived.conf",
        "--pid=/run/flb-ha/keepalived.pid",
        "--vrrp_pid=/run/flb-ha/keepalived-vrrp.pid",
    ]
    assert conntrackd.command(ha) == ["conntrackd", "-C", "/run/flb-ha/conntrackd.conf"]
    assert conntrackd.client(ha, "-s") == ["conntrackd", "-C", "/run/flb-ha/conntrackd.conf", "-s"]


# --- every key reaches the output --------------------------------------------------------------------

# (key, another valid TOML value, the text it must put into one rendered file)
CHANGES = [
    ("peer", '"10.245.1.144"', ("keepalived", "        10.245.1.144\n")),
    ("priority", "99", ("keepalived", "    priority 99\n")),
    ("interface", '"bond0"', ("keepalived", "    interface bond0\n")),
    ("interface", '"bond0"', ("keepalived", "        192.168.121.201/32 dev bond0\n")),
    ("sync_interface", '"eth9"', ("conntrackd", "        Interface eth9\n")),
    ("sync_peer", '"10.0.99.9"', ("conntrackd", "        IPv4_Destination_Address 10.0.99.9\n")),
    ("sync_peer", '"10.0.99.9"', ("conntrackd", "            IPv4_address 10.0.99.9/32\n")),
    ("virtual_router_id", "200", ("keepalived", "    virtual_router_id 200\n")),
    ("advert_interval", "1.5", ("keepalived", "    advert_int 1.50\n")),
    ("advert_interval", "0.125", ("keepalived", "    advert_int 0.12\n")),  # VRRPv3: centiseconds
    ("addresses", '["192.168.121.9"]', ("keepalived", "        192.168.121.9/32 dev eth1\n")),
    ("state_dir", '"/var/lib/ha"', ("keepalived", '    file "/var/lib/ha/agent-health"\n')),
    ("state_dir", '"/var/lib/ha"', ("keepalived", "    vrrp_notify_fifo_script /var/lib/ha/notify.sh\n")),
    ("state_dir", '"/var/lib/ha"', ("keepalived", "    vrrp_notify_fifo /var/lib/ha/notify.fifo\n")),
    ("state_dir", '"/var/lib/ha"', ("conntrackd", "        Path /var/lib/ha/conntrackd.ctl\n")),
    ("state_dir", '"/var/lib/ha"', ("conntrackd", "    LockFile /var/lib/ha/conntrackd.lock\n")),
    ("state_dir", '"/var/lib/ha"', ("notify", "conf=/var/lib/ha/conntrackd.conf\n")),
]


def _with(key: str, value: str) -> str:
    """SAMPLE with [ha] `key` set to `value` (a TOML spelling)."""
    head, ha = SAMPLE.split("[ha]\n")
    lines = [line for line in ha.splitlines() if not line.startswith(f"{key} = ")]
    return head + "[ha]\n" + "".join(f"{line}\n" for line in lines) + f"{key} = {value}\n"


@pytest.mark.parametrize(("key", "value", "expect"), CHANGES)
def test_every_ha_key_reaches_the_rendered_files(
    tmp_path: Path, key: str, value: str, expect: tuple[str, str]
) -> None:
    kind, line = expect
    before = files.render(load(tmp_path), kind)
    after = files.render(load(tmp_path, _with(key, value)), kind)
    assert line not in before
    assert line in after


def test_the_changes_cover_every_ha_key() -> None:
    covered = {key for key, _, _ in CHANGES} | {"enabled"}  # enabled: below
    # the shared overlay identity's keys go together: tests/test_ha_overlay.py follows each of them
    overlay = {"overlay_subnet", "overlay_public_ip", "overlay_interface", "vtep_mac"}
    assert covered | overlay == set(config.known_keys()["ha"])


def test_a_disabled_pair_renders_nothing(tmp_path: Path) -> None:
    cfg = load(tmp_path, SAMPLE.replace("enabled = true", "enabled = false"))
    for kind in files.KINDS:
        with pytest.raises(ValueError, match=r"\[ha\] enabled is false"):
            files.render(cfg, kind)


# --- hostile values ----------------------------------------------------------------------------------

STRING_KEYS = ("peer", "interface", "sync_interface", "sync_peer", "state_dir")
NASTY = st.text(alphabet=st.sampled_from([*"ab1./_- \n\r\t{}\"'#!\\;$`", "\x00", "\u2028"]), max_size=20)


def line_shape(text: str) -> list[tuple[int, str]]:
    """Each line's indent and first word (up to a shell `=`): what a value must change to inject a line."""
    return [
        (len(line) - len(line.lstrip()), "".join(line.split("=")[0].split()[:1]))
        for line in text.splitlines()
    ]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from((*STRING_KEYS, "addresses")), value=NASTY)
def test_no_config_value_can_add_a_line_or_a_block(key: str, value: str) -> None:
    doc = tomllib.loads(SAMPLE)
    doc["ha"][key] = [value] if key == "addresses" else value
    try:
        cfg = config.parse(doc)
    except config.ConfigError as e:
        assert f"[ha] {key}:" in str(e)
        return
    baseline = config.parse(tomllib.loads(SAMPLE))
    for kind in files.KINDS:
        assert line_shape(files.render(cfg, kind)) == line_shape(files.render(baseline, kind)), (key, value)


def test_a_namespace_name_cannot_add_a_line(tmp_path: Path) -> None:
    ha = load(tmp_path).ha
    for bad in ("a\nvrrp_script x {", "", "a b", "x" * 65, "ns}"):
        with pytest.raises(ValueError, match="net_namespace"):
            keepalived.render(ha, net_namespace=bad)


# --- the CLI verbs -----------------------------------------------------------------------------------


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel_lb", "--config", str(config_path), "ha", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_ha_render_prints_each_file(tmp_path: Path) -> None:
    load(tmp_path)
    path = tmp_path / "flannel-lb.toml"
    proc = cli(path, "render", "keepalived", "--net-namespace", "flb-lb1")
    assert (proc.returncode, proc.stdout) == (0, KEEPALIVED), proc.stderr
    proc = cli(path, "render", "conntrackd")
    assert (proc.returncode, proc.stdout) == (0, CONNTRACKD), proc.stderr
    proc = cli(path, "render", "notify")
    assert proc.returncode == 0 and proc.stdout.startswith("#!/bin/sh\n")


def test_cli_ha_render_refuses_a_disabled_pair_and_an_unknown_kind(tmp_path: Path) -> None:
    load(tmp_path, SAMPLE.replace("enabled = true", "enabled = false"))
    path = tmp_path / "flannel-lb.toml"
    proc = cli(path, "render", "keepalived")
    assert proc.returncode == 2 and "[ha] enabled is false" in proc.stderr and proc.stdout == ""
    proc = cli(path, "render", "haproxy")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_cli_ha_write_puts_every_file_in_state_dir_with_safe_modes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "ha"
    load(tmp_path, SAMPLE.replace('"/run/flb-ha"', f'"{state_dir}"'))
    old = os.umask(0o000)  # even a careless umask must not leave the hook writable by others
    try:
        proc = cli(tmp_path / "flannel-lb.toml", "write")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    paths = Paths(str(state_dir))
    assert proc.stdout.split() == [paths.keepalived_conf, paths.conntrackd_conf, paths.notify_script]
    modes = {Path(p).name: stat.S_IMODE(os.stat(p).st_mode) for p in proc.stdout.split()}
    assert modes == {"keepalived.conf": 0o644, "conntrackd.conf": 0o644, "notify.sh": 0o755}
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o755
    assert Path(paths.conntrackd_conf).read_text() == CONNTRACKD.replace("/run/flb-ha", str(state_dir))
    assert subprocess.run(["sh", "-n", paths.notify_script], check=False).returncode == 0
    assert not list(state_dir.glob("*.tmp"))


def test_cli_ha_write_says_why_when_state_dir_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    load(tmp_path, SAMPLE.replace('"/run/flb-ha"', f'"{blocker}/ha"'))
    proc = cli(tmp_path / "flannel-lb.toml", "write")
    assert proc.returncode == 1, proc.stderr
    assert f"cannot write into [ha] state_dir {blocker}/ha: Not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
