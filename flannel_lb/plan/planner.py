"""Incremental planning: re-plan only the services an etcd change touched.

The result is always what `plan.compute_plan` would give for the same state; only the work differs.
Lease, network and node changes (or new netcheck results) re-plan every service, since any endpoint
may sit behind them.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping

from flannel_lb.plan.compute import (
    Admission,
    PlanSettings,
    ServicePlan,
    admission_for,
    assemble,
    plan_service,
)
from flannel_lb.plan.holdover import Saved, held_plans
from flannel_lb.plan.model import Plan
from flannel_lb.state.cluster import Change, ClusterState, ServiceRef


class Planner:
    def __init__(
        self, state: ClusterState, settings: PlanSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self.path_faults: Mapping[ipaddress.IPv4Network, str] = {}
        self.unhealthy: frozenset[tuple[str, int]] = frozenset()  # from the LB's own checks
        self.failing_paths: frozenset[ipaddress.IPv4Network] = frozenset()  # leases, from the same
        self._plans: dict[ServiceRef, ServicePlan] = {}
        self._admission: Admission | None = None
        self._admitted_at = 0.0  # when the lease index was built: leases expiring later are still live
        self.holdover: Saved = {}  # frontends saved by an earlier run, for specs that do not decode now
        self.held: set[str] = set()  # services the last plan served from `holdover`
        self._last: Plan | None = None  # the last plan returned
        self._index: dict[tuple[str, int, str], int] = {}  # frontend key -> position in it

    def admission(self) -> Admission:
        if self._admission is None:
            self._admitted_at = self.clock()
            self._admission = admission_for(
                self.state,
                self._admitted_at,
                self.path_faults,
                self.settings.addresses,
                self.unhealthy,
                self.failing_paths,
            )
        return self._admission

    def set_path_faults(self, faults: Mapping[ipaddress.IPv4Network, str]) -> bool:
        """Record netcheck's findings; True when they differ from the last ones (everything re-plans)."""
        if dict(faults) == dict(self.path_faults):
            return False
        self.path_faults = dict(faults)
        self._admission = None
        return True

    def set_unhealthy(self, targets: Iterable[tuple[str, int]]) -> bool:
        """Record the backends failing the LB's checks; True when that changed (everything re-plans)."""
        down = frozenset(targets)
        if down == self.unhealthy:
            return False
        self.unhealthy = down
        self._admission = None
        return True

    def set_failing_paths(self, leases: Iterable[ipaddress.IPv4Network]) -> bool:
        """Record the leases whose path fails the LB's checks; True when that changed (re-plans all)."""
        failing = frozenset(leases)
        if failing == self.failing_paths:
            return False
        self.failing_paths = failing
        self._admission = None
        return True

    def plan(self, change: Change | None = None) -> Plan:
        """Re-plan after `change` (None: everything) and return the whole plan."""
        if change is None or change.everything or self._admission is None:
            self._admission = None
            self._plans.clear()
            dirty: set[ServiceRef] | None = None
        else:
            dirty = change.services
        admission = self.admission()
        refs = self.state.services.keys() if dirty is None else dirty
        before = {ref: self._plans.get(ref) for ref in dirty} if dirty is not None else None
        for ref in list(refs):
            svc = self.state.services.get(ref)
            if svc is None:
                self._plans.pop(ref, None)
                continue
            groups, _ = self.state.endpoint_groups(ref)
            self._plans[ref] = plan_service(svc, groups, admission, self.settings)
        held = held_plans(self.state, self.holdover)
        had_held, self.held = self.held, {sp.verdict.service for sp in held}
        if before is not None and not held and not had_held:
            fast = self._substitute(before)
            if fast is not None:
                self._last = fast
                return fast
        services = [*self._plans.values(), *held] if held else self._plans.values()
        self._last = assemble(self.state.revision, services, self.state.all_problems())
        self._index = {f.key: i for i, f in enumerate(self._last.frontends)}
        return self._last

    def _substitute(self, before: Mapping[ServiceRef, ServicePlan | None]) -> Plan | None:
        """The last plan with the re-planned services' frontends swapped in place, or None.

        That is exactly what `assemble` would return when those services changed nothing but their
        frontends' contents (backends, the usual endpoint churn): same keys, kinds, verdicts and
        creation times, so the same owners, conflicts and order. At 10k services this saves
        assembling (sorting) the whole plan on every endpoint change.
        """
        last = self._last
        if last is None:
            return None
        frontends = list(last.frontends)
        for ref, old in before.items():
            new = self._plans.get(ref)
            if new is old:
                continue
            if old is None or new is None or not _same_shape(old, new):
                return None
            for was, now in zip(old.frontends, new.frontends, strict=True):
                at = self._index.get(was.key)
                if at is None or frontends[at] is not was:  # a conflict's loser, or listed twice
                    return None
                frontends[at] = now
        return Plan(
            self.state.revision,
            tuple(frontends),
            last.conflicts,
            tuple(self.state.all_problems()),
            last.verdicts,
            last.denied,
        )

    def next_expiry(self) -> float | None:
        """When the next TTL'd (v2) lease that the current plan counts as live expires: the plan must
        change then, before etcd's own expire event arrives (None: there is no such lease)."""
        since = self._admitted_at
        times = [
            lease.expires
            for lease in self.state.leases()
            if lease.expires is not None and lease.expires > since
        ]
        return min(times, default=None)


def _same_shape(old: ServicePlan, new: ServicePlan) -> bool:
    """Same frontend keys and kinds (the plan's sort key), verdict, creation time and denials."""
    return (
        old.verdict == new.verdict
        and old.created == new.created
        and old.denied == new.denied
        and len(old.frontends) == len(new.frontends)
        and all(
            a.key == b.key and a.kind == b.kind for a, b in zip(old.frontends, new.frontends, strict=True)
        )
    )
