"""The agent's verdict for keepalived: `[ha] state_dir/agent-health`, keepalived's `track_file`.

0 = this box's rules are in the kernel (a sync completed: from etcd, or the state file's plan at a boot
during an etcd outage); 1 = its last sync or verifying resync failed, or it has not completed one yet.
keepalived lowers a box that reads 1 below any healthy peer (`flannel_lb.ha.keepalived`), so the peer
takes the addresses; a box whose peer is no healthier keeps them (fail static).

What the agent does *not* report here: etcd being unreachable (both boxes see the same etcd, and the
master keeps serving its last good rules), and its own exit (a dead agent leaves the rules in the kernel:
no failover for it). Each verdict is written only when it changes, atomically (a temporary file renamed
over the old one in the same directory: keepalived reads it on inotify), and a failed write never
reaches the loop: it is logged once per streak, counted, and retried at the next turn of the loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from flannel_lb.daemon.metrics import Metrics

log = structlog.get_logger("flannel_lb.ha_health")

HEALTHY = 0
UNHEALTHY = 1


def boot_time(stat: Path = Path("/proc/stat")) -> float | None:
    """When this host booted (Unix time, /proc/stat btime); None if unreadable."""
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_value(path: Path) -> int | None:
    """The value keepalived reads from the file; None when there is no file or no number in it."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


class HAHealth:
    """Writes the health file for keepalived; `synced()` and `failed()` are the agent's two verdicts."""

    def __init__(
        self,
        path: Path,
        metrics: Metrics,
        *,
        booted: Callable[[], float | None] = boot_time,
    ) -> None:
        self.path = path
        self.gauge, self.write_failures = metrics.ha()
        self.written: int | None = None  # what the file holds, as far as this agent knows
        self.wanted: int | None = None  # the agent's verdict; differs from `written` after a failed write
        self.writes = 0  # successful writes (each a change)
        self._failing = False
        self._start(booted)

    def _start(self, booted: Callable[[], float | None]) -> None:
        """Take over what is there: an agent restarted under a running keepalived changes nothing until
        its first sync says something (the previous agent's rules are still in the kernel). A 0 written
        before this boot is stale (the rules it vouched for went with the reboot): it becomes 1."""
        self.written = read_value(self.path)
        if self.written == HEALTHY:
            btime = booted()
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                mtime = None
            if btime is not None and mtime is not None and mtime < btime:
                log.warning("ha_health_stale", path=str(self.path), action="reset to 1 until a sync")
                self._want(UNHEALTHY)
        self._gauge()

    @property
    def healthy(self) -> bool:
        """What keepalived is told now (a file it cannot read as 0 counts as unhealthy)."""
        return self.written == HEALTHY

    def synced(self) -> None:
        """A sync completed: the kernel holds this box's plan."""
        self._want(HEALTHY)

    def failed(self) -> None:
        """A sync (or the periodic verifying resync) failed: the kernel may not hold the plan."""
        self._want(UNHEALTHY)

    def flush(self) -> None:
        """Retry a verdict whose write failed (the loop calls this every turn; no I/O otherwise)."""
        if self.wanted is not None and self.wanted != self.written:
            self._write(self.wanted)

    def _want(self, value: int) -> None:
        self.wanted = value
        self.flush()

    def _write(self, value: int) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{value}\n".encode())
                os.fchmod(fd, 0o644)
                os.fsync(fd)  # never an empty file after a crash: keepalived would read it as 0
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            self.write_failures.inc()
            if not self._failing:
                self._failing = True
                log.error("ha_health_write_failed", path=str(self.path), value=value, error=str(e))
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if self._failing:
            self._failing = False
            log.info("ha_health_write_recovered", path=str(self.path))
        self.written = value
        self.writes += 1
        self._gauge()
        log.info(
            "ha_health",
            value=value,
            meaning="healthy: may hold the addresses" if value == HEALTHY else "unhealthy: peer preferred",
        )

    def _gauge(self) -> None:
        self.gauge.set(1 if self.healthy else 0)
