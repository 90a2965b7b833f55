"""Convergence: one endpoint change written to etcd -> the new rule live in the kernel.

What is measured: for a probe Service (VIP:60000, the last rule of the dispatch chain) the time
from the etcd write of its EndpointSlice to the moment a probe connection from the client sees the
change: "add" gives the Service its endpoint (one nginx pod), so connections are established;
"remove" takes it away, so the LB refuses them (a TCP reset: the iptables writer's REJECT, or the
nftables writer's `refuse` chain). The client polls with one connection
every millisecond (`bench.probe`); a flip is timed at the start of the first try that saw it.
Both directions are deterministic to observe, and both are one endpoint added or removed in one
EndpointSlice write (what the EndpointSlice controller does when a pod turns ready or goes away).

It runs at each scale (default 100 and 10,000 exposed Services with 10 endpoints each, plus the
probe) with the agent's default config (`min_sync_interval` 0.02 s). Between changes it waits for the
agent's `sync` log line of the change's revision, then 50-150 ms (random), so changes do not pile up.
Also reported: the agent's own `seconds` per sync (plan + rules + iptables-restore or nft -f), the
rest being watch delivery, coalescing and the probe's resolution. `--writer nft` runs the agent with
its nftables data plane (a partial sync is a few map element deletes/adds) instead of iptables.

Run (as root): .venv/bin/python -m bench.convergence [--quick] [--changes 200] [--profile] [--writer nft]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import profile, report
from bench.common import (
    NGINX_PORT,
    VIP,
    WRITER_LABELS,
    WRITER_NOTES,
    BulkWriter,
    Prober,
    TimedAgent,
    add_writer_option,
    bench_lab,
    bulk_services,
    log,
    node_subnets,
    percentile,
    pods,
    real_endpoints,
    start_agent,
    start_nginx,
    stop_agent,
    workdir,
    writer_section,
)
from bench.objects import BenchService, encoded, fake_endpoints, slice_object
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab.lab import Lab

PROBE_PORT = 60000
BULK_BASE = 20000
TARGET_P99 = 0.100  # seconds, at 10k services


@dataclass
class Changes:
    """Latencies (s) of one scale's changes."""

    add: list[float] = field(default_factory=list)
    remove: list[float] = field(default_factory=list)
    agent_sync: list[float] = field(default_factory=list)  # the agent's `seconds` for the change's sync
    write_rtt: list[float] = field(default_factory=list)  # put round trip (included in the latency)
    missed: int = 0
    hot: list[profile.HotSpot] = field(default_factory=list)

    @property
    def all(self) -> list[float]:
        return self.add + self.remove


def add_bulk(
    lab: Lab, writer: BulkWriter, agent: TimedAgent, total: int, have: int, per_service: int
) -> None:
    """Grow to `total` exposed Services (the probe plus total-1 bulk ones) and wait for the sync."""
    subnets = node_subnets(lab)
    new = bulk_services(have - 1, total - 1, BULK_BASE, lambda i: fake_endpoints(i, per_service, subnets))
    mark = agent.mark()
    started = time.monotonic()
    writer.write(kv for i, svc in enumerate(new, have) for kv in encoded(svc, i))
    agent.wait_sync_where(lambda e: e.get("frontends") == total, 1800, after=mark)
    log(f"  {total} services live {time.monotonic() - started:.1f} s after the first write")


def one_change(
    writer: BulkWriter, prober: Prober, agent: TimedAgent, probe: BenchService, add: bool, out: Changes
) -> None:
    svc = probe if add else BenchService(probe.name, VIP, PROBE_PORT, NGINX_PORT, ())
    value = encode_protobuf(slice_object(svc))
    prober.arm(VIP, PROBE_PORT, "open" if add else "closed", timeout=120)
    mark = agent.mark()
    t0 = time.monotonic()
    revision = writer.put(probe.slice_key, value)
    out.write_rtt.append(time.monotonic() - t0)
    seen = prober.result(timeout=180)
    if seen is None:
        out.missed += 1
    else:
        (out.add if add else out.remove).append(seen - t0)
    event = agent.wait_sync_where(lambda e: int(e.get("revision", 0)) >= revision, 180, after=mark)
    out.agent_sync.append(float(event.get("seconds", 0)))


def run_scale(
    writer: BulkWriter,
    prober: Prober,
    agent: TimedAgent,
    probe: BenchService,
    changes: int,
    prof: Path | None,
) -> Changes:
    """`changes` changes, alternating remove/add; with `prof`, py-spy records the agent meanwhile."""
    out = Changes()
    add = False  # the probe starts with its endpoint: the first change removes it
    assert agent.proc is not None
    with contextlib.ExitStack() as stack:
        if prof is not None:
            stack.enter_context(profile.recording(agent.proc.pid, prof))
        for _ in range(changes):
            one_change(writer, prober, agent, probe, add, out)
            add = not add
            time.sleep(random.uniform(0.05, 0.15))
    if prof is not None and prof.exists():
        out.hot = profile.hot_spots(prof, 12)[1]
    if add:  # the next change would add: the probe has no endpoint now; give it back
        one_change(writer, prober, agent, probe, True, Changes())
    return out


