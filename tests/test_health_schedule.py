"""[health] at scale: the checks spread over the interval, never faster than max_rate
(daemon/check_schedule.py), driven by a clock of the test's own; and the checker thread with real
connects, whose rise/fall and rate-bound report still hold when the checks are spread."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flannel_lb.config import HealthConfig
from flannel_lb.daemon.backend_checks import BackendChecker
from flannel_lb.daemon.check_schedule import WINDOW, CheckSchedule
from flannel_lb.daemon.metrics import Metrics

Check = tuple[str, int, str]


def checks(n: int, base: int = 0) -> list[Check]:
    return [(f"10.246.{(base + i) // 250}.{2 + (base + i) % 250}", 8080, "") for i in range(n)]


def drive(
    sched: CheckSchedule[Check], until: float, tick: float, start: float = 0.0, limit: int | None = None
) -> list[tuple[float, int, Check]]:
    """(time, pass, target) of every start from `start` to `until`, asking every `tick` seconds."""
    out: list[tuple[float, int, Check]] = []
    steps = round((until - start) / tick)
    for i in range(steps + 1):
        now = start + i * tick
        while batch := sched.due(now, limit):  # one pass per call: ask until nothing more is due
            out += [(now, sched.passes, t) for t in batch]
            if limit is not None:
                break
    return out


def most_in_a_window(times: list[float], window: float = WINDOW) -> int:
    """The largest number of starts in any half-open window [a, a + window)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    interval=st.floats(0.2, 5.0),
    max_rate=st.integers(1, 2000),
    tick=st.sampled_from([0.001, 0.01, 0.05, 0.2]),
)
def test_every_target_once_per_pass_and_never_over_the_rate(
    n: int, interval: float, max_rate: int, tick: float
) -> None:
    sched: CheckSchedule[Check] = CheckSchedule(interval, max_rate, start=0.0)
    targets = checks(n)
    sched.set_targets(targets)
    e = sched.effective_interval
    assert e == max(interval, n / max_rate) and sched.rate_bound == (n / interval > max_rate)
    tick = min(tick, e / 4)  # the caller asks several times per pass
    starts = drive(sched, until=min(3.2 * e, 20.0), tick=tick)
    assert most_in_a_window([t for t, _, _ in starts]) <= max_rate
    passes = Counter(p for _, p, _ in starts)
    finished = [p for p in passes if p < sched.passes]  # passes the drive saw to their end
    for p in finished:
        assert sorted(t for _, q, t in starts if q == p) == sorted(targets), p  # each exactly once
    assert len(finished) >= (2 if 3.2 * e <= 20 else 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), interval=st.floats(0.2, 5.0), tick=st.sampled_from([0.001, 0.01, 0.05]))
def test_below_the_bound_a_target_starts_at_its_slot_each_interval(
    n: int, interval: float, tick: float
) -> None:
    """Room for every target's starts in any second: no window fills, so each check starts within a
    tick of its slot, every pass exactly `interval` after the last: spread, not in one burst."""
    sched: CheckSchedule[Check] = CheckSchedule(
        interval, max_rate=n * (math.ceil(1 / interval) + 1), start=0.0
    )
    sched.set_targets(checks(n))
    for now, p, target in drive(sched, until=3 * interval, tick=tick):
        slot = p * interval + sched.offset(target)
        assert slot <= now < slot + tick + 1e-9, (now, p, target)


def test_the_checks_are_spread_evenly_over_the_interval() -> None:
    """10k targets in a 2 s interval: each tenth of it starts about a tenth of them (a stable hash,
    not the plan's order, decides), where the old rounds started all 10k at once."""
    sched: CheckSchedule[Check] = CheckSchedule(2.0, max_rate=10_000, start=0.0)
    sched.set_targets(checks(10_000))
    starts = drive(sched, until=1.999, tick=0.01)
    assert len(starts) == 10_000
    per_tenth = Counter(int(t / 0.2) for t, _, _ in starts)
    assert all(850 <= per_tenth[k] <= 1150 for k in range(10)), per_tenth


