"""The sync-mode policy both writers follow (`dataplane.modes.choose_mode`), over every input."""

from __future__ import annotations

import itertools

import pytest

from flannel_lb.dataplane.modes import choose_mode


@pytest.mark.parametrize(
    ("full", "verify", "remembers", "unchanged"), list(itertools.product([False, True], repeat=4))
)
def test_every_combination(full: bool, verify: bool, remembers: bool, unchanged: bool) -> None:
    asked: list[bool] = []

    def generation_unchanged() -> bool:
        asked.append(True)
        return unchanged

    mode, read = choose_mode(full=full, verify=verify, remembers=remembers, unchanged=generation_unchanged)
    if full:
        want = ("full", False)  # a full rewrite compares with nothing
    elif not remembers:
        want = ("verify" if verify else "adopt", True)  # no memory: the kernel is all there is
    elif verify:
        want = ("verify", not unchanged)  # memory is the kernel while nobody else committed
    else:
        want = ("partial", False)
    assert (mode, read) == want
    assert bool(asked) == (not full and verify and remembers)  # the netlink round trip only when it decides
