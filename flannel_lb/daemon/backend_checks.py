"""The agent's active backend checks ([health]): a thread that checks each distinct TCP backend every
interval and tells the loop which ones are down (kernel/health.py does the connects and the counting)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from flannel_lb.config import HealthConfig
from flannel_lb.kernel.health import HealthTracker, Target, probe_http, probe_tcp
from flannel_lb.plan.model import Exclusion, Plan

log = structlog.get_logger("flannel_lb.agent")


Check = tuple[str, int, str]  # (ip, port, the URL path to GET; "" for a TCP connect)


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
    """Runs rounds of checks on its own thread; `on_change(down)` is called when the down set changes."""

    def __init__(self, settings: HealthConfig, on_change: Callable[[frozenset[Target]], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self.targets: frozenset[Check] = frozenset()  # replaced by the agent after each sync
        self.tracker: HealthTracker[Check] = HealthTracker(rise=settings.rise, fall=settings.fall)
        self._reported: frozenset[Target] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-checks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.timeout + 5)

    def check_once(self) -> frozenset[Target]:
        """One round over the current targets; the backends (ip, port) down after it, any of whose
        checks fails (reported when that changed)."""
        targets = self.targets
        s = self.settings
        connects = probe_tcp({(ip, port) for ip, port, path in targets if not path}, s.timeout, s.concurrency)
        gets = probe_http({t for t in targets if t[2]}, s.timeout)
        results = {t: (gets[t] if t[2] else connects[(t[0], t[1])]) for t in targets}
        went_down, came_back = self.tracker.record(results)
        for ip, port, path in sorted(went_down):
            log.warning("backend_check_failing", backend=f"{ip}:{port}", check=path or "tcp", fall=s.fall)
        for ip, port, path in sorted(came_back):
            log.info("backend_check_passing", backend=f"{ip}:{port}", check=path or "tcp", rise=s.rise)
        down = frozenset((ip, port) for ip, port, _ in self.tracker.down)
        if down != self._reported:  # also when a failing backend left the plan
            self._reported = down
            self.on_change(down)
        return down

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval):
            try:
                self.check_once()
            except Exception as e:  # a failed round must not end the checks (nor the agent)
                log.error("backend_checks_failed", error=repr(e))
