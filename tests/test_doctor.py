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
from flannel_lb import doctor
from flannel_lb.dataplane.iptables.savefile import table_chains
from flannel_lb.doctor import CheckResult, find_conflicts, run_checks
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess
from flannel_lb.lab.netns import Namespaces
from flannel_lb.lab.topology import batch
from tests.conftest import FAST_ETCD_ARGS
from tests.test_lab import fetch, module_lab

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
from flannel_lb import doctor
from flannel_lb.daemon import logs
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
        put(f"{FLANNEL}/subnets/{key}", k.lease(public_ip, mac))


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


def test_strict_rp_filter_alone_is_no_warning(ns: Namespaces, cfg: config_mod.Config) -> None:
    # Strict everywhere, but every tested source's route back leaves where it arrives: nothing is dropped.
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "1")
    ns.sysctl("lb", "net.ipv4.conf.flannel/1.rp_filter", "1")  # sysctl spells the dot in flannel.1 as /
    ns.sysctl("lb", "net.ipv4.conf.eth1.rp_filter", "1")
    result = by_name(run_checks(cfg, netns=ns.name("lb")))["rp_filter"]
    assert result == CheckResult(
        "rp_filter",
        "ok",
        "the kernel accepts replies from 1 pod addresses (one per other lease) and 1 client addresses of"
        " the [lb] addresses on the interfaces they arrive on (rp_filter all=1, eth1=1, flannel.1=1; the"
        " kernel applies max(all, interface))",
    )
    assert kernel_accepts(ns, LB_ADDR, "192.168.121.1", "eth1")  # the client tested
    assert kernel_accepts(ns, "10.246.90.0", "10.246.92.1", "flannel.1")  # the pod reply tested


def test_missing_lb_address_warns(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.run("lb", ["ip", "addr", "del", f"{LB_ADDR}/24", "dev", "eth1"])
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    assert results["lb addresses"].status == "warn"
    assert results["lb addresses"].detail.startswith(f"[lb] addresses not configured on this host: {LB_ADDR}")
    assert results["rp_filter"].status == "ok"  # no client to test for an address that is not here
    assert failures(list(results.values())) == []  # warnings do not fail the doctor


def kernel_accepts(ns: Namespaces, to: str, source: str, iif: str) -> bool:
    """The kernel's verdict on a packet from `source` to `to` arriving on `iif` (rp_filter included)."""
    return ns.run("lb", ["ip", "route", "get", to, "from", source, "iif", iif], check=False).returncode == 0


def rp_filter_drops(ns: Namespaces) -> int:
    """The LB namespace's count of packets rp_filter really dropped (TcpExt IPReversePathFilter)."""
    lines = ns.run("lb", ["cat", "/proc/net/netstat"]).stdout.splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split(), values.split(), strict=True))["IPReversePathFilter"])
    raise AssertionError("no TcpExt in /proc/net/netstat")


