"""Commands inside a named network namespace: the one place that spells `ip netns exec`."""

from __future__ import annotations

from collections.abc import Sequence


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """`argv` to run inside `netns`; unchanged for None (this process's own namespace)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
