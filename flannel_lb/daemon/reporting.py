"""What each sync tells the operator: the metrics, and log lines only when something changes.

Every sync sees the whole plan; the operator wants a figure per state and one line per transition
(a key that goes bad or recovers, a Service held over from the state file or no longer, a claim that
the policy newly refuses), never the same line at every sync.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from flannel_lb.daemon.metrics import Metrics
from flannel_lb.daemon.problemlog import ProblemLog
from flannel_lb.dataplane.plane import SyncReport
from flannel_lb.plan.model import Plan

log = structlog.get_logger("flannel_lb.agent")


@dataclass(frozen=True, slots=True)
class Tally:
    """Backends over all frontends, and excluded endpoints by reason label."""

    backends: int
    excluded: dict[str, int]


def tally(plan: Plan) -> Tally:
    """One pass over the plan."""
    backends = 0
    reasons: dict[str, int] = {}
    for f in plan.frontends:
        backends += len(f.backends)
        for e in f.excluded:
            label = e.kind.value
            reasons[label] = reasons.get(label, 0) + 1
    return Tally(backends, reasons)


class SyncReporter:
    """Turns each applied plan into metrics and transition log lines."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.problems = ProblemLog()  # bad keys logged once when they go bad and once when they recover
        self._held: set[str] = set()

    def applied(
        self,
        old: Plan | None,
        plan: Plan,
        result: SyncReport,
        kind: str,
        seconds: float,
        latency: float | None,
        held: set[str],
    ) -> Tally:
        """A sync of `plan` succeeded (`old`: what the kernel held before; `held`: Services served from the
        state file); `latency`: how long the oldest change it carries waited, for changes only."""
        if held != self._held:
            self._report_held(plan, held)
        for d in set(plan.denied) - set(old.denied if old else ()):
            log.warning(
                "exposure_denied",
                service=d.service,
                frontend=f"{d.address}:{d.port}/{d.protocol}",
                reason=d.reason,
            )
        self.problems.update(plan.problems)
        return self.recorded(plan, result, kind, seconds, latency)

    def recorded(
        self, plan: Plan, result: SyncReport, kind: str, seconds: float, latency: float | None = None
    ) -> Tally:
        """The metrics of a plan the kernel now holds (a sync, or the boot plan from the state file)."""
        m = self.metrics
        m.syncs.labels(kind, "ok").inc()
        m.sync_seconds.labels(kind).observe(seconds)
        if latency is not None and result.applied:
            m.programming_seconds.observe(latency)
        m.last_sync.set(time.time())
        m.frontends.set(len(plan.frontends))
        m.conflicts.set(len(plan.conflicts))
        m.denied.set(len(plan.denied))
        kinds: dict[str, int] = {}
        for kind_, _key in {(p.kind, p.key) for p in plan.problems}:  # bad keys, not problems
            kinds[kind_] = kinds.get(kind_, 0) + 1
        m.problems.clear()
        for label, n in kinds.items():
            m.problems.labels(label).set(n)
        counted = tally(plan)
        m.backends.set(counted.backends)
        m.excluded.clear()
        for label, n in counted.excluded.items():
            m.excluded.labels(label).set(n)
        return counted

    def failed(self, kind: str) -> None:
        self.metrics.syncs.labels(kind, "error").inc()

    def _report_held(self, plan: Plan, held: set[str]) -> None:
        was, self._held = self._held, set(held)
        self.metrics.held.set(len(held))
        for service in sorted(held - was):
            log.warning("service_held_over", service=service, reason=plan.verdicts[service].reason)
        for service in sorted(was - held):
            log.info("service_no_longer_held", service=service)
