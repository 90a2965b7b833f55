"""What a sync has to do to turn the kernel's owned chains into the desired ones (pure).

Partial sync (kube-proxy's MinimizeIPTablesRestore): only chains whose content differs are written, so
unchanged chains keep their counters and a sync costs O(changed frontends): their FE/SEP chains and the
dispatch chain that jumps to them (at scale, one bucket chain of the two-level dispatch). Comparing is
cheap for what did not change: `RuleBuilder` hands back the very Chain objects of the previous RuleSet,
and identical objects are never compared rule by rule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flannel_lb.dataplane.iptables.rules import TABLES, Chain, Jump, RuleSet

# chains nothing but the dispatch (or their frontend, or its firewall) jumps to
LEAF_ROLES = ("frontend", "endpoint", "firewall")
NFT_LEAF_BLOCK = 500  # iptables-nft: chains per early transaction (see `transactions`)


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
    if current is desired and not full:
        return Changes()
    wanted = desired.index
    delete = tuple(name for name in current.index if name not in wanted)
    add_jumps, del_jumps = _jump_changes(desired.jumps, current.jumps)
    if full:
        return Changes(desired.chains, delete, add_jumps, del_jumps, full=True)
    # A missing or extra jump alone is fixed with -I/-D: it does not make any chain stale.
    have = current.index
    write = tuple(c for c in desired.chains if _differs(c, have.get((c.table, c.name))))
    return Changes(write, delete, add_jumps, del_jumps)


def transactions(changes: Changes, leaf_block: int | None = None) -> tuple[Changes, ...]:
    """`changes` as the transactions to commit in order: all of it at once, or, when more than
    `leaf_block` frontend/endpoint chains are written, those chains first in blocks of about
    `leaf_block`, then everything else in one last transaction.

    Why: iptables-nft-restore spends time quadratic in the chains of one COMMIT (the 10k-service
    cold sync of 10k frontend chains; figures in docs/benchmarks.md, cold start).
    Splitting changes nothing traffic can see: frontend and endpoint chains are named by their
    content, so a written one is either identical to what the kernel has (or repairs its drift,
    atomically) or new, and a new one is reached only once the last transaction rewrites the
    dispatch and bucket chains that jump to it (stale chains are deleted there too). A frontend
    chain and the endpoint chains after it (its affinity targets) always share a block. Not for
    iptables-legacy: each of its commits rewrites the whole table.
    """
    leaves = [c for c in changes.write if c.role in LEAF_ROLES]
    if leaf_block is None or len(leaves) <= leaf_block:
        return (changes,)
    blocks: list[list[Chain]] = [[]]
    for c in leaves:
        if len(blocks[-1]) >= leaf_block and c.role == "frontend":
            blocks.append([])
        blocks[-1].append(c)
    rest = Changes(
        tuple(c for c in changes.write if c.role not in LEAF_ROLES),
        changes.delete,
        changes.add_jumps,
        changes.del_jumps,
        changes.full,
    )
    staged = tuple(Changes(write=tuple(block), full=changes.full) for block in blocks)
    return staged if rest.empty else (*staged, rest)


def _differs(chain: Chain, old: Chain | None) -> bool:
    if old is None:
        return True
    if old is chain or old.rules is chain.rules:  # what RuleBuilder reused: nothing to compare
        return False
    if len(old.rules) != len(chain.rules):
        return True
    # Rule by rule: identical objects (a chain RuleBuilder refilled, e.g. a bucket or a flat dispatch
    # chain with one new rule) cost nothing, equal ones little; normalising is for kernel read-backs.
    return any(
        a is not b and a != b and a.key() != b.key() for a, b in zip(old.rules, chain.rules, strict=True)
    )


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