@settings(max_examples=50, deadline=None)
@given(
    kept=st.integers(1, 150),
    gone=st.integers(0, 150),
    added=st.integers(0, 150),
    change_at=st.floats(0.0, 0.99),
)
def test_slots_stay_put_when_unrelated_targets_come_and_go(
    kept: int, gone: int, added: int, change_at: float
) -> None:
    interval, tick = 1.0, 0.01
    stay, leave, new = checks(kept), checks(gone, base=kept), checks(added, base=1000)
    sched: CheckSchedule[Check] = CheckSchedule(interval, max_rate=1000, start=0.0)
    sched.set_targets(stay + leave)
    mark = round(1.0 + change_at, 2)  # somewhere in the second pass
    starts = drive(sched, until=mark - tick, tick=tick)
    sched.set_targets(stay + new)
    after = drive(sched, until=4.0 - tick, tick=tick, start=mark)
    for now, p, target in starts + after:
        if target in stay:  # before the change and after it: at its slot, every pass
            slot = p * interval + sched.offset(target)
            assert slot <= now < slot + tick + 1e-9, (now, p, target)
    assert not {t for _, _, t in after} & set(leave)  # the ones that left are not checked again
    for p in (1, 2):  # the pass the change fell in and the next one: each target exactly once
        assert sorted(t for _, q, t in starts + after if q == p and t not in leave) == sorted(stay + new), p


def test_a_target_added_after_its_slot_went_by_is_checked_at_once() -> None:
    sched: CheckSchedule[Check] = CheckSchedule(2.0, max_rate=1000, start=0.0)
    sched.set_targets(checks(100))
    drive(sched, until=1.5, tick=0.01)
    candidates = checks(50, base=500)
    probe: CheckSchedule[Check] = CheckSchedule(2.0, max_rate=1000, start=0.0)
    probe.set_targets(candidates)
    late = next(t for t in candidates if probe.offset(t) < 1.0)  # its slot in this pass went by at 1.5 s
    sched.set_targets([*checks(100), late])
    assert sched.offset(late) == probe.offset(late)  # the slot is the target's own, whatever is around it
    assert late in sched.due(1.51)
    rest = drive(sched, until=3.99, tick=0.01, start=1.52)
    assert [p for _, p, t in rest if t == late] == [1]  # not again in pass 0; next at its slot in pass 1


def test_over_the_bound_the_interval_stretches_and_the_rate_holds() -> None:
    sched: CheckSchedule[Check] = CheckSchedule(2.0, max_rate=500, start=0.0)
    sched.set_targets(checks(3000))
    assert sched.rate_bound and sched.effective_interval == 6.0 and sched.checks_per_second == 500
    starts = drive(sched, until=18.5, tick=0.01)
    assert most_in_a_window([t for t, _, _ in starts]) <= 500
    assert sched.passes == 3  # three passes of ~6 s each: the hash's clusters cost a little lag at most
    assert all(c == 3 for t, c in Counter(t for _, p, t in starts if p < 3).items())


def test_no_more_starts_than_the_free_concurrency() -> None:
    sched: CheckSchedule[Check] = CheckSchedule(0.5, max_rate=10_000, start=0.0)
    sched.set_targets(checks(200))
    assert len(sched.due(0.5, limit=7)) == 7
    assert sched.next_due(0.5) <= 0.5  # the rest is due already: only the caller's slots are short


