"""The agent's pipeline replayed in-process, stage by stage, on the lab's real etcd contents.

The live agent only logs a sync's total `seconds`. To say where that time goes, this module runs the
same code the agent runs (`ClusterState.replace/put`, `Planner.plan`, `build_ruleset`,
`compute_changes`, `render_changes`, `restore.apply` into the LB's namespace) on a dump of the lab's
etcd, timing each stage, and profiles the Python stages with cProfile. Two scenarios:

  cold    the first sync: decode the whole snapshot, plan everything, build and render every
          chain, read back the (empty) kernel as adopt mode does, one iptables-restore
  change  one EndpointSlice loses an endpoint afterwards: decode one value, re-plan one Service,
          build the rule set, diff against the last one, render, iptables-restore (partial sync)

`replay_nft` does the same for the nftables writer (`writer = "nft"`): the agent's `NftWriter`, its
two kernel calls (`nft -j list table`, `nft -f`) timed apart from its Python part (layout, diff, text).
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from flannel_lb import config as config_mod
from flannel_lb import parts
from flannel_lb.dataplane.iptables.changes import NFT_LEAF_BLOCK, compute_changes
from flannel_lb.dataplane.iptables.render import render_changes
from flannel_lb.dataplane.iptables.restore import apply, cleanup, read_owned
from flannel_lb.dataplane.iptables.rules import RuleBuilder, RuleSet, build_ruleset
from flannel_lb.dataplane.nftables.writer import KernelTable, NftWriter
from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.plane import dataplane_options
from flannel_lb.dataplane.tools import Tools, make_tools
from flannel_lb.kernel.netns import run
from flannel_lb.plan.model import Plan
from flannel_lb.plan.planner import Planner
from flannel_lb.state.cluster import ClusterState

T = TypeVar("T")
KERNEL_STAGES = ("kernel read", "iptables-restore", "nft -f")  # not Python: left out of `python`


@dataclass
class Stages:
    """Seconds per stage, in pipeline order, and the top functions of the Python stages."""

    seconds: dict[str, float] = field(default_factory=dict)
    hot: list[tuple[str, float, float]] = field(default_factory=list)  # (function, own s, cumulative s)
    rules: int = 0  # restore lines ("-A ..." rules) in the transaction; map elements with nft
    text: str = ""
    unit: str = "rules (-A lines)"  # what `rules` counts

    @property
    def python(self) -> float:
        return sum(v for k, v in self.seconds.items() if k not in KERNEL_STAGES)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class _Timer:
    def __init__(self, stages: Stages, profiler: cProfile.Profile | None) -> None:
        self.stages = stages
        self.profiler = profiler

    def __call__(self, name: str, fn: Callable[[], T], *, python: bool = True) -> T:
        prof = self.profiler if python else None
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            return fn()
        finally:
            if prof is not None:
                prof.disable()
            self.stages.seconds[name] = self.stages.seconds.get(name, 0.0) + time.perf_counter() - t


def _top(profiler: cProfile.Profile, n: int = 12) -> list[tuple[str, float, float]]:
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, name), (_, _, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = path.split("/flannel_lb/")[-1] if "/flannel_lb/" in path else path.rsplit("/", 1)[-1]
        rows.append((f"{name} ({short}:{line})", own, cum))
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows[:n]


@dataclass
class Pipeline:
    """The agent's objects for one config, driven by hand."""

    cfg: config_mod.Config
    tools: Tools
    profiled: bool = False
    state: ClusterState = field(init=False)
    planner: Planner = field(init=False)
    current: RuleSet | None = None
    builder: RuleBuilder = field(init=False)

    def __post_init__(self) -> None:
        self.state = parts.new_state(self.cfg)
        self.planner = Planner(self.state, parts.plan_settings(self.cfg))
        self.builder = RuleBuilder()  # as the agent's IptablesPlane: kept across syncs

    def _build(self, plan: Plan) -> RuleSet:
        return self.builder.build(plan, dataplane_options(self.cfg, self.state.network_config))

    def cold(self, items: Sequence[tuple[str, bytes]], revision: int) -> Stages:
        out = Stages()
        prof = cProfile.Profile() if self.profiled else None
        timed = _Timer(out, prof)
        timed("decode snapshot", lambda: self.state.replace(((k, v, None) for k, v in items), revision))
        plan = timed("plan", lambda: self.planner.plan(None))
        desired = timed("build_ruleset", lambda: self._build(plan))
        prefix = self.cfg.dataplane.chain_prefix
        kernel = timed("kernel read", lambda: read_owned(self.tools, prefix), python=False)
        changes = timed("compute_changes", lambda: compute_changes(desired, kernel))
        text = timed("render", lambda: render_changes(changes, self.leaf_block))
        timed("iptables-restore", lambda: apply(text, self.tools), python=False)
        self.current = desired
        out.hot, out.text = (_top(prof) if prof else []), text
        out.rules = text.count("\n-A ")
        return out

    @property
    def leaf_block(self) -> int | None:
        """As the agent's RestoreWriter: iptables-nft stages frontend chains (`changes.transactions`)."""
        return NFT_LEAF_BLOCK if self.tools.backend == "nft" else None

    def change(self, key: str, value: bytes) -> Stages:
        out = Stages()
        prof = cProfile.Profile() if self.profiled else None
        timed = _Timer(out, prof)
        change = timed("decode value", lambda: self.state.put(key, value))
        plan = timed("plan", lambda: self.planner.plan(change))
        desired = timed("build_ruleset", lambda: self._build(plan))
        changes = timed("compute_changes", lambda: compute_changes(desired, self.current))
        text = timed("render", lambda: render_changes(changes, self.leaf_block))
        timed("iptables-restore", lambda: apply(text, self.tools), python=False)
        self.current = desired
        out.hot, out.text = (_top(prof) if prof else []), text
        out.rules = text.count("\n-A ")
        return out


