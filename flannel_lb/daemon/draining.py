"""A drain in progress: the VIPs are withdrawn, the rules stay, and the agent waits for the open TCP
flows to the VIPs (conntrack, kernel/conntrack.py) to end, or for `[bgp] drain_timeout` to pass.

Counted every POLL seconds in the announcer's network namespace (the box's own), or less often when a
count takes long (a huge table: at most a tenth of the loop's time goes to counting). A failed count
(netlink refused) is logged once and the drain then runs to its deadline: it never ends early on a
guess.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from flannel_lb.kernel.conntrack import open_flows

log = structlog.get_logger("flannel_lb.agent")

POLL = 0.25  # seconds between counts


def count_open_flows(addresses: tuple[str, ...], netns: str | None) -> int:
    return open_flows(addresses, netns=netns)


@dataclass
class Drain:
    """The drain's clock and its last count; the agent's loop calls `tally` when `due`."""

    addresses: tuple[str, ...]
    netns: str | None
    started: float
    timeout: float
    count: Callable[[tuple[str, ...], str | None], int] = count_open_flows
    open: int = -1  # the last count; -1: not counted (yet, or the count failed)
    next_check: float = 0.0
    counting_failed: bool = False  # logged once

    @property
    def deadline(self) -> float:
        return self.started + self.timeout

    def tally(self, now: float) -> int:
        """Count the open flows now (-1 if conntrack cannot be read)."""
        started = time.perf_counter()
        try:
            self.open = self.count(self.addresses, self.netns)
        except Exception as e:  # a broken netlink read must not stop the drain (nor end it early)
            if not self.counting_failed:
                log.error("drain_count_failed", error=repr(e), action="waiting for the deadline")
            self.counting_failed = True
            self.open = -1
        self.next_check = now + max(POLL, 10 * (time.perf_counter() - started))
        return self.open

    def due(self, now: float) -> bool:
        return now >= self.next_check or now >= self.deadline

    def finished(self, now: float) -> str | None:
        """Why the drain is over ("flows finished", "deadline"), or None to keep waiting."""
        if self.open == 0:
            return "flows finished"
        if now >= self.deadline:
            return "deadline"
        return None
