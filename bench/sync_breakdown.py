"""Where a sync's time goes at 10k Services: the first sync and one endpoint change, stage by stage.

What is measured: the agent's pipeline replayed in-process on the lab's etcd contents (`bench.stages`):
decode, plan, build, diff, render and iptables-restore of the first sync and of one EndpointSlice
change, the raw iptables-restore of the cold transaction, and the Python heap after each stage.
(The fix prototypes this bench once timed against the flat layout have all landed; see
docs/benchmarks.md for the figures they gave.)

Run (as root): .venv/bin/python -m bench.sync_breakdown [--services 10000]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import report, stages
from bench.cold_start import BULK_BASE, dump, populate
from bench.common import NGINX_PORT, VIP, BulkWriter, bench_lab, log, node_subnets, workdir
from bench.objects import BenchService, fake_endpoints, slice_object
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, agent_config


def changed_slices(
    items: Sequence[tuple[str, bytes]], n: int, subnets: Sequence[tuple[str, str]]
) -> list[tuple[str, bytes]]:
    """n EndpointSlice values of different bulk Services, each with two of its 10 endpoints gone."""
    keys = [k for k, _ in items if k.startswith("/registry/endpointslices/bench/bulk-")]
    step = max(1, len(keys) // (n + 1))
    out = []
    for key in keys[step::step][:n]:
        name = key.rsplit("/", 1)[1].rsplit("-", 1)[0]
        i = int(name.split("-")[1])
        svc = BenchService(name, VIP, BULK_BASE + i, NGINX_PORT, fake_endpoints(i, 10, subnets)[:-2])
        out.append((key, encode_protobuf(slice_object(svc))))
    return out


@dataclass
class Breakdown:
    cold: stages.Stages
    change: stages.Stages
    raw: list[float]
    memory: list[tuple[str, float]]


def run(lab: Lab, base: Path, services: int) -> Breakdown:
    writer = BulkWriter(lab, base / "bulk.log")
    try:
        populate(lab, writer, services, 10)
        revision, items = dump(writer)
    finally:
        writer.close()
    config = base / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    netns = lab.namespace(LB_HOST)
    slices = changed_slices(items, 1, node_subnets(lab))
    log("  replaying the pipeline (stages)")
    cold, change, raw = stages.replay(config, netns, items, revision, slices[0])
    log("  memory (tracemalloc)")
    mem = stages.memory(config, items, revision)
    return Breakdown(cold, change, raw, mem)


def render(b: Breakdown) -> str:
    from bench.cold_start import Result, render_stages

    r = Result(0, cold=b.cold, change=b.change, raw=b.raw)
    raw_s = f"Raw iptables-restore of the cold transaction: {statistics.median(b.raw):.2f} s."
    mem = report.table(["Python heap after (tracemalloc)", "MB"], [[n, f"{mb:.0f}"] for n, mb in b.memory])
    return f"{render_stages(r)}\n\n{raw_s}\n\n{mem}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    started = report.now()
    with bench_lab("sb") as lab, workdir("sb") as base:
        breakdown = run(lab, base, args.services)
    text = render(breakdown)
    print(text)
    if not args.no_doc:
        note = f"{args.services:,} Services x 10 endpoints; iptables-nft"
        body = report.preamble("Sync breakdown", started, note)
        report.update_section("sync_breakdown", f"{body}\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
