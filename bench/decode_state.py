"""The agent's decode stage and the memory of its decoded state at scale, in-process (no root, no etcd).

N Services x E endpoints are generated the way the other benchmarks write them to etcd
(`bench.objects`: each Service with its v1 Endpoints and one EndpointSlice, protobuf with the `k8s\\0`
envelope, as kube-apiserver stores both), plus flannel's network config and one lease per node. The
values are loaded into a fresh `ClusterState` from a `Snapshot`, the way the agent applies its first
etcd read (`parts.apply_update`), and planned once. Each measurement runs in a fresh interpreter:

  load            Snapshot -> ClusterState (decode, convert, index): wall seconds, median of --repeat
                  runs, and the CPU seconds of the same runs (steadier on a shared machine)
  first plan      `compute_plan` on that state, wall (and CPU) seconds: work a lazy decode would
                  move there would show here
  retained MB     tracemalloc: what the state still holds once the snapshot is dropped, including
                  any raw values it keeps (they are allocated while tracing, as the etcd client does)
  peak MB         tracemalloc peak during the load, the snapshot's own values included
  RSS MB          the process's resident set after the load, snapshot dropped (interpreter, imports
                  and allocator slack included), and its peak (VmHWM)
  plan digest     sha256 of the plan's JSON: the same digest means the same frontends and problems

`--baseline REF` measures flannel_lb as of git REF (checked out into a temporary `git worktree`,
removed afterwards) in the same run, interleaved with the working tree, and prints the ratios.

Run: .venv/bin/python -m bench.decode_state [--services 10000] [--endpoints 10] [--repeat 3]
                                             [--baseline HEAD]
"""

from __future__ import annotations

# Only the standard library at module level: the measuring children run this file as a script with
# another tree's flannel_lb first on sys.path, and must not import this tree's packages.
import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}'


