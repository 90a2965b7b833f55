"""What a sync has to do to turn the kernel's owned chains into the desired ones (pure).

Partial sync (kube-proxy's MinimizeIPTablesRestore): per-frontend chains whose content is unchanged are
left out, so a sync costs O(changed frontends) plus the dispatch chains, and unchanged chains keep their
counters. Dispatch chains of a table are rewritten whenever anything in that table changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flannel_lb.dataplane.rules import TABLES, Chain, Jump, RuleSet


@dataclass(frozen=True, slots=True)
class Changes:
    write: tuple[Chain, ...] = ()  # declared (which empties them) and refilled
    delete: tuple[tuple[str, str], ...] = ()  # (table, chain): emptied and removed
    add_jumps: tuple[Jump, ...] = ()  # inserted at the top of their builtin chain
    del_jumps: tuple[Jump, ...] = ()  # removed from their builtin chain (stale or duplicate)
    full: bool = False

    @property
    def empty(self) -> bool:
        return not (self.write or self.delete or self.add_jumps or self.del_jumps)

    def tables(self) -> tuple[str, ...]:
        touched = {c.table for c in self.write} | {t for t, _ in self.delete}
        touched |= {j.table for j in (*self.add_jumps, *self.del_jumps)}
        return tuple(t for t in TABLES if t in touched)

    def summary(self) -> dict[str, int]:
        return {
            "chains_written": len(self.write),
            "chains_deleted": len(self.delete),
            "jumps_added": len(self.add_jumps),
            "jumps_deleted": len(self.del_jumps),
        }


def compute_changes(desired: RuleSet, current: RuleSet | None, *, full: bool = False) -> Changes:
    """The delta from `current` (the kernel's owned chains and jumps; None = unknown) to `desired`.

    `full` rewrites every desired chain (the sync after a failure); stale chains and jumps found in
    `current` are removed either way. Jumps are only compared, never rewritten: -I when missing, -D
    for stale ones and duplicates.
    """
    if current is None:
        return Changes(write=desired.chains, add_jumps=desired.jumps, full=True)
    wanted = {(c.table, c.name) for c in desired.chains}
    delete = tuple((c.table, c.name) for c in current.chains if (c.table, c.name) not in wanted)
    add_jumps, del_jumps = _jump_changes(desired.jumps, current.jumps)
    if full:
        return Changes(desired.chains, delete, add_jumps, del_jumps, full=True)

    differs = {(c.table, c.name) for c in desired.chains if _differs(c, current)}
    # A missing or extra jump alone is fixed with -I/-D: it does not make the table's chains stale.
    touched = {t for t, _ in differs} | {t for t, _ in delete}
    write = tuple(
        c
        for c in desired.chains
        if (c.table, c.name) in differs or (c.role == "dispatch" and c.table in touched)
    )
    return Changes(write, delete, add_jumps, del_jumps)


def _differs(chain: Chain, current: RuleSet) -> bool:
    old = current.get(chain.table, chain.name)
    if old is None:
        return True
    # Plain equality is the common case (the last applied RuleSet); normalising is for kernel read-backs.
    return old.rules != chain.rules and old.key() != chain.key()


def _jump_changes(
    desired: tuple[Jump, ...], current: tuple[Jump, ...]
) -> tuple[tuple[Jump, ...], tuple[Jump, ...]]:
    """Jumps to insert and to delete. A duplicated jump is deleted entirely and inserted once at the top:
    `-D` removes the first copy, which would leave the survivor wherever the duplicate was appended."""
    have = Counter(j.key() for j in current)
    want = {j.key() for j in desired}
    add = tuple(j for j in desired if have[j.key()] != 1)
    delete = tuple(j for j in current if j.key() not in want or have[j.key()] > 1)
    return add, delete
