"""How a writer picks a sync's mode: the one policy both data planes (iptables, nftables) follow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Mode = Literal["adopt", "verify", "full", "partial"]


def choose_mode(
    *, full: bool, verify: bool, remembers: bool, unchanged: Callable[[], bool]
) -> tuple[Mode, bool]:
    """The sync's mode, and whether it compares with a fresh read-back of the kernel (else: memory).

    `full` (asked for, or owed after a failed sync) rewrites everything and compares with nothing (a
    writer may still read the kernel to find what to delete). A writer with no memory (its first sync)
    reads the kernel and adopts what matches. `verify` compares with a read-back, unless `unchanged()`
    says nobody committed since the writer's own last commit or read (the kernel's nf_tables
    generation): then its memory is what the kernel holds. Otherwise the sync is partial, against
    memory. `unchanged` is only called for a verify with memory: it costs a netlink round trip.
    """
    if full:
        return "full", False
    if verify and remembers and unchanged():
        return "verify", False
    if verify or not remembers:
        return ("verify" if verify else "adopt"), True
    return "partial", False
