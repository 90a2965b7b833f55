"""The agent's timing policy (daemon/scheduler.py), driven by a model clock through random event sequences."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.daemon.scheduler import SyncScheduler

MIN, FULL, RETRY_MAX = 0.5, 10.0, 30.0

# One event per step: a change arrives, time passes, or the agent runs whatever is due (ok or failing).
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("change"), st.just(0.0)),
        st.tuples(st.just("wait"), st.floats(0.0, 40.0)),
        st.tuples(st.just("run"), st.booleans()),
    ),
    max_size=80,
)


def _new() -> SyncScheduler:
    s = SyncScheduler(min_interval=MIN, full_interval=FULL, retry_max=RETRY_MAX, netcheck_interval=1e9)
    s.netcheck_done(0.0)  # out of the way: only syncs are under test
    return s


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_the_policy_holds_for_any_sequence(events: list[tuple[str, object]]) -> None:
    s = _new()
    now = 0.0
    syncs: list[tuple[float, str, bool]] = []
    last_ok_full = 0.0
    failing_since: float | None = None
    waits: list[float] = []
    for kind, arg in events:
        if kind == "change":
            s.change(now)
        elif kind == "wait":
            deadline = s.deadline(now)
            assert deadline > now or s.due(now) is not None or s.netcheck_due(now)  # no busy wait
            now += float(arg)  # type: ignore[arg-type]
        else:
            due = s.due(now)
            if due is None:
                continue
            ok = bool(arg)
            syncs.append((now, due, ok))
            if ok:
                s.synced(now, full=due == "full")
                failing_since = None
                waits.clear()
                if due == "full":
                    last_ok_full = now
            else:
                waits.append(s.failed(now))
                failing_since = failing_since if failing_since is not None else now
        # nothing pending after a success until a change, a failure or the full interval
        if s.due(now) == "full":
            assert now - last_ok_full >= FULL or failing_since is not None
    # partial syncs never come closer than min_interval after a successful one
    oks = [(t, d) for t, d, ok in syncs if ok]
    for (t0, _), (t1, d1) in itertools.pairwise(oks):
        if d1 == "partial":
            assert t1 - t0 >= MIN
    # retry waits double from 1 s up to the cap, and never exceed it
    assert waits == [min(1.0 * 2**i, RETRY_MAX) for i in range(len(waits))]


def test_a_change_waits_out_min_interval_then_runs_once() -> None:
    s = _new()
    s.change(0.0)
    assert s.due(0.0) == "partial"
    s.synced(0.0, full=False)
    s.change(0.1)
    s.change(0.2)  # coalesced with the first
    assert s.due(0.3) is None and s.deadline(0.3) == MIN
    assert s.due(MIN) == "partial"
    s.synced(MIN, full=False)
    assert s.due(MIN + 5) is None  # nothing pending


def test_a_failing_sync_waits_before_each_retry_and_nothing_else_runs() -> None:
    s = _new()
    now = FULL
    assert s.due(now) == "full"
    waits = []
    for _ in range(7):
        waits.append(s.failed(now))
        assert s.due(now) is None and s.deadline(now) == now + waits[-1]  # no tight retry loop
        now += waits[-1]
        assert s.due(now) is not None
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    s.synced(now, full=True)
    assert s.due(now) is None and s.retry_wait == 1.0


def test_netcheck_runs_on_its_own_interval() -> None:
    s = SyncScheduler(min_interval=MIN, full_interval=FULL, netcheck_interval=2.0)
    assert s.netcheck_due(0.0)
    s.netcheck_done(0.0)
    assert not s.netcheck_due(1.9) and s.deadline(1.0) == 2.0 and s.netcheck_due(2.0)
    assert s.deadline(1.0, watching=False) == 2.0  # before the first snapshot: checked every second
