"""`flannel-lb check` against a real etcd and a real LB namespace programmed like a flanneld vxlan host.

Two ways in: `run_checks(cfg, netns=...)` in-process (etcd on this namespace's loopback, kernel parts
read from the LB namespace), and the command itself run inside the LB namespace with etcd there too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import etcd3
import pytest

from flannel_lb import config as config_mod
from flannel_lb.doctor import CheckResult, find_conflicts, parse_save, run_checks
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.lab.netns import Namespaces
from flannel_lb.lab.topology import batch
from tests import kube_objects as k
from tests.conftest import FAST_ETCD_ARGS

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

LB_ADDR = "192.168.121.201"
LB_IP = "10.245.1.142"
OWN_MAC = "0e:f1:0a:f5:01:8e"
PEER_MAC = "aa:bb:cc:dd:ee:01"
FLANNEL = "/coreos.com/network"
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}'
LEASES = {"10.246.90.0-24": (LB_IP, OWN_MAC), "10.246.92.0-24": ("10.245.1.3", PEER_MAC)}
ROOT = Path(__file__).resolve().parent.parent
ESTABLISHED = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"

DRIVER = """
import argparse, sys
from flannel_lb import doctor, logs
logs.setup(level="warning", fmt="console")
p = argparse.ArgumentParser(prog="flannel-lb")
p.add_argument("--config")
doctor.register_commands(p.add_subparsers(dest="command", required=True))
args = p.parse_args()
sys.exit(args.func(args))
"""


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces and a vxlan device")
    for tool in ("ip", "bridge", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    """An LB namespace as a healthy flanneld vxlan host leaves it, plus a node across a veth."""
    _require_root()
    with Namespaces() as spaces:
        for short in ("lb", "node"):
            spaces.add(short)
        spaces.run(
            "lb",
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=2",
                "net.ipv4.conf.default.rp_filter=2",
                # per namespace, and 5 days by default: a healthy LB runs with the configured 1 day
                "net.netfilter.nf_conntrack_tcp_timeout_established=86400",
            ],
        )
        spaces.veth("lb", "eth1", "node", "eth1")
        spaces.run("node", ["ip", "addr", "add", "10.245.1.3/24", "dev", "eth1"])
        batch(
            spaces,
            "lb",
            [
                f"addr add {LB_IP}/24 dev eth1",
                f"addr add {LB_ADDR}/24 dev eth1",
                f"link add flannel.1 address {OWN_MAC} type vxlan id 1 local {LB_IP} dev eth1"
                " dstport 8472 nolearning",
                "addr add 10.246.90.0/32 dev flannel.1",
                "link set flannel.1 up",
                f"neigh replace 10.246.92.0 lladdr {PEER_MAC} dev flannel.1 nud permanent",
                "route replace 10.246.92.0/24 via 10.246.92.0 dev flannel.1 onlink",
            ],
        )
        batch(
            spaces,
            "lb",
            [f"fdb replace {PEER_MAC} dev flannel.1 dst 10.245.1.3 self permanent"],
            tool="bridge",
        )
        yield spaces


def seed(put: Any) -> None:
    put(f"{FLANNEL}/config", NETWORK)
    for key, (public_ip, mac) in LEASES.items():
        put(f"{FLANNEL}/subnets/{key}", k.vxlan_lease(public_ip, mac))


def write_config(tmp_path: Path, endpoint: str, budget: float = 3.0, conntrack: str = "") -> Path:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(
        f'[etcd]\nendpoints = ["{endpoint}"]\nretry_budget = {budget}\n[lb]\naddresses = ["{LB_ADDR}"]\n'
        f"[conntrack]\n{conntrack or HOST_SIZED}"
    )
    return path


def host_conntrack_max() -> int:
    try:
        return int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    except FileNotFoundError:
        return 131072


# nf_conntrack_max is host-wide and kube-proxy's sizing grows with the CPU count: size the healthy
# config to this host's table, so that the verdict does not depend on the machine the tests run on.
HOST_SIZED = f"min = {host_conntrack_max()}\nmax_per_core = 1\n"


@pytest.fixture
def cfg(etcd: EtcdServer, tmp_path: Path) -> config_mod.Config:
    """A config pointing at a seeded etcd on this namespace's loopback."""
    u = urllib.parse.urlsplit(etcd.client_url)
    client = etcd3.client(host=u.hostname, port=u.port)
    seed(client.put)
    client.close()
    return config_mod.load(write_config(tmp_path, etcd.client_url))


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def test_healthy_namespace_passes(ns: Namespaces, cfg: config_mod.Config, etcd: EtcdServer) -> None:
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    assert failures(list(results.values())) == []
    assert all(r.status == "ok" for r in results.values()), results
    assert results["etcd"].detail.startswith("revision ")
    assert f"{etcd.client_url} answers (etcd " in results["etcd"].detail
    assert "Network 10.246.0.0/16" in results["flannel config"].detail
    assert results["own lease"].detail == "10.246.90.0/24 (PublicIP 10.245.1.142, vxlan)"
    assert results["flannel interface"].detail == "flannel.1 (vxlan) is up with 10.246.90.0/32"
    assert results["lease paths"].detail == "the kernel path to all 1 other leases is in place"
    assert results["ip_forward"].detail == "net.ipv4.ip_forward = 1"
    assert results["lb addresses"].detail == f"all configured: {LB_ADDR} on eth1"


