"""RuleSet changes as iptables-restore --noflush text (pure; shared by both writers for logs and tests).

Only owned chains appear: a `:CHAIN - [0:0]` line empties a chain before it is refilled, and chains
that disappeared are emptied and then removed (-X) in the same transaction. Builtin chains are never
declared (that would reset their policy and counters): flannel-lb's jumps are inserted/deleted with -I/-D.
"""

from __future__ import annotations

from collections.abc import Sequence

from flannel_lb.dataplane.iptables.changes import Changes, compute_changes, transactions
from flannel_lb.dataplane.iptables.rules import Rule, RuleSet
from flannel_lb.dataplane.iptables.savefile import spell


def rule_line(op: str, chain: str, rule: Rule, *position: str) -> str:
    return " ".join([op, chain, *position, spell(rule.args())])


def render_changes(changes: Changes, leaf_block: int | None = None) -> str:
    """The restore text for `changes` ("" when there is nothing to do): one transaction, or with
    `leaf_block`, the sequence `transactions` makes of it (one COMMIT per table of each)."""
    return render_transactions(transactions(changes, leaf_block))


def render_transactions(parts: Sequence[Changes]) -> str:
    """The restore text committing `parts` in order (what `transactions` returns)."""
    return "".join(_render_transaction(t) for t in parts)


def _render_transaction(changes: Changes) -> str:
    out: list[str] = []
    for table in changes.tables():
        write = [c for c in changes.write if c.table == table]
        delete = [name for t, name in changes.delete if t == table]
        out.append(f"*{table}")
        out += [f":{c.name} - [0:0]" for c in write]
        out += [f":{name} - [0:0]" for name in delete]  # emptied first, so that -X cannot fail on references
        for c in write:
            out += [rule_line("-A", c.name, r) for r in c.rules]
        out += [rule_line("-D", j.chain, j.rule) for j in changes.del_jumps if j.table == table]
        out += [rule_line("-I", j.chain, j.rule, "1") for j in changes.add_jumps if j.table == table]
        out += [f"-X {name}" for name in delete]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render(desired: RuleSet, current: RuleSet | None = None, *, full: bool = False) -> str:
    """The text that turns `current` (None: unknown, so write everything) into `desired`."""
    return render_changes(compute_changes(desired, current, full=full))
