"""What loadBalancerSourceRanges cost a new connection and a sync, at 10k Services.

One lab, one agent, two probe Services side by side: `open` (VIP:60000, no ranges) and `restricted`
(VIP:60001, four ranges, the client's /24 the last of them), both on the same 2 nginx pods, among
N-2 `bulk-*` Services. Phase A: the bulk Services are open. Phase B: every bulk Service gets four
ranges too (one sync rewrites them all). In each phase the connect time (SYN -> established) of new
connections to both probes is sampled in alternating blocks, with the agent SIGSTOPped, so the
ratio restricted / open is measured under the same load, and phase B / phase A shows what N
restricted Services cost the others.

iptables: a restricted frontend's dispatch jumps to its FLB-FW chain (one `-s` rule per range) and
FLB-REJECT holds its DROP; nftables: two set lookups per new connection in `firewall-in`.

Run (as root): .venv/bin/python -m bench.source_ranges [--quick] [--writer nft]
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import report
from bench.common import (
    NGINX_PORT,
    VIP,
    WRITER_LABELS,
    BulkWriter,
    Prober,
    TimedAgent,
    add_writer_option,
    bench_lab,
    bulk_services,
    log,
    percentile,
    pods,
    real_endpoints,
    start_agent,
    start_nginx,
    stop_agent,
    workdir,
    writer_section,
)
from bench.objects import BenchService, cluster_ip, encoded, service_object
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.topology import CLIENT_IP

OPEN_PORT, RESTRICTED_PORT, BULK_BASE = 60000, 60001, 20000
BLOCK = 250
CLIENT_NET = CLIENT_IP.rsplit(".", 1)[0] + ".0/24"


def ranges(i: int) -> tuple[str, ...]:
    """Three ranges that do not hold the client, then the client's network: the worst case for a
    rule per range (iptables walks all four before the match)."""
    return (f"10.{i % 200}.0.0/16", f"172.16.{i % 250}.0/24", f"198.51.{i % 100}.0/24", CLIENT_NET)


@dataclass
class Phase:
    sync_seconds: float = 0.0  # the agent's own figure for the (last) sync
    in_step_seconds: float | None = None  # phase B: first etcd write -> rules in step
    us: dict[str, list[float]] = field(default_factory=dict)
    failed: int = 0


def measure(prober: Prober, agent: TimedAgent, count: int, into: Phase) -> None:
    targets = {"open": OPEN_PORT, "restricted": RESTRICTED_PORT}
    agent.signal(signal.SIGSTOP)
    try:
        for port in targets.values():
            prober.connect_times(VIP, port, 50)  # warm-up: ARP, route and conntrack caches
        done = 0
        while done < count:
            k = min(BLOCK, count - done)
            for label, port in targets.items():
                us, failed = prober.connect_times(VIP, port, k)
                into.us.setdefault(label, []).extend(us)
                into.failed += failed
            done += k
    finally:
        agent.signal(signal.SIGCONT)


def run(lab: Lab, base: Path, n: int, count: int, data_plane: str) -> dict[str, Phase]:
    for pod, _, _ in pods(lab):
        start_nginx(lab, pod, base)
    writer = BulkWriter(lab, base / "bulk.log")
    prober = Prober(lab, base / "probe.log")
    agent: TimedAgent | None = None
    ep = real_endpoints(lab)
    try:
        probes = [
            BenchService("probe-open", VIP, OPEN_PORT, NGINX_PORT, ep),
            BenchService("probe-restricted", VIP, RESTRICTED_PORT, NGINX_PORT, ep, ranges(0)),
        ]
        bulk = bulk_services(0, n - 2, BULK_BASE, lambda i: ep)
        writer.write(kv for i, svc in enumerate([*probes, *bulk]) for kv in encoded(svc, i))
        agent = start_agent(lab, base, writer=data_plane)
        first = agent.wait_sync_where(lambda e: e.get("frontends") == n, 1800)
        phases = {"A: bulk open": Phase(sync_seconds=float(str(first.get("seconds", 0))))}
        log(f"  phase A: {n} frontends, measuring {count} connections per probe")
        measure(prober, agent, count, phases["A: bulk open"])
        restricted = [
            BenchService(s.name, s.address, s.port, s.target_port, s.endpoints, ranges(i + 1))
            for i, s in enumerate(bulk)
        ]
        started = time.monotonic()
        mark = agent.mark()
        # only the Service objects change (same clusterIP index as when they were created)
        last = writer.write(
            (svc.service_key, encode_protobuf(service_object(svc, cluster_ip(i))))
            for i, svc in enumerate(restricted, 2)
        )
        event = agent.wait_sync_where(lambda e: int(str(e.get("revision", 0))) >= last, 1800, after=mark)
        took = time.monotonic() - started
        log(f"  phase B: every bulk Service restricted, in step {took:.1f} s after the first write")
        b = phases["B: bulk restricted"] = Phase(float(str(event.get("seconds", 0))), in_step_seconds=took)
        measure(prober, agent, count, b)
        return phases
    finally:
        stop_agent(agent, cleanup=False)  # the lab's teardown removes the namespace and its rules
        writer.close()
        prober.close()


def render(phases: dict[str, Phase], n: int) -> str:
    rows = []
    for name, ph in phases.items():
        o50, o99 = percentile(ph.us["open"], 50), percentile(ph.us["open"], 99)
        r50, r99 = percentile(ph.us["restricted"], 50), percentile(ph.us["restricted"], 99)
        rows.append(
            [
                name,
                f"{o50:.0f} / {o99:.0f}",
                f"{r50:.0f} / {r99:.0f}",
                f"x{r50 / o50:.2f} / x{r99 / o99:.2f}",
                f"{ph.sync_seconds:.2f} s",
                "-" if ph.in_step_seconds is None else f"{ph.in_step_seconds:.1f} s",
                ph.failed,
            ]
        )
    headers = [
        f"phase (N={n:,})",
        "open probe p50 / p99 us",
        "restricted probe p50 / p99 us",
        "restricted / open",
        "agent's last sync",
        "writes -> in step",
        "failed",
    ]
    a, b = (percentile(ph.us["open"], 50) for ph in phases.values())
    note = (
        "Restricted = 4 loadBalancerSourceRanges, the client's network last. Phase A's sync is the first"
        " (cold) one; phase B's is the last of the syncs that restricted every bulk Service. Open probe,"
        f" phase B / phase A (p50): x{b / a:.2f}."
    )
    return report.table(headers, rows) + "\n\n" + note


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 1,000 and 500 connections per probe and phase")
    p.add_argument("--services", type=int, help="Services in all, probes included (default 10000)")
    p.add_argument("--count", type=int, help="connections per probe and phase (default 2000)")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    add_writer_option(p)
    args = p.parse_args(argv)
    n = args.services or (1000 if args.quick else 10000)
    count = args.count or (500 if args.quick else 2000)
    started = report.now()
    with bench_lab("sr") as lab, workdir("sr") as base:
        phases = run(lab, base, n, count, args.writer)
    table = render(phases, n)
    print(table)
    if not args.no_doc:
        title = f"loadBalancerSourceRanges: first connection and sync ({WRITER_LABELS[args.writer]})"
        body = report.preamble(title, started, f"N = {n:,}; {count} connections per probe and phase")
        report.update_section(writer_section("source_ranges", args.writer), f"{body}\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
