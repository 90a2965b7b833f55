"""The memoised RuleBuilder, the two-level (bucket) dispatch and the overlay guard, as pure data.

A small evaluator walks the rendered chains the way the kernel's nat/filter traversal would for the
rule shapes flannel-lb emits (-d ADDR/LEN, -p, --dport N or LO:HI, -j), so the tests check where a
packet ends and how many rules it evaluated on the way, not just the text.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.dataplane.iptables.changes import compute_changes
from flannel_lb.dataplane.iptables.render import render
from flannel_lb.dataplane.iptables.rules import (
    Rule,
    RuleBuilder,
    RuleSet,
    bucket_leaves,
    build_ruleset,
)
from flannel_lb.dataplane.iptables.savefile import parse_save
from flannel_lb.dataplane.iptables.sync_state import SyncState
from flannel_lb.dataplane.options import Options, overlay_udp_port
from flannel_lb.dataplane.plane import IptablesPlane
from flannel_lb.plan.model import Backend, Frontend, Plan
from tests.test_dataplane_rules import LB, as_iptables_save, frontend_st

VIP = "192.168.121.210"


def backends(n: int, seed: int = 0) -> tuple[Backend, ...]:
    return tuple(Backend(f"10.246.{(seed + i) % 250 + 1}.2", 8080) for i in range(n))


def shared_vip(n: int, *, start: int = 20000, step: int = 4, protocol: str = "TCP") -> list[Frontend]:
    """n frontends on one address, many ports (the benchmark's shape)."""
    return [
        Frontend(VIP, start + step * i, protocol, f"bench/s{i}", "http", backends=backends(3, i))
        for i in range(n)
    ]


def own_addresses(n: int, kind: str = "external") -> list[Frontend]:
    """n frontends with an address each (MetalLB's shape, or cluster IPs)."""
    base = int(ipaddress.IPv4Address("10.96.0.0" if kind == "cluster-ip" else "192.168.128.0"))
    return [
        Frontend(
            str(ipaddress.IPv4Address(base + 7 * i + 1)),
            443,
            "TCP",
            f"a/o{i}",
            backends=backends(2, i),
            kind=kind,
        )
        for i in range(n)
    ]


# --- a packet's walk through the chains ---------------------------------------------------------------


def _matches(rule: Rule, dst: str, proto: str, port: int) -> bool:
    m = rule.matches
    for i, tok in enumerate(m):
        arg = m[i + 1] if i + 1 < len(m) else ""
        if tok == "-d" and ipaddress.IPv4Address(dst) not in ipaddress.IPv4Network(arg):
            return False
        if tok == "-p" and arg != proto:
            return False
        if tok == "--dport":
            lo, _, hi = arg.partition(":")
            if not int(lo) <= port <= int(hi or lo):
                return False
        if tok in ("-m", "-s", "-i", "-o", "!") and arg not in ("tcp", "udp", "sctp"):
            raise AssertionError(f"unexpected match in a dispatch rule: {rule.args()}")
    return True


def walk(rs: RuleSet, table: str, chain: str, dst: str, proto: str, port: int) -> tuple[str, int]:
    """(the FE chain or REJECT a packet ends in, "" if none; rules evaluated), from `chain`."""
    evaluated = 0

    def visit(name: str) -> str | None:
        nonlocal evaluated
        c = rs.get(table, name)
        assert c is not None, name
        for rule in c.rules:
            evaluated += 1
            if not _matches(rule, dst, proto, port):
                continue
            if rule.jump == "RETURN":
                return None
            if rule.jump == "REJECT" or rule.jump.startswith(rs.prefix + "FE-"):
                return rule.jump
            found = visit(rule.jump)  # a bucket or FLB-SERVICES: returns when nothing matched there
            if found is not None:
                return found
        return None

    return visit(chain) or "", evaluated


def fe_of(rs: RuleSet, f: Frontend) -> str:
    return dict(rs.frontend_chains)[f.label]


# --- RuleBuilder ---------------------------------------------------------------------------------------


def test_the_builder_rebuilds_only_changed_frontends() -> None:
    fes = shared_vip(300)
    builder = RuleBuilder()
    first = builder.build(Plan(1, tuple(fes)))
    assert len(builder.rebuilt) == 300 and builder.reused == 0
    changed = dataclasses.replace(fes[150], backends=fes[150].backends[:2])
    fes2 = [*fes[:150], changed, *fes[151:]]
    second = builder.build(Plan(2, tuple(fes2)))
    assert builder.rebuilt == (changed.label,) and builder.reused == 299
    assert second == build_ruleset(Plan(2, tuple(fes2)))
    # unchanged frontends hand back the very same chains: the diff never looks inside them
    unchanged = [c for c in second.chains if c.role in ("frontend", "endpoint")]
    assert sum(first.get(c.table, c.name) is c for c in unchanged) == 299

    # A re-plan of everything (lease change) makes new but equal Frontend objects: still nothing rebuilt.
    copies = tuple(dataclasses.replace(f) for f in fes2)
    assert builder.build(Plan(3, copies)) == second and builder.rebuilt == ()
    # Options that do not shape frontend chains (the overlay port arriving with flannel's config) keep them;
    # others (a config reload) rebuild everything, once.
    builder.build(Plan(3, copies), Options(overlay_udp_port=8472, bucket_size=64, masquerade=False))
    assert builder.rebuilt == ()
    builder.build(Plan(3, copies), Options(comments=False))
    assert len(builder.rebuilt) == 300
    builder.build(Plan(3, copies), Options(comments=False))
    assert builder.rebuilt == ()


@pytest.fixture
def key_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How often Rule.key() (normalising a rule for comparison) ran."""
    calls = [0]
    real = Rule.key

    def counting(self: Rule) -> tuple[str, ...]:
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(Rule, "key", counting)
    yield calls


@pytest.mark.parametrize("bucket_size", [0, 128])  # 0: one flat dispatch chain
def test_the_diff_of_unchanged_chains_costs_no_comparisons(key_calls: list[int], bucket_size: int) -> None:
    opts = Options(bucket_size=bucket_size)
    fes = own_addresses(1000)
    builder = RuleBuilder()
    before = builder.build(Plan(1, tuple(fes)), opts)
    fes[500] = dataclasses.replace(fes[500], backends=backends(3, 77))
    after = builder.build(Plan(2, tuple(fes)), opts)
    key_calls[0] = 0
    assert compute_changes(after, RuleSet(after.prefix, after.chains, after.jumps)).empty
    jumps = key_calls[0]  # the builtin-chain jumps are always compared (a few)
    key_calls[0] = 0
    changes = compute_changes(after, before)
    # Only the one rule that differs is normalised (both sides), not the other 999 dispatch rules.
    assert key_calls[0] - jumps == 2
    written = {c.name for c in changes.write}
    assert fe_of(after, fes[500]) in written and changes.delete == (("nat", fe_of(before, fes[500])),)
    assert len(written) == 2  # its FE chain and the chain that jumps to it (flat, or its bucket)
    key_calls[0] = 0
    assert compute_changes(after, after).empty and key_calls[0] == 0


POOL_OPTIONS = [
    Options(),
    Options(comments=False),
    Options(bucket_size=2),
    Options(bucket_size=3, overlay_udp_port=53),
    Options(prefix="X", bucket_size=1),
    Options(mark=0x1000, reject_empty=False),
    Options(snat_pool=("10.246.90.1",), forward_accept="always", overlay_udp_port=8472),
]


@settings(max_examples=150, deadline=None)
@given(
    pool=st.lists(frontend_st, min_size=1, max_size=14),
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(0, 13), max_size=14),  # which pool frontends (repeats: duplicate keys)
            st.lists(st.integers(0, 13), max_size=3),  # which of them arrive as equal copies
            st.integers(0, len(POOL_OPTIONS) - 1),
            st.booleans(),  # forward_filtered
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_the_builder_equals_build_ruleset_over_any_sequence_of_plans(
    pool: list[Frontend], steps: list[tuple[list[int], list[int], int, bool]]
) -> None:
    builder = RuleBuilder()
    for rev, (picks, copied, o, filtered) in enumerate(steps):
        chosen = [pool[i % len(pool)] for i in picks]
        chosen = [dataclasses.replace(f) if i in copied else f for i, f in enumerate(chosen)]
        plan, opts = Plan(rev, tuple(chosen)), POOL_OPTIONS[o]
        built = builder.build(plan, opts, forward_filtered=filtered)
        assert built == build_ruleset(plan, opts, forward_filtered=filtered)
        assert built.skipped == build_ruleset(plan, opts).skipped


# --- buckets -------------------------------------------------------------------------------------------

key_st = st.one_of(
    st.integers(0, 2**48 - 1),
    st.tuples(st.sampled_from([0xC0A879C9, 0xC0A879CA, 0x0A600001]), st.integers(1, 65535)).map(
        lambda t: t[0] << 16 | t[1]
    ),
    st.integers(0x0A600000, 0x0A6FFFFF).map(lambda a: a << 16 | 80),
)


def leaf_map(keys: list[int], size: int) -> dict[tuple[int, int], set[int]]:
    return {(p, n): set(keys[lo:hi]) for lo, hi, p, n in bucket_leaves(keys, size)}


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(key_st, min_size=1, max_size=80, unique=True).map(sorted), size=st.integers(1, 9))
def test_buckets_partition_the_keys_into_disjoint_prefixes(keys: list[int], size: int) -> None:
    leaves = bucket_leaves(keys, size)
    assert [lo for lo, _, _, _ in leaves] == [0, *(hi for _, hi, _, _ in leaves[:-1])]
    assert leaves[-1][1] == len(keys)
    end = -1
    for lo, hi, prefix, length in leaves:
        assert 0 < hi - lo <= size
        shift = 48 - length
        assert prefix >> shift << shift == prefix
        assert all(k >> shift << shift == prefix for k in keys[lo:hi])
        assert prefix > end  # disjoint and in order
        end = prefix + (1 << shift) - 1


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(key_st, min_size=1, max_size=80, unique=True).map(sorted),
    extra=key_st,
    size=st.integers(1, 9),
)
def test_one_more_key_changes_at_most_the_bucket_it_falls_in(keys: list[int], extra: int, size: int) -> None:
    if extra in keys:
        return
    before, after = leaf_map(keys, size), leaf_map(sorted([*keys, extra]), size)
    gone, new = before.keys() - after.keys(), after.keys() - before.keys()
    # one bucket gains it, or splits into two (one of them possibly just the new key)
    assert len(gone) <= 1 and len(new) <= 2 and len(gone) + len(new) <= 3
    for leaf in before.keys() & after.keys():
        assert after[leaf] - before[leaf] <= {extra} and before[leaf] <= after[leaf]


def test_small_setups_keep_the_flat_chain() -> None:
    rs = build_ruleset(Plan(1, tuple(shared_vip(128))))
    services = rs.get("nat", "FLB-SERVICES")
    assert services is not None and len(services.rules) == 128
    assert all(r.jump.startswith("FLB-FE-") for r in services.rules)
    assert not [c for c in rs.chains if c.role == "bucket"]
    assert [c.role for c in build_ruleset(Plan(1, tuple(shared_vip(129)))).chains].count("bucket") == 2


@pytest.mark.parametrize(
    "frontends",
    [
        pytest.param(shared_vip(2000), id="one-address"),
        pytest.param(own_addresses(2000), id="own-addresses"),
        pytest.param(
            shared_vip(700, protocol="UDP") + shared_vip(700) + own_addresses(600, "cluster-ip"), id="mixed"
        ),
    ],
)
def test_two_level_dispatch_reaches_every_frontend_in_few_rules(frontends: list[Frontend]) -> None:
    rs = build_ruleset(Plan(1, tuple(frontends)), Options(overlay_udp_port=8472))
    most = 0
    for f in frontends:
        chain = "FLB-LOCAL" if f.kind == "cluster-ip" else "FLB-SERVICES"
        target, evaluated = walk(rs, "nat", chain, f.address, f.protocol.lower(), f.port)
        assert target == fe_of(rs, f), f.label
        most = max(most, evaluated)
    roots = {c.name: len(c.rules) for c in rs.chains if c.name in ("FLB-SERVICES", "FLB-LOCAL")}
    assert most <= max(roots.values()) + 1 + 128  # a root, the guard, one bucket (+ FLB-LOCAL's last jump)
    assert most < 300, (most, roots)  # the flat chain: up to 2,000 rules
    buckets = [c for c in rs.chains if c.role == "bucket"]
    assert all(len(c.rules) <= 128 for c in buckets)
    # No frontend: the root only. The overlay's packets: one rule.
    nothing, evaluated = walk(rs, "nat", "FLB-SERVICES", VIP, "tcp", 19999)
    assert nothing == "" and evaluated <= roots["FLB-SERVICES"] + 128
    assert walk(rs, "nat", "FLB-SERVICES", VIP, "udp", 8472) == ("", 1)
    assert walk(rs, "nat", "FLB-LOCAL", "10.246.7.2", "udp", 8472) == ("", 1)


def test_a_change_rewrites_one_bucket_not_the_dispatch_chain() -> None:
    fes = shared_vip(1000) + own_addresses(1000)
    builder = RuleBuilder()
    before = builder.build(Plan(1, tuple(fes)))
    changed = dataclasses.replace(fes[1500], backends=backends(1, 9))
    fes[1500] = changed
    after = builder.build(Plan(2, tuple(fes)))
    changes = compute_changes(after, before)
    bucket = next(
        c for c in after.chains if c.role == "bucket" and fe_of(after, changed) in {r.jump for r in c.rules}
    )
    assert {c.name for c in changes.write} == {bucket.name, fe_of(after, changed)}
    assert len(bucket.rules) <= 128

    # A new frontend and a removed one: their buckets (or a split of one), never all of them.
    added = Frontend(VIP, 20002, "TCP", "bench/new", backends=backends(2))
    fes2 = [*fes[:10], *fes[11:], added]
    third = builder.build(Plan(3, tuple(fes2)))
    changes = compute_changes(third, after)
    buckets_written = [c for c in changes.write if c.role == "bucket"]
    assert 1 <= len(buckets_written) <= 3
    assert third == build_ruleset(Plan(3, tuple(fes2)))


def test_rejects_and_cluster_ips_are_bucketed_too() -> None:
    empty = [dataclasses.replace(f, backends=()) for f in shared_vip(300)]
    local_empty = [dataclasses.replace(f, backends=()) for f in own_addresses(300, "cluster-ip")]
    rs = build_ruleset(Plan(1, (*empty, *local_empty)))
    roles = {c.name: c.role for c in rs.chains}
    assert any(n.startswith("FLB-REJ-") and r == "bucket" for n, r in roles.items())
    assert any(n.startswith("FLB-LRJ-") and r == "bucket" for n, r in roles.items())
    for f in (*empty, *local_empty):
        chain = "FLB-LOCAL-REJECT" if f.kind == "cluster-ip" else "FLB-REJECT"
        assert walk(rs, "filter", chain, f.address, "tcp", f.port)[0] == "REJECT", f.label


def test_buckets_survive_a_kernel_read_back() -> None:
    rs = build_ruleset(
        Plan(1, tuple(shared_vip(300) + own_addresses(300, "cluster-ip"))), Options(overlay_udp_port=8472)
    )
    kernel = parse_save(as_iptables_save(rs), "FLB-")
    assert compute_changes(rs, kernel).empty
    assert {c.name: c.role for c in kernel.chains} == {c.name: c.role for c in rs.chains}
    names = [c.name for c in rs.chains if c.role == "bucket"]
    assert names and all(len(n) <= 28 for n in names)
    longest = build_ruleset(Plan(1, tuple(own_addresses(300))), Options(prefix="LONGPFX-"))
    assert all(len(c.name) <= 28 for c in longest.chains)


# --- the overlay guard ---------------------------------------------------------------------------------


def test_overlay_guard_comes_first_and_yields_to_a_frontend_on_that_port() -> None:
    web = Frontend(LB, 80, "TCP", "default/web", backends=backends(2))
    guarded = build_ruleset(Plan(1, (web,)), Options(overlay_udp_port=8472))
    for chain in ("FLB-SERVICES", "FLB-LOCAL"):
        c = guarded.get("nat", chain)
        assert c is not None and c.rules[0].args() == (
            "-p", "udp", "-m", "comment", "--comment", "flannel-lb: skip flannel overlay packets",
            "-m", "udp", "--dport", "8472", "-j", "RETURN",
        )  # fmt: skip
    assert "--dport 8472 -j RETURN" in render(guarded)
    assert "8472" not in render(build_ruleset(Plan(1, (web,)))) and not guarded.skipped

    tcp = Frontend(LB, 8472, "TCP", "a/tcp", backends=backends(1))  # TCP on that port: no conflict
    assert "8472 -j RETURN" in render(build_ruleset(Plan(1, (web, tcp)), Options(overlay_udp_port=8472)))
    udp = Frontend(LB, 8472, "UDP", "a/udp", backends=backends(1))
    clash = build_ruleset(Plan(1, (web, udp)), Options(overlay_udp_port=8472))
    assert "-j RETURN" not in render(clash)
    assert clash.skipped == (
        ("overlay guard udp/8472", f"not installed: UDP frontend {udp.label} uses flannel's overlay port, so "
         "flannel's own packets walk the dispatch chains"),
    )  # fmt: skip
    assert walk(clash, "nat", "FLB-SERVICES", LB, "udp", 8472)[0] == fe_of(clash, udp)


def test_overlay_port_follows_flannels_backend() -> None:
    assert overlay_udp_port("vxlan") == 8472 and overlay_udp_port("vxlan", 4789) == 4789
    assert overlay_udp_port("udp") == 8285 and overlay_udp_port("udp", 9000) == 9000
    assert overlay_udp_port("wireguard") == 51820 and overlay_udp_port("wireguard", 51000) == 51000
    assert overlay_udp_port("host-gw") is None and overlay_udp_port("ipip", 5) is None


@pytest.mark.parametrize(
    "kwargs", [{"overlay_udp_port": 0}, {"overlay_udp_port": 65536}, {"bucket_size": -1}]
)
def test_layout_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Options(**kwargs)


# --- forward_accept = "auto" ---------------------------------------------------------------------------

FILTER_ACCEPT = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [5:300]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
OUR_JUMP = '-A FORWARD -m comment --comment "flannel-lb DNATed connections" -j FLB-FORWARD\n'


def test_forward_filtering_is_read_from_the_kernel() -> None:
    def filtered(text: str) -> bool | None:
        return parse_save(text, "FLB-").forward_filtered

    assert filtered(FILTER_ACCEPT.format(rules="")) is False
    assert filtered(FILTER_ACCEPT.format(rules=OUR_JUMP)) is False  # flannel-lb's own jump does not count
    assert filtered(FILTER_ACCEPT.format(rules="-A FORWARD -j DOCKER-USER\n")) is True
    assert filtered(FILTER_ACCEPT.replace(":FORWARD ACCEPT", ":FORWARD DROP").format(rules="")) is True
    assert filtered("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") is False  # no filter table: nothing filters
    assert RuleSet("FLB-").forward_filtered is None  # built, not read back: unknown


def test_the_forward_jump_is_left_out_only_where_forward_accepts_everything() -> None:
    plan = Plan(1, (Frontend(LB, 80, "TCP", "a/web", backends=backends(2)),))

    def forward_jumps(rs: RuleSet) -> list[str]:
        return [j.rule.jump for j in rs.jumps if j.chain == "FORWARD"]

    auto = Options(forward_accept="auto")
    assert forward_jumps(build_ruleset(plan, auto)) == ["FLB-FORWARD"]  # unknown: assumed needed
    assert forward_jumps(build_ruleset(plan, auto, forward_filtered=False)) == []
    # "always", the default: no window when a firewall turns FORWARD to DROP after the agent started
    assert forward_jumps(build_ruleset(plan, forward_filtered=False)) == ["FLB-FORWARD"]
    assert forward_jumps(RuleBuilder().build(plan, auto, forward_filtered=False)) == []
    with pytest.raises(ValueError):
        Options(forward_accept="sometimes")  # type: ignore[arg-type]


class ScriptedKernel(SyncState):
    """A writer whose kernel is iptables-save text: owned chains from the last sync, FORWARD as set."""

    def __init__(self) -> None:
        super().__init__("FLB-")
        self.forward = FILTER_ACCEPT.format(rules="")
        self.applied = RuleSet("FLB-")

    def read_owned(self) -> RuleSet:
        owned = parse_save(as_iptables_save(self.applied), "FLB-")
        return dataclasses.replace(owned, forward_filtered=parse_save(self.forward, "FLB-").forward_filtered)

    def _commit(self, changes: Any, text: str) -> None:
        pass

    def sync(self, desired: RuleSet, *, full: bool = False, verify: bool = False) -> Any:
        result = super().sync(desired, full=full, verify=verify)
        assert self._current is not None
        self.applied = self._current  # what was applied: `desired` as settled after a read-back
        return result

    def cleanup(self) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_the_plane_follows_forward_and_never_races_a_firewall(mode: str) -> None:
    kernel = ScriptedKernel()
    plane = IptablesPlane(kernel, Options(forward_accept=mode))  # type: ignore[arg-type]
    plan = Plan(1, (Frontend(LB, 80, "TCP", "a/web", backends=backends(2)),))

    def installed() -> bool:
        return any(j.chain == "FORWARD" for j in kernel.applied.jumps)

    assert plane.forward_filtered is None
    first = plane.sync(plan)  # adopt: reads FORWARD (ACCEPT, empty) before it decides
    assert first.mode == "adopt" and len(first.changes.add_jumps) == (6 if mode == "always" else 5)
    assert installed() == (mode == "always") and plane.forward_filtered is False
    assert not plane.sync(plan).applied and not plane.sync(plan, verify=True).applied

    kernel.forward = FILTER_ACCEPT.replace(":FORWARD ACCEPT", ":FORWARD DROP").format(
        rules=""
    )  # Docker starts
    assert not plane.sync(plan).applied and installed() == (mode == "always")  # partial: not seen yet
    repaired = plane.sync(plan, verify=True)
    assert installed() and plane.forward_filtered
    assert [j.chain for j in repaired.changes.add_jumps] == (["FORWARD"] if mode == "auto" else [])

    kernel.forward = FILTER_ACCEPT.format(rules="")  # and goes: the accept stays
    assert not plane.sync(plan, verify=True).applied and installed()


_FORWARDS = {
    "accept": FILTER_ACCEPT.format(rules=""),
    "drop": FILTER_ACCEPT.replace(":FORWARD ACCEPT", ":FORWARD DROP").format(rules=""),
    "docker": FILTER_ACCEPT.format(rules="-A FORWARD -j DOCKER-USER\n"),
}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["auto", "always"]),
    st.lists(st.tuples(st.sampled_from(sorted(_FORWARDS)), st.booleans()), min_size=1, max_size=8),
)
def test_diff_and_the_syncs_decide_the_forward_jump_alike(mode: str, steps: list[tuple[str, bool]]) -> None:
    """One rule (`settle_forward`): after any verifying sync, the agent's `diff` and that of a fresh
    process (`flannel-lb diff`, which knows nothing of the agent's history) find the kernel in step,
    whatever FORWARD did before; and the jump is never missing while FORWARD can drop."""
    kernel = ScriptedKernel()
    plane = IptablesPlane(kernel, Options(forward_accept=mode))  # type: ignore[arg-type]
    plan = Plan(1, (Frontend(LB, 80, "TCP", "a/web", backends=backends(2)),))
    for forward, verify in steps:
        kernel.forward = _FORWARDS[forward]
        plane.sync(plan, verify=verify)
        if verify:
            assert plane.diff(plan) == ""
            other = ScriptedKernel()  # the same kernel, read by another process
            other.forward, other.applied = kernel.forward, kernel.applied
            assert IptablesPlane(other, Options(forward_accept=mode)).diff(plan) == ""  # type: ignore[arg-type]
            if forward != "accept":
                assert any(j.chain == "FORWARD" for j in kernel.applied.jumps)
