"""Memory tuning for a process that holds a large, long-lived cluster: two moments, two calls.

At 10k Services the decoded cluster is about a million objects that live as long as the agent. Left
to the cyclic collector, every full collection walks them and stalls a sync; frozen (`gc.freeze`)
they are out of its sight. The cold start also has a transient peak (the snapshot, decoding, the
first transaction's text) whose freed heap glibc keeps unless asked to hand it back.
Figures: docs/benchmarks.md (cold start, memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc


def first_snapshot_decoded() -> None:
    """The cluster is decoded and the first plan is next: freeze what exists (nothing unreachable is
    left at this point to be frozen with it), so the first plan pays no full collection over it."""
    gc.freeze()


def first_sync_done() -> None:
    """What the first sync built (plan, rules) joins the cluster out of the collector's sight, and the
    cold start's garbage (the snapshot's bytes, the first transaction's text) goes back to the kernel."""
    gc.collect()
    gc.freeze()
    release_free_memory()


def release_free_memory() -> None:
    """Hand freed heap back to the kernel (glibc's malloc_trim); nothing to do elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
