"""Programming a RuleSet with iptables-restore --noflush: one run per sync, in which what traffic sees
changes in one atomic step (with iptables-nft, new frontend chains go in first: `changes.transactions`).

Also the kernel-facing helpers both writers use: reading the owned chains back (adoption at start-up),
diffing them against a RuleSet, and removing everything flannel-lb owns.
"""

from __future__ import annotations

import difflib
import re

from flannel_lb.dataplane.generation import GenerationError, read_generation
from flannel_lb.dataplane.iptables.changes import NFT_LEAF_BLOCK, Changes
from flannel_lb.dataplane.iptables.render import render, render_changes
from flannel_lb.dataplane.iptables.rules import FILTER, TABLES, RuleSet, settle_forward
from flannel_lb.dataplane.iptables.savefile import parse_save, source_range_drops, spell
from flannel_lb.dataplane.iptables.sync_state import SyncState
from flannel_lb.dataplane.tools import Tools, make_tools

_ERROR_LINE = re.compile(r"line:? (\d+)")
_QUOTED_NAME = re.compile(r"['`]([^'`\s]+)'")

__all__ = [
    "RestoreError",
    "RestoreWriter",
    "apply",
    "cleanup",
    "diff",
    "diff_rulesets",
    "read_owned",
    "render",
    "render_changes",
]


class RestoreError(RuntimeError):
    """iptables-restore rejected a transaction; nothing of it was applied."""

    def __init__(self, message: str, *, stderr: str, line_no: int | None, line: str) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.line_no = line_no
        self.line = line


def apply(text: str, tools: Tools) -> None:
    """Apply restore text atomically; on failure raise RestoreError naming the offending line."""
    if not text:
        return
    proc = tools.run(tools.restore_argv(), input=text)
    if proc.returncode == 0:
        return
    stderr = proc.stderr.strip()
    line_no = _offending_line(text, stderr)
    line = text.splitlines()[line_no - 1] if line_no else ""
    where = f" at line {line_no}: {line}" if line else ""
    raise RestoreError(
        f"{tools.binary('-restore')} failed (exit {proc.returncode}){where}: {stderr}",
        stderr=stderr,
        line_no=line_no,
        line=line,
    )


def _offending_line(text: str, stderr: str) -> int | None:
    """The 1-based line iptables blames. iptables-nft resolves jump targets at COMMIT and blames that
    line (`Chain 'X' does not exist`): then the first line using the named chain is the culprit."""
    lines = text.splitlines()
    m = _ERROR_LINE.search(stderr)
    line_no = int(m.group(1)) if m and 0 < int(m.group(1)) <= len(lines) else None
    named = _QUOTED_NAME.search(stderr)
    if named and (line_no is None or lines[line_no - 1] == "COMMIT"):
        name = named.group(1)
        for i, ln in enumerate(lines, 1):
            if f"-j {name}" in ln or f"-g {name}" in ln:
                return i
    return line_no


def read_owned(tools: Tools, prefix: str) -> RuleSet:
    """The kernel's chains named `prefix*` (nat, filter) and the builtin-chain jumps to them."""
    return parse_save("".join(tools.output(tools.save_argv(t)) for t in TABLES), prefix)


def read_source_range_drops(tools: Tools, prefix: str) -> dict[tuple[str, int, str], int]:
    """Packets dropped per restricted frontend (`savefile.source_range_drops`): the filter table only."""
    return source_range_drops(tools.output(tools.save_argv(FILTER, counters=True), timeout=10), prefix)


def diff(desired: RuleSet, tools: Tools) -> str:
    """A unified diff from the kernel's owned chains to `desired`, newline-terminated ("" when they match)."""
    return diff_rulesets(read_owned(tools, desired.prefix), desired)


def diff_rulesets(current: RuleSet, desired: RuleSet) -> str:
    """A unified diff from `current` (the kernel's owned chains) to `desired` ("" when they match),
    the FORWARD jump settled against `current` as a sync would settle it."""
    desired = settle_forward(desired, current)
    lines = difflib.unified_diff(_listing(current), _listing(desired), "kernel", "desired", lineterm="", n=1)
    return "".join(f"{line}\n" for line in lines)


def _listing(rs: RuleSet) -> list[str]:
    """A canonical listing: tables, chains sorted by name, values as iptables-save prints them."""
    out: list[str] = []
    for table in TABLES:
        out.append(f"*{table}")
        for j in sorted(rs.jumps_in(table), key=lambda j: (j.chain, j.key())):
            out.append(f"-A {j.chain} {spell(j.rule.key())}")
        for c in sorted(rs.table(table), key=lambda c: c.name):
            out.append(f":{c.name} - [0:0]")  # as iptables-save and `render` spell a chain
            out += [f"-A {c.name} {spell(r.key())}" for r in c.rules]
    return out


def cleanup(tools: Tools, prefix: str) -> Changes:
    """Remove every `prefix*` chain in nat/filter and every builtin-chain jump to one; nothing else."""
    current = read_owned(tools, prefix)
    changes = Changes(delete=tuple((c.table, c.name) for c in current.chains), del_jumps=current.jumps)
    apply(render_changes(changes), tools)
    return changes


class RestoreWriter(SyncState):
    """The default writer: iptables-{nft,legacy}-restore -w --noflush, matching the host's backend."""

    def __init__(self, *, prefix: str = "FLB-", backend: str = "auto", netns: str | None = None) -> None:
        super().__init__(prefix)
        self.tools = make_tools(backend, netns)
        if self.tools.backend == "nft":
            self.leaf_block = NFT_LEAF_BLOCK

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        return read_source_range_drops(self.tools, self.prefix)

    def read_owned(self) -> RuleSet:
        return read_owned(self.tools, self._prefix)

    def generation(self) -> int | None:
        if self.tools.backend != "nft":
            return None  # x_tables has no generation to trust
        try:
            return read_generation(self.tools.netns)
        except (OSError, GenerationError):
            return None

    def diff(self, desired: RuleSet) -> str:
        return diff(desired, self.tools)

    def _commit(self, changes: Changes, text: str) -> None:
        apply(text, self.tools)

    def cleanup(self) -> Changes:
        try:
            return cleanup(self.tools, self._prefix)
        finally:
            self.forget()