def ping_from_node(ns: Namespaces, source: str, target: str) -> None:
    ns.run("node", ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", source, target], check=False)


def apply_fix(ns: Namespaces, detail: str) -> None:
    """Run the `sysctl -w ...` the warning says to run."""
    line = next(line for line in detail.splitlines() if line.startswith("Fix: sysctl -w "))
    keys = line.removeprefix("Fix: sysctl -w ").split(" (")[0].split()
    ns.run("lb", ["sysctl", "-q", "-w", *keys])


def node_as_vxlan_peer(ns: Namespaces) -> None:
    """`node` as the flannel vxlan host of 10.246.92.0/24, a pod address on lo: it can send pod replies."""
    batch(
        ns,
        "node",
        [
            f"link add flannel.1 address {PEER_MAC} type vxlan id 1 local 10.245.1.3 dev eth1"
            " dstport 8472 nolearning",
            "addr add 10.246.92.0/32 dev flannel.1",
            "link set flannel.1 up",
            "addr add 10.246.92.1/32 dev lo",
            f"neigh replace 10.246.90.0 lladdr {OWN_MAC} dev flannel.1 nud permanent",
            "route replace 10.246.90.0/24 via 10.246.90.0 dev flannel.1 onlink",
        ],
    )
    batch(ns, "node", [f"fdb replace {OWN_MAC} dev flannel.1 dst {LB_IP} self permanent"], tool="bridge")
    ns.sysctl("node", "net.ipv4.conf.all.rp_filter", "0")


def test_strict_rp_filter_that_drops_pod_replies_warns_and_names_the_lease(
    ns: Namespaces, cfg: config_mod.Config
) -> None:
    # SNAT to the flannel address, but the lease routed via eth1 (a stale host-gw/DirectRouting route):
    # the replies come back over the overlay, to flannel.1, where strict rp_filter expects eth1.
    snat = dataclasses.replace(
        cfg, dataplane=dataclasses.replace(cfg.dataplane, snat_addresses=("10.246.90.0",))
    )
    ns.run("lb", ["ip", "route", "replace", "10.246.92.0/24", "via", "10.245.1.3", "dev", "eth1"])
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "0")
    ns.sysctl("lb", "net.ipv4.conf.flannel/1.rp_filter", "1")
    node_as_vxlan_peer(ns)

    before = rp_filter_drops(ns)
    ping_from_node(ns, "10.246.92.1", "10.246.90.0")  # a pod's reply, for real
    assert rp_filter_drops(ns) > before  # the kernel really dropped it
    result = by_name(run_checks(snat, netns=ns.name("lb")))["rp_filter"]
    assert result.status == "warn"
    assert result.detail.splitlines() == [
        "the kernel drops 1 of 3 tested sources (rp_filter all=0, eth1=2, flannel.1=1):",
        "replies from lease 10.246.92.0/24 (10.246.92.1 -> 10.246.90.0) arriving on flannel.1: the route"
        " back leaves via eth1, and rp_filter is strict on flannel.1",
        "Fix: sysctl -w net.ipv4.conf.flannel/1.rp_filter=2 (loose: any route back will do), and persist"
        " it in /etc/sysctl.d/",
    ]
    # With MASQUERADE, the flow takes eth1's address, the replies come back on eth1: nothing to warn about.
    assert by_name(run_checks(cfg, netns=ns.name("lb")))["rp_filter"].status == "ok"

    apply_fix(ns, result.detail)  # what the warning says to do ends the drops
    assert by_name(run_checks(snat, netns=ns.name("lb")))["rp_filter"].status == "ok"
    before = rp_filter_drops(ns)
    ping_from_node(ns, "10.246.92.1", "10.246.90.0")
    assert rp_filter_drops(ns) == before


def test_strict_rp_filter_that_drops_remote_clients_warns_and_names_the_gateway(
    ns: Namespaces, cfg: config_mod.Config
) -> None:
    # Two default routes: the LB address's interface has one, but the preferred one leaves via eth2.
    # Remote clients sent in through eth1's gateway are dropped by strict rp_filter on eth1.
    ns.add("up")
    ns.veth("lb", "eth2", "up", "eth0")
    batch(
        ns,
        "lb",
        [
            "addr add 10.99.0.2/24 dev eth2",
            "route add default via 10.99.0.1 dev eth2 metric 100",
            "route add default via 192.168.121.254 dev eth1 metric 200",
        ],
    )
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "1")
    ns.sysctl("lb", "net.ipv4.conf.eth1.rp_filter", "1")
    mac = json.loads(ns.run("lb", ["ip", "-j", "link", "show", "eth1"]).stdout)[0]["address"]
    # A static neighbour: the LB would not answer ARP from a source its rp_filter rejects either.
    batch(
        ns,
        "node",
        [
            "addr add 198.51.100.1/32 dev lo",
            f"route add {LB_ADDR}/32 dev eth1",
            f"neigh replace {LB_ADDR} lladdr {mac} dev eth1 nud permanent",
        ],
    )

    before = rp_filter_drops(ns)
    ping_from_node(ns, "198.51.100.1", LB_ADDR)  # a remote client, for real
    assert rp_filter_drops(ns) > before
    result = by_name(run_checks(cfg, netns=ns.name("lb")))["rp_filter"]
    assert result.status == "warn"
    assert result.detail.splitlines() == [
        "the kernel drops 1 of 3 tested sources (rp_filter all=1, eth1=1, flannel.1=2):",
        f"clients of {LB_ADDR} beyond the default route via 192.168.121.254 (198.51.100.1 -> {LB_ADDR})"
        " arriving on eth1: the route back leaves via eth2, and rp_filter is strict on eth1",
        "Fix: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth1.rp_filter=2 (loose: any route"
        " back will do), and persist it in /etc/sysctl.d/",
    ]
    assert not kernel_accepts(ns, LB_ADDR, "198.51.100.1", "eth1")
    assert kernel_accepts(ns, LB_ADDR, "192.168.121.1", "eth1")  # on-link clients are fine

    apply_fix(ns, result.detail)
    assert by_name(run_checks(cfg, netns=ns.name("lb")))["rp_filter"].status == "ok"
    before = rp_filter_drops(ns)
    ping_from_node(ns, "198.51.100.1", LB_ADDR)
    assert rp_filter_drops(ns) == before


