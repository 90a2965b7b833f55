"""The agent's periodic read of the kernel's source-range drop counts into the metric."""

from __future__ import annotations

import structlog

from flannel_lb.daemon.metrics import Metrics
from flannel_lb.dataplane.plane import DataPlane
from flannel_lb.plan.model import Plan

log = structlog.get_logger("flannel_lb.agent")


class DropSampler:
    """Copies each restricted frontend's drop count into `flannel_lb_source_range_drops`.

    Reads the kernel only while the plan restricts some frontend. A failed read keeps the last values
    and is logged once until a read works again: a sample must never stop the agent from serving.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._failing = False

    def sample(self, plan: Plan | None, dataplane: DataPlane) -> None:
        restricted = [f for f in plan.frontends if f.source_ranges is not None] if plan else []
        if not restricted:
            self.metrics.source_range_drops.values = {}
            return
        try:
            counts = dataplane.source_range_drops()
        except Exception as e:
            if not self._failing:
                log.warning("source_range_drops_unreadable", error=repr(e))
            self._failing = True
            return
        self._failing = False
        values = {(f.service, f.label): counts.get(f.key, 0) for f in restricted}
        self.metrics.source_range_drops.values = values
