"""Cold start, memory and churn cost at 10k Services x 10 endpoints.

What is measured, in one lab and one run:
  cold start   etcd holds 10k exposed Services (VIP:20000+i, 10 endpoints each, with their Endpoints
               and EndpointSlices) plus a probe Service (VIP:60000, the last dispatch rule, one nginx
               pod). The client polls the probe (one connection per ms) while the agent is started:
               cold start = agent process start -> first connection established. The restore is
               one transaction, so the probe opening means every rule is live. Repeated (`--repeat`),
               with `flannel-lb cleanup` between starts. Also split into: start -> snapshot decoded
               (the agent's `etcd_snapshot` log line) -> first sync logged (its `seconds`: plan,
               rules, iptables-restore; or plan, layout, nft -f with `--writer nft`).
  apply vs raw the agent's first-sync `seconds` against a raw `iptables-restore --noflush` (with
               `--writer nft`: a raw `nft -f`) of the same transaction text (replayed in-process,
               `bench.stages`, 3 times, median); the replay also times each stage and profiles
               the Python ones (cProfile)
  memory       the agent's RSS (VmRSS; VmHWM = peak) after the first sync, and at steady state
               after `--changes` endpoint changes (and 5 s of quiet)
  churn cost   CPU seconds (user + system, the agent's own plus its iptables-restore/-save or nft
               children)
               the agent spends while `--changes` endpoint changes arrive at `--rate` per second and
               until it has synced the last one, scaled to 1,000 changes; also its idle CPU per
               minute (netcheck every 2 s, the verifying full resync every `full_resync_interval`,
               10 s by default). A change is one EndpointSlice write removing one endpoint of a
               random Service, or adding it back.

`--writer nft` runs the agent with its nftables data plane instead of iptables (its own section).

Run (as root): .venv/bin/python -m bench.cold_start [--quick] [--services 10000] [--profile] [--writer nft]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import profile, report, stages
from bench.common import (
    NGINX_PORT,
    VIP,
    WRITER_LABELS,
    WRITER_NOTES,
    BulkWriter,
    Prober,
    ProcUsage,
    TimedAgent,
    add_writer_option,
    bench_lab,
    bulk_services,
    log,
    median,
    node_subnets,
    pods,
    proc_usage,
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
from flannel_lb.lab.lbagent import LB_HOST

PROBE_PORT = 60000
BULK_BASE = 20000
TARGET_START = 2.0
TARGET_APPLY_RATIO = 1.5
TARGET_RSS_MB = 150.0


@dataclass
class Start:
    total: float  # agent start -> probe connects
    snapshot: float  # agent start -> etcd_snapshot logged
    sync_logged: float  # agent start -> first sync logged
    sync_seconds: float  # the first sync's own `seconds`
    rss_mb: float


@dataclass
class Churn:
    changes: int
    rate: float
    seconds: float  # first write -> last change synced
    usage: ProcUsage  # deltas over the churn window
    syncs: int
    idle_seconds: float
    idle: ProcUsage
    rss_after_mb: float
    hwm_mb: float


@dataclass
class Result:
    services: int
    writer: str = "restore"  # the agent's data plane
    starts: list[Start] = field(default_factory=list)
    churn: Churn | None = None
    cold: stages.Stages | None = None
    change: stages.Stages | None = None
    raw: list[float] = field(default_factory=list)
    hot_churn: list[profile.HotSpot] = field(default_factory=list)


def populate(lab: Lab, writer: BulkWriter, services: int, per_service: int) -> list[BenchService]:
    """The probe and `services` bulk Services with `per_service` fake endpoints each, in etcd."""
    probe = BenchService("probe", VIP, PROBE_PORT, NGINX_PORT, real_endpoints(lab)[:1])
    subnets = node_subnets(lab)
    bulk = bulk_services(0, services, BULK_BASE, lambda i: fake_endpoints(i, per_service, subnets))
    t = time.monotonic()
    writer.write(kv for i, svc in enumerate([probe, *bulk]) for kv in encoded(svc, i))
    log(f"  wrote {len(bulk) + 1} Services (+ Endpoints, EndpointSlices) in {time.monotonic() - t:.1f} s")
    return bulk


def cold_start(
    lab: Lab, base: Path, prober: Prober, total: int, writer: str = "restore"
) -> tuple[TimedAgent, Start]:
    prober.arm(VIP, PROBE_PORT, "open", timeout=600)
    t0 = time.monotonic()
    agent = start_agent(lab, base, writer=writer)
    live = prober.result(timeout=660)
    if live is None:
        raise RuntimeError("the probe never connected")
    sync = agent.wait_sync_where(lambda e: e.get("frontends") == total, 600)
    snap = agent.wait_for(lambda e: e.get("event") == "etcd_snapshot", 5)
    assert agent.proc is not None
    time.sleep(1)
    rss = proc_usage(agent.proc.pid).rss_mb
    start = Start(live - t0, snap["_t"] - t0, sync["_t"] - t0, float(sync["seconds"]), rss)
    log(
        f"  cold start {start.total:.2f} s (snapshot {start.snapshot:.2f} s, sync {start.sync_seconds:.2f} s)"
    )
    return agent, start


def idle_usage(agent: TimedAgent, seconds: float) -> ProcUsage:
    assert agent.proc is not None
    before = proc_usage(agent.proc.pid)
    time.sleep(seconds)
    return proc_usage(agent.proc.pid).minus(before)


def churn(
    writer: BulkWriter, agent: TimedAgent, bulk: list[BenchService], changes: int, rate: float, idle: float
) -> Churn:
    assert agent.proc is not None
    idle_use = idle_usage(agent, idle)
    removed: dict[int, BenchService] = {}
    rng = random.Random(1)
    mark = agent.mark()
    before = proc_usage(agent.proc.pid)
    t0 = time.monotonic()
    revision = 0
    for k in range(changes):
        i = rng.randrange(len(bulk))
        svc = bulk[i]
        if i in removed:
            del removed[i]
        else:
            svc = BenchService(svc.name, svc.address, svc.port, svc.target_port, svc.endpoints[:-1])
            removed[i] = svc
        revision = writer.put(svc.slice_key, encode_protobuf(slice_object(svc)))
        pause = t0 + (k + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    agent.wait_sync_where(lambda e: int(e.get("revision", 0)) >= revision, 600, after=mark)
    seconds = time.monotonic() - t0
    usage = proc_usage(agent.proc.pid).minus(before)
    syncs = sum(1 for e in agent.events[mark:] if e.get("event") == "sync")
    time.sleep(5)
    after = proc_usage(agent.proc.pid)
    return Churn(changes, rate, seconds, usage, syncs, idle, idle_use, after.rss_mb, after.hwm_mb)


def dump(writer: BulkWriter) -> tuple[int, list[tuple[str, bytes]]]:
    prefixes = [
        "/registry/services/",
        "/registry/endpointslices/",
        "/registry/minions/",
        "/coreos.com/network/",
    ]
    answer = writer.call({"dump": prefixes}, timeout=600)
    return int(answer["revision"]), [(k, base64.b64decode(v)) for k, v in answer["kvs"]]


def replay(lab: Lab, base: Path, writer: BulkWriter, bulk: list[BenchService], result: Result) -> None:
    """Stage timings and the raw restore (`bench.stages`), on a dump of etcd as the agent saw it."""
    revision, items = dump(writer)
    one = bulk[len(bulk) // 2]
    smaller = BenchService(one.name, VIP, one.port, NGINX_PORT, one.endpoints[:-2])
    change = (one.slice_key, encode_protobuf(slice_object(smaller)))
    log("  replaying the pipeline in-process (stage timings, raw restore)")
    replay_fn = stages.replay_nft if result.writer == "nft" else stages.replay
    result.cold, result.change, result.raw = replay_fn(
        base / "flannel-lb.toml", lab.namespace(LB_HOST), items, revision, change
    )


def run(lab: Lab, base: Path, args: argparse.Namespace) -> Result:
    for pod, _, _ in pods(lab):
        start_nginx(lab, pod, base)
    writer = BulkWriter(lab, base / "bulk.log")
    prober = Prober(lab, base / "probe.log")
    result = Result(args.services, args.writer)
    agent: TimedAgent | None = None
    try:
        bulk = populate(lab, writer, args.services, args.endpoints)
        total = args.services + 1
        for _ in range(args.repeat):
            if agent is not None:
                stop_agent(agent, cleanup=True)
            agent, start = cold_start(lab, base, prober, total, args.writer)
            result.starts.append(start)
        assert agent is not None and agent.proc is not None
        prof = base / "py-spy-churn.txt"
        with contextlib.ExitStack() as stack:
            if args.profile:
                stack.enter_context(profile.recording(agent.proc.pid, prof))
            result.churn = churn(writer, agent, bulk, args.changes, args.rate, args.idle)
        if args.profile and prof.exists():
            result.hot_churn = profile.hot_spots(prof, 14)[1]
        stop_agent(agent, cleanup=True)
        agent = None
        try:
            replay(lab, base, writer, bulk, result)
        except Exception as e:  # the live figures above are still worth reporting
            log(f"  the in-process replay failed: {type(e).__name__}: {e}")
        return result
    finally:
        stop_agent(agent, cleanup=False)
        writer.close()
        prober.close()


# --- the report -----------------------------------------------------------------------------------------


def _ok(met: bool) -> str:
    return "met" if met else "**missed**"


def render_summary(r: Result) -> tuple[str, list[float]]:
    starts = [s.total for s in r.starts]
    start = median(starts)
    sync = median([s.sync_seconds for s in r.starts])
    raw = median(r.raw) if r.raw else float("nan")
    ratio_ok = _ok(sync / raw <= TARGET_APPLY_RATIO) if r.raw else "not measured"
    nft = r.writer == "nft"
    kernel_tool = "nft -f" if nft else "iptables-restore"
    children = "nft" if nft else "iptables"
    rows: list[list[object]] = [
        [
            "agent start -> all rules live (probe connects)",
            f"{start:.2f} s (runs: {', '.join(f'{x:.2f}' for x in starts)})",
            f"<= {TARGET_START:.0f} s",
            _ok(start <= TARGET_START),
        ],
        ["  start -> snapshot read and decoded", f"{median([s.snapshot for s in r.starts]):.2f} s", "", ""],
        [f"  first sync (plan, {'layout' if nft else 'rules'}, {kernel_tool})", f"{sync:.2f} s", "", ""],
        [
            f"raw {kernel_tool} of the same transaction",
            f"{raw:.2f} s ({r.cold.rules if r.cold else 0:,} {'elements' if nft else 'rules'})",
            "",
            "",
        ],
        [
            f"apply (first sync) / raw {kernel_tool}",
            f"{sync / raw:.2f}",
            f"<= {TARGET_APPLY_RATIO}",
            ratio_ok,
        ],
        ["agent RSS after the first sync", f"{median([s.rss_mb for s in r.starts]):.0f} MB", "", ""],
    ]
    c = r.churn
    if c is not None:
        per1k = 1000 / c.changes
        rows += [
            [
                f"agent RSS, steady state after {c.changes:,} changes (peak VmHWM)",
                f"{c.rss_after_mb:.0f} MB ({c.hwm_mb:.0f} MB)",
                f"<= {TARGET_RSS_MB:.0f} MB",
                _ok(c.rss_after_mb <= TARGET_RSS_MB),
            ],
            [
                f"churn CPU per 1,000 changes at {c.rate:g}/s (own + {children} children)",
                f"{(c.usage.own + c.usage.children) * per1k:.0f} s "
                f"({c.usage.own * per1k:.0f} + {c.usage.children * per1k:.0f})",
                "report",
                "",
            ],
            [
                "  syncs for those changes; CPU per sync",
                f"{c.syncs} in {c.seconds:.0f} s; {(c.usage.own + c.usage.children) / max(1, c.syncs):.2f} s",
                "",
                "",
            ],
            ["idle CPU per minute", f"{(c.idle.own + c.idle.children) * 60 / c.idle_seconds:.1f} s", "", ""],
        ]
    return report.table(["figure", "value", "target", ""], rows), starts


def render_stages(r: Result) -> str:
    if r.cold is None or r.change is None:
        return ""
    names = list(dict.fromkeys([*r.cold.seconds, *r.change.seconds]))
    rows = [
        [
            n,
            f"{r.cold.seconds[n]:.3f}" if n in r.cold.seconds else "-",
            f"{r.change.seconds[n]:.3f}" if n in r.change.seconds else "-",
        ]
        for n in names
    ]
    rows.append(
        [
            "**total** (Python part)",
            f"{r.cold.total:.3f} ({r.cold.python:.3f})",
            f"{r.change.total:.3f} ({r.change.python:.3f})",
        ]
    )
    rows.append([f"{r.cold.unit} in the transaction", f"{r.cold.rules:,}", f"{r.change.rules:,}"])
    return report.table(
        ["stage (in-process replay)", "cold: first sync (s)", "one endpoint change (s)"], rows
    )


def render_hot(title: str, hot: list[tuple[str, float, float]]) -> str:
    rows = [[f, f"{own:.3f}", f"{cum:.3f}"] for f, own, cum in hot]
    return f"{title}\n\n" + report.table(["function", "own s", "cumulative s"], rows)


def render_pyspy(hot: list[profile.HotSpot]) -> str:
    if not hot:
        return ""
    rows = [[s.function, f"{s.inclusive * 100:.0f}%", f"{s.own * 100:.0f}%"] for s in hot]
    title = "py-spy of the live agent during the churn (CPU samples, idle threads excluded):"
    return f"{title}\n\n" + report.table(["function", "inclusive", "own"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 start, 200 changes, 20 s idle window")
    p.add_argument("--services", type=int, default=10000, help="exposed Services besides the probe")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    p.add_argument("--repeat", type=int, help="cold starts (default 3)")
    p.add_argument("--changes", type=int, help="endpoint changes for memory and churn (default 1000)")
    p.add_argument("--rate", type=float, default=10.0, help="endpoint changes per second (default 10)")
    p.add_argument("--idle", type=float, help="seconds of idle CPU measurement (default 60)")
    p.add_argument("--profile", action="store_true", help="py-spy the agent during the churn")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    add_writer_option(p)
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.changes = args.changes or (200 if args.quick else 1000)
    args.idle = args.idle or (20.0 if args.quick else 60.0)
    started = report.now()
    with bench_lab("cs") as lab, workdir("cs") as base:
        result = run(lab, base, args)
    summary, _ = render_summary(result)
    parts = [summary, render_stages(result)]
    if result.cold is not None and result.change is not None:
        parts.append(
            render_hot("cProfile, cold first sync (replay), top functions by own time:", result.cold.hot)
        )
        parts.append(
            render_hot(
                "cProfile, one endpoint change (replay), top functions by own time:", result.change.hot
            )
        )
    parts.append(render_pyspy(result.hot_churn))
    text = "\n\n".join(x for x in parts if x)
    print(text)
    if not args.no_doc:
        note = (
            f"{args.services:,} Services x {args.endpoints} endpoints (+ probe); "
            f"{args.repeat} cold start(s); "
            f"{args.changes:,} changes at {args.rate:g}/s; {WRITER_NOTES[args.writer]}"
        )
        title = f"Cold start, memory and churn cost, {WRITER_LABELS[args.writer]}"
        body = report.preamble(title, started, note)
        report.update_section(writer_section("cold_start", args.writer), f"{body}\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
