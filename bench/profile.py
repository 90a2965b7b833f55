"""Sampling profiles of the running agent with py-spy (`.venv/bin/pip install py-spy`).

`Profiler(pid, out)` attaches `py-spy record --format raw` (collapsed stacks) to the agent while a
phase runs; `hot_spots()` turns the stacks into the functions with the most samples, inclusive (on
the stack) and own (at the top of the stack), so a report can name where the time goes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@dataclass(frozen=True, slots=True)
class HotSpot:
    function: str  # "name (file:line)" as py-spy prints it, path shortened
    inclusive: float  # share of samples with the function anywhere on the stack
    own: float  # share of samples with the function at the top


@contextlib.contextmanager
def recording(pid: int, out: Path, rate: int = 200, native: bool = False) -> Iterator[Path | None]:
    """Record the process while the block runs; yields the output path (None if py-spy is missing)."""
    exe = py_spy()
    if exe is None:
        yield None
        return
    argv = [exe, "record", "-p", str(pid), "-r", str(rate), "--format", "raw", "-o", str(out)]
    argv.append("--nonblocking")  # never pause the agent
    if native:
        argv.append("--native")
    log = out.with_suffix(".log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _short(frame: str, with_line: bool) -> str:
    """`name (path:line)` -> `name (flannel_lb/x.py[:line])`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/flannel_lb/", "/site-packages/", "/lib/python3"):
        if marker in where:
            where = where[where.index(marker) + 1 :]
            break
    if not with_line:
        where = where.rsplit(":", 1)[0]
    return f"{name} ({where})" if where else name


def _stacks(collapsed: Path) -> Iterator[tuple[list[str], int]]:
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def hot_spots(collapsed: Path, top: int = 15, by_line: bool = False) -> tuple[int, list[HotSpot]]:
    """(total samples, the `top` flannel-lb functions (or others with >= 2% own) by inclusive samples)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for stack, n in _stacks(collapsed):
        total += n
        frames = [_short(f, by_line) for f in stack]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    if not total:
        return 0, []
    spots = [HotSpot(f, n / total, own[f] / total) for f, n in inclusive.most_common()]
    boring = ("<module>", "main (", "cmd_run", "Agent.run", "Agent.step", "_run_module", "_run_code")
    interesting = [
        s
        for s in spots
        if ("flannel_lb/" in s.function or s.own >= 0.02) and not s.function.startswith(boring)
    ]
    return total, interesting[:top]


def own_spots(collapsed: Path, top: int = 10) -> list[HotSpot]:
    """The functions with the most samples at the top of the stack (where the CPU actually is)."""
    total, _ = hot_spots(collapsed, 1)
    own: Counter[str] = Counter()
    for stack, n in _stacks(collapsed):
        own[_short(stack[-1], False)] += n
    return [HotSpot(f, 0.0, n / total) for f, n in own.most_common(top)] if total else []
