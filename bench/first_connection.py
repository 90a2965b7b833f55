"""First-connection latency vs the number of exposed service-ports.

What is measured: the TCP connect time (blocking `connect()`: SYN sent -> established) of new
connections from the lab's client to a probe Service on the LB (192.168.121.201:60000 -> 2 nginx pods),
while flannel-lb serves N exposed service-ports in total (the probe plus N-1 `bulk-*` Services on
VIP:20000+i, all pointing at the same nginx pods). The probe's port sorts last, so its dispatch rule is
the last of FLB-SERVICES' N rules (the worst case of a linear chain); `bulk-00000` sorts first and is
measured alongside as the best case. Every connection is new, so every SYN walks the nat rules.

How: one lab, one agent. The scale goes up (1 -> 1k -> 10k -> 30k) and back down, measuring at each
step after the agent's sync reports N frontends; samples of the up and down passes are pooled (that
cancels slow drift of the machine's load). Ratios are p50/p99 at N over p50/p99 at 1.

`--writer nft` runs the agent with its nftables data plane: dispatch is the `services` verdict map,
one hash lookup whatever N (the probe and bulk-00000 are then just two elements of it).

Run (as root): .venv/bin/python -m bench.first_connection [--quick] [--backend nft|legacy] [--writer nft]
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
    median,
    percentile,
    pods,
    real_endpoints,
    start_agent,
    start_nginx,
    stop_agent,
    workdir,
    writer_section,
)
from bench.objects import BenchService, encoded
from flannel_lb.lab.lab import Lab

PROBE_PORT = 60000
BULK_BASE = 20000
BLOCK = 250  # connections per measurement block; last/first probes alternate block by block
TARGET = 1.2  # p50 and p99 at 10k / at 1


FLB_LAST, FLB_FIRST = "flannel-lb", "flannel-lb first rule"


@dataclass
class Samples:
    """Connect times (us) per target at one scale."""

    us: dict[str, list[float]] = field(default_factory=dict)
    failed: int = 0
    sync_seconds: list[float] = field(default_factory=list)

    def add(self, target: str, us: list[float], failed: int) -> None:
        self.us.setdefault(target, []).extend(us)
        self.failed += failed


@dataclass
class Scale:
    """Moves the number of exposed service-ports up and down through bulk Service writes/deletes."""

    lab: Lab
    writer: BulkWriter
    agent: TimedAgent
    current: int = 1  # exposed service-ports: the probe plus `current - 1` bulk services
    last_sync: dict[str, object] = field(default_factory=dict)

    def set(self, n: int, timeout: float) -> dict[str, object]:
        if n == self.current and self.last_sync:
            return self.last_sync  # the turning point: nothing to change
        mark = self.agent.mark()
        started = time.monotonic()
        ep = real_endpoints(self.lab)
        if n > self.current:
            new = bulk_services(self.current - 1, n - 1, BULK_BASE, lambda i: ep)
            self.writer.write(kv for i, svc in enumerate(new, self.current) for kv in encoded(svc, i))
        elif n < self.current:
            gone = bulk_services(n - 1, self.current - 1, BULK_BASE, lambda i: ep)
            self.writer.write(deletes=[k for svc in gone for k in svc.all_keys()])
        self.current = n
        event = self.agent.wait_sync_where(lambda e: e.get("frontends") == n, timeout, after=mark)
        log(f"  scale {n}: synced {time.monotonic() - started:.1f} s after the first write")
        self.last_sync = event
        return event


LEGEND = (
    "Rows: `flannel-lb` = the agent's rules, probe on the last dispatch rule (VIP:60000); `first rule` ="
    " bulk-00000 (VIP:20000), the first dispatch entry."
)
LEGEND_NFT = (
    "Rows: `flannel-lb` = the agent's nftables table (`--writer nft`), probe VIP:60000; `first rule` ="
    " bulk-00000 (VIP:20000). Both are elements of the `services` verdict map (one hash lookup for every"
    " packet, flannel's vxlan packets included), so neither is a best or worst case."
)


def targets(n: int) -> dict[str, tuple[str, int]]:
    """What to probe at scale n: label -> (address, port): the last dispatch entry, and from N=2 on
    `flannel-lb first rule` (bulk-00000)."""
    out = {FLB_LAST: (VIP, PROBE_PORT)}
    if n > 1:
        out[FLB_FIRST] = (VIP, BULK_BASE)
    return out


def measure(prober: Prober, agent: TimedAgent, n: int, count: int, into: Samples) -> None:
    """`count` connections to each target, interleaved in blocks of BLOCK.

    The agent is paused (SIGSTOP) meanwhile: its periodic work (netcheck every 2 s, the verifying
    full resync every `full_resync_interval`, seconds of CPU at 10k+ services) would otherwise
    compete for the CPU with the packets being timed. The figure is the data path's; the agent's
    CPU is `bench.cold_start`'s.
    """
    agent.signal(signal.SIGSTOP)
    try:
        probes = targets(n)
        for host, port in probes.values():
            prober.connect_times(host, port, 50)  # warm-up: ARP, route and conntrack caches
        done = 0
        while done < count:
            k = min(BLOCK, count - done)
            for label, (host, port) in probes.items():
                into.add(label, *prober.connect_times(host, port, k))
            done += k
    finally:
        agent.signal(signal.SIGCONT)


def run(
    lab: Lab, base: Path, scales: Sequence[int], count: int, backend: str, data_plane: str
) -> dict[int, Samples]:
    for pod, _, _ in pods(lab):
        start_nginx(lab, pod, base)
    writer = BulkWriter(lab, base / "bulk.log")
    prober = Prober(lab, base / "probe.log")
    agent: TimedAgent | None = None
    try:
        probe = BenchService("probe", VIP, PROBE_PORT, NGINX_PORT, real_endpoints(lab))
        writer.write(encoded(probe, 0))
        agent = start_agent(lab, base, writer=data_plane, iptables_backend=backend)
        first = agent.wait_sync_where(lambda e: e.get("frontends") == 1, 60)
        scale = Scale(lab, writer, agent, last_sync=first)
        results = {n: Samples() for n in scales}
        order = [*scales, *reversed(scales)]  # up, then down: ABCD DCBA
        for i, n in enumerate(order):
            event = scale.set(n, timeout=1800)
            results[n].sync_seconds.append(float(str(event.get("seconds", 0))))
            log(f"  measuring {count} connections per probe at N={n} (pass {i // len(scales)})")
            measure(prober, agent, n, count, results[n])
        return results
    finally:
        stop_agent(agent, cleanup=False)  # the lab's teardown removes the namespace and its rules
        writer.close()
        prober.close()


def render(results: dict[int, Samples], backend: str, data_plane: str = "restore") -> tuple[str, str]:
    """(table for the terminal and the doc: one row per layout, one column per N; verdict)."""
    base = results[min(results)]
    labels = [t for t in (FLB_LAST, FLB_FIRST) if any(t in s.us for s in results.values())]
    rows = []
    for label in labels:
        ref = base.us.get(label) or base.us[FLB_LAST]
        b50 = percentile(ref, 50)
        row: list[object] = [label]
        for _, s in sorted(results.items()):
            us = s.us.get(label)
            if not us:
                row.append("-")
                continue
            p50, p99 = percentile(us, 50), percentile(us, 99)
            row.append(f"{p50:.0f} / {p99:.0f} (x{p50 / b50:.2f})")
        rows.append(row)
    headers = ["layout (probe)", *(f"N={n:,}: p50 / p99 us (p50 ratio)" for n in sorted(results))]
    table = report.table(headers, rows)
    counts = ", ".join(f"{n:,}: {len(s.us[FLB_LAST])}" for n, s in sorted(results.items()))
    syncs = ", ".join(f"{n:,}: {median(s.sync_seconds):.2f} s" for n, s in sorted(results.items()))
    failed = sum(s.failed for s in results.values())
    legend = LEGEND_NFT if data_plane == "nft" else LEGEND
    notes = (
        f"{legend}\n\nConnections per cell (N: count): {counts}. Agent sync when the scale changed (median): "
        f"{syncs}. Failed connections: {failed}. Ratios are to N=1 of the same row (the first rule's "
        "to the N=1 probe)."
    )
    return table + "\n\n" + notes, _verdict(results, backend, data_plane)


def _verdict(results: dict[int, Samples], backend: str, data_plane: str = "restore") -> str:
    if 10000 not in results:
        return "Target (10k/1 <= 1.2) not evaluated: this run did not reach 10k service-ports."
    base = results[min(results)]
    parts = []
    for label in (FLB_LAST,):
        r50 = percentile(results[10000].us[label], 50) / percentile(base.us[label], 50)
        r99 = percentile(results[10000].us[label], 99) / percentile(base.us[label], 99)
        met = r50 <= TARGET and r99 <= TARGET
        parts.append(f"{label}: {'met' if met else '**missed**'} (p50 {r50:.2f}, p99 {r99:.2f})")
    where = f"iptables-{backend}, probe = last dispatch entry" if data_plane == "restore" else "nft writer"
    head = f"Target 10k/1 <= {TARGET} ({where}): "
    return head + "; ".join(parts) + "."


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 1, 1k, 10k and 500 connections per pass")
    p.add_argument("--scales", help="comma-separated N (default 1,1000,10000,30000)")
    p.add_argument("--count", type=int, help="connections per scale and pass to each probe (default 2000)")
    p.add_argument("--backend", choices=["nft", "legacy"], help="iptables backend (default nft)")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    add_writer_option(p)
    args = p.parse_args(argv)
    if args.writer == "nft" and args.backend:
        p.error("--backend needs the iptables writer (--writer restore)")
    backend = args.backend or "nft"
    scales = (
        [int(x) for x in args.scales.split(",")]
        if args.scales
        else ([1, 1000, 10000] if args.quick else [1, 1000, 10000, 30000])
    )
    count = args.count or (500 if args.quick else 2000)
    started = report.now()
    with bench_lab("fc") as lab, workdir("fc") as base:
        results = run(lab, base, scales, count, backend, args.writer)
    table, verdict = render(results, backend, args.writer)
    print(table)
    print(verdict)
    if not args.no_doc:
        note = f"N = {', '.join(f'{n:,}' for n in scales)}; {count} connections per pass and probe"
        if args.writer == "restore":
            title, section = f"iptables-{backend}", f"first_connection_{backend}"
        else:
            title, section = WRITER_LABELS[args.writer], writer_section("first_connection", args.writer)
        body = report.preamble(f"First-connection latency vs scale ({title})", started, note)
        report.update_section(section, f"{body}\n{table}\n\n{verdict}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
