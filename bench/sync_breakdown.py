"""Where a sync's time goes at 10k Services, and what the proposed fixes would save (prototypes).

What is measured: the agent's pipeline replayed in-process on the lab's etcd contents (`bench.stages`):
the stages of the first sync and of one endpoint change, then prototypes of proposed fixes,
each timed against the current code on the same data, in the same run, median of `--repeat`:

  positional dispatch edits  the partial sync's restore text with FLB-SERVICES edited in place
                             (`-R/-I/-D FLB-SERVICES <n>`, computed from the writer's last RuleSet)
                             instead of re-declared and refilled; both texts are applied to the LB's
                             kernel (iptables-restore --noflush) and timed
  memoised frontend chains   `build_ruleset` with `usable_backends`/`_frontend_chains`/
                             `frontend_problem` cached per (immutable) Frontend, as an incremental
                             builder would do, after one Service changed
  cached quote()             `render_changes` with `savefile.quote` memoised (tokens repeat a lot)
  Endpoints skipped          decoding the snapshot without the v1 Endpoints objects (they are only
                             a fallback for Services without EndpointSlices)
  native nftables            the same plan as an nftables table with a verdict map and one global
                             endpoint map (`bench.nftproto`): `nft -f` of the whole table, and of
                             one changed frontend's map elements (kernel side only: `ip netns exec
                             nft -f` per transaction; rendering the text is not timed)

The prototypes patch module attributes inside this process only; nothing in flannel_lb/ is edited.

Run: sudo .venv/bin/python -m bench.sync_breakdown [--services 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import difflib
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import nftproto, report, stages
from bench.cold_start import BULK_BASE, dump, populate
from bench.common import NGINX_PORT, VIP, BulkWriter, bench_lab, log, node_subnets, workdir
from bench.objects import BenchService, fake_endpoints, slice_object
from flannel_lb import wiring
from flannel_lb.agent import dataplane_options
from flannel_lb.cluster import Change
from flannel_lb.dataplane import render as render_mod
from flannel_lb.dataplane import rules as rules_mod
from flannel_lb.dataplane import savefile
from flannel_lb.dataplane.changes import Changes, compute_changes
from flannel_lb.dataplane.render import render_changes, rule_line
from flannel_lb.dataplane.restore import apply, cleanup, read_owned
from flannel_lb.dataplane.rules import RuleSet, build_ruleset
from flannel_lb.dataplane.tools import Tools, make_tools
from flannel_lb.dataplane.tools import run as run_tool
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, agent_config


@dataclass(frozen=True, slots=True)
class WhatIf:
    name: str
    now: float  # seconds, current code
    proposed: float  # seconds, prototype
    detail: str = ""


# --- prototypes -------------------------------------------------------------------------------------------


def positional_text(changes: Changes, old: RuleSet) -> str:
    """`render_changes`, except that dispatch chains present in `old` are edited rule by rule."""
    out: list[str] = []
    for table in changes.tables():
        write = [c for c in changes.write if c.table == table]
        fresh = [c for c in write if not (c.role == "dispatch" and old.get(c.table, c.name))]
        edited = [c for c in write if c not in fresh]
        delete = [name for t, name in changes.delete if t == table]
        out.append(f"*{table}")
        out += [f":{c.name} - [0:0]" for c in fresh]
        out += [f":{name} - [0:0]" for name in delete]
        for c in fresh:
            out += [rule_line("-A", c.name, r) for r in c.rules]
        for c in edited:
            before = old.get(c.table, c.name)
            assert before is not None
            out += _edits(c.name, list(before.rules), list(c.rules))
        out += [rule_line("-D", j.chain, j.rule) for j in changes.del_jumps if j.table == table]
        out += [rule_line("-I", j.chain, j.rule, "1") for j in changes.add_jumps if j.table == table]
        out += [f"-X {name}" for name in delete]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _edits(chain: str, old: list[Any], new: list[Any]) -> list[str]:
    """-R/-D/-I lines turning `old` into `new`, last position first so earlier positions stay valid."""
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    lines: list[str] = []
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag == "equal":
            continue
        if tag == "replace" and i2 - i1 == j2 - j1:
            lines += [rule_line("-R", chain, new[j1 + k], str(i1 + k + 1)) for k in range(i2 - i1)]
            continue
        lines += [f"-D {chain} {i + 1}" for i in reversed(range(i1, i2))]
        lines += [rule_line("-I", chain, new[j1 + k], str(i1 + k + 1)) for k in range(j2 - j1)]
    return lines


@contextmanager
def memoised_rules() -> Iterator[None]:
    """Cache the per-frontend work of build_ruleset on the (frozen, hashable) Frontend."""
    saved = (rules_mod._frontend_chains, rules_mod.usable_backends, rules_mod.frontend_problem)
    chains_cache: dict[Any, list[Any]] = {}

    def chains(f: Any, backends: Sequence[Any], opts: Any, names: Any) -> list[Any]:
        key = (f, tuple(backends), opts, names)
        hit = chains_cache.get(key)
        if hit is None:
            hit = chains_cache[key] = saved[0](f, backends, opts, names)
        return hit

    problem = functools.lru_cache(maxsize=None)(rules_mod.frontend_problem)
    backends_cache: dict[Any, tuple[list[Any], list[tuple[str, str]]]] = {}

    def usable_backends(f: Any, skipped: list[tuple[str, str]]) -> list[Any]:
        hit = backends_cache.get(f)
        if hit is None:
            extra: list[tuple[str, str]] = []
            hit = backends_cache[f] = (saved[1](f, extra), extra)
        skipped += hit[1]
        return hit[0]

    rules_mod._frontend_chains = chains
    rules_mod.usable_backends = usable_backends
    rules_mod.frontend_problem = problem
    try:
        yield
    finally:
        rules_mod._frontend_chains, rules_mod.usable_backends, rules_mod.frontend_problem = saved


@contextmanager
def cached_quote() -> Iterator[None]:
    saved = savefile.quote  # render.py calls it by the name it imported
    setattr(render_mod, "quote", functools.lru_cache(maxsize=1 << 16)(saved))  # noqa: B010
    try:
        yield
    finally:
        setattr(render_mod, "quote", saved)  # noqa: B010


# --- measurements -----------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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


def what_ifs(
    config: Path,
    tools: Tools,
    items: list[tuple[str, bytes]],
    revision: int,
    slices: list[tuple[str, bytes]],
) -> list[WhatIf]:
    from flannel_lb import config as config_mod

    cfg = config_mod.load(config)
    prefix = cfg.dataplane.chain_prefix
    opts = dataplane_options(cfg)
    cleanup(tools, prefix)
    pipe = stages.Pipeline(cfg, tools)
    cold_restore = pipe.cold(items, revision).seconds["iptables-restore"]
    full_plan = pipe.planner.plan(Change(set()))
    nft_cold = timed(lambda: nft(tools, nftproto.full_ruleset(full_plan, opts.mark)))
    nft_chains = nftproto.count_chains(full_plan)
    before = {f.key: f for f in full_plan.frontends}
    nft_change: list[float] = []
    now_restore, pos_restore, now_build, memo_build, now_render, quote_render = [], [], [], [], [], []
    verified = False
    for key, value in slices:
        old = pipe.current
        assert old is not None
        change = pipe.state.put(key, value)
        plan = pipe.planner.plan(change)
        now_build.append(timed(lambda: build_ruleset(plan, opts)))  # noqa: B023
        with memoised_rules():
            build_ruleset(plan, opts)  # fills the cache (in the agent: the previous syncs did)
            memo_build.append(timed(lambda: build_ruleset(plan, opts)))  # noqa: B023
        desired = build_ruleset(plan, opts)
        changes = compute_changes(desired, old)
        text = render_changes(changes)
        now_render.append(timed(lambda: render_changes(changes)))  # noqa: B023
        with cached_quote():
            render_changes(changes)
            quote_render.append(timed(lambda: render_changes(changes)))  # noqa: B023
        pos = positional_text(changes, old)
        pos_restore.append(timed(lambda: apply(pos, tools)))  # noqa: B023  kernel: old -> desired
        if not verified:  # the positional text must leave exactly the desired chains
            drift = compute_changes(desired, read_owned(tools, prefix))
            if not drift.empty:
                raise RuntimeError(
                    f"positional edits left the kernel off the desired rules: {drift.summary()}"
                )
            verified = True
        now_restore.append(timed(lambda: apply(text, tools)))  # noqa: B023  idempotent on desired
        ref = "bench/" + key.rsplit("/", 1)[1].rsplit("-", 1)[0]
        fe = next(f for f in plan.frontends if f.service == ref)
        delta = nftproto.change(before[fe.key], fe, opts.mark, nft_chains)
        nft_change.append(timed(lambda: nft(tools, delta)))  # noqa: B023
        before[fe.key] = fe
        pipe.current = desired
    nft(tools, nftproto.delete_table())
    state = wiring.new_state(cfg)
    all_decode = timed(lambda: state.replace(((k, v, None) for k, v in items), revision))
    state = wiring.new_state(cfg)
    no_ep = [(k, v) for k, v in items if not k.startswith("/registry/services/endpoints/")]
    slim_decode = timed(lambda: state.replace(((k, v, None) for k, v in no_ep), revision))
    cleanup(tools, prefix)
    med = statistics.median
    return [
        WhatIf(
            "one change: iptables-restore",
            med(now_restore),
            med(pos_restore),
            "positional -R/-I/-D edits, result checked",
        ),
        WhatIf("one change: build_ruleset", med(now_build), med(memo_build), "memoised per Frontend"),
        WhatIf("one change: render_changes", med(now_render), med(quote_render), "memoised quote()"),
        WhatIf("cold: decode snapshot", all_decode, slim_decode, "v1 Endpoints objects not decoded"),
        WhatIf("cold: kernel load (restore)", cold_restore, nft_cold, "native nftables, `nft -f` (nftproto)"),
        WhatIf(
            "one change: kernel update",
            med(now_restore),
            med(nft_change),
            "native nftables, element deletes/adds",
        ),
    ]


def nft(tools: Tools, text: str) -> None:
    """`nft -f -` in the LB's namespace."""
    proc = run_tool(tools.wrap(["nft", "-f", "-"]), input=text, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"nft -f failed: {proc.stderr.strip()[:500]}")


