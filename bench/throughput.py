"""HTTP throughput through the LB: flannel-lb's rules vs hand-written rules vs no NAT vs HAProxy.

What is measured: requests/s of `wrk` (2 threads, `--connections` connections, `--duration` s) from
the lab's client to nginx in 2 pods (1 worker each, `return 200`), in two loads:
  keep-alive            every connection carries many requests (NAT rules are walked once per connection)
  connection-per-request `Connection: close`: nginx closes after each response, wrk reconnects, so
                         every request is a new connection through conntrack and the nat rules
and four paths, all through the same LB namespace and the same nginx pods:
  flannel-lb    VIP:80 with the rules the agent programmed (`iptables-save` of the LB after its sync)
  hand-written  VIP:80 with the minimal rules: one DNAT per backend (statistic) in PREROUTING and one
                `MASQUERADE --random-fully` (as flannel-lb) of DNATed connections in POSTROUTING,
                nothing in filter: the seed's hand-written rules, at their best
  direct        the pods' own addresses, routed by the LB without any rule (one wrk thread per pod);
                for this the client routes 10.246.0.0/16 via the LB and the nodes route the client's
                net back over the flannel overlay (routes added in the lab's namespaces only)
  haproxy       HAProxy 2.6 (`mode tcp`, roundrobin, same backends) listening on VIP:8081 in the LB
  flannel-lb nat only   a diagnostic: flannel-lb's rules with its filter table emptied (no
                per-packet FORWARD jump and connmark match), to tell the nat part from the filter part
With `--writer nft` the agent programs its nftables table instead: `flannel-lb` is that table (`nft
list table ip flb` after its sync, loaded back with `nft -f`; the iptables nat and filter tables as
the agent left them, i.e. empty), every other path runs without it, and there is no "nat only" row
(the table has no per-packet forward rule to leave out).
The rule sets are swapped with `iptables-restore` (whole tables) and `nft -f` (the flb table replaced
or deleted in one transaction), and the LB's conntrack table is flushed between runs, so no run
inherits another's connections; the agent is stopped after its sync (its rules stay) so it takes no
CPU. The pods keep no TIME_WAIT sockets (`limit_time_wait`: behind NAT they stall reused ports for
1 s and made connection-per-request runs collapse). Other
load on the machine moves throughput by tens of percent within a minute, so every path is
measured in a pair with the hand-written rules, back to back, alternating which goes first; a
ratio is the median over rounds of the per-pair ratios.

Run (as root): .venv/bin/python -m bench.throughput [--quick] [--writer nft]
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.common import (
    NGINX_PORT,
    VIP,
    WRITER_LABELS,
    BulkWriter,
    add_writer_option,
    bench_lab,
    log,
    median,
    pods,
    run_daemon,
    start_agent,
    start_nginx,
    stop_agent,
    wait_listening,
    workdir,
    writer_section,
)
from bench.objects import BenchService, Endpoint, encoded
from flannel_lb.dataplane.nftables.layout import FAMILY, table_name
from flannel_lb.dataplane.options import Options
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST
from flannel_lb.lab.topology import CLIENT_IP, INFRA_NET, LB_INFRA_IP

SERVICE_PORT = 80
HAPROXY_PORT = 8081
REF = "hand-written"
NAT_ONLY = "flannel-lb nat only"
OTHERS = ("flannel-lb", NAT_ONLY, "direct", "haproxy")  # each measured in a pair with REF
LOADS = ("keep-alive", "conn-per-request")
TARGET = 0.95

HAPROXY_CFG = """\
global
    maxconn 9000
    pidfile {dir}/haproxy.pid
    daemon
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen bench
    bind {vip}:{port}
    balance roundrobin
{servers}
"""

WRK_DIRECT_LUA = """\
-- one wrk thread per pod: thread i connects to pod i (no load balancer in the path)
local targets = {{{targets}}}
local n = 0
function setup(thread)
    n = n + 1
    thread.addr = wrk.lookup(targets[(n - 1) % #targets + 1], "{port}")[1]
end
"""


@dataclass(frozen=True, slots=True)
class Run:
    path: str
    load: str
    rps: float
    errors: int
    non2xx: int
    syn_retrans: int  # the client's SYN retransmissions (each one a 1 s stall)


@dataclass(frozen=True, slots=True)
class Pair:
    """One path run back to back with the hand-written reference, same load."""

    load: str
    path: str
    ref: Run
    run: Run

    @property
    def ratio(self) -> float:
        return self.run.rps / self.ref.rps


# --- the paths ----------------------------------------------------------------------------------------


def hand_written_rules(backends: Sequence[str]) -> str:
    """The minimal DNAT + MASQUERADE an operator would write by hand, as iptables-restore input."""
    n = len(backends)
    dnat = []
    for i, ip in enumerate(backends):
        stat = f"-m statistic --mode random --probability {1 / (n - i):.10f} " if i < n - 1 else ""
        dnat.append(
            f"-A PREROUTING -d {VIP}/32 -p tcp -m tcp --dport {SERVICE_PORT} {stat}"
            f"-j DNAT --to-destination {ip}:{NGINX_PORT}"
        )
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            *dnat,
            "-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE --random-fully",
            "COMMIT",
            *EMPTY_FILTER,
        ]
    )


EMPTY_FILTER = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT"]
EMPTY_NAT = [
    "*nat",
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    "COMMIT",
]


NFT_TABLE = f"{FAMILY} {table_name(Options().prefix)}"  # the nft writer's table: `ip flb`


def load_rules(lab: Lab, text: str, nft: str = "") -> None:
    """Replace the LB's nat and filter tables with `text` (iptables-restore without --noflush), and
    its flb nftables table with `nft` (a `nft list table` text; "" = no table), in one `nft -f`."""
    lab.exec_in(LB_HOST, ["iptables-restore"], input=text + "\n", check=True, timeout=60)
    replace = f"table {NFT_TABLE}\ndelete table {NFT_TABLE}\n{nft}"
    lab.exec_in(LB_HOST, ["nft", "-f", "-"], input=replace, check=True, timeout=60)


def flannel_lb_rules(lab: Lab, base: Path, backends: Sequence[str], data_plane: str) -> tuple[str, str]:
    """Let the agent program VIP:80 -> the pods, stop it (rules stay), return (`iptables-save`, its
    nftables table as `nft list table` shows it; "" with the iptables writer)."""
    writer = BulkWriter(lab, base / "bulk.log")
    eps = tuple(Endpoint(ip, node) for _, node, ip in pods(lab))
    agent = None
    try:
        writer.write(encoded(BenchService("web", VIP, SERVICE_PORT, NGINX_PORT, eps), 0))
        agent = start_agent(lab, base, writer=data_plane)
        agent.wait_sync_where(lambda e: e.get("frontends") == 1 and e.get("backends") == len(backends), 60)
    finally:
        stop_agent(agent, cleanup=False)
        writer.close()
    saved = with_all_tables(lab.exec_in(LB_HOST, ["iptables-save"], check=True).stdout)
    (base / "flannel-lb.rules").write_text(saved)
    if data_plane != "nft":
        return saved, ""
    table = lab.exec_in(LB_HOST, ["nft", "list", "table", *NFT_TABLE.split()], check=True).stdout
    (base / "flannel-lb.nft").write_text(table)
    return saved, table


def route_direct(lab: Lab) -> None:
    """Client -> pods without NAT: the client routes pod addresses via the LB, the nodes route the
    client's network back over flannel to the LB's VTEP (its lease's first address)."""
    status = lab.status(query_etcd=False)
    lb_lease = next(lease for lease in status["leases"] if lease["host"] == LB_HOST)
    vtep = lb_lease["subnet"].split("/")[0]
    lab.exec_in("client", ["ip", "route", "add", "10.246.0.0/16", "via", LB_INFRA_IP], check=True)
    for node in status["nodes"]:
        argv = ["ip", "route", "add", str(INFRA_NET), "via", vtep, "dev", "flannel.1", "onlink"]
        lab.exec_in(node["name"], argv, check=True)


def start_haproxy(lab: Lab, base: Path, backends: Sequence[str]) -> None:
    servers = "\n".join(f"    server p{i} {ip}:{NGINX_PORT}" for i, ip in enumerate(backends))
    cfg = base / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(dir=base, vip=VIP, port=HAPROXY_PORT, servers=servers))
    run_daemon(lab, LB_HOST, ["haproxy", "-f", str(cfg)], base / "haproxy.log")
    wait_listening(lab, "client", VIP, HAPROXY_PORT)


# --- wrk ------------------------------------------------------------------------------------------------


def wrk(lab: Lab, url: str, load: str, duration: int, connections: int, script: Path | None) -> str:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "5s"]
    if load == "conn-per-request":
        argv += ["-H", "Connection: close"]
    if script is not None:
        argv += ["-s", str(script)]
    return lab.exec_in("client", [*argv, url], check=True, timeout=duration + 60).stdout


def parse_wrk(out: str) -> tuple[float, int, int]:
    """(requests/s, socket errors, non-2xx responses) from wrk's summary."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = sum(int(x) for x in m.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, errors, int(non2xx.group(1)) if non2xx else 0


@dataclass(frozen=True, slots=True)
class Setup:
    lab: Lab
    rules: dict[str, str]  # path -> the nat/filter tables it runs with
    nft: dict[str, str]  # path -> the flb nftables table it runs with ("": none)
    urls: dict[str, str]
    scripts: dict[str, Path | None]


def syn_retransmits(lab: Lab) -> int:
    """The client's SYN retransmissions since the last call (`nstat` keeps the history)."""
    out = lab.exec_in("client", ["nstat", "-z", "TcpExtTCPSynRetrans"], check=True).stdout
    m = re.search(r"TcpExtTCPSynRetrans\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def one_run(s: Setup, path: str, load: str, duration: int, connections: int) -> Run:
    load_rules(s.lab, s.rules[path], s.nft.get(path, ""))
    s.lab.exec_in(LB_HOST, ["conntrack", "-F"], check=False)
    time.sleep(1)
    syn_retransmits(s.lab)
    rps, errors, non2xx = parse_wrk(wrk(s.lab, s.urls[path], load, duration, connections, s.scripts[path]))
    return Run(path, load, rps, errors, non2xx, syn_retransmits(s.lab))


def limit_time_wait(lab: Lab, buckets: int = 0) -> None:
    """Pods keep at most `buckets` TIME_WAIT sockets (a per-namespace sysctl; 0: none at all).

    nginx closes first, so every connection leaves a TIME_WAIT socket in its pod, keyed by the
    LB's masqueraded (address, port). Behind NAT, a later SYN that reuses such a port carries the
    timestamp and sequence clock of a different client connection, so the TIME_WAIT socket
    rejects it about half the time; the client retransmits the SYN after 1 s. Measured in this
    lab: ~1,300 SYN retransmissions per 5 s of connection-per-request load through either NAT rule
    set, none without NAT, and throughput falling run after run as TIME_WAIT sockets pile up. That
    is real (any NAT load balancer has it) but it measures the pods' TIME_WAIT table, not the
    rules, so it is switched off here (`--keep-time-wait` keeps it).
    """
    for pod, _, _ in pods(lab):
        lab.exec_in(pod, ["sysctl", "-q", "-w", f"net.ipv4.tcp_max_tw_buckets={buckets}"], check=True)


def with_all_tables(saved: str) -> str:
    """`saved` plus an empty nat and filter table for each one it lacks (with the nft writer the
    iptables tables may not exist at all): iptables-restore flushes only the tables it is given, so
    another path's rules must not survive into this one."""
    out = [saved.rstrip("\n")] if saved.strip() else []
    for name, empty in (("nat", EMPTY_NAT), ("filter", EMPTY_FILTER)):
        if f"\n*{name}\n" not in f"\n{saved}":
            out.append("\n".join(empty))
    return "\n".join(out)


def without_filter(saved: str) -> str:
    """flannel-lb's saved rules with its filter table emptied: only the nat part (a diagnostic)."""
    out, skip = [], False
    for line in saved.splitlines():
        if line.startswith("*filter"):
            skip = True
        elif skip and line == "COMMIT":
            skip = False
            continue
        if not skip and not line.startswith("#"):
            out.append(line)
    return "\n".join([*out, *EMPTY_FILTER])


def compared(data_plane: str) -> tuple[str, ...]:
    """The paths measured in pairs with the hand-written rules."""
    return OTHERS if data_plane == "restore" else tuple(p for p in OTHERS if p != NAT_ONLY)


def run(
    lab: Lab,
    base: Path,
    rounds: int,
    duration: int,
    connections: int,
    keep_time_wait: bool,
    data_plane: str = "restore",
) -> list[Pair]:
    if not keep_time_wait:
        limit_time_wait(lab)
    for pod, _, _ in pods(lab):
        start_nginx(lab, pod, base)
    backends = [ip for _, _, ip in pods(lab)]
    flb, flb_nft = flannel_lb_rules(lab, base, backends, data_plane)
    others = compared(data_plane)
    route_direct(lab)
    start_haproxy(lab, base, backends)
    lua = base / "direct.lua"
    lua.write_text(WRK_DIRECT_LUA.format(targets=", ".join(f'"{ip}"' for ip in backends), port=NGINX_PORT))
    empty = "\n".join([*EMPTY_NAT, *EMPTY_FILTER])
    setup = Setup(
        lab,
        rules={
            "flannel-lb": flb,
            NAT_ONLY: without_filter(flb),
            "hand-written": hand_written_rules(backends),
            "direct": empty,
            "haproxy": empty,
        },
        nft={"flannel-lb": flb_nft},
        urls={
            "flannel-lb": f"http://{VIP}:{SERVICE_PORT}/",
            NAT_ONLY: f"http://{VIP}:{SERVICE_PORT}/",
            "hand-written": f"http://{VIP}:{SERVICE_PORT}/",
            "direct": f"http://{backends[0]}:{NGINX_PORT}/",
            "haproxy": f"http://{VIP}:{HAPROXY_PORT}/",
        },
        scripts={"flannel-lb": None, NAT_ONLY: None, "hand-written": None, "direct": lua, "haproxy": None},
    )
    for path in (REF, *others):  # warm-up, and a check that every path answers
        one_run(setup, path, "keep-alive", 1, connections)
    pairs: list[Pair] = []
    for r in range(rounds):
        for load in LOADS:
            for i, path in enumerate(others):
                first_ref = (r + i) % 2 == 0  # alternate which of the pair runs first
                order = [REF, path] if first_ref else [path, REF]
                got = {p: one_run(setup, p, load, duration, connections) for p in order}
                pairs.append(Pair(load, path, got[REF], got[path]))
        done = pairs[-len(LOADS) * len(others) :]
        log(f"  round {r + 1}: " + ", ".join(f"{x.path}/{x.load} {x.ratio:.3f}" for x in done))
    return pairs


# --- the report -----------------------------------------------------------------------------------------


def render(pairs: list[Pair]) -> tuple[str, str]:
    rows = []
    for load in LOADS:
        refs = [p.ref for p in pairs if p.load == load]
        rows.append(_row(load, REF, refs, [1.0]))
        for path in OTHERS:
            mine = [p for p in pairs if p.load == load and p.path == path]
            if not mine:
                continue
            rows.append(_row(load, path, [p.run for p in mine], [p.ratio for p in mine]))
    headers = [
        "load",
        "path",
        "req/s (median)",
        "req/s (range)",
        "ratio to hand-written (median of pairs)",
        "pair ratios (range)",
        "errors",
        "SYN retransmits",
    ]
    verdicts = []
    for load in LOADS:
        r = median([p.ratio for p in pairs if p.load == load and p.path == "flannel-lb"])
        verdicts.append(f"{load} {r:.3f} ({'met' if r >= TARGET else '**missed**'})")
    verdict = f"Target flannel-lb / hand-written >= {TARGET}: " + "; ".join(verdicts) + "."
    return report.table(headers, rows), verdict


def _row(load: str, path: str, runs: list[Run], ratios: list[float]) -> list[object]:
    rps = [x.rps for x in runs]
    return [
        load,
        path,
        f"{median(rps):,.0f}",
        f"{min(rps):,.0f} - {max(rps):,.0f}",
        f"{median(ratios):.3f}",
        f"{min(ratios):.3f} - {max(ratios):.3f}",
        sum(x.errors + x.non2xx for x in runs),
        sum(x.syn_retrans for x in runs),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round of 4 s runs")
    p.add_argument("--rounds", type=int, help="rounds (default 4)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--keep-time-wait", action="store_true", help="do not limit the pods' TIME_WAIT sockets")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    add_writer_option(p)
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 4)
    duration = args.duration or (4 if args.quick else 5)
    started = report.now()
    with bench_lab("tp") as lab, workdir("tp") as base:
        results = run(lab, base, rounds, duration, args.connections, args.keep_time_wait, args.writer)
    table, verdict = render(results)
    print(table)
    print(verdict)
    if not args.no_doc:
        note = (
            f"{rounds} rounds x {2 * len(compared(args.writer)) * len(LOADS)} runs of {duration} s "
            "(each path paired with a hand-written run), "
            f"wrk -t2 -c{args.connections}, 2 nginx pods (1 worker each) on 2 nodes; "
            f"client {CLIENT_IP}, VIP {VIP}; pods' TIME_WAIT "
            + (
                "not limited"
                if args.keep_time_wait
                else "disabled (tcp_max_tw_buckets=0, see bench/throughput.py)"
            )
        )
        body = report.preamble(f"Throughput (HTTP requests/s), {WRITER_LABELS[args.writer]}", started, note)
        report.update_section(writer_section("throughput", args.writer), f"{body}\n{table}\n\n{verdict}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