def test_ip_forward_off_fails_clearly(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.sysctl("lb", "net.ipv4.ip_forward", "0")
    results = run_checks(cfg, netns=ns.name("lb"))
    assert failures(results) == [
        CheckResult(
            "ip_forward",
            "fail",
            "net.ipv4.ip_forward = 0: DNATed packets would not be forwarded to the pods. "
            "Fix: sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/",
        )
    ]


def test_missing_path_fails_and_names_the_route(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.run("lb", ["ip", "route", "del", "10.246.92.0/24"])
    paths = by_name(run_checks(cfg, netns=ns.name("lb")))["lease paths"]
    assert paths.status == "fail"  # no other lease is reachable at all
    assert paths.detail.splitlines() == [
        "1 of 1 leases have no usable path (their endpoints are not admitted):",
        "10.246.92.0/24 (10.245.1.3): no route to 10.246.92.0/24 via 10.246.92.0 dev flannel.1 (onlink)",
    ]


def test_flannel_device_down(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.run("lb", ["ip", "link", "set", "flannel.1", "down"])
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    assert results["flannel interface"].status == "fail"
    assert results["flannel interface"].detail.startswith("flannel.1 is down")


def test_strict_rp_filter_and_missing_lb_address_warn(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "0")
    ns.sysctl("lb", "net.ipv4.conf.flannel/1.rp_filter", "1")  # sysctl spells the dot in flannel.1 as /
    ns.run("lb", ["ip", "addr", "del", f"{LB_ADDR}/24", "dev", "eth1"])
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    assert results["rp_filter"].status == "warn"
    assert "rp_filter is strict (all=0, flannel.1=1)" in results["rp_filter"].detail
    assert results["lb addresses"].status == "warn"
    assert results["lb addresses"].detail.startswith(f"[lb] addresses not configured on this host: {LB_ADDR}")
    assert failures(list(results.values())) == []  # warnings do not fail the doctor


def test_foreign_dnat_before_our_jump_warns(ns: Namespaces, cfg: config_mod.Config) -> None:
    rules = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":FOREIGN - [0:0]",
        ":FLB-SERVICES - [0:0]",
        f"-A PREROUTING -d {LB_ADDR}/32 -p tcp --dport 80 -j DNAT --to-destination 10.1.1.1:80",
        "-A PREROUTING -d 10.9.9.9/32 -p tcp -j DNAT --to-destination 10.1.1.2:80",  # another address
        "-A PREROUTING -j FLB-SERVICES",
        "-A PREROUTING -d 10.0.0.0/8 -j REDIRECT",  # after our jump: not a conflict
        "-A OUTPUT -j FOREIGN",
        "-A FOREIGN ! -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 8080",
        "COMMIT",
    ]
    ns.run("lb", ["iptables-restore"], input="\n".join(rules) + "\n")
    result = by_name(run_checks(cfg, netns=ns.name("lb")))["nat conflicts"]
    assert result.status == "warn"
    assert result.detail.splitlines()[1:] == [
        f"PREROUTING: -A PREROUTING -d {LB_ADDR}/32 -p tcp -m tcp --dport 80 -j DNAT"
        f" --to-destination 10.1.1.1:80 (catches {LB_ADDR})",
        f"OUTPUT -> FOREIGN: -A FOREIGN ! -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 8080"
        f" (catches {LB_ADDR})",
    ]


def test_our_jump_first_means_no_conflict() -> None:
    rules = parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:FLB-SVC - [0:0]\n-A PREROUTING -j FLB-SVC\n"
        f"-A PREROUTING -d {LB_ADDR}/32 -j DNAT --to-destination 10.1.1.1\nCOMMIT\n"
    )
    assert find_conflicts(rules, "PREROUTING", {ipaddress.IPv4Address(LB_ADDR)}, "FLB-") == ([], True)


def test_legacy_nat_rules_on_an_nft_host_warn(ns: Namespaces, cfg: config_mod.Config) -> None:
    if (
        shutil.which("iptables-legacy") is None
        or "nf_tables" not in ns.run("lb", ["iptables", "--version"]).stdout
    ):
        pytest.skip("needs an nf_tables iptables with iptables-legacy next to it")
    ns.run(
        "lb",
        ["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-d", LB_ADDR, "-j", "DNAT", "--to", "10.1.1.1"],
    )
    result = by_name(run_checks(cfg, netns=ns.name("lb")))["iptables backend"]
    assert result.status == "warn"
    assert "iptables-legacy also holds 1 nat rules" in result.detail


def test_nft_writer_warns_about_a_forward_drop_policy(ns: Namespaces, cfg: config_mod.Config) -> None:
    nft = dataclasses.replace(cfg, dataplane=dataclasses.replace(cfg.dataplane, writer="nft"))
    assert by_name(run_checks(nft, netns=ns.name("lb")))["forward path"].status == "ok"
    ns.run("lb", ["iptables", "-P", "FORWARD", "DROP"])
    result = by_name(run_checks(nft, netns=ns.name("lb")))["forward path"]
    assert result.status == "warn"
    assert "iptables -I FORWARD -m connmark --mark 0x2000/0x2000 -j ACCEPT" in result.detail
    # The iptables writer opens FORWARD itself (FLB-FORWARD), so the policy is no concern there.
    assert by_name(run_checks(cfg, netns=ns.name("lb")))["forward path"].status == "ok"


def test_etcd_unreachable_fails_but_kernel_checks_still_run(ns: Namespaces, tmp_path: Path) -> None:
    from flannel_lb.lab.etcd_server import free_port

    cfg = config_mod.load(write_config(tmp_path, f"http://127.0.0.1:{free_port()}", budget=0.5))
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    assert results["etcd"].status == "fail"
    assert results["etcd"].detail.startswith("etcd unreachable after")
    assert results["own lease"] == CheckResult(
        "own lease", "fail", "not checked: needs etcd (etcd unreachable)"
    )
    assert results["ip_forward"].status == "ok"
    assert results["lb addresses"].status == "ok"


def test_missing_namespace_fails_every_kernel_check(cfg: config_mod.Config) -> None:
    _require_root()
    results = by_name(run_checks(cfg, netns="flb-t-doctor-absent"))
    assert results["etcd"].status == "ok"
    for name in ("own lease", "flannel interface", "lease paths", "ip_forward", "lb addresses"):
        assert results[name].status == "fail", name
    for name in ("conntrack table", "conntrack drops", "conntrack timeouts"):
        assert results[name].status == "fail", name  # not mistaken for "nf_conntrack not loaded"
        assert "flb-t-doctor-absent" in results[name].detail, name
    assert not Path("/run/netns/flb-t-doctor-absent").exists()


def test_conntrack_checks_read_the_namespace(
    ns: Namespaces, cfg: config_mod.Config, etcd: EtcdServer, tmp_path: Path
) -> None:
    host_before = Path(ESTABLISHED).read_text()
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    for name in ("conntrack table", "conntrack drops", "conntrack timeouts"):
        assert results[name].status == "ok", results[name]
    assert results["conntrack drops"].detail.startswith("insert_failed 0, drop 0, early_drop 0 ")
    assert results["conntrack timeouts"].detail.startswith("tcp timeouts: established 86400 s (configured")

    # A value only this namespace has: check reads the namespace, not the host, and says what to set.
    ns.sysctl("lb", "net.netfilter.nf_conntrack_tcp_timeout_established", "432001")
    timeouts = by_name(run_checks(cfg, netns=ns.name("lb")))["conntrack timeouts"]
    assert timeouts.status == "warn"
    assert "nf_conntrack_tcp_timeout_established = 432001 s is far above" in timeouts.detail
    assert "Set [conntrack] manage = true" in timeouts.detail
    assert Path(ESTABLISHED).read_text() == host_before

    # A floor above this host's table: the max check warns and says to set it on the host.
    host_max = host_conntrack_max()
    bigger = config_mod.load(write_config(tmp_path, etcd.client_url, conntrack=f"min = {2 * host_max}\n"))
    table = by_name(run_checks(bigger, netns=ns.name("lb")))["conntrack table"]
    assert table.status == "warn"
    assert f"nf_conntrack_max = {host_max} is below {2 * host_max}" in table.detail
    assert f"set it on the host: sysctl -w net.netfilter.nf_conntrack_max={2 * host_max}" in table.detail

    # One entry in the namespace's table, and a warn_usage it crosses: the count is the namespace's.
    if shutil.which("conntrack") is None:
        pytest.skip("the `conntrack` tool is not installed")
    entry = ["-p", "tcp", "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "40000", "--dport", "80"]
    ns.run("lb", ["conntrack", "-I", *entry, "--state", "ESTABLISHED", "-u", "ASSURED", "-t", "300"])
    tiny = config_mod.load(
        write_config(tmp_path, etcd.client_url, conntrack=HOST_SIZED + "warn_usage = 0.000001\n")
    )
    table = by_name(run_checks(tiny, netns=ns.name("lb")))["conntrack table"]
    assert table.status == "warn"
    assert table.detail.startswith(f"1 of {host_max} entries in use")
    assert "([conntrack] warn_usage = 1e-06): when it is full the kernel drops" in table.detail


# --- the command, run inside the LB namespace against an etcd in that namespace -----------------------


@pytest.fixture
def etcd_in_lb(ns: Namespaces, tmp_path: Path) -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs the `etcd` and `etcdctl` binaries")
    server = EtcdServer(tmp_path / "etcd", netns=ns.name("lb"), host="127.0.0.1", extra_args=FAST_ETCD_ARGS)
    server.start()

    def put(key: str, value: bytes) -> None:
        ns.run("lb", ["etcdctl", f"--endpoints={server.client_url}", "put", key, value.decode()])

    seed(put)
    yield server
    server.stop()


def run_in_lb(ns: Namespaces, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "env",
        f"PYTHONPATH={ROOT}",
        sys.executable,
        "-c",
        DRIVER,
        "--config",
        str(config),
        "check",
        *args,
    ]
    return ns.run("lb", argv, check=False, timeout=120)


def test_command_in_the_namespace(ns: Namespaces, etcd_in_lb: EtcdServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, etcd_in_lb.client_url)
    healthy = run_in_lb(ns, config)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.splitlines()[-1] == "14 checks: 14 ok, 0 warnings, 0 failed"

    ns.sysctl("lb", "net.ipv4.ip_forward", "0")
    broken = run_in_lb(ns, config)
    assert broken.returncode == 1
    assert (
        "[FAIL] ip_forward         net.ipv4.ip_forward = 0: DNATed packets would not be forwarded"
        in broken.stdout
    )

    as_json = run_in_lb(ns, config, "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False
    assert [c["name"] for c in doc["checks"] if c["status"] == "fail"] == ["ip_forward"]


def test_command_config_error_exits_2(ns: Namespaces, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[lb]\n")
    proc = run_in_lb(ns, bad)
    assert proc.returncode == 2
    assert "config error" in proc.stderr and "[lb] addresses: required" in proc.stderr


def test_flannel_lb_check_via_cli(ns: Namespaces, etcd_in_lb: EtcdServer, tmp_path: Path) -> None:
    from flannel_lb import cli

    if "check" not in cli.build_parser().format_help():
        pytest.skip("flannel_lb/cli.py does not list flannel_lb.doctor.register_commands yet")
    config = write_config(tmp_path, etcd_in_lb.client_url)
    argv = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "flannel_lb", "--config", str(config), "check"]
    proc = ns.run("lb", argv, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
