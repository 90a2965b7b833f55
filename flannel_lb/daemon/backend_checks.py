"""The agent's active backend checks ([health]): a thread that checks each distinct TCP backend every
interval and tells the loop which ones are down (kernel/health.py does the connects and the counting)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from flannel_lb.config import HealthConfig
from flannel_lb.kernel.health import HealthTracker, Target, probe_tcp
from flannel_lb.plan.model import Exclusion, Plan

log = structlog.get_logger("flannel_lb.agent")


def check_targets(plan: Plan) -> frozenset[Target]:
    """What to check: every TCP backend of the plan, once per ip:port, and those out for failing a check
    (they come back only by passing again). UDP and SCTP have no connect to check."""
    out: set[Target] = set()
    for f in plan.frontends:
        if f.protocol != "TCP":
            continue
        out.update((b.ip, b.port) for b in f.backends)
        out.update((e.ip, e.port) for e in f.excluded if e.kind is Exclusion.HEALTH and e.port)
    return frozenset(out)


class BackendChecker:
    """Runs rounds of checks on its own thread; `on_change(down)` is called when the down set changes."""

    def __init__(self, settings: HealthConfig, on_change: Callable[[frozenset[Target]], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self.targets: frozenset[Target] = frozenset()  # replaced by the agent after each sync
        self.tracker = HealthTracker(rise=settings.rise, fall=settings.fall)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-checks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.timeout + 5)

    def check_once(self) -> frozenset[Target]:
        """One round over the current targets; the down set after it (reported when it changed)."""
        targets = self.targets
        went_down, came_back = self.tracker.record(
            probe_tcp(targets, self.settings.timeout, self.settings.concurrency)
        )
        for ip, port in sorted(went_down):
            log.warning("backend_check_failing", backend=f"{ip}:{port}", fall=self.settings.fall)
        for ip, port in sorted(came_back):
            log.info("backend_check_passing", backend=f"{ip}:{port}", rise=self.settings.rise)
        down = self.tracker.down
        if went_down or came_back:
            self.on_change(down)
        return down

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval):
            try:
                self.check_once()
            except Exception as e:  # a failed round must not end the checks (nor the agent)
                log.error("backend_checks_failed", error=repr(e))
