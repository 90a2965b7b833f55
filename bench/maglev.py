"""What `[dataplane] balance = "maglev"` costs and moves, next to "random" (docs/ha.md).

Kernel side, in a scratch network namespace, with the real nftables writer: the wall time of the first
(full) sync of S Services x E endpoints (render + `nft -f`), the map elements it loads, and one endpoint
removed from one Service (a partial sync: its element adds/deletes and time).

Pure side (no kernel): for N backends in a table of `maglev.table_size(N)` slots, the share of the
slots that moves when one backend is removed, as a multiple of that backend's own share (1.0 = only
its flows move; `hash mod N` would be about N - 1).

Run (as root): .venv/bin/python -m bench.maglev [--services 1000] [--endpoints 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Literal

from flannel_lb.dataplane import maglev
from flannel_lb.dataplane.nftables.writer import NftWriter
from flannel_lb.dataplane.options import Options
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.plan.model import Backend, Frontend, Plan


def make_plan(services: int, endpoints: int, drop_first: bool = False) -> Plan:
    frontends = []
    for s in range(services):
        addr, port = f"192.168.{100 + s // 62500}.{1 + (s // 250) % 250}", 1000 + s % 250
        pods = [Backend(f"10.{244 + e // 250}.{e % 250}.{2 + s % 250}", 8080) for e in range(endpoints)]
        if drop_first and s == 0:
            pods = pods[1:]
        frontends.append(Frontend(addr, port, "TCP", f"default/svc-{s}", "http", backends=tuple(pods)))
    return Plan(revision=1, frontends=tuple(frontends))


def kernel_side(services: int, endpoints: int, balance: Literal["random", "maglev"]) -> dict[str, float]:
    with Namespaces(unique_prefix("mg")) as ns:
        ns.add("lb")
        w = NftWriter(Options(balance=balance), netns=ns.name("lb"))
        start = time.perf_counter()
        first = w.sync(make_plan(services, endpoints))
        full = time.perf_counter() - start
        w.forget()  # the next sync replaces the table (with `plan`'s own Frontend objects)
        # As the planner does: unchanged Services keep their Frontend objects, so the layout rebuilds one.
        plan = make_plan(services, endpoints)
        w.sync(plan)
        changed = make_plan(1, endpoints, drop_first=True).frontends
        plan2 = Plan(revision=2, frontends=(*changed, *plan.frontends[1:]))
        start = time.perf_counter()
        change = w.sync(plan2)
        partial = time.perf_counter() - start
        assert change.mode == "partial", change.mode
        return {
            "full_sync_s": full,
            "elements": first.counts["elements_added"],
            "partial_sync_s": partial,
            "partial_elements": change.counts.get("elements_added", 0)
            + change.counts.get("elements_deleted", 0),
        }


def disruption(n: int) -> tuple[int, float, float]:
    names = [f"10.{244 + i // 250}.{i % 250}.2:8080" for i in range(n)]
    size = maglev.table_size(n)
    order = maglev.canonical(names)
    before = [order[i] for i in maglev.populate(names, size)]
    ratios = []
    for gone in order:
        rest = [x for x in order if x != gone]
        after = [maglev.canonical(rest)[i] for i in maglev.populate(rest, size)]
        ratios.append(sum(a != b for a, b in zip(before, after, strict=True)) / (size / n))
    return size, statistics.mean(ratios), max(ratios)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=3)
    args = p.parse_args()
    print(f"kernel: {args.services} Services x {args.endpoints} endpoints, nftables writer")
    print(f"  {'balance':8} {'full sync':>10} {'elements':>9} {'1 endpoint removed':>19} {'elements':>9}")
    for balance in ("random", "maglev"):
        r = kernel_side(args.services, args.endpoints, balance)
        print(
            f"  {balance:8} {r['full_sync_s']:9.2f}s {r['elements']:9,.0f}"
            f" {r['partial_sync_s'] * 1000:17.1f}ms {r['partial_elements']:9,.0f}"
        )
    print("pure: one of N backends removed, slots moved / that backend's share (mean, max over which one)")
    for n in (2, 3, 5, 10, 20, 50, 100):
        size, mean, worst = disruption(n)
        print(f"  N={n:<4} M={size:<6} {mean:5.2f} {worst:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
