"""Maglev tables (flannel_lb/dataplane/maglev.py) and what the nftables layout makes of them (pure).

The properties the issue asks for: every backend gets its share of the slots, one backend more or less
moves about 1/N of them, and the same backends give the same table in any process and any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.dataplane import maglev
from flannel_lb.dataplane.iptables.rules import build_ruleset
from flannel_lb.dataplane.nftables.layout import frontend_entries
from flannel_lb.dataplane.options import Options
from flannel_lb.plan.model import Backend, Frontend, Plan

PODS = st.builds(
    lambda a, b, c, port: f"10.{a}.{b}.{c}:{port}",
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(1, 254),
    st.sampled_from([53, 80, 8080, 8443]),
)
BACKENDS = st.lists(PODS, min_size=2, max_size=30, unique=True)


def shares(table: tuple[int, ...], n: int) -> list[int]:
    counts = [0] * n
    for i in table:
        counts[i] += 1
    return counts


def owners(names: list[str]) -> list[str]:
    """slot -> backend name, for the table these backends get."""
    order = maglev.canonical(names)
    return [order[i] for i in maglev.populate(names, maglev.table_size(len(order)))]


def moved(before: list[str], after: list[str]) -> int:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b)


@settings(max_examples=150, deadline=None)
@given(BACKENDS)
def test_every_backend_gets_its_share_of_a_full_table(names: list[str]) -> None:
    size, n = maglev.table_size(len(names)), len(names)
    table = maglev.populate(names, size)
    assert len(table) == size
    counts = shares(table, n)
    # The population takes turns, one slot each: shares differ by at most one (paper, section 3.4).
    assert set(counts) <= {size // n, -(-size // n)}, counts
    assert (max(counts) - min(counts)) / (size / n) <= 1 / maglev.SLOTS_PER_BACKEND  # 2% of the mean


@settings(max_examples=150, deadline=None)
@given(BACKENDS, st.data())
def test_removing_one_backend_moves_about_one_nth(names: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(names))
    rest = [n for n in names if n != gone]
    before, after = owners(names), owners(rest)
    if maglev.table_size(len(rest)) != maglev.table_size(len(names)):
        return  # a step in table size rebuilds the table (documented); the sizes here never cross one
    share = -(-len(before) // len(names))
    changed = moved(before, after)
    assert before.count(gone) <= changed <= 3 * share, (changed, share)


@settings(max_examples=150, deadline=None)
@given(BACKENDS, PODS)
def test_adding_one_backend_moves_about_one_nth(names: list[str], new: str) -> None:
    if new in names or maglev.table_size(len(names) + 1) != maglev.table_size(len(names)):
        return
    before, after = owners(names), owners([*names, new])
    share = -(-len(after) // (len(names) + 1))
    assert after.count(new) <= moved(before, after) <= 3 * share


def test_modulo_n_would_fail_the_disruption_bound() -> None:
    """The bound above is not vacuous: `hash % N`, what a plain jhash mod N map does, moves (N-1)/N."""
    names = [f"10.246.{i}.2:8080" for i in range(10)]
    size = maglev.table_size(10)
    before = [names[s % 10] for s in range(size)]
    after = [names[:9][s % 9] for s in range(size)]
    assert moved(before, after) > 3 * -(-size // 10)
    assert moved(owners(names), owners(names[:9])) <= 3 * -(-size // 10)


@settings(max_examples=60, deadline=None)
@given(BACKENDS, st.randoms(use_true_random=False))
def test_the_order_of_the_backends_does_not_matter(names: list[str], rng: object) -> None:
    shuffled = list(names)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert owners(shuffled) == owners(names)


def test_the_same_backends_give_the_same_table_in_a_fresh_process() -> None:
    """No per-process state (Python's salted hash()): two other interpreters, other hash seeds."""
    names = [f"10.246.{i}.{j}:80" for i in range(1, 4) for j in (2, 3)]
    code = (
        "import json, sys; from flannel_lb.dataplane import maglev; names = json.loads(sys.argv[1]);"
        "print(json.dumps(maglev.populate(names, maglev.table_size(len(names)))))"
    )
    tables = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(names[::-1] if seed == "2" else names)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        tables.append(tuple(json.loads(out)))
    assert tables[0] == tables[1] == maglev.populate(names, maglev.table_size(len(names)))


def test_table_sizes_are_primes_with_fifty_slots_per_backend() -> None:
    assert maglev.table_size(1) == 1 and maglev.populate(["10.246.1.2:80"], 1) == (0,)  # one element
    for n in (2, 5, 6, 20, 21, 81, 82, 327, 328, 1310, 1311, 5000):
        size = maglev.table_size(n)
        assert all(size % d for d in range(2, int(size**0.5) + 1)), size
        assert size >= 50 * n or size == maglev.SIZES[-1]
    assert maglev.table_size(3) == 251 and maglev.table_size(6) == 1021
    with pytest.raises(ValueError, match="prime"):
        maglev.populate(["a", "b"], 250)


def frontend(*ips: str, port: int = 8080) -> Frontend:
    return Frontend(
        "192.168.121.201", 80, "TCP", "default/web", "http", backends=tuple(Backend(ip, port) for ip in ips)
    )


def test_the_layout_writes_the_table_as_endpoint_elements() -> None:
    opts = Options(balance="maglev")
    ips = ("10.246.3.2", "10.246.1.2", "10.246.2.2")
    entries = frontend_entries(frontend(*ips), opts)
    assert entries.balance == (251, "tcp")
    (dispatch, *slots) = entries.elements
    assert dispatch == ("services", "192.168.121.201 . tcp . 80", "goto maglev-251-tcp")
    assert [key for _, key, _ in slots] == [f"192.168.121.201 . 80 . {s}" for s in range(251)]
    want = owners([f"{ip}:8080" for ip in ips])
    assert [value for _, _, value in slots] == [w.replace(":", " . ") for w in want]
    # The order the plan lists its backends in does not change the table.
    assert frontend_entries(frontend(*sorted(ips)), opts).elements == entries.elements
    # random keeps one element per backend, and its own chains
    assert len(frontend_entries(frontend(*ips), Options()).elements) == 1 + len(ips)


def test_the_iptables_layouts_refuse_maglev() -> None:
    with pytest.raises(ValueError, match=r"maglev.*at random"):
        build_ruleset(Plan(1, (frontend("10.246.1.2"),)), Options(balance="maglev"))


def test_more_backends_than_the_largest_table_hash_mod_n_and_say_so() -> None:
    n = maglev.SIZES[-1] + 1
    ips = [f"10.{244 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(n)]
    entries = frontend_entries(frontend(*ips), Options(balance="maglev"))
    assert entries.balance == (n, "tcp") and not entries.slots
    assert entries.elements[0][2] == f"goto maglev-{n}-tcp"  # its own chain: jhash ... mod n
    assert len(entries.elements) == 1 + n
    assert any("largest Maglev table" in why for _, why in entries.skipped)