class _Replayable(Protocol):
    def cold(self, items: Sequence[tuple[str, bytes]], revision: int) -> Stages: ...
    def change(self, key: str, value: bytes) -> Stages: ...


def _replay(
    new_pipeline: Callable[[bool], _Replayable],
    remove: Callable[[], object],
    load_raw: Callable[[str], None],
    items: Sequence[tuple[str, bytes]],
    revision: int,
    change: tuple[str, bytes],
) -> tuple[Stages, Stages, list[float]]:
    """Both replays: timings without the profiler (cProfile slows Python code 2-3x), then the profile,
    then the cold text loaded raw three times; `remove` empties the kernel before each and at the end."""
    try:
        remove()
        pipe = new_pipeline(False)
        cold = pipe.cold(items, revision)
        one = pipe.change(*change)
        remove()
        pipe = new_pipeline(True)
        cold.hot = pipe.cold(items, revision).hot
        one.hot = pipe.change(*change).hot
        raw = []
        for _ in range(3):
            remove()
            t = time.perf_counter()
            load_raw(cold.text)
            raw.append(time.perf_counter() - t)
        return cold, one, raw
    finally:
        remove()


def replay(
    config: Path,
    netns: str,
    items: Sequence[tuple[str, bytes]],
    revision: int,
    change: tuple[str, bytes],
    backend: str = "auto",
) -> tuple[Stages, Stages, list[float]]:
    """(cold, change, raw restore seconds x3): the kernel's owned chains are removed before and after.

    Raw restore: the cold transaction's exact text fed to iptables-restore again, into a kernel without
    flannel-lb's chains, three times: what the restore alone costs, without any Python around it.
    """
    cfg = config_mod.load(config)
    tools = make_tools(backend, netns)
    return _replay(
        lambda profiled: Pipeline(cfg, tools, profiled=profiled),
        lambda: cleanup(tools, cfg.dataplane.chain_prefix),
        lambda text: apply(text, tools),
        items,
        revision,
        change,
    )


class _TimedNftWriter(NftWriter):
    """The agent's nftables writer, with its kernel calls timed apart and kept out of the profile."""

    def __init__(self, options: Options, netns: str) -> None:
        super().__init__(options, netns=netns)
        self.profiler: cProfile.Profile | None = None
        self.kernel: dict[str, float] = {}

    @contextlib.contextmanager
    def _kernel_call(self, name: str) -> Iterator[None]:
        if self.profiler is not None:
            self.profiler.disable()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.kernel[name] = self.kernel.get(name, 0.0) + time.perf_counter() - t
            if self.profiler is not None:
                self.profiler.enable()

    def read_kernel(self) -> KernelTable | None:
        with self._kernel_call("kernel read"):
            return super().read_kernel()

    def _apply(self, text: str) -> None:
        with self._kernel_call("nft -f"):
            super()._apply(text)


NFT_PYTHON = "nft layout, diff, text"


