"""Log bad input keys on transitions only: once when a key goes bad, once when it recovers.

Every sync sees the full set of problems; logging them each time would repeat (and, for a hostile
value, flood) the same lines. `ProblemLog` remembers which keys were bad at the last sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from flannel_lb.decode.model import Problem

log = structlog.get_logger("flannel_lb.agent")

FIRST_REASONS = 3  # reasons quoted in the line that names a newly bad key


@dataclass(frozen=True, slots=True)
class Transitions:
    """What changed since the last sync: keys that went bad (with their reasons), keys that recovered."""

    bad: dict[str, list[str]]
    recovered: list[str]


class ProblemLog:
    """Tracks the set of bad keys between syncs and logs only the transitions."""

    def __init__(self) -> None:
        self._bad: set[str] = set()

    def update(self, problems: Iterable[Problem]) -> Transitions:
        """Take this sync's problems; log and return the keys that went bad and those that recovered
        (good again or deleted: either way the key no longer has a problem)."""
        now: dict[str, list[str]] = {}
        for p in problems:
            now.setdefault(p.key, []).append(p.reason)
        bad = {k: r for k, r in sorted(now.items()) if k not in self._bad}
        recovered = sorted(self._bad - now.keys())
        self._bad = set(now)
        for key, reasons in bad.items():
            log.warning("input_bad", key=key, problems=len(reasons), first=reasons[:FIRST_REASONS])
        for key in recovered:
            log.info("input_recovered", key=key)
        return Transitions(bad, recovered)
