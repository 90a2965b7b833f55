"""When the agent syncs: the whole timing policy in one small type (kube-proxy's BoundedFrequencyRunner).

Changes coalesce: a sync runs at most once per `min_interval` however fast etcd changes. A verifying
full sync runs every `full_interval` even when nothing changed (it repairs drift). A failed sync is
retried after a wait that doubles up to `retry_max` (nothing else runs meanwhile; the writer makes a
retry a full rewrite), and a success resets the wait.
Kernel path checks (netcheck) run every `netcheck_interval`. The scheduler only answers questions
about time; the agent does the work and reports back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Due = Literal["full", "partial"]


@dataclass
class SyncScheduler:
    min_interval: float
    full_interval: float
    netcheck_interval: float = 2.0
    retry_min: float = 1.0
    retry_max: float = 30.0
    now: float = 0.0  # the clock at construction: the first full sync is one full_interval later
    pending_since: float | None = field(default=None, init=False)  # a change waits since then
    retry_wait: float = field(init=False)
    _last_sync: float = field(default=-1e18, init=False)
    _next_full: float = field(init=False)
    _next_netcheck: float = field(default=0.0, init=False)
    _retry_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.retry_wait = self.retry_min
        self._next_full = self.now + self.full_interval

    def change(self, now: float) -> None:
        """Something changed that the kernel does not hold yet."""
        if self.pending_since is None:
            self.pending_since = now

    def due(self, now: float) -> Due | None:
        """The sync to run now, if any. While a failed sync waits for its retry, nothing else runs."""
        if self._retry_at is not None:
            if now < self._retry_at:
                return None
            return "full" if now >= self._next_full else "partial"
        if now >= self._next_full:
            return "full"
        if self.pending_since is None:
            return None
        return "partial" if now - self._last_sync >= self.min_interval else None

    def netcheck_due(self, now: float) -> bool:
        return now >= self._next_netcheck

    def netcheck_done(self, now: float) -> None:
        self._next_netcheck = now + self.netcheck_interval

    def netcheck_soon(self) -> None:
        """Check the kernel paths at the next step instead of waiting out the interval."""
        self._next_netcheck = 0.0

    def deadline(self, now: float, *, watching: bool = True) -> float:
        """The next time `due` or `netcheck_due` may answer differently (bounds the agent's wait);
        `watching=False` before the first snapshot, when no netcheck runs yet."""
        times = [self._next_netcheck if watching else now + 1.0]
        if self._retry_at is not None:
            times.append(self._retry_at)
        else:
            times.append(self._next_full)
            if self.pending_since is not None:
                times.append(self._last_sync + self.min_interval)
        return min(times)

    def synced(self, now: float, *, full: bool) -> None:
        """A sync succeeded: nothing is pending, the retry wait starts over."""
        self.pending_since, self._retry_at, self.retry_wait = None, None, self.retry_min
        self._last_sync = now
        if full:
            self._next_full = now + self.full_interval

    def failed(self, now: float) -> float:
        """A sync failed: the change stays pending and is retried, as a full sync, after the returned wait."""
        wait = self.retry_wait
        self._retry_at = now + wait
        self.retry_wait = min(wait * 2, self.retry_max)
        if self.pending_since is None:  # a failed periodic sync is retried too
            self.pending_since = now
        return wait

    def skip_full(self) -> None:
        """No periodic full sync until the next success says when (tests, one-shot runs)."""
        self._next_full = float("inf")
