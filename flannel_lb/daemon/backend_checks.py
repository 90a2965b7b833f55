"""The agent's active backend checks ([health]): a thread that checks each distinct TCP backend once
per interval, spread over it and bounded by `max_rate` (check_schedule.py), and tells the loop which
ones are down (kernel/health.py does the connects and the counting)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

import structlog

from flannel_lb.config import HealthConfig
from flannel_lb.daemon.check_schedule import CheckSchedule
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.kernel.health import HealthTracker, Prober, Target, probe_round
from flannel_lb.plan.model import Exclusion, Plan

log = structlog.get_logger("flannel_lb.agent")


Check = tuple[str, int, str]  # (ip, port, the URL path to GET; "" for a TCP connect)
REPORT_EVERY = 0.5  # seconds: the loop hears of a changed down set at most this often (each re-plans)
TICK = 0.01  # seconds: checks falling due this close together start together (fewer wake-ups)
IDLE_WAKE = 0.25  # seconds: the longest sleep, so new targets and `stop` are seen soon


def check_targets(plan: Plan) -> frozenset[Check]:
    """What to check: every TCP backend of the plan, once per ip:port and check path, and those out for
    failing a check (they come back only by passing again). UDP and SCTP have no connect to check."""
    out: set[Check] = set()
    for f in plan.frontends:
        if f.protocol != "TCP":
            continue
        out.update((b.ip, b.port, f.check_path) for b in f.backends)
        out.update((e.ip, e.port, f.check_path) for e in f.excluded if e.kind is Exclusion.HEALTH and e.port)
    return frozenset(out)


class BackendChecker:
    """Runs the checks on its own thread; `on_change(down)` is called when the down set changes."""

    def __init__(
        self,
        settings: HealthConfig,
        on_change: Callable[[frozenset[Target]], None],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.metrics = metrics
        self.clock = clock
        self.targets: frozenset[Check] = frozenset()  # replaced by the agent after each sync
        self.tracker: HealthTracker[Check] = HealthTracker(rise=settings.rise, fall=settings.fall)
        self.schedule: CheckSchedule[Check] = CheckSchedule(settings.interval, settings.max_rate, clock())
        self.checks = 0  # checks finished (passed or failed)
        self._applied: frozenset[Check] | None = None
        self._rate_bound = False
        self._reported: frozenset[Target] = frozenset()
        self._reported_at = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="backend-checks", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.timeout + 5)

    @property
    def down(self) -> frozenset[Target]:
        """The backends (ip, port) down: any of whose checks has failed `fall` times in a row."""
        return frozenset((ip, port) for ip, port, _ in self.tracker.down)

    def check_once(self) -> frozenset[Target]:
        """One round over every current target at once (the thread spreads them instead); the backends
        down after it (reported when that changed)."""
        self._apply_targets()
        s = self.settings
        self._record(probe_round(self.targets, s.timeout, s.concurrency).items())
        self._report(self.clock(), force=True)
        return self.down

    def run(self, stop: threading.Event) -> None:
        """Check until `stop` is set: each target at its slot, the results as they come in."""
        prober = Prober(self.settings.timeout)
        try:
            while not stop.is_set():
                try:
                    self.step(prober)
                except Exception as e:  # a failed step must not end the checks (nor the agent)
                    log.error("backend_checks_failed", error=repr(e))
                    stop.wait(IDLE_WAKE)
        finally:
            prober.close()

    def step(self, prober: Prober) -> None:
        """Start what is due, wait for results until something else is due, record them."""
        now = self.clock()
        self._apply_targets()
        free = self.settings.concurrency - prober.in_flight
        if free > 0:
            while free > 0 and (batch := self.schedule.due(now, free)):  # a pass ending: the next one's too
                free -= len(batch)
                self._record([(t, ok) for t in batch if (ok := prober.start(t, now)) is not None])
            wake = self.schedule.next_due(now)
        else:  # all in flight: the next start waits for a result (or a timeout)
            wake = math.inf
        deadline = prober.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self.down != self._reported:
            wake = min(wake, self._reported_at + REPORT_EVERY)
        wait = min(max(wake - self.clock(), TICK), IDLE_WAKE)
        self._record(prober.poll(wait))
        self._report(self.clock())

    def _apply_targets(self) -> None:
        targets = self.targets
        if targets is self._applied:
            return
        self._applied = targets
        self.schedule.set_targets(targets)
        self.tracker.retain(targets)
        sched, s = self.schedule, self.settings
        if self.metrics is not None:
            self.metrics.health_targets.set(len(sched))
            self.metrics.health_effective_interval.set(sched.effective_interval)
            self.metrics.health_checks_per_second.set(sched.checks_per_second)
        if sched.rate_bound != self._rate_bound:
            self._rate_bound = sched.rate_bound
            fields = {
                "targets": len(sched),
                "interval": s.interval,
                "max_rate": s.max_rate,
                "effective_interval": round(sched.effective_interval, 3),
            }
            if sched.rate_bound:
                log.warning("health_checks_rate_bound", **fields)
            else:
                log.info("health_checks_rate_unbound", **fields)

    def _record(self, results: Iterable[tuple[Check, bool]]) -> None:
        results = list(results)
        if not results:
            return
        self.checks += len(results)
        if self.metrics is not None:
            passed = sum(ok for _, ok in results)
            self.metrics.health_checks.labels("passed").inc(passed)
            self.metrics.health_checks.labels("failed").inc(len(results) - passed)
        s = self.settings
        went_down, came_back = self.tracker.update(results)
        for ip, port, path in sorted(went_down):
            log.warning("backend_check_failing", backend=f"{ip}:{port}", check=path or "tcp", fall=s.fall)
        for ip, port, path in sorted(came_back):
            log.info("backend_check_passing", backend=f"{ip}:{port}", check=path or "tcp", rise=s.rise)

    def _report(self, now: float, *, force: bool = False) -> None:
        down = self.down
        if down != self._reported and (force or now >= self._reported_at + REPORT_EVERY):
            self._reported, self._reported_at = down, now  # also when a failing backend left the plan
            self.on_change(down)
