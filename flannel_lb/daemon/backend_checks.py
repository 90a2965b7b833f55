"""The agent's active backend checks ([health]): a thread that checks each distinct TCP backend once
per interval, spread over it and bounded by `max_rate` (check_schedule.py), and tells the loop which
ones are down (kernel/health.py does the connects and the counting).

It also tells which nodes' overlay paths fail, from the same results (no probe of its own): a lease
none of whose backends has answered for a whole pass, while at least two of its pods went unanswered
(timeouts, not refusals: a refused connect came back through the overlay, so the path works) after
they had answered before. Then all the node's pods leave at once (`node path failing`), UDP ones and
the ones whose own checks have not yet failed `fall` times too: one pass instead of `fall`, which
matters when `max_rate` stretches the pass to minutes. One answer on the lease brings the node back.
Any healthy pod on the node answers once per pass, so failing checks alone (a tenant's Endpoints
naming addresses nobody answers at) cannot take a node with one out.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable

import structlog

from flannel_lb.config import HealthConfig
from flannel_lb.daemon.check_schedule import CheckSchedule
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.kernel.health import HealthTracker, Outcome, Prober, Target, probe_outcomes
from flannel_lb.plan.compute import LeaseIndex
from flannel_lb.plan.ipv4 import ipv4_int
from flannel_lb.plan.model import Exclusion, Plan

log = structlog.get_logger("flannel_lb.agent")


Check = tuple[str, int, str]  # (ip, port, the URL path to GET; "" for a TCP connect)
REPORT_EVERY = 0.5  # seconds: the loop hears of a changed down set at most this often (each re-plans)
TICK = 0.01  # seconds: checks falling due this close together start together (fewer wake-ups)
IDLE_WAKE = 0.25  # seconds: the longest sleep, so new targets and `stop` are seen soon
NODE_SILENT_MIN = 2  # pods (addresses) of a lease unanswered before its path counts as failing
Network = ipaddress.IPv4Network
_BY_CHECKS = (Exclusion.HEALTH, Exclusion.NODE_PATH)  # out by these checks: still checked


def check_targets(plan: Plan) -> frozenset[Check]:
    """What to check: every TCP backend of the plan, once per ip:port and check path, and those out for
    failing a check or on a node whose path fails (they come back only by answering again). UDP and
    SCTP have no connect to check."""
    out: set[Check] = set()
    for f in plan.frontends:
        if f.protocol != "TCP":
            continue
        out.update((b.ip, b.port, f.check_path) for b in f.backends)
        out.update((e.ip, e.port, f.check_path) for e in f.excluded if e.kind in _BY_CHECKS and e.port)
    return frozenset(out)


def _pods(checks: set[Check]) -> int:
    """Distinct pod addresses among `checks` (a pod with a TCP and an HTTP check is one pod)."""
    return len({ip for ip, _, _ in checks})


class BackendChecker:
    """Runs the checks on its own thread; `on_change(down)` is called when the down set changes, and
    `on_paths(leases)` when the set of leases whose path fails does."""

    def __init__(
        self,
        settings: HealthConfig,
        on_change: Callable[[frozenset[Target]], None],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_paths: Callable[[frozenset[Network]], None] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Whether the answers to this box's checks come back to it ([ha] shared identity: only on the
        # box holding the pair's PublicIP; the other's go to the peer). While not, nothing is checked
        # and nothing is out by a check: the box starts afresh when it takes over.
        self.active = active
        self._paused = False
        self.on_change = on_change
        self.on_paths = on_paths
        self.leases: LeaseIndex | None = None  # replaced by the agent with the targets: groups them by node
        self.metrics = metrics
        self.clock = clock
        self.targets: frozenset[Check] = frozenset()  # replaced by the agent after each sync
        self.tracker: HealthTracker[Check] = HealthTracker(rise=settings.rise, fall=settings.fall)
        self.schedule: CheckSchedule[Check] = CheckSchedule(settings.interval, settings.max_rate, clock())
        self.checks = 0  # checks finished (passed or failed)
        self._applied: frozenset[Check] | None = None
        self._rate_bound = False
        self._down: frozenset[Target] | None = frozenset()  # None: to recompute from the tracker
        self._reported: frozenset[Target] = frozenset()
        self._reported_at = -math.inf
        self._lease_of: dict[str, Network | None] = {}  # ip -> its lease's subnet, for `self.leases`
        self._indexed: LeaseIndex | None = None
        self._answered: dict[Network, float] = {}  # lease -> when one of its backends last answered
        self._silent: dict[Network, set[Check]] = {}  # lease -> its backends unanswered since then
        self._paths_failing: set[Network] = set()
        self._paths_reported: frozenset[Network] = frozenset()
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
        if self._down is None:  # recomputed only after a transition: 50k down on a dead node is common
            self._down = frozenset((ip, port) for ip, port, _ in self.tracker.down)
        return self._down

    def check_once(self) -> frozenset[Target]:
        """One round over every current target at once (the thread spreads them instead); the backends
        down after it (reported when that changed)."""
        self._apply_targets()
        s = self.settings
        self._record(probe_outcomes(self.targets, s.timeout, s.concurrency).items())
        self._judge_paths(self.clock())
        self._report(self.clock(), force=True)
        return self.down

    def run(self, stop: threading.Event, prober: Prober | None = None) -> None:
        """Check until `stop` is set: each target at its slot, the results as they come in."""
        prober = prober or Prober(self.settings.timeout)
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
        if self.active is not None and not self._still_active(prober):
            return
        now = self.clock()
        self._apply_targets()
        free = self.settings.concurrency - prober.in_flight
        if free > 0:
            while free > 0 and (batch := self.schedule.due(now, free)):  # a pass ending: the next one's too
                free -= len(batch)
                self._record([(t, ok) for t in batch if (ok := prober.start(t, now)) is not None])
                now = self.clock()
                self.schedule.started(now)  # the rate is counted from the starts' own time
            wake = self.schedule.next_due(now)
        else:  # all in flight: the next start waits for a result (or a timeout)
            wake = math.inf
        deadline = prober.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._unreported():
            wake = min(wake, self._reported_at + REPORT_EVERY)
        wait = min(max(wake - self.clock(), TICK), IDLE_WAKE)
        self._record(prober.poll(wait))
        now = self.clock()
        self._judge_paths(now)
        self._report(now)

    def _still_active(self, prober: Prober) -> bool:
        """False (after a pause of IDLE_WAKE) while the answers would go to the peer; on the way in,
        forget every verdict (a standby's would all be failures), on the way out start from there."""
        assert self.active is not None
        if self.active():
            if self._paused:
                self._paused = False
                log.info("health_checks_resumed", why="this box holds the pair's PublicIP")
            return True
        if not self._paused:
            self._paused = True
            self.tracker = HealthTracker(rise=self.settings.rise, fall=self.settings.fall)
            self._down = None
            self._paths_failing.clear()
            self._silent.clear()
            self._answered.clear()
            log.info("health_checks_paused", why="the pair's PublicIP is on the peer: so are the answers")
        prober.poll(0)  # in-flight checks: their answers are not this box's to judge
        self._report(self.clock(), force=True)
        time.sleep(IDLE_WAKE)
        return False

    def _apply_targets(self) -> None:
        targets = self.targets
        if targets is self._applied:
            return
        self._applied = targets
        self.schedule.set_targets(targets)
        self.tracker.retain(targets)
        self._down = None
        for net, silent in list(self._silent.items()):
            silent &= targets
            if _pods(silent) < NODE_SILENT_MIN and net in self._paths_failing:  # the evidence left the plan
                self._path_back(net, "its unanswered backends left the plan")
            if not silent:
                del self._silent[net]
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

    def _record(self, outcomes: Iterable[tuple[Check, Outcome]]) -> None:
        outcomes = list(outcomes)
        if not outcomes:
            return
        self.checks += len(outcomes)
        results = [(t, o is Outcome.PASSED) for t, o in outcomes]
        if self.metrics is not None:
            passed = sum(ok for _, ok in results)
            self.metrics.health_checks.labels("passed").inc(passed)
            self.metrics.health_checks.labels("failed").inc(len(results) - passed)
        self._note_paths(outcomes)
        s = self.settings
        went_down, came_back = self.tracker.update(results)
        if went_down or came_back:
            self._down = None
        for ip, port, path in sorted(went_down):
            log.warning("backend_check_failing", backend=f"{ip}:{port}", check=path or "tcp", fall=s.fall)
        for ip, port, path in sorted(came_back):
            log.info("backend_check_passing", backend=f"{ip}:{port}", check=path or "tcp", rise=s.rise)

    # --- per node: the lease's path, judged from its backends' outcomes -------------------------------

    def _lease(self, ip: str) -> Network | None:
        leases = self.leases
        if leases is not self._indexed:
            self._indexed, self._lease_of = leases, {}
        if leases is None:
            return None
        if ip not in self._lease_of:
            addr = ipv4_int(ip)
            lease = leases.find(addr) if addr is not None else None
            self._lease_of[ip] = lease.subnet if lease is not None else None
        return self._lease_of[ip]

    def _note_paths(self, outcomes: list[tuple[Check, Outcome]]) -> None:
        now = self.clock()
        for target, outcome in outcomes:
            net = self._lease(target[0])
            if net is None:
                continue
            if outcome is Outcome.SILENT:
                if net in self._answered:  # a lease never answered is not judged: nothing to compare
                    self._silent.setdefault(net, set()).add(target)
                continue
            self._answered[net] = now
            self._silent.pop(net, None)
            if net in self._paths_failing:
                self._path_back(net, f"{target[0]}:{target[1]} answered")

    def _judge_paths(self, now: float) -> None:
        """A lease fails once none of its backends answered for a whole pass (any healthy one would
        have), while at least two of its pods went unanswered."""
        quiet = self.schedule.effective_interval + self.settings.timeout
        for net, silent in self._silent.items():
            since = now - self._answered[net]
            if since < quiet or net in self._paths_failing:  # cheap tests first: this runs every step
                continue
            pods = _pods(silent)
            if pods >= NODE_SILENT_MIN:
                self._paths_failing.add(net)
                log.warning("node_path_failing", lease=str(net), unanswered=pods, seconds=round(since, 2))

    def _path_back(self, net: Network, why: str) -> None:
        self._paths_failing.discard(net)
        log.info("node_path_passing", lease=str(net), why=why)

    def _unreported(self) -> bool:
        """Whether the loop has not heard of the current down set or failing paths (every step asks:
        the down set, 50k on a dead node, is compared only when it is not the object last reported)."""
        down = self.down
        if down is not self._reported:
            if down != self._reported:
                return True
            self._reported = down  # the same backends: compared once, not on every step
        return self._paths_failing != self._paths_reported

    def _report(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._reported_at + REPORT_EVERY:
            return
        if not self._unreported():
            return
        down, paths = self.down, frozenset(self._paths_failing)
        if down is not self._reported and down != self._reported:  # also when one left the plan
            self._reported, self._reported_at = down, now
            self.on_change(down)
        if paths != self._paths_reported:
            self._paths_reported, self._reported_at = paths, now
            if self.metrics is not None:
                self.metrics.node_paths_failing.set(len(paths))
            if self.on_paths is not None:
                self.on_paths(paths)
