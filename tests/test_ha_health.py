"""keepalived's health file as the agent writes it (flannel_lb.daemon.ha_health): no root, no daemons."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import generate_latest
from structlog.testing import capture_logs

from flannel_lb.daemon.ha_health import HAHealth, boot_time, read_value
from flannel_lb.daemon.metrics import Metrics


def metric(metrics: Metrics, name: str) -> float | None:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def booted_long_ago() -> float:
    return 0.0


def test_a_fresh_box_is_unhealthy_until_its_first_sync_and_follows_each_verdict(tmp_path: Path) -> None:
    path = tmp_path / "agent-health"
    metrics = Metrics()
    health = HAHealth(path, metrics, booted=booted_long_ago)
    assert not path.exists() and not health.healthy
    assert metric(metrics, "flannel_lb_ha_healthy") == 0
    health.synced()
    assert path.read_text() == "0\n" and health.healthy
    assert metric(metrics, "flannel_lb_ha_healthy") == 1
    health.failed()
    assert path.read_text() == "1\n" and not health.healthy
    assert metric(metrics, "flannel_lb_ha_healthy") == 0
    health.synced()
    assert path.read_text() == "0\n" and health.writes == 3
    assert metric(metrics, "flannel_lb_ha_health_write_failures_total") == 0


def test_a_box_without_ha_exports_no_ha_metric() -> None:
    assert metric(Metrics(), "flannel_lb_ha_healthy") is None


def test_only_a_change_is_written_and_each_write_is_a_rename(tmp_path: Path) -> None:
    """keepalived reads the file on inotify: one rename per change, never an in-place write, nothing
    written when the verdict stays (every sync reports one)."""
    path = tmp_path / "agent-health"
    health = HAHealth(path, Metrics(), booted=booted_long_ago)
    health.synced()
    first = path.stat()
    for _ in range(5):
        health.synced()
    assert path.stat().st_ino == first.st_ino and path.stat().st_mtime_ns == first.st_mtime_ns
    assert health.writes == 1
    health.failed()
    health.failed()
    assert path.stat().st_ino != first.st_ino  # a new file renamed over the old one
    assert health.writes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent-health"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_restarted_agent_keeps_what_keepalived_reads_until_its_first_sync(tmp_path: Path) -> None:
    """SIGTERM or a crash of the agent leaves the file as it is (fail static: the rules stay), and the
    next agent does not rewrite it before it has something to say."""
    path = tmp_path / "agent-health"
    HAHealth(path, Metrics(), booted=booted_long_ago).synced()
    written = path.stat()
    metrics = Metrics()
    again = HAHealth(path, metrics, booted=booted_long_ago)
    assert again.healthy and again.writes == 0 and path.stat().st_ino == written.st_ino
    assert metric(metrics, "flannel_lb_ha_healthy") == 1
    again.synced()
    assert again.writes == 0  # no change: nothing written
    again.failed()
    assert read_value(path) == 1


def test_a_healthy_file_from_before_this_boot_is_reset(tmp_path: Path) -> None:
    """A state_dir that survives a reboot (not the default tmpfs) still holds the last 0: the rules it
    vouched for went with the reboot, so the agent puts 1 back until its first sync."""
    path = tmp_path / "agent-health"
    path.write_text("0\n")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    with capture_logs() as logs:
        health = HAHealth(path, Metrics(), booted=lambda: an_hour_ago + 60)
    assert path.read_text() == "1\n" and not health.healthy
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["ha_health_stale"]
    health.synced()
    assert path.read_text() == "0\n"


def test_garbage_in_the_file_counts_as_unhealthy_and_the_first_verdict_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "agent-health"
    path.write_text("zero\n")
    health = HAHealth(path, Metrics(), booted=booted_long_ago)
    assert health.written is None and not health.healthy
    health.failed()
    assert path.read_text() == "1\n"  # written although "1" was the verdict keepalived already inferred


def test_a_failed_write_never_raises_is_logged_once_counted_and_retried(tmp_path: Path) -> None:
    state_dir = tmp_path / "gone"  # e.g. the state_dir removed under the agent
    path = state_dir / "agent-health"
    metrics = Metrics()
    health = HAHealth(path, metrics, booted=booted_long_ago)
    with capture_logs() as logs:
        health.synced()
        for _ in range(3):
            health.flush()  # the loop retries every turn
        health.failed()
    assert [e["event"] for e in logs] == ["ha_health_write_failed"]  # once per streak
    assert metric(metrics, "flannel_lb_ha_health_write_failures_total") == 5
    assert not health.healthy and health.wanted == 1
    state_dir.mkdir()
    with capture_logs() as logs:
        health.flush()
        health.flush()
    assert path.read_text() == "1\n" and health.writes == 1
    assert [e["event"] for e in logs] == ["ha_health_write_recovered", "ha_health"]


def test_boot_time_is_read_from_proc_stat(tmp_path: Path) -> None:
    btime = boot_time()
    assert btime is not None and 0 < btime < time.time()
    fake = tmp_path / "stat"
    fake.write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n")
    assert boot_time(fake) == 1700000000.0
    fake.write_text("cpu  1 2 3\n")
    assert boot_time(fake) is None
