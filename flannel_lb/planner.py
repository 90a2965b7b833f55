"""Incremental planning: re-plan only the services an etcd change touched.

The result is always what `plan.compute_plan` would give for the same state; only the work differs.
Lease, network and node changes (or new netcheck results) re-plan every service, since any endpoint
may sit behind them.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping

from flannel_lb.cluster import Change, ClusterState, ServiceRef
from flannel_lb.desired import Plan
from flannel_lb.holdover import Saved, held_plans
from flannel_lb.plan import Admission, PlanSettings, ServicePlan, admission_for, assemble, plan_service


class Planner:
    def __init__(
        self, state: ClusterState, settings: PlanSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self.path_faults: Mapping[ipaddress.IPv4Network, str] = {}
        self._plans: dict[ServiceRef, ServicePlan] = {}
        self._admission: Admission | None = None
        self._admitted_at = 0.0  # when the lease index was built: leases expiring later are still live
        self.holdover: Saved = {}  # frontends saved by an earlier run, for specs that do not decode now
        self.held: set[str] = set()  # services the last plan served from `holdover`

    def admission(self) -> Admission:
        if self._admission is None:
            self._admitted_at = self.clock()
            self._admission = admission_for(self.state, self._admitted_at, self.path_faults)
        return self._admission

    def set_path_faults(self, faults: Mapping[ipaddress.IPv4Network, str]) -> bool:
        """Record netcheck's findings; True when they differ from the last ones (everything re-plans)."""
        if dict(faults) == dict(self.path_faults):
            return False
        self.path_faults = dict(faults)
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
        for ref in list(refs):
            svc = self.state.services.get(ref)
            if svc is None:
                self._plans.pop(ref, None)
                continue
            groups, _ = self.state.endpoint_groups(ref)
            self._plans[ref] = plan_service(svc, groups, admission, self.settings)
        held = held_plans(self.state, self.holdover)
        self.held = {sp.verdict.service for sp in held}
        services = [*self._plans.values(), *held] if held else self._plans.values()
        return assemble(self.state.revision, services, self.state.all_problems())

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