def test_loose_rp_filter_warns_only_without_a_route_back(ns: Namespaces, cfg: config_mod.Config) -> None:
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "2")
    ns.run("lb", ["ip", "route", "del", "10.246.92.0/24"])  # no route to the lease, no default either
    snat = dataclasses.replace(
        cfg, dataplane=dataclasses.replace(cfg.dataplane, snat_addresses=("10.246.90.0",))
    )
    result = by_name(run_checks(snat, netns=ns.name("lb")))["rp_filter"]
    assert result.status == "warn"
    assert result.detail.splitlines()[1:] == [
        "replies from lease 10.246.92.0/24 (10.246.92.1 -> 10.246.90.0) arriving on flannel.1: there is"
        " no route back to 10.246.92.1 (rp_filter 2 drops that)",
        "No route back: add one (for a lease, see the lease paths check), or set rp_filter 0 on that"
        " interface",
    ]
    ns.sysctl("lb", "net.ipv4.conf.all.rp_filter", "0")
    ns.sysctl("lb", "net.ipv4.conf.flannel/1.rp_filter", "0")
    assert by_name(run_checks(snat, netns=ns.name("lb")))["rp_filter"].status == "ok"


# --- rp_filter's pure parts ---------------------------------------------------------------------------

A = ipaddress.IPv4Address


def test_batch_results_match_output_lines_to_commands() -> None:
    accepted = ["local 10.0.1.1 from 10.9.0.5 dev lo \\    cache <local> iif vb", "local 10.0.1.1 dev lo"]
    refused = "RTNETLINK answers: Invalid argument\nCommand failed -:{}\n"
    stdout, stderr = "\n".join(accepted) + "\n", refused.format(1) + refused.format(3)
    assert doctor.batch_results(4, stdout, stderr) == [None, accepted[0], None, accepted[1]]
    with pytest.raises(RuntimeError, match="fewer lines"):
        doctor.batch_results(4, stdout, refused.format(1))


def test_route_field_reads_dev_and_src() -> None:
    line = "10.246.92.1 via 10.246.92.0 dev flannel.1 src 10.246.90.0 uid 0 \\    cache"
    assert doctor.route_field(line, "dev") == "flannel.1"
    assert doctor.route_field(line, "src") == "10.246.90.0"
    assert doctor.route_field("local 10.0.1.1 from 10.9.0.5 dev lo", "src") is None
    assert doctor.route_field(None, "dev") is None


def test_host_in_skips_local_addresses() -> None:
    net = ipaddress.IPv4Network("10.246.92.0/24")
    assert doctor.host_in(net, set()) == A("10.246.92.1")
    assert doctor.host_in(net, {A("10.246.92.1"), A("10.246.92.2")}) == A("10.246.92.3")
    assert doctor.host_in(ipaddress.IPv4Network("10.1.2.3/32"), set()) == A("10.1.2.3")
    assert doctor.host_in(ipaddress.IPv4Network("10.1.2.3/32"), {A("10.1.2.3")}) is None


