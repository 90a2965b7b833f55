"""When each backend check runs ([health]): spread over the interval, and never faster than `max_rate`.

Checking every target in one burst per interval makes 100k connects at once at 10k Services x 10
endpoints: a spike of CPU and SYNs every interval, and idle in between. Here each target owns a slot
in the interval, at the fraction of it given by a hash of the target (not by its position in the
plan), so a target keeps its slot when others come and go. A pass walks the slots in order, so every
target is checked exactly once per pass.

When targets / interval exceeds `max_rate`, the pass stretches to targets / max_rate seconds (the
effective interval): each target is checked less often rather than the LB or the pods being flooded.
On top of that, no more than `max_rate` checks start in any window of one second, whatever the hash
put close together.

A target that appears after its slot in the current pass has gone by is checked as soon as the rate
allows (a new backend is the likeliest to be broken) and counts as checked for that pass.

Pure: the caller passes the time in, so tests drive it with a clock of their own.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
_SPAN = 2**64  # slots are 64-bit: a target's slot / _SPAN is its fraction of the interval
WINDOW = 1.0  # seconds: the window `max_rate` is counted over


def slot_of(target: Hashable) -> int:
    """The target's place in the interval, from its own value only: the same across plan changes for
    the agent's life. Python's hash (seeded per process, so two LBs do not check a pod in step) is
    ten times cheaper than a digest, which counts at 100k targets."""
    return hash(target) % _SPAN


class CheckSchedule(Generic[K]):
    """Which targets to check now: `due(now)` gives them, `next_due(now)` says when to ask again."""

    def __init__(self, interval: float, max_rate: int, start: float) -> None:
        self.interval = interval
        self.max_rate = max_rate
        self._slot: dict[K, int] = {}
        self._at: dict[int, K] = {}  # slot -> target (a collision moves the later one to the next slot)
        self._slots: list[int] = []  # sorted
        self._pass_start = start
        self._done = -1  # the last slot checked in this pass (-1: none yet)
        self._cursor = 0  # index in _slots of the next slot to check in this pass
        self._soon: collections.OrderedDict[K, None] = collections.OrderedDict()  # late newcomers
        self._started: collections.deque[tuple[float, int]] = collections.deque()  # (time, checks) started
        self._in_window = 0
        self.passes = 0  # passes completed

    # --- the targets -------------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[K]) -> None:
        """Replace the targets. Those kept keep their slots and their place in the current pass.

        Called after every sync with the whole set (100k at 10k x 10): set operations in C, and the
        sorted slots patched in place when few changed."""
        new = targets if isinstance(targets, frozenset | set) else frozenset(targets)
        if self._slot.keys() == new:
            return
        gone = self._slot.keys() - new
        added = new.difference(self._slot)
        few = len(gone) + len(added) <= 64
        for t in gone:
            s = self._slot.pop(t)
            del self._at[s]
            self._soon.pop(t, None)
            if few:
                del self._slots[bisect.bisect_left(self._slots, s)]
        for t in added:
            s = slot_of(t)
            while s in self._at:  # two targets on one 64-bit slot: as good as never, but defined
                s = (s + 1) % _SPAN
            self._slot[t] = s
            self._at[s] = t
            if s <= self._done:  # its slot in this pass has gone by: check it soon
                self._soon[t] = None
            if few:
                bisect.insort(self._slots, s)
        if not few:
            self._slots = sorted(self._at)
        self._cursor = bisect.bisect_right(self._slots, self._done)

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def effective_interval(self) -> float:
        """How long a pass takes: `interval`, stretched so that the targets fit under `max_rate`."""
        return max(self.interval, len(self._slots) / self.max_rate)

    @property
    def rate_bound(self) -> bool:
        return len(self._slots) / self.interval > self.max_rate

    @property
    def checks_per_second(self) -> float:
        """The rate the schedule runs at (targets per effective interval)."""
        return len(self._slots) / self.effective_interval

    def offset(self, target: K) -> float:
        """Seconds into a pass at which `target` is due."""
        return self._slot[target] / _SPAN * self.effective_interval

    # --- the clock ---------------------------------------------------------------------------------

    def due(self, now: float, limit: int | None = None) -> list[K]:
        """The targets to start checking now: late newcomers first, then those whose slot has come,
        at most `limit` (free concurrency) and what `max_rate` leaves in the last second."""
        self._expire(now)
        budget = self.max_rate - self._in_window
        if limit is not None:
            budget = min(budget, limit)
        if self._cursor >= len(self._slots) and now >= self._pass_start + self.effective_interval:
            self._next_pass(now)  # only here: one call's targets belong to one pass (`passes`); when
            # this one ends in the call, `next_due` says now and the next call starts the next pass
        out: list[K] = []
        while budget > 0 and self._soon:
            out.append(self._soon.popitem(last=False)[0])
            budget -= 1
        while budget > 0 and self._cursor < len(self._slots):
            s = self._slots[self._cursor]
            if self._pass_start + s / _SPAN * self.effective_interval > now:
                break
            out.append(self._at[s])
            self._done = s
            self._cursor += 1
            budget -= 1
        if out:
            self._started.append((now, len(out)))
            self._in_window += len(out)
        return out

    def started(self, now: float) -> None:
        """The last batch `due` gave finished starting at `now` (opening sockets takes a while): count
        it from then, so that the checks really started stay under `max_rate` in any second."""
        if self._started and self._started[-1][0] < now:
            self._started[-1] = (now, self._started[-1][1])

    def next_due(self, now: float) -> float:
        """When `due` may next have something (never before the rate allows another check)."""
        self._expire(now)
        if self._in_window >= self.max_rate:
            return self._started[0][0] + WINDOW
        if self._soon:
            return now
        e = self.effective_interval
        if self._cursor < len(self._slots):
            return self._pass_start + self._slots[self._cursor] / _SPAN * e
        if not self._slots:
            return now + self.interval
        return max(now, self._pass_start + e) + self._slots[0] / _SPAN * e

    def _next_pass(self, now: float) -> None:
        e = self.effective_interval
        self.passes += 1
        self._pass_start += e
        if now - self._pass_start > max(e, 5 * WINDOW):  # far behind (a suspended host): afresh from now
            self._pass_start = now
        self._done, self._cursor = -1, 0
        self._soon.clear()  # the new pass reaches them at their slots

    def _expire(self, now: float) -> None:
        while self._started and self._started[0][0] <= now - WINDOW:
            self._in_window -= self._started.popleft()[1]