def run(
    lab: Lab,
    base: Path,
    scales: Sequence[int],
    changes: int,
    per_service: int,
    with_profile: bool,
    data_plane: str = "restore",
) -> dict[int, Changes]:
    for pod, _, _ in pods(lab):
        start_nginx(lab, pod, base)
    writer = BulkWriter(lab, base / "bulk.log")
    prober = Prober(lab, base / "probe.log")
    agent: TimedAgent | None = None
    try:
        probe = BenchService("probe", VIP, PROBE_PORT, NGINX_PORT, real_endpoints(lab)[:1])
        writer.write(encoded(probe, 0))
        agent = start_agent(lab, base, writer=data_plane)
        agent.wait_sync_where(lambda e: e.get("frontends") == 1, 60)
        results: dict[int, Changes] = {}
        have = 1
        for n in sorted(scales):
            if n > have:
                add_bulk(lab, writer, agent, n, have, per_service)
                have = n
            time.sleep(2)
            log(f"  {changes} changes at {n} services")
            prof = base / f"py-spy-{n}.txt" if with_profile else None
            results[n] = run_scale(writer, prober, agent, probe, changes, prof)
        return results
    finally:
        stop_agent(agent, cleanup=False)
        writer.close()
        prober.close()


def ms(x: float) -> str:
    return f"{x * 1000:.0f}"


def render(results: dict[int, Changes]) -> tuple[str, str]:
    rows = []
    for n, c in sorted(results.items()):
        rows.append(
            [
                f"{n:,}",
                f"{len(c.add)} / {len(c.remove)}",
                f"{ms(percentile(c.all, 50))} / {ms(percentile(c.all, 99))}",
                f"{ms(percentile(c.add, 50))} / {ms(percentile(c.add, 99))}",
                f"{ms(percentile(c.remove, 50))} / {ms(percentile(c.remove, 99))}",
                f"{ms(percentile(c.agent_sync, 50))} / {ms(percentile(c.agent_sync, 99))}",
                f"{percentile(c.write_rtt, 50) * 1000:.1f}",
                c.missed,
            ]
        )
    headers = [
        "services",
        "changes add / remove",
        "write -> live p50 / p99 (ms)",
        "add p50 / p99 (ms)",
        "remove p50 / p99 (ms)",
        "agent sync p50 / p99 (ms)",
        "etcd put RTT p50 (ms)",
        "never seen",
    ]
    top = max(results)
    p99 = percentile(results[top].all, 99)
    met = top >= 10000 and p99 <= TARGET_P99
    verdict = f"Target p99 <= {TARGET_P99 * 1000:.0f} ms at 10k services: " + (
        f"**{'met' if met else 'missed'}** ({ms(p99)} ms)." if top >= 10000 else "not evaluated (< 10k)."
    )
    return report.table(headers, rows), verdict


def render_hot(results: dict[int, Changes]) -> str:
    top = max(results)
    spots = results[top].hot
    if not spots:
        return ""
    rows = [[s.function, f"{s.inclusive * 100:.0f}%", f"{s.own * 100:.0f}%"] for s in spots]
    head = f"py-spy profile of the agent during the changes at {top:,} services (CPU samples, idle excluded):"
    return head + "\n\n" + report.table(["function", "inclusive", "own"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 changes per scale")
    p.add_argument("--scales", help="comma-separated service counts (default 100,10000)")
    p.add_argument("--changes", type=int, help="changes per scale, alternating remove/add (default 200)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per bulk Service (default 10)")
    p.add_argument("--profile", action="store_true", help="py-spy the agent during the changes")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    add_writer_option(p)
    args = p.parse_args(argv)
    scales = [int(x) for x in args.scales.split(",")] if args.scales else [100, 10000]
    changes = args.changes or (40 if args.quick else 200)
    started = report.now()
    with bench_lab("cv") as lab, workdir("cv") as base:
        results = run(lab, base, scales, changes, args.endpoints, args.profile, args.writer)
    table, verdict = render(results)
    hot = render_hot(results)
    print(table)
    print(verdict)
    print(hot)
    if not args.no_doc:
        note = (
            f"{', '.join(f'{n:,}' for n in scales)} exposed Services in total (the probe with one "
            f"endpoint, the others {args.endpoints} each); {changes} changes per scale; "
            f"{WRITER_NOTES[args.writer]}"
        )
        title = f"Convergence (etcd write -> rule live), {WRITER_LABELS[args.writer]}"
        body = report.preamble(title, started, note)
        section = writer_section("convergence", args.writer)
        report.update_section(section, f"{body}\n{table}\n\n{verdict}\n\n{hot}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
