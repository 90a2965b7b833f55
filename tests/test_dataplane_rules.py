"""The rule layout as pure data: exact rendering, chain naming, partial-sync deltas, balancing maths."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.dataplane.iptables.changes import Changes, compute_changes, transactions
from flannel_lb.dataplane.iptables.render import render, render_changes
from flannel_lb.dataplane.iptables.rules import (
    BUILTIN_CHAINS,
    Rule,
    RuleSet,
    build_ruleset,
    canonical_probability,
    hash16,
    normalize_args,
    probability,
)
from flannel_lb.dataplane.iptables.savefile import foreign_lines, parse_save, quote, split_line
from flannel_lb.dataplane.options import Options
from flannel_lb.kernel.conntrack import StaleFlows, stale_flows
from flannel_lb.plan.model import Affinity, Backend, Frontend, Plan

LB = "192.168.121.201"
WEB = Frontend(
    LB, 80, "TCP", "default/web", "http",
    backends=(Backend("10.246.1.2", 8080), Backend("10.246.2.2", 8080), Backend("10.246.3.2", 8080)),
)  # fmt: skip
DNS = Frontend(
    LB, 53, "UDP", "kube-system/dns", "dns", Affinity("ClientIP", 10800),
    backends=(Backend("10.246.1.2", 5353), Backend("10.246.2.2", 5353)),
)  # fmt: skip
EMPTY = Frontend(LB, 81, "TCP", "default/empty")

EXPECTED = """\
*filter
:FLB-FORWARD - [0:0]
:FLB-REJECT - [0:0]
:FLB-LOCAL-REJECT - [0:0]
-A FLB-FORWARD -m comment --comment "flannel-lb DNATed connections" -m connmark --mark 0x2000/0x2000 -j ACCEPT
-A FLB-REJECT -d 192.168.121.201/32 -p tcp -m comment --comment "default/empty" -m tcp --dport 81 \
-j REJECT --reject-with tcp-reset
-A FLB-LOCAL-REJECT -j FLB-REJECT
-I INPUT 1 -m comment --comment "flannel-lb frontends without backends" -m conntrack --ctstate NEW \
-j FLB-REJECT
-I FORWARD 1 -m comment --comment "flannel-lb DNATed connections" -j FLB-FORWARD
-I OUTPUT 1 -m comment --comment "flannel-lb frontends without backends" -m conntrack --ctstate NEW \
-j FLB-LOCAL-REJECT
COMMIT
*nat
:FLB-SERVICES - [0:0]
:FLB-LOCAL - [0:0]
:FLB-POSTROUTING - [0:0]
:{web} - [0:0]
:{dns} - [0:0]
:{sep1} - [0:0]
:{sep2} - [0:0]
-A FLB-SERVICES -d 192.168.121.201/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 \
-j {web}
-A FLB-SERVICES -d 192.168.121.201/32 -p udp -m comment --comment "kube-system/dns:dns" -m udp --dport 53 \
-j {dns}
-A FLB-LOCAL -j FLB-SERVICES
-A FLB-POSTROUTING -m connmark --mark 0x2000/0x2000 -j MASQUERADE --random-fully
-A {web} -m comment --comment "192.168.121.201:80/TCP default/web:http" -j CONNMARK --set-xmark 0x2000/0x2000
-A {web} -p tcp -m statistic --mode random --probability 0.33333333349 \
-j DNAT --to-destination 10.246.1.2:8080
-A {web} -p tcp -m statistic --mode random --probability 0.50000000000 \
-j DNAT --to-destination 10.246.2.2:8080
-A {web} -p tcp -j DNAT --to-destination 10.246.3.2:8080
-A {dns} -m comment --comment "192.168.121.201:53/UDP kube-system/dns:dns" \
-j CONNMARK --set-xmark 0x2000/0x2000
-A {dns} -m recent --rcheck --seconds 10800 --reap --name {sep1} --mask 255.255.255.255 --rsource -j {sep1}
-A {dns} -m recent --rcheck --seconds 10800 --reap --name {sep2} --mask 255.255.255.255 --rsource -j {sep2}
-A {dns} -m statistic --mode random --probability 0.50000000000 -j {sep1}
-A {dns} -j {sep2}
-A {sep1} -p udp -m recent --set --name {sep1} --mask 255.255.255.255 --rsource \
-j DNAT --to-destination 10.246.1.2:5353
-A {sep2} -p udp -m recent --set --name {sep2} --mask 255.255.255.255 --rsource \
-j DNAT --to-destination 10.246.2.2:5353
-I PREROUTING 1 -m comment --comment "flannel-lb frontends" -j FLB-SERVICES
-I OUTPUT 1 -m comment --comment "flannel-lb frontends" -j FLB-LOCAL
-I POSTROUTING 1 -m comment --comment "flannel-lb SNAT" -j FLB-POSTROUTING
COMMIT
"""


def fe_chain(rs: RuleSet, f: Frontend) -> str:
    return dict(rs.frontend_chains)[f.label]


def test_exact_rendering_of_a_small_plan() -> None:
    rs = build_ruleset(Plan(1, (WEB, DNS, EMPTY)))
    dns = fe_chain(rs, DNS)
    seps = [c.name for c in rs.chains if c.role == "endpoint"]
    expected = EXPECTED.format(web=fe_chain(rs, WEB), dns=dns, sep1=seps[0], sep2=seps[1])
    assert render(rs) == expected
    for name in (fe_chain(rs, WEB), dns):
        assert re.fullmatch(r"FLB-FE-[A-Z2-7]{16}", name)
    assert all(re.fullmatch(r"FLB-SEP-[A-Z2-7]{16}", s) for s in seps)


def test_probabilities_are_kube_proxys_as_the_kernel_prints_them() -> None:
    # iptables-save prints what the kernel stored, lround(p * 2^31) / 2^31, with 11 decimals.
    assert [probability(3, i) for i in range(2)] == ["0.33333333349", "0.50000000000"]
    assert probability(10, 0) == "0.10000000009" and probability(10, 8) == "0.50000000000"
    assert canonical_probability("0.3333333333") == "0.33333333349"
    assert normalize_args(["--probability", "0.3333333333"]) == normalize_args(
        ["--probability", "0.33333333349"]
    )


@given(st.integers(2, 100_000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 2))))
def test_a_rendered_probability_is_what_iptables_save_prints_back(n_i: tuple[int, int]) -> None:
    n, i = n_i
    text = probability(n, i)
    assert canonical_probability(text) == text  # render, diff and the kernel show one spelling
    assert abs(float(text) - 1 / (n - i)) <= 2**-31  # and it is still kube-proxy's 1/(n-i)


def test_chain_names_follow_content() -> None:
    before = build_ruleset(Plan(1, (WEB, DNS)))
    web2 = Frontend(
        WEB.address, WEB.port, WEB.protocol, WEB.service, WEB.port_name, backends=WEB.backends[:2]
    )
    after = build_ruleset(Plan(2, (web2, DNS, EMPTY)))
    assert fe_chain(after, DNS) == fe_chain(before, DNS)  # unchanged: same chain, nothing to rewrite
    assert fe_chain(after, web2) != fe_chain(before, WEB)
    assert build_ruleset(Plan(9, (DNS,))).frontend_chains == ((DNS.label, fe_chain(before, DNS)),)
    other_mark = build_ruleset(Plan(1, (WEB, DNS)), Options(mark=0x1000))
    assert fe_chain(other_mark, WEB) != fe_chain(before, WEB)
    assert hash16("flannel-lb") == hash16("flannel-lb") != hash16("flannel-lb ")


def test_affinity_endpoint_chains_survive_changes_to_other_backends() -> None:
    dns3 = Frontend(DNS.address, DNS.port, DNS.protocol, DNS.service, DNS.port_name, DNS.affinity,
                    (*DNS.backends, Backend("10.246.3.2", 5353)))  # fmt: skip
    before, after = build_ruleset(Plan(1, (DNS,))), build_ruleset(Plan(2, (dns3,)))
    seps_before = {c.name for c in before.chains if c.role == "endpoint"}
    seps_after = {c.name for c in after.chains if c.role == "endpoint"}
    assert seps_before < seps_after  # recent lists (named after them) keep their clients
    changes = compute_changes(after, before)
    written = {c.name for c in changes.write}
    assert written == {"FLB-SERVICES", fe_chain(after, dns3), *(seps_after - seps_before)}
    assert changes.delete == (("nat", fe_chain(before, DNS)),)


def test_partial_sync_writes_changed_frontends_and_the_dispatch_chain_that_jumps_to_them() -> None:
    before = build_ruleset(Plan(1, (WEB, DNS, EMPTY)))
    assert compute_changes(before, before).empty
    web2 = Frontend(
        WEB.address, WEB.port, WEB.protocol, WEB.service, WEB.port_name, backends=WEB.backends[1:]
    )
    after = build_ruleset(Plan(2, (web2, DNS, EMPTY)))
    text = render(after, before)
    declared = [ln for ln in text.splitlines() if ln.startswith(":")]
    assert declared == [
        ":FLB-SERVICES - [0:0]",  # FLB-LOCAL and FLB-POSTROUTING are unchanged: left alone
        f":{fe_chain(after, web2)} - [0:0]",
        f":{fe_chain(before, WEB)} - [0:0]",  # emptied, then removed below in the same transaction
    ]
    assert text.splitlines()[-2:] == [f"-X {fe_chain(before, WEB)}", "COMMIT"]
    assert "*filter" not in text and " -I " not in text
    full = compute_changes(after, before, full=True)
    assert len(full.write) == len(after.chains) and full.delete == ((("nat", fe_chain(before, WEB))),)


def test_a_frontend_losing_its_backends_moves_to_the_reject_chain() -> None:
    before = build_ruleset(Plan(1, (WEB,)))
    gone = Frontend(WEB.address, WEB.port, WEB.protocol, WEB.service, WEB.port_name)
    changes = compute_changes(build_ruleset(Plan(2, (gone,))), before)
    assert {c.name for c in changes.write} == {"FLB-REJECT", "FLB-SERVICES"}
    reject = next(c for c in changes.write if c.name == "FLB-REJECT")
    assert reject.rules[0].target == ("REJECT", "--reject-with", "tcp-reset")
    udp = build_ruleset(Plan(1, (Frontend(LB, 53, "UDP", "a/b"),))).get("filter", "FLB-REJECT")
    assert udp is not None and udp.rules[0].target == ("REJECT", "--reject-with", "icmp-port-unreachable")
    assert not build_ruleset(Plan(1, (gone,)), Options(reject_empty=False)).get("filter", "FLB-REJECT").rules  # type: ignore[union-attr]


def test_cluster_ip_frontends_only_get_the_output_path() -> None:
    cip = Frontend("10.96.0.10", 80, "TCP", "default/web", "http", backends=WEB.backends, kind="cluster-ip")
    rs = build_ruleset(
        Plan(1, (WEB, cip, Frontend("10.96.0.11", 80, "TCP", "default/none", kind="cluster-ip")))
    )
    services, local = rs.get("nat", "FLB-SERVICES"), rs.get("nat", "FLB-LOCAL")
    assert services is not None and local is not None
    assert [r.jump for r in services.rules] == [fe_chain(rs, WEB)]
    assert [r.jump for r in local.rules] == [fe_chain(rs, cip), "FLB-SERVICES"]
    local_reject = rs.get("filter", "FLB-LOCAL-REJECT")
    assert local_reject is not None and local_reject.rules[0].matches[1] == "10.96.0.11/32"
    assert {(j.chain, j.rule.jump) for j in rs.jumps if j.table == "nat"} == {
        ("PREROUTING", "FLB-SERVICES"), ("OUTPUT", "FLB-LOCAL"), ("POSTROUTING", "FLB-POSTROUTING")
    }  # fmt: skip


def test_snat_variants() -> None:
    def post(opts: Options) -> list[tuple[str, ...]]:
        chain = build_ruleset(Plan(1, (WEB,)), opts).get("nat", "FLB-POSTROUTING")
        assert chain is not None
        return [r.args() for r in chain.rules]

    mark = ("-m", "connmark", "--mark", "0x2000/0x2000")
    assert post(Options(masquerade=False)) == []
    assert post(Options(random_fully=False)) == [(*mark, "-j", "MASQUERADE")]
    contiguous = Options(snat_pool=("10.246.90.3", "10.246.90.1", "10.246.90.2"))
    assert post(contiguous) == [
        (*mark, "-j", "SNAT", "--to-source", "10.246.90.1-10.246.90.3", "--random-fully")
    ]
    scattered = post(Options(snat_pool=("10.246.90.1", "10.246.91.1"), random_fully=False))
    assert scattered == [
        (*mark, "-m", "statistic", "--mode", "random", "--probability", "0.50000000000", "-j", "SNAT",
         "--to-source", "10.246.90.1"),
        (*mark, "-j", "SNAT", "--to-source", "10.246.91.1"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [{"prefix": ""}, {"prefix": "TOO-LONG-X"}, {"prefix": "a b"}, {"mark": 0x3000}, {"mark": 0},
     {"snat_pool": ("::1",)}, {"snat_pool": ("10.0.0.1", "10.0.0.1")}],
)  # fmt: skip
def test_options_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Options(**kwargs)  # type: ignore[arg-type]


def test_unusable_plan_entries_are_skipped_with_a_reason() -> None:
    v6 = Frontend("2001:db8::1", 80, "TCP", "a/v6", backends=WEB.backends)
    mixed = Frontend(LB, 90, "TCP", "a/mixed", backends=(Backend("fd00::1", 80), Backend("10.246.1.2", 80)))
    dup = Frontend(LB, 80, "TCP", "a/dup", backends=WEB.backends)
    rs = build_ruleset(Plan(1, (WEB, v6, mixed, dup)))
    reasons = dict(rs.skipped)
    assert "IPv6" in reasons[v6.label] and "duplicate" in reasons[dup.label]
    assert "IPv4" in reasons[f"{mixed.label} -> fd00::1:80"]
    fe = rs.get("nat", fe_chain(rs, mixed))
    assert fe is not None and [r.target[-1] for r in fe.rules[1:]] == ["10.246.1.2:80"]


def test_comments_are_sanitised_and_round_trip() -> None:
    f = Frontend(LB, 80, "TCP", 'ns/"quoted" name\\', backends=WEB.backends)
    text = render(build_ruleset(Plan(1, (f,))))
    assert '"192.168.121.201:80/TCP ns/_quoted_ name_"' in text
    tokens = split_line('-A X -m comment --comment "a \\"b\\" c" -j Y')
    assert tokens == ["-A", "X", "-m", "comment", "--comment", 'a "b" c', "-j", "Y"]
    assert quote("a b") == '"a b"' and quote("0x2000/0x2000") == "0x2000/0x2000"


def as_iptables_save(rs: RuleSet, foreign: Sequence[str] = ()) -> str:
    """What iptables-save would print after applying `rs` (probabilities as the kernel stores them)."""
    out: list[str] = []
    for table in ("nat", "filter"):
        out += [f"*{table}", *(f":{b} ACCEPT [3:180]" for b in BUILTIN_CHAINS[table])]
        out += [f":{c.name} - [0:0]" for c in rs.table(table)]
        out += [ln for ln in foreign if ln.startswith(f"{table} ")]
        out += [" ".join(["-A", j.chain, *map(quote, j.rule.key())]) for j in rs.jumps_in(table)]
        for c in rs.table(table):
            out += [" ".join(["-A", c.name, *map(quote, r.key())]) for r in c.rules]
        out.append("COMMIT")
    return "\n".join(ln.split(" ", 1)[1] if ln.startswith(("nat ", "filter ")) else ln for ln in out) + "\n"


def test_adopting_the_kernels_rules_changes_nothing() -> None:
    rs = build_ruleset(Plan(1, (WEB, DNS, EMPTY)))
    foreign = ("nat -A PREROUTING -j OTHER", "filter -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT")
    saved = as_iptables_save(rs, foreign)
    kernel = parse_save(saved, "FLB-")
    assert compute_changes(rs, kernel).empty
    assert foreign_lines(saved, "FLB-") == [
        "nat :PREROUTING ACCEPT", "nat :INPUT ACCEPT", "nat :OUTPUT ACCEPT", "nat :POSTROUTING ACCEPT",
        "nat -A PREROUTING -j OTHER",
        "filter :INPUT ACCEPT", "filter :FORWARD ACCEPT", "filter :OUTPUT ACCEPT",
        "filter -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
    ]  # fmt: skip
    # A stale chain and a duplicated jump are replaced in the same transaction, nothing else rewritten.
    stale = saved.replace("*nat\n", "*nat\n:FLB-FE-OLD - [0:0]\n-A FLB-FE-OLD -j RETURN\n", 1)
    stale = stale.replace(
        "COMMIT", '-A PREROUTING -m comment --comment "flannel-lb frontends" -j FLB-SERVICES\nCOMMIT', 1
    )
    changes = compute_changes(rs, parse_save(stale, "FLB-"))
    assert changes.delete == (("nat", "FLB-FE-OLD"),)
    assert [j.chain for j in changes.del_jumps] == ["PREROUTING", "PREROUTING"]
    assert [j.chain for j in changes.add_jumps] == ["PREROUTING"]
    assert changes.write == ()


def test_cleanup_text_removes_jumps_before_chains() -> None:
    rs = build_ruleset(Plan(1, (WEB,)))
    text = render_changes(Changes(delete=tuple((c.table, c.name) for c in rs.chains), del_jumps=rs.jumps))
    nat = text.split("*nat\n", 1)[1].splitlines()
    assert nat.index('-D PREROUTING -m comment --comment "flannel-lb frontends" -j FLB-SERVICES') < nat.index(
        "-X FLB-SERVICES"
    )
    assert not [ln for ln in text.splitlines() if ln.startswith("-A ")]


def test_rule_parsing_keeps_the_kernels_token_order() -> None:
    args = ["-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "late", "-j", "ACCEPT"]
    assert Rule.from_args(args).args() == tuple(args)
    first = ["-d", "1.2.3.4/32", "-m", "comment", "--comment", "x", "-g", "FLB-X"]
    rule = Rule.from_args(first)
    assert rule.comment == "x" and rule.goto and rule.args() == tuple(first)


def test_stale_conntrack_targets() -> None:
    udp = Frontend(LB, 53, "UDP", "a/dns", backends=(Backend("10.0.0.1", 53), Backend("10.0.0.2", 53)))
    tcp = Frontend(LB, 80, "TCP", "a/web", backends=(Backend("10.0.0.1", 80),))
    one = Frontend(LB, 53, "UDP", "a/dns", backends=(Backend("10.0.0.1", 53),))
    empty = Frontend(LB, 53, "UDP", "a/dns")
    keep1 = frozenset({("10.0.0.1", 53)})
    assert stale_flows(Plan(1, (udp, tcp)), Plan(2, (udp,))) == ()  # TCP never, unchanged UDP neither
    assert stale_flows(Plan(1, (udp,)), Plan(2, (one,))) == (StaleFlows(LB, 53, "UDP", keep1),)
    assert stale_flows(Plan(1, (udp,)), Plan(2, (empty,))) == (StaleFlows(LB, 53, "UDP", frozenset()),)
    assert stale_flows(Plan(1, (empty,)), Plan(2, (one,))) == (StaleFlows(LB, 53, "UDP", keep1, True),)
    assert stale_flows(Plan(1, ()), Plan(2, (one,))) == (StaleFlows(LB, 53, "UDP", keep1, True),)
    assert stale_flows(Plan(1, (udp,)), Plan(2, ())) == (StaleFlows(LB, 53, "UDP", frozenset()),)
    assert stale_flows(None, Plan(2, (one, tcp))) == (StaleFlows(LB, 53, "UDP", keep1, True),)


# --- properties over random plans ---------------------------------------------------------------

ADDRS = [f"192.168.121.{i}" for i in range(200, 206)] + ["10.96.0.10", "10.96.0.11"]
backend_st = st.builds(
    Backend,
    ip=st.integers(0x0AF60000, 0x0AF6FFFF).map(lambda n: str(ipaddress.IPv4Address(n))),
    port=st.integers(1, 65535),
)
frontend_st = st.builds(
    Frontend,
    address=st.sampled_from(ADDRS),
    port=st.integers(1, 65535),
    protocol=st.sampled_from(["TCP", "UDP", "SCTP"]),
    service=st.from_regex(r"[a-z]{1,8}/[a-z0-9-]{1,12}", fullmatch=True),
    port_name=st.from_regex(r"[a-z]{0,6}", fullmatch=True),
    affinity=st.none() | st.builds(Affinity, st.just("ClientIP"), st.integers(1, 86400)),
    backends=st.lists(backend_st, max_size=12, unique_by=lambda b: (b.ip, b.port)).map(tuple),
    kind=st.sampled_from(["external", "cluster-ip"]),
)
plan_st = st.builds(
    Plan,
    revision=st.integers(0, 10),
    frontends=st.lists(frontend_st, max_size=12, unique_by=lambda f: f.key).map(tuple),
)
options_st = st.builds(Options, prefix=st.sampled_from(["FLB-", "LB_", "X"]), comments=st.booleans())


@settings(max_examples=200, deadline=None)
@given(plan=plan_st, opts=options_st)
def test_rendered_text_only_declares_and_fills_owned_chains(plan: Plan, opts: Options) -> None:
    text = render(build_ruleset(plan, opts))
    builtins = {c for chains in BUILTIN_CHAINS.values() for c in chains}
    for line in text.splitlines():
        if line.startswith(("*", "COMMIT")):
            continue
        tokens = split_line(line)
        if line.startswith(":"):
            assert line[1:].startswith(opts.prefix)
        elif tokens[0] == "-A":
            assert tokens[1].startswith(opts.prefix)
        else:  # the only lines that touch builtin chains: inserting a jump to an owned chain
            assert tokens[:1] == ["-I"] and tokens[1] in builtins and tokens[2] == "1"
            assert tokens[-2] == "-j" and tokens[-1].startswith(opts.prefix)
        names = [t for t in tokens if t in builtins]
        assert not names or tokens[0] == "-I"


@settings(max_examples=200, deadline=None)
@given(plan=plan_st)
def test_every_backend_gets_an_equal_share(plan: Plan) -> None:
    rs = build_ruleset(plan)
    for label, name in rs.frontend_chains:
        frontend = next(f for f in plan.frontends if f.label == label)
        chain = rs.get("nat", name)
        assert chain is not None
        shares = effective_shares(chain.rules)
        n = len(frontend.backends)
        assert len(shares) == n
        assert all(abs(p - 1 / n) < 1e-9 for p in shares.values()), shares


def effective_shares(rules: Sequence[Rule]) -> dict[str, float]:
    """P(a new connection from a new client ends at each target), walking the rules in order."""
    left, shares = 1.0, dict[str, float]()
    for r in rules:
        if "--rcheck" in r.matches or r.target[0] == "CONNMARK":  # affinity hits only for returning clients
            continue
        args = r.args()
        p = float(args[args.index("--probability") + 1]) if "--probability" in args else 1.0
        target = r.target[-1] if r.target[0] == "DNAT" else r.target[0]
        shares[target] = shares.get(target, 0.0) + left * p
        left *= 1 - p
    assert left == 0.0  # the last rule is unconditional: nothing falls through
    return shares


@settings(max_examples=200, deadline=None)
@given(before=plan_st, after=plan_st, leaf_block=st.integers(1, 6))
def test_staged_transactions_write_leaves_first_and_lose_nothing(
    before: Plan, after: Plan, leaf_block: int
) -> None:
    """`transactions` only reorders: frontend/endpoint chains first (a frontend with the endpoint chains
    after it), in blocks of at least `leaf_block` chains, then every other change in one last step."""
    changes = compute_changes(build_ruleset(after), build_ruleset(before))
    parts = transactions(changes, leaf_block)
    leaves = [c for c in changes.write if c.role in ("frontend", "endpoint")]
    if len(leaves) <= leaf_block:
        assert parts == (changes,)
        return
    *staged, last = parts
    if last.write and all(c.role in ("frontend", "endpoint") for c in last.write):
        staged, last = parts, Changes()  # nothing but leaves changed: the last block is the last step
    assert [c for p in staged for c in p.write] == leaves
    assert all(not (p.delete or p.add_jumps or p.del_jumps) for p in staged)
    assert all(len(p.write) >= leaf_block for p in staged[:-1])
    assert all(p.write[0].role == "frontend" or i == 0 for i, p in enumerate(staged))
    assert last.write == tuple(c for c in changes.write if c.role not in ("frontend", "endpoint"))
    assert (last.delete, last.add_jumps, last.del_jumps) == (
        changes.delete,
        changes.add_jumps,
        changes.del_jumps,
    )
    text = render_changes(changes, leaf_block)
    assert text.count("COMMIT") == sum(len(p.tables()) for p in parts) > len(changes.tables())