# --- the checker thread: real connects, spread ---------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the timeout: look at `stop` again
                sock.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_the_spread_checker_takes_out_a_closed_port_after_fall_and_forgets_it(listener: int) -> None:
    changes: list[frozenset[tuple[str, int]]] = []
    metrics = Metrics()
    settings = HealthConfig(enabled=True, interval=0.2, timeout=0.3, rise=1, fall=2, max_rate=1000)
    checker = BackendChecker(settings, changes.append, metrics)
    closed = _closed_port()
    checker.targets = frozenset({("127.0.0.1", listener, ""), ("127.0.0.1", closed, "")})
    started = time.monotonic()
    checker.start()
    try:
        deadline = started + 10
        while not changes and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - started
        assert changes == [frozenset({("127.0.0.1", closed)})]  # the listener never went down
        assert checker.checks >= 3  # not before its second failure: two passes at least
        print(f"\nclosed port down {took:.2f} s after the start (interval 0.2 s, fall 2)")
        checker.targets = frozenset({("127.0.0.1", listener, "")})  # the closed one left the plan
        while len(changes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert changes[-1] == frozenset()
    finally:
        checker.stop()
    assert metrics.registry.get_sample_value("flannel_lb_health_check_targets") == 1
    assert metrics.registry.get_sample_value("flannel_lb_health_checks_total", {"result": "failed"}) >= 2
    assert (
        metrics.registry.get_sample_value("flannel_lb_health_checks_total", {"result": "passed"}) or 0
    ) >= 2


def test_the_checker_recovers_a_backend_after_rise_passes(listener: int) -> None:
    """rise/fall per target with spread checks: down after `fall` failed passes, up after `rise`."""
    changes: list[frozenset[tuple[str, int]]] = []
    settings = HealthConfig(enabled=True, interval=0.1, timeout=0.3, rise=3, fall=1)
    checker = BackendChecker(settings, changes.append)
    port = _closed_port()
    checker.targets = frozenset({("127.0.0.1", port, "")})
    checker.start()
    try:
        deadline = time.monotonic() + 10
        while not changes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert changes == [frozenset({("127.0.0.1", port)})]
        back = socket.socket()
        back.bind(("127.0.0.1", port))  # now something listens there
        back.listen(64)
        try:
            counted = checker.checks
            while len(changes) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert changes[-1] == frozenset()
            assert checker.checks - counted >= 3  # three passes in a row, not one lucky connect
        finally:
            back.close()
    finally:
        checker.stop()


def test_a_rate_bound_schedule_is_reported_once_as_it_starts_and_stops(listener: int) -> None:
    metrics = Metrics()
    settings = HealthConfig(enabled=True, interval=0.5, timeout=0.3, max_rate=4)
    checker = BackendChecker(settings, lambda down: None, metrics)
    many = frozenset(("127.0.0.1", listener, f"/{i}") for i in range(10))
    with capture_logs() as logs:
        checker.targets = many
        checker.check_once()
        assert metrics.registry.get_sample_value("flannel_lb_health_effective_interval_seconds") == 2.5
        assert metrics.registry.get_sample_value("flannel_lb_health_checks_per_second") == 4
        checker.targets = frozenset(many)  # a new plan with the same targets: no second line
        checker.check_once()
        checker.targets = frozenset(list(many)[:2])
        checker.check_once()
    events = [(e["event"], e["effective_interval"]) for e in logs if "rate" in e["event"]]
    assert events == [("health_checks_rate_bound", 2.5), ("health_checks_rate_unbound", 0.5)]
    assert metrics.registry.get_sample_value("flannel_lb_health_effective_interval_seconds") == 0.5
    assert metrics.registry.get_sample_value("flannel_lb_health_checks_per_second") == 4


def test_a_batch_is_counted_from_when_its_starts_finished() -> None:
    """Opening a batch's sockets takes time: counted from its end, the real starts stay under the bound."""
    sched: CheckSchedule[Check] = CheckSchedule(1.0, max_rate=5, start=0.0)
    sched.set_targets(checks(5))
    assert len(sched.due(1.0)) == 5
    sched.started(1.03)
    assert sched.due(2.02) == [] and sched.next_due(2.02) == pytest.approx(2.03)
    assert len(sched.due(2.04)) == 5


def test_a_standby_checks_nothing_and_starts_afresh_when_it_takes_over() -> None:
    """[ha] shared identity: the checks' answers go to whichever box holds the pair's PublicIP. While
    this box does not (`active` False), no verdict is made and what it had is dropped; on takeover it
    starts afresh, so a backend needs `fall` fresh failures before it leaves."""
    changes: list[frozenset[tuple[str, int]]] = []
    holds = threading.Event()
    settings = HealthConfig(enabled=True, interval=0.1, timeout=0.3, rise=1, fall=2, max_rate=1000)
    checker = BackendChecker(settings, changes.append, active=holds.is_set)
    closed = _closed_port()
    checker.targets = frozenset({("127.0.0.1", closed, "")})
    with capture_logs() as logs:
        checker.start()
        try:
            time.sleep(1.0)  # ten passes' worth as a standby: nothing checked
            assert checker.checks == 0 and changes == []
            holds.set()  # the takeover
            deadline = time.monotonic() + 10
            while not changes and time.monotonic() < deadline:
                time.sleep(0.01)
            assert changes == [frozenset({("127.0.0.1", closed)})] and checker.checks >= 2
            holds.clear()  # handed back: its verdicts go, the loop hears of none
            while len(changes) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert changes[-1] == frozenset()
        finally:
            checker.stop()
    events = [e["event"] for e in logs if e["event"].startswith("health_checks_")]
    assert events == ["health_checks_paused", "health_checks_resumed", "health_checks_paused"]


def test_a_local_address_is_told_from_another_by_a_bind() -> None:
    from flannel_lb.kernel.health import is_local_address

    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.77")  # TEST-NET-1: on no interface here