@dataclass
class Breakdown:
    cold: stages.Stages
    change: stages.Stages
    raw: list[float]
    ifs: list[WhatIf]
    memory: list[tuple[str, float]]


def run(lab: Lab, base: Path, services: int, repeat: int) -> Breakdown:
    writer = BulkWriter(lab, base / "bulk.log")
    try:
        populate(lab, writer, services, 10)
        revision, items = dump(writer)
    finally:
        writer.close()
    config = base / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url))
    netns = lab.namespace(LB_HOST)
    slices = changed_slices(items, repeat + 1, node_subnets(lab))
    log("  replaying the pipeline (stages)")
    cold, change, raw = stages.replay(config, netns, items, revision, slices[0])
    log("  prototypes")
    ifs = what_ifs(config, make_tools("auto", netns), items, revision, slices[1:])
    log("  memory (tracemalloc)")
    mem = stages.memory(config, items, revision)
    return Breakdown(cold, change, raw, ifs, mem)


def render(b: Breakdown) -> str:
    from bench.cold_start import Result, render_stages

    r = Result(0, cold=b.cold, change=b.change, raw=b.raw)
    rows = [
        [w.name, f"{w.now:.3f}", f"{w.proposed:.3f}", f"{w.now / w.proposed:.1f}x", w.detail] for w in b.ifs
    ]
    what = report.table(["what", "current code (s)", "prototype (s)", "faster", "prototype"], rows)
    raw_s = f"Raw iptables-restore of the cold transaction: {statistics.median(b.raw):.2f} s."
    mem = report.table(["Python heap after (tracemalloc)", "MB"], [[n, f"{mb:.0f}"] for n, mb in b.memory])
    return f"{render_stages(r)}\n\n{raw_s}\n\n{what}\n\n{mem}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=5, help="changes timed per prototype (median)")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    started = report.now()
    with bench_lab("sb") as lab, workdir("sb") as base:
        breakdown = run(lab, base, args.services, args.repeat)
    text = render(breakdown)
    print(text)
    if not args.no_doc:
        note = f"{args.services:,} Services x 10 endpoints; iptables-nft; {args.repeat} changes timed"
        body = report.preamble("Sync breakdown and fix prototypes", started, note)
        report.update_section("sync_breakdown", f"{body}\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