@dataclass
class NftPipeline:
    """Like `Pipeline`, with the nftables writer: the first sync adopts (reads the kernel, finds no
    table, sends the whole table), a change is a partial sync (element deletes and adds)."""

    cfg: config_mod.Config
    netns: str
    profiled: bool = False
    state: ClusterState = field(init=False)
    planner: Planner = field(init=False)
    writer: _TimedNftWriter = field(init=False)

    def __post_init__(self) -> None:
        self.state = parts.new_state(self.cfg)
        self.planner = Planner(self.state, parts.plan_settings(self.cfg))
        self.writer = _TimedNftWriter(dataplane_options(self.cfg), self.netns)

    def _sync(self, out: Stages, timed: _Timer, plan: Plan) -> None:
        self.writer.profiler, self.writer.kernel = timed.profiler, {}
        result = timed(NFT_PYTHON, lambda: self.writer.sync(plan))
        out.seconds[NFT_PYTHON] -= sum(self.writer.kernel.values())
        out.seconds.update(self.writer.kernel)
        out.text = result.text
        out.rules = sum(v for k, v in result.counts.items() if k.startswith("elements_"))
        out.unit = "map elements added or deleted"

    def cold(self, items: Sequence[tuple[str, bytes]], revision: int) -> Stages:
        out = Stages()
        prof = cProfile.Profile() if self.profiled else None
        timed = _Timer(out, prof)
        timed("decode snapshot", lambda: self.state.replace(((k, v, None) for k, v in items), revision))
        plan = timed("plan", lambda: self.planner.plan(None))
        self._sync(out, timed, plan)
        out.hot = _top(prof) if prof else []
        return out

    def change(self, key: str, value: bytes) -> Stages:
        out = Stages()
        prof = cProfile.Profile() if self.profiled else None
        timed = _Timer(out, prof)
        change = timed("decode value", lambda: self.state.put(key, value))
        plan = timed("plan", lambda: self.planner.plan(change))
        self._sync(out, timed, plan)
        out.hot = _top(prof) if prof else []
        return out


def replay_nft(
    config: Path,
    netns: str,
    items: Sequence[tuple[str, bytes]],
    revision: int,
    change: tuple[str, bytes],
) -> tuple[Stages, Stages, list[float]]:
    """`replay` for `writer = "nft"`: (cold, change, raw `nft -f` seconds x3).

    Raw: the cold transaction's exact text (`table ip flb`, `delete table`, the whole table) fed to
    `nft -f` again, into a namespace without the table, three times.
    """
    cfg = config_mod.load(config)
    remover = NftWriter(dataplane_options(cfg), netns=netns)

    def load_raw(text: str) -> None:
        proc = run(["nft", "-f", "-"], netns, input=text, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"raw nft -f failed: {proc.stderr.strip()[:500]}")

    return _replay(
        lambda profiled: NftPipeline(cfg, netns, profiled=profiled),
        remover.cleanup,
        load_raw,
        items,
        revision,
        change,
    )


def describe(stages: Stages) -> dict[str, Any]:
    return {k: round(v, 3) for k, v in stages.seconds.items()}


def memory(config: Path, items: Sequence[tuple[str, bytes]], revision: int) -> list[tuple[str, float]]:
    """Python heap (tracemalloc, MB) held after each stage of a cold sync, kernel stages left out.

    What stays allocated is what the agent keeps between syncs: the decoded cluster state, the
    planner's per-Service plans, the desired RuleSet (kept by the writer as its memory of the
    kernel), and, during a sync, the restore text.
    """
    import gc
    import tracemalloc

    cfg = config_mod.load(config)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out: list[tuple[str, float]] = []

        def mark(name: str) -> None:
            gc.collect()
            out.append((name, (tracemalloc.get_traced_memory()[0] - base) / 2**20))

        state = parts.new_state(cfg)
        state.replace(((k, v, None) for k, v in items), revision)
        mark("cluster state (decoded snapshot)")
        planner = Planner(state, parts.plan_settings(cfg))
        plan = planner.plan(None)
        mark("+ planner's per-Service plans and the Plan")
        desired = build_ruleset(plan, dataplane_options(cfg))
        mark("+ desired RuleSet (the writer keeps it)")
        text = render_changes(compute_changes(desired, None))
        mark("+ restore text (during a sync)")
        out.append(("peak during these stages", (tracemalloc.get_traced_memory()[1] - base) / 2**20))
        del text, desired, plan, planner, state
        return out
    finally:
        tracemalloc.stop()