# --- the measuring child -------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(mode: str, items_path: str, address: str) -> dict[str, Any]:
    """One load in this interpreter; `mode` "time" (wall/CPU seconds, RSS) or "memory" (tracemalloc)."""
    import gc
    import hashlib
    import tracemalloc

    import flannel_lb

    try:
        from flannel_lb.plan.compute import PlanSettings, compute_plan
        from flannel_lb.state.cluster import ClusterState
    except ImportError:  # a --baseline revision from before the stage layout (2026-12-03)
        from flannel_lb.cluster import ClusterState  # type: ignore[no-redef,import-not-found]

        from flannel_lb.plan import PlanSettings, compute_plan  # type: ignore[no-redef,attr-defined]

    out: dict[str, Any] = {"flannel_lb": str(Path(flannel_lb.__file__).parent)}
    gc.collect()
    if mode == "memory":
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with open(items_path, "rb") as f:
        items: list[tuple[str, bytes]] = pickle.load(f)
    # what the agent's first snapshot does (parts.apply_update), without the etcd source's imports,
    # so that a baseline from another layout or protobuf runs the same code
    triples = [(k, v, None) for k, v in items]
    del items
    gc.collect()
    state = ClusterState()
    wall, cpu = time.perf_counter(), time.process_time()
    state.replace(iter(triples), len(triples))
    out["load"], out["load_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    out["peak_mb"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    del triples
    gc.collect()
    out["retained_mb"] = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    out["rss_mb"], out["hwm_mb"] = _status_mb("VmRSS"), _status_mb("VmHWM")
    if mode == "memory":
        tracemalloc.stop()
        return out
    wall, cpu = time.perf_counter(), time.process_time()
    plan = compute_plan(state, PlanSettings(addresses=frozenset({address})), now=time.time())
    out["plan"], out["plan_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    out["frontends"], out["problems"] = len(plan.frontends), len(plan.problems)
    doc = json.dumps(plan.to_json(), sort_keys=True, default=str).encode()
    out["digest"] = hashlib.sha256(doc).hexdigest()[:12]
    return out


# --- the parent: objects, trees, runs, the table -----------------------------------------------------


def generate(services: int, endpoints: int, nodes: int, path: Path) -> tuple[int, int]:
    """Write the snapshot's (key, value) pairs to `path`; return (keys, bytes of values)."""
    from bench.common import bulk_services
    from bench.objects import encoded, fake_endpoints
    from flannel_lb.lab import objects

    subnets = [(f"node-{n}", f"10.246.{n}") for n in range(1, nodes + 1)]
    items: list[tuple[str, bytes]] = [("/coreos.com/network/config", NETWORK)]
    for n, (_, net) in enumerate(subnets, 1):
        lease = objects.lease(f"192.168.121.{10 + n}", f"aa:00:00:00:00:{n:02x}")
        items.append((f"/coreos.com/network/subnets/{net}.0-24", lease))
    bulk = bulk_services(0, services, 20000, lambda i: fake_endpoints(i, endpoints, subnets))
    items += [kv for i, svc in enumerate(bulk) for kv in encoded(svc, i)]
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(items), sum(len(v) for _, v in items)


def run_child(tree: Path, mode: str, items: Path, address: str) -> dict[str, Any]:
    """This file as a script, with `tree`'s flannel_lb first on the path, in a fresh interpreter
    (`-P`: this file's directory, bench/, is not put on the path)."""
    from bench.common import child_answer  # here: the child itself imports nothing of bench/

    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    argv = [sys.executable, "-P", str(HERE), "--child", mode, str(items), address]
    return child_answer(argv, env, tree, f"measuring {tree} ({mode})")


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """flannel_lb as of `ref`, checked out in a temporary git worktree (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="flb-decode-base-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False, capture_output=True)


def describe_ref(ref: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True, check=False
    )
    return f"{ref} ({proc.stdout.strip()})" if proc.returncode == 0 and proc.stdout.strip() != ref else ref


def measure(
    trees: Sequence[tuple[str, Path]], items: Path, address: str, repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """`repeat` timed runs per tree, interleaved (the order alternates), then one tracemalloc run each."""
    from bench.common import log

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(repeat):
        for name, tree in trees if r % 2 == 0 else list(reversed(trees)):
            got = run_child(tree, "time", items, address)
            runs[name].append(got)
            log(f"  {name}: load {got['load']:.2f} s (CPU {got['load_cpu']:.2f} s), plan {got['plan']:.2f} s")
    for name, tree in trees:
        got = run_child(tree, "memory", items, address)
        runs[name].append(got)
        log(f"  {name}: retained {got['retained_mb']:.1f} MB, peak {got['peak_mb']:.1f} MB")
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.common import median

    timed = [r for r in runs if "plan" in r]
    memory = next(r for r in runs if "plan" not in r)
    return {
        "load": median([r["load"] for r in timed]),
        "load_range": (min(r["load"] for r in timed), max(r["load"] for r in timed)),
        "load_cpu": median([r["load_cpu"] for r in timed]),
        "plan": median([r["plan"] for r in timed]),
        "plan_cpu": median([r["plan_cpu"] for r in timed]),
        "retained_mb": memory["retained_mb"],
        "peak_mb": memory["peak_mb"],
        "rss_mb": median([r["rss_mb"] for r in timed]),
        "hwm_mb": median([r["hwm_mb"] for r in timed]),
        "frontends": timed[0]["frontends"],
        "problems": timed[0]["problems"],
        "digests": sorted({r["digest"] for r in timed}),
    }


def render(summaries: dict[str, dict[str, Any]], repeat: int) -> str:
    from bench.report import table

    headers = [
        "flannel_lb",
        f"load s (median of {repeat}; range)",
        "load CPU s",
        "first plan s (CPU)",
        "retained MB",
        "peak MB",
        "RSS MB (peak)",
        "frontends / problems",
        "plan digest",
    ]
    rows: list[list[object]] = []
    for name, s in summaries.items():
        lo, hi = s["load_range"]
        rows.append(
            [
                name,
                f"{s['load']:.2f} ({lo:.2f}-{hi:.2f})",
                f"{s['load_cpu']:.2f}",
                f"{s['plan']:.2f} ({s['plan_cpu']:.2f})",
                f"{s['retained_mb']:.1f}",
                f"{s['peak_mb']:.1f}",
                f"{s['rss_mb']:.0f} ({s['hwm_mb']:.0f})",
                f"{s['frontends']:,} / {s['problems']:,}",
                ", ".join(s["digests"]),
            ]
        )
    if len(summaries) == 2:
        (_, base), (_, new) = summaries.items()
        rows.append(
            [
                "**ratio** (working tree / baseline)",
                f"{new['load'] / base['load']:.2f}",
                f"{new['load_cpu'] / base['load_cpu']:.2f}",
                f"{new['plan'] / base['plan']:.2f} ({new['plan_cpu'] / base['plan_cpu']:.2f})",
                f"{new['retained_mb'] / base['retained_mb']:.2f}",
                f"{new['peak_mb'] / base['peak_mb']:.2f}",
                f"{new['rss_mb'] / base['rss_mb']:.2f}",
                "same"
                if (base["frontends"], base["problems"]) == (new["frontends"], new["problems"])
                else "DIFFER",
                "same plan" if base["digests"] == new["digests"] else "plans DIFFER",
            ]
        )
    return table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    parser.add_argument(
        "--nodes", type=int, default=8, help="nodes (flannel leases) the endpoints spread over"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed loads per tree (fresh interpreter each)")
    parser.add_argument("--baseline", metavar="REF", help="also measure flannel_lb as of this git ref")
    args = parser.parse_args(argv)

    from bench.common import VIP, log, machine

    with tempfile.TemporaryDirectory(prefix="flb-decode-state-") as tmp:
        items = Path(tmp) / "items.pickle"
        started = time.monotonic()
        keys, size = generate(args.services, args.endpoints, args.nodes, items)
        log(
            f"{args.services:,} Services x {args.endpoints} endpoints: {keys:,} keys, "
            f"{size / 1e6:.1f} MB of values, generated in {time.monotonic() - started:.1f} s"
        )
        baseline = contextlib.nullcontext() if args.baseline is None else worktree(args.baseline)
        with baseline as base:
            trees = [("working tree", ROOT)]
            if base is not None:
                trees.insert(0, (f"baseline {describe_ref(args.baseline)}", base))
            runs = measure(trees, items, VIP, args.repeat)
    summaries = {name: summarise(r) for name, r in runs.items()}
    m = machine()
    print()
    print(
        f"decode_state: {args.services:,} Services x {args.endpoints} endpoints (Services, Endpoints and "
        f"EndpointSlices, protobuf; {keys:,} keys, {size / 1e6:.1f} MB); {m['cpu']}, Python {m['python']}; "
        f"load average at the end {m['load']}"
    )
    print(render(summaries, args.repeat))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4])))
        sys.exit(0)
    sys.exit(main())