def test_client_sources_are_on_link_and_behind_each_gateway() -> None:
    routes = [
        {"dst": "default", "gateway": "192.168.121.254", "metric": 200},
        {"dst": "192.168.121.0/24", "protocol": "kernel", "scope": "link", "prefsrc": LB_ADDR},
        {"dst": "10.20.0.0/16", "gateway": "192.168.121.9"},
    ]
    local = {A(LB_ADDR), A("192.168.121.1")}
    assert doctor.client_sources(ipaddress.IPv4Interface(f"{LB_ADDR}/24"), routes, local) == [
        (f"clients of {LB_ADDR} on-link in 192.168.121.0/24", A("192.168.121.2")),
        (f"clients of {LB_ADDR} beyond the default route via 192.168.121.254", doctor.REMOTE_CLIENT),
        (f"clients of {LB_ADDR} in 10.20.0.0/16 via 192.168.121.9", A("10.20.0.1")),
    ]
    assert doctor.client_sources(ipaddress.IPv4Interface(f"{LB_ADDR}/32"), [], local) == []


PROBE = doctor.Arrival(
    "pod", "replies from lease 10.246.92.0/24", A("10.246.92.1"), "flannel.1", A("10.246.90.0")
)


@pytest.mark.parametrize(
    ("values", "back", "reason", "fixes"),
    [
        (
            {"all": 0, "flannel.1": 1},
            "10.246.92.1 via 10.245.1.3 dev eth1 src 10.246.90.0",
            "the route back leaves via eth1, and rp_filter is strict on flannel.1",
            [
                "Fix: sysctl -w net.ipv4.conf.flannel/1.rp_filter=2 (loose: any route back will do), and"
                " persist it in /etc/sysctl.d/"
            ],
        ),
        (
            {"all": 1, "flannel.1": 1},
            "10.246.92.1 via 10.245.1.3 dev eth1 src 10.246.90.0",
            "the route back leaves via eth1, and rp_filter is strict on flannel.1",
            [
                "Fix: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.flannel/1.rp_filter=2 (loose: any"
                " route back will do), and persist it in /etc/sysctl.d/"
            ],
        ),
        (
            {"all": 2, "flannel.1": 0},
            None,
            "there is no route back to 10.246.92.1 (rp_filter 2 drops that)",
            [
                "No route back: add one (for a lease, see the lease paths check), or set rp_filter 0 on that"
                " interface"
            ],
        ),
        (
            {"all": 0, "flannel.1": 0},
            "10.246.92.1 dev flannel.1 src 10.246.90.0",
            "rejected although the route back leaves via flannel.1 (rp_filter 0: a martian source?)",
            [],
        ),
    ],
)
def test_rp_drop_line_and_fixes(
    values: dict[str, int], back: str | None, reason: str, fixes: list[str]
) -> None:
    line = doctor.rp_drop_line(PROBE, values, doctor.route_field(back, "dev"))
    assert line == (
        "replies from lease 10.246.92.0/24 (10.246.92.1 -> 10.246.90.0) arriving on flannel.1: " + reason
    )
    assert doctor.rp_fixes([PROBE], values, [back]) == fixes


