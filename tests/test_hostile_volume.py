"""Class 9, volume: one value with many bad entries gives a bounded number of problems per key."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.daemon.problemlog import ProblemLog
from flannel_lb.decode.model import Problem
from flannel_lb.lab.objects import endpoint, endpoint_slice
from flannel_lb.state.cluster import MAX_KEY_PROBLEMS, ClusterState

KEY = "/registry/endpointslices/default/web-abc"


def _slice_value(n: int) -> bytes:
    eps = [endpoint(f"not-an-ip-{i}") for i in range(n)]
    return json.dumps(endpoint_slice("web-abc", "web", eps, [("http", 80, "TCP")])).encode()


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_problems_per_key_are_bounded_with_the_right_count(n: int) -> None:
    state = ClusterState()
    state.put(KEY, _slice_value(n))
    mine = [p for p in state.all_problems() if p.key == KEY]
    assert len(mine) == min(n, MAX_KEY_PROBLEMS) + (n > MAX_KEY_PROBLEMS)
    if n > MAX_KEY_PROBLEMS:
        assert any(f"and {n - MAX_KEY_PROBLEMS} more problems" in p.reason for p in mine)


def test_100k_bad_addresses_stay_small() -> None:
    state = ClusterState()
    state.put(KEY, _slice_value(100_000))
    problems = state.all_problems()
    assert len(problems) == MAX_KEY_PROBLEMS + 1
    assert len(json.dumps([[p.key, p.reason] for p in problems])) < 10_000


def test_problem_log_transitions() -> None:
    log = ProblemLog()
    bad = [Problem(KEY, f"r{i}", "invalid") for i in range(3)]
    t = log.update(bad)
    assert list(t.bad) == [KEY] and t.recovered == []
    t = log.update(bad)
    assert t.bad == {} and t.recovered == []
    t = log.update([])
    assert t.bad == {} and t.recovered == [KEY]
    t = log.update([])
    assert t.bad == {} and t.recovered == []
