"""The sync bookkeeping both iptables writers (restore, libiptc) inherit.

A writer remembers what it last applied, so a sync only carries what changed. It trusts that memory
only while it is earned: the first sync adopts what the kernel has (a restarted agent takes over
without a flush: identical chains are left alone, stale ones replaced in the same transaction), after
a failure the next sync is a full rewrite, and `verify=True` (periodically) compares with a fresh
read-back of the kernel to repair drift without rewriting what is still right.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from flannel_lb.dataplane.generation import after_own_commits
from flannel_lb.dataplane.iptables.changes import Changes, compute_changes, transactions
from flannel_lb.dataplane.iptables.render import render_changes, render_transactions
from flannel_lb.dataplane.iptables.rules import RuleSet
from flannel_lb.dataplane.modes import Mode, choose_mode


@dataclass(frozen=True, slots=True)
class SyncResult:
    mode: Mode
    changes: Changes
    text: str  # the iptables-restore text of the transaction ("" when nothing had to change)
    seconds: float

    @property
    def applied(self) -> bool:
        return not self.changes.empty

    def summary(self) -> dict[str, int]:
        return self.changes.summary()


class SyncState(ABC):
    """An iptables writer: programs a RuleSet into the kernel, what traffic sees changing in one atomic
    step per sync. Chooses adopt/verify/full/partial, computes the changes, forgets its memory when a
    sync fails; subclasses read the kernel back and commit."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._current: RuleSet | None = None  # what the kernel holds, as far as this writer knows
        self._need_full = False
        self.forward_filtered: bool | None = None  # from the last read-back (see RuleSet.forward_filtered)
        # Called with the desired RuleSet and the kernel's right after each read-back (adopt, verify,
        # full); returns what to apply instead (IptablesPlane: the FORWARD jump as the kernel requires).
        self.settle: Callable[[RuleSet, RuleSet], RuleSet] | None = None
        self._genid: int | None = None  # nf_tables generation at our last commit or read-back
        self.leaf_block: int | None = None  # see `changes.transactions`; None: one transaction per sync
        self.read_backs = 0  # kernel reads done by adopt/verify/full (the generation check avoids most)

    @property
    def prefix(self) -> str:
        return self._prefix

    @abstractmethod
    def read_owned(self) -> RuleSet: ...

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        """Packets dropped per restricted frontend (`restore.read_source_range_drops`); {}: no kernel."""
        return {}

    def generation(self) -> int | None:
        """The kernel's nf_tables generation (see `generation.py`), or None where there is none to
        trust (iptables-legacy): then every verify reads the kernel back."""
        return None

    @abstractmethod
    def _commit(self, changes: Changes, text: str) -> None: ...

    @abstractmethod
    def cleanup(self) -> Changes:
        """Remove every owned chain and jump (nothing else); the next sync starts from scratch."""

    def close(self) -> None:
        """Release what the writer holds (threads); the kernel state is left as it is."""
        self._current = None

    def next_sync(
        self, desired: RuleSet, *, full: bool = False, verify: bool = False
    ) -> tuple[Mode, Changes]:
        """What the next sync would do (reads the kernel when this writer's memory is not trusted).

        full: rewrite every chain (after a failure: kube-proxy's rule). verify: compare with what the
        kernel holds instead of with memory, and rewrite only what differs: repairs drift (someone
        flushed or edited an owned chain) at the cost of one iptables-save, not of a full rewrite.
        """
        mode, changes, _ = self._plan(desired, full=full, verify=verify)
        return mode, changes

    def _plan(self, desired: RuleSet, *, full: bool, verify: bool) -> tuple[Mode, Changes, RuleSet]:
        if desired.prefix != self._prefix:
            raise ValueError(f"rule set prefix {desired.prefix!r} != writer prefix {self._prefix!r}")
        mode, read = choose_mode(
            full=full or self._need_full,
            verify=verify,
            remembers=self._current is not None,
            unchanged=lambda: self._genid is not None and self._genid == self.generation(),
        )
        if mode == "full":  # read anyway: stale chains found there are deleted
            kernel, desired = self._read_back(desired)
            return mode, compute_changes(desired, kernel, full=True), desired
        if read:
            kernel, desired = self._read_back(desired)
            return mode, compute_changes(desired, kernel), desired
        assert self._current is not None
        return mode, compute_changes(desired, self._current), desired

    def _read_back(self, desired: RuleSet) -> tuple[RuleSet, RuleSet]:
        self._genid = self.generation()  # before the read: a commit during it shows up next time
        self.read_backs += 1
        kernel = self.read_owned()
        if kernel.forward_filtered is not None:
            self.forward_filtered = kernel.forward_filtered
        return kernel, (desired if self.settle is None else self.settle(desired, kernel))

    def render(self, desired: RuleSet, *, full: bool = False, verify: bool = False) -> str:
        """The exact restore text the next sync would apply ("" if nothing would change)."""
        return render_changes(self.next_sync(desired, full=full, verify=verify)[1], self.leaf_block)

    def sync(self, desired: RuleSet, *, full: bool = False, verify: bool = False) -> SyncResult:
        """One atomic transaction (none if nothing changed; with `leaf_block`, unreferenced chains may
        go first in transactions of their own); a failure makes the next sync a full one."""
        start = time.perf_counter()
        mode, changes, desired = self._plan(desired, full=full, verify=verify)
        parts = transactions(changes, self.leaf_block)
        text = render_transactions(parts)
        if not changes.empty:
            before = self.generation()
            try:
                self._commit(changes, text)
            except BaseException:
                self._current, self._need_full, self._genid = None, True, None
                raise
            # iptables-restore commits each `*table` section on its own: one commit per table
            commits = sum(len(t.tables()) for t in parts)
            self._genid = after_own_commits(before, self.generation(), max(1, commits))
        self._current, self._need_full = desired, False
        return SyncResult(mode, changes, text, time.perf_counter() - start)

    def forget(self) -> None:
        """Make the next sync a full one."""
        self._current, self._need_full, self._genid = None, True, None
