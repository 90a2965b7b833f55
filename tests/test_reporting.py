"""What each sync tells the operator (daemon/reporting.py): figures every time, log lines on transitions."""

from __future__ import annotations

from typing import Any

import pytest

from flannel_lb.daemon import problemlog, reporting
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.decode.model import Problem
from flannel_lb.plan.model import Backend, Denial, Excluded, Exclusion, Frontend, Plan, ServiceVerdict


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append(event)


class _Applied:
    mode, text, seconds, applied = "partial", "", 0.0, True

    def summary(self) -> dict[str, int]:
        return {}


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> _Log:
    fake = _Log()
    monkeypatch.setattr(reporting, "log", fake)
    monkeypatch.setattr(problemlog, "log", fake)
    return fake


def _plan(revision: int, *, denied: bool = False, bad_key: bool = False, held: bool = False) -> Plan:
    web = Frontend(
        "192.168.121.201",
        80,
        "TCP",
        "default/web",
        backends=(Backend("10.246.1.2", 80), Backend("10.246.1.3", 80)),
        excluded=(
            Excluded("10.246.9.9", "no lease", kind=Exclusion.NO_LEASE),
            Excluded("10.246.1.4", "not ready", kind=Exclusion.NOT_READY),
        ),
    )
    verdicts = {"default/old": ServiceVerdict("default/old", True, "spec does not decode")} if held else {}
    return Plan(
        revision,
        (web,),
        problems=(Problem("/registry/services/specs/default/bad", "malformed", "decode"),) if bad_key else (),
        verdicts=verdicts,
        denied=(Denial("evil/x", "192.168.121.201", 22, "TCP", "port not allowed"),) if denied else (),
    )


def _value(metrics: Metrics, line: str) -> bool:
    return line in metrics.exposition().decode().splitlines()


def test_every_sync_sets_the_figures(log: _Log) -> None:
    metrics = Metrics()
    counted = reporting.SyncReporter(metrics).applied(None, _plan(1), _Applied(), "partial", 0.01, 0.2, set())
    assert counted == reporting.Tally(2, {"no_lease": 1, "not_ready": 1})
    assert _value(metrics, "flannel_lb_backends 2.0") and _value(metrics, "flannel_lb_frontends 1.0")
    assert _value(metrics, 'flannel_lb_excluded_endpoints{reason="no_lease"} 1.0')


def test_log_lines_come_once_per_transition(log: _Log) -> None:
    reporter = reporting.SyncReporter(Metrics())

    def sync(old: Plan | None, new: Plan, held: set[str]) -> list[str]:
        log.events.clear()
        reporter.applied(old, new, _Applied(), "partial", 0.01, None, held)
        return sorted(log.events)

    bad = _plan(2, denied=True, bad_key=True, held=True)
    assert sync(None, bad, {"default/old"}) == ["exposure_denied", "input_bad", "service_held_over"]
    assert sync(bad, bad, {"default/old"}) == []  # the same state again: nothing to say
    assert sync(bad, _plan(3), set()) == ["input_recovered", "service_no_longer_held"]


def test_a_failed_sync_is_counted_by_kind(log: _Log) -> None:
    metrics = Metrics()
    reporting.SyncReporter(metrics).failed("full")
    assert _value(metrics, 'flannel_lb_syncs_total{kind="full",result="error"} 1.0')