def test_effective_rp_filter_is_the_larger_of_all_and_the_interface() -> None:
    assert doctor.effective_rp_filter({"all": 1, "eth1": 2}, "eth1") == 2
    assert doctor.effective_rp_filter({"all": 0, "eth1": 1}, "eth1") == 1
    assert doctor.effective_rp_filter({"all": 1}, "eth9") == 1


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
    rules = table_chains(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:FLB-SVC - [0:0]\n-A PREROUTING -j FLB-SVC\n"
        f"-A PREROUTING -d {LB_ADDR}/32 -j DNAT --to-destination 10.1.1.1\nCOMMIT\n",
        "nat",
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

    # Values only this namespace has: check reads the namespace, not the host, and says what to set.
    # Far above the configured day, in a table with room: no risk yet, so no warning.
    ns.sysctl("lb", "net.netfilter.nf_conntrack_tcp_timeout_established", "432001")
    timeouts = by_name(run_checks(cfg, netns=ns.name("lb")))["conntrack timeouts"]
    assert timeouts.status == "ok"
    assert timeouts.detail.startswith("tcp timeouts: established 432001 s (configured 86400 s)")
    assert (
        "established is far above the configured value: harmless while the table has room" in timeouts.detail
    )
    # Shorter than the configured day: idle connections lose their NAT state, a warning at once.
    ns.sysctl("lb", "net.netfilter.nf_conntrack_tcp_timeout_established", "3601")
    timeouts = by_name(run_checks(cfg, netns=ns.name("lb")))["conntrack timeouts"]
    assert timeouts.status == "warn"
    assert "nf_conntrack_tcp_timeout_established = 3601 s is shorter than" in timeouts.detail
    assert "Set [conntrack] manage = true" in timeouts.detail
    assert Path(ESTABLISHED).read_text() == host_before
    ns.sysctl("lb", "net.netfilter.nf_conntrack_tcp_timeout_established", "432001")

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
    results = by_name(run_checks(tiny, netns=ns.name("lb")))
    table = results["conntrack table"]
    assert table.status == "warn"
    assert table.detail.startswith(f"1 of {host_max} entries in use")
    assert "([conntrack] warn_usage = 1e-06): when it is full the kernel drops" in table.detail
    # ... and now that the table counts as filling, the 5-day timeout is a risk, and says so.
    assert results["conntrack timeouts"].status == "warn"
    assert (
        "nf_conntrack_tcp_timeout_established = 432001 s is far above" in results["conntrack timeouts"].detail
    )


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


# --- the project's own lab: check on a working load balancer ------------------------------------------


# --- check reports what the agent runs -------------------------------------------------------------------


def _reported_backend(results: dict[str, CheckResult]) -> str:
    """The backend `check` says flannel-lb writes, from both checks that name it (they must agree)."""
    backend = (
        results["iptables backend"].detail.split("flannel-lb's iptables writers use iptables-")[1].split()[0]
    )
    assert f"(iptables-{backend})" in results["nat conflicts"].detail, results["nat conflicts"].detail
    return backend


@pytest.mark.parametrize("holder", ["nft", "legacy"])
@pytest.mark.parametrize("configured", ["auto", "nft", "legacy"])
def test_check_reports_the_backend_the_agent_writes(
    ns: Namespaces, cfg: config_mod.Config, holder: str, configured: str
) -> None:
    """Only `holder` holds (foreign) NAT rules; the backend check names is the agent's writer's."""
    from flannel_lb.dataplane.iptables.restore import RestoreWriter
    from flannel_lb.dataplane.plane import make_writer

    if shutil.which(f"iptables-{holder}") is None:
        pytest.skip(f"needs iptables-{holder}")
    ns.run("lb", [f"iptables-{holder}", "-t", "nat", "-A", "PREROUTING", "-d", "10.9.9.9", "-j", "DNAT",
                  "--to-destination", "10.1.1.1"])  # fmt: skip
    chosen = dataclasses.replace(
        cfg, dataplane=dataclasses.replace(cfg.dataplane, iptables_backend=configured)
    )
    writer = make_writer(chosen, ns.name("lb"))
    assert isinstance(writer, RestoreWriter)
    agent = writer.tools.backend
    writer.close()
    results = by_name(run_checks(chosen, netns=ns.name("lb")))
    assert _reported_backend(results) == agent
    if configured != "auto":
        assert agent == configured
    # The other backend's rules are the competing ones: check names them exactly when they exist.
    other = "legacy" if agent == "nft" else "nft"
    assert ("also holds 1 nat rules" in results["iptables backend"].detail) == (holder == other)


def test_check_fails_where_the_agent_cannot_choose_a_backend(
    ns: Namespaces, cfg: config_mod.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `iptables` whose version names no backend: the agent refuses to guess, and check fails with
    the agent's own words."""
    from flannel_lb.dataplane.plane import make_writer
    from flannel_lb.kernel.netns import RunError

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "iptables").write_text("#!/bin/sh\necho 'iptables v9.9 (mystery)'\n")
    (fake / "iptables").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")  # `ip netns exec` keeps the environment
    with pytest.raises(RunError, match="cannot tell the iptables backend") as refused:
        make_writer(cfg, ns.name("lb"))
    result = by_name(run_checks(cfg, netns=ns.name("lb")))["iptables backend"]
    assert result.status == "fail"
    assert str(refused.value) in result.detail


def test_check_reports_the_own_lease_netcheck_skips(ns: Namespaces, etcd: EtcdServer, tmp_path: Path) -> None:
    """A forged /23 around the LB's /24 with the LB's PublicIP: check and the agent's netcheck both take
    the /24 as the own lease, and both path-check the /23."""
    from flannel_lb import parts
    from flannel_lb.kernel.netcheck import NetChecker

    u = urllib.parse.urlsplit(etcd.client_url)
    client = etcd3.client(host=u.hostname, port=u.port)
    seed(client.put)
    client.put(f"{FLANNEL}/subnets/10.246.90.0-23", k.lease(LB_IP, OWN_MAC))
    client.close()
    cfg = config_mod.load(write_config(tmp_path, etcd.client_url))
    results = by_name(run_checks(cfg, netns=ns.name("lb")))
    own = results["own lease"]
    assert own.status == "warn"
    assert (
        "the most specific, 10.246.90.0/24 (PublicIP 10.245.1.142, vxlan), is taken as its own" in own.detail
    )
    assert "10.246.90.0/23" in results["lease paths"].detail
    assert "10.246.90.0/24" not in results["lease paths"].detail

    state = parts.new_state(cfg)
    parts.apply_update(state, parts.source(cfg).snapshot(retry_budget=3.0))
    with NetChecker(ns.name("lb")) as checker:  # the agent's call (daemon/agent.py `_netcheck`)
        faults = checker.check(state.leases(), state.network_config, parts.lease_hint(cfg, state))
    assert ipaddress.IPv4Network("10.246.90.0/24") not in faults  # skipped: the own lease
    assert ipaddress.IPv4Network("10.246.90.0/23") in faults  # checked like any node's


def test_table_chains_reads_every_chain_of_one_table() -> None:
    saved = table_chains(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n"
        "*nat\n:PREROUTING ACCEPT [3:180]\n:KUBE-X - [0:0]\n"
        '[5:300] -A PREROUTING -m comment --comment "a \\"b\\"" -j KUBE-X\n'
        "-A KUBE-X ! -d 10.0.0.0/8 -j DNAT --to-destination 10.1.1.1\nCOMMIT\n",
        "nat",
    )
    assert list(saved) == ["PREROUTING", "KUBE-X"]
    first = saved["PREROUTING"][0]
    assert first.line == '-A PREROUTING -m comment --comment "a \\"b\\"" -j KUBE-X'
    assert (first.rule.comment, first.rule.jump) == ('a "b"', "KUBE-X")
    assert saved["KUBE-X"][0].rule.matches == ("!", "-d", "10.0.0.0/8")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from module_lab("d")


def test_check_on_the_working_lab_warns_about_nothing(lab: Lab) -> None:
    """The lab's LB as the seed's CentOS runs it (strict rp_filter, the kernel's 5-day established
    timeout), serving: none of that is a risk there, so check must not warn about it."""
    agent = AgentProcess(lab.namespace(LB_HOST), lab.config_file)
    lab.exec_in(LB_HOST, agent.argv("sync", "--once")[4:], check=True, timeout=60)
    try:
        answers = fetch(lab, "client", [f"http://{LB_ADDR}/"] * 8)
        assert all(answers), answers  # the lab works: the client reaches the pods through the LB
        proc = lab.exec_in(LB_HOST, agent.argv("check")[4:], timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[-1] == "14 checks: 14 ok, 0 warnings, 0 failed", proc.stdout
        # What the old check warned about is all there: strict rp_filter on every interface ...
        assert "(rp_filter all=1, eth0=1, eth1=1, flannel.1=1;" in proc.stdout
        assert "replies from 2 pod addresses (one per other lease) and 3 client addresses" in proc.stdout
        # ... the kernel's default established timeout, and a table in use.
        assert "tcp timeouts: established 432000 s (configured 86400 s)" in proc.stdout
        table = next(line for line in lines if "] conntrack table" in line)
        assert not table.split("conntrack table")[1].strip().startswith("0 of"), table
    finally:
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=True)
