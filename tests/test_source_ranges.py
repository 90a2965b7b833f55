"""loadBalancerSourceRanges from the stored Service to both rule layouts (pure: no kernel, no root).

The kernel's side (who really gets through) is `test_source_ranges_netns`.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.daemon.metrics import Metrics
from flannel_lb.daemon.source_ranges import DropSampler
from flannel_lb.dataplane.iptables.rules import RuleBuilder, build_ruleset
from flannel_lb.dataplane.iptables.savefile import source_range_drops
from flannel_lb.dataplane.nftables.layout import FIREWALL, RESTRICTED, NftChain, frontend_entries
from flannel_lb.dataplane.nftables.writer import restricted_counters
from flannel_lb.dataplane.options import Options
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.decode.objects import MAX_SOURCE_RANGES, SOURCE_RANGES_ANNOTATION
from flannel_lb.lab import objects as k
from flannel_lb.plan import holdover
from flannel_lb.plan.compute import PlanSettings, admission_for, compute_plan
from flannel_lb.plan.model import Frontend, Plan, frontend_json
from flannel_lb.plan.report import explain, explain_text, plan_table
from flannel_lb.state.cluster import ClusterState

LB = "192.168.121.201"
NOW = 1_800_000_000.0
SETTINGS = PlanSettings(addresses=frozenset({LB}))
KEY = "/registry/services/specs/default/web"
PODS = ["10.246.1.5", "10.246.1.6"]


def _state(svc: dict[str, Any], *, as_json: bool = False) -> ClusterState:
    state = ClusterState()
    state.put("/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}')
    state.put("/coreos.com/network/subnets/10.246.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    state.put(KEY, json.dumps(svc).encode() if as_json else encode_protobuf(svc))
    eps = [k.endpoint(ip, "node-1") for ip in PODS]
    state.put(
        "/registry/endpointslices/default/web-x",
        encode_protobuf(k.endpoint_slice("web-x", "web", eps, [("http", 8080, "TCP"), ("dns", 53, "UDP")])),
    )
    return state


def _web(ranges: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    ports = [k.port(80, name="http"), k.port(53, name="dns", protocol="UDP")]
    return k.service("web", ports=ports, external_ips=[LB], source_ranges=ranges or (), **extra)


def _plan(svc: dict[str, Any], *, as_json: bool = False, settings: PlanSettings = SETTINGS) -> Plan:
    return compute_plan(_state(svc, as_json=as_json), settings, now=NOW)


_V4 = st.builds(lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}", st.integers(0, 2**32 - 1), st.integers(0, 32))
_V6 = st.builds(
    lambda a, n: f"{ipaddress.IPv6Address(a)}/{n}", st.integers(0, 2**128 - 1), st.integers(0, 128)
)
_GARBAGE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["10.0.0.1", "10.0.0.0/33", "10.0.0.0/-1", "010.0.0.0/8", "1.0.0.0/8/8", "/8", "::/129"]),
)
_ENTRY = st.one_of(_V4, _V6, _V4.map(lambda r: f"  {r} "), _GARBAGE)


def _valid(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = entry.strip()
    if "/" not in text or not text.isascii():
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@given(st.lists(_ENTRY, max_size=12), st.booleans())
def test_generated_ranges_admit_exactly_the_valid_ipv4_networks_and_report_the_rest(
    entries: list[str], as_json: bool
) -> None:
    plan = _plan(_web(entries), as_json=as_json)
    frontends = {f.label: f for f in plan.frontends}
    assert set(frontends) == {f"{LB}:80/TCP", f"{LB}:53/UDP"}  # still served, whatever the ranges
    valid = [n for n in map(_valid, entries) if n is not None]
    v4 = [n for n in valid if isinstance(n, ipaddress.IPv4Network)]
    want = None if not entries else tuple(str(n) for n in ipaddress.collapse_addresses(v4))
    for f in frontends.values():
        assert f.source_ranges == want
        assert [b.ip for b in f.backends] == PODS
    reported = [p for p in plan.problems if p.key == KEY and "loadBalancerSourceRanges" in p.reason]
    assert bool(reported) == (len(valid) < len(entries))


@given(st.lists(_V4, min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_a_client_is_admitted_only_when_a_range_holds_it(ranges: list[str], client: int) -> None:
    (f, *_) = _plan(_web(ranges)).frontends
    assert f.source_ranges is not None
    address = ipaddress.IPv4Address(client)
    admitted = any(address in ipaddress.IPv4Network(r) for r in f.source_ranges)
    assert admitted == any(address in ipaddress.IPv4Network(r, strict=False) for r in ranges)
    networks = [ipaddress.IPv4Network(r) for r in f.source_ranges]
    assert all(not a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])  # nft needs it


def test_no_ranges_mean_open_and_the_annotation_is_read_when_the_field_is_empty() -> None:
    assert all(f.source_ranges is None for f in _plan(_web()).frontends)
    annotated = _web()
    annotated["metadata"]["annotations"] = {SOURCE_RANGES_ANNOTATION: "10.1.0.0/16, 192.0.2.9/32"}
    assert {f.source_ranges for f in _plan(annotated).frontends} == {("10.1.0.0/16", "192.0.2.9/32")}
    both = _web(["198.51.100.0/24"])
    both["metadata"]["annotations"] = {SOURCE_RANGES_ANNOTATION: "10.1.0.0/16"}
    assert {f.source_ranges for f in _plan(both).frontends} == {("198.51.100.0/24",)}  # the field wins


def test_ipv6_only_ranges_admit_no_ipv4_client_and_explain_says_so() -> None:
    svc = _web(["2001:db8::/32"])
    state = _state(svc)
    plan = compute_plan(state, SETTINGS, now=NOW)
    assert {f.source_ranges for f in plan.frontends} == {()}
    story = explain(state, plan, ("default", "web"), SETTINGS, admission_for(state, NOW, None, [LB]))
    assert story is not None
    text = explain_text(story)
    assert "none admitted" in text and "IPv6 source ranges not used on IPv4 frontends: 2001:db8::/32" in text
    assert "clients: none admitted" in plan_table(plan)


def test_plan_and_explain_show_the_ranges() -> None:
    svc = _web(["10.0.0.0/8"])
    state = _state(svc)
    plan = compute_plan(state, SETTINGS, now=NOW)
    story = explain(state, plan, ("default", "web"), SETTINGS, admission_for(state, NOW, None, [LB]))
    assert story is not None and story["source_ranges"] == ["10.0.0.0/8"]
    assert "clients: only from 10.0.0.0/8 (loadBalancerSourceRanges); others dropped" in explain_text(story)
    assert plan_table(plan).count("clients: only from 10.0.0.0/8") == 2  # both ports
    assert plan.to_json()["frontends"][0]["source_ranges"] == ["10.0.0.0/8"]


def test_cluster_ip_frontends_are_not_filtered() -> None:
    settings = PlanSettings(addresses=frozenset({LB}), cluster_ips=True)
    kinds = {(f.kind, f.source_ranges) for f in _plan(_web(["10.0.0.0/8"]), settings=settings).frontends}
    assert kinds == {("external", ("10.0.0.0/8",)), ("cluster-ip", None)}


def test_too_many_ranges_are_cut_and_reported() -> None:
    ranges = [f"10.{i // 256}.{i % 256}.0/24" for i in range(MAX_SOURCE_RANGES + 5)]
    plan = _plan(_web(ranges))
    assert all(f.source_ranges is not None for f in plan.frontends)
    assert any(f"more than {MAX_SOURCE_RANGES} ranges" in p.reason for p in plan.problems if p.key == KEY)


def _frontend(ranges: tuple[str, ...] | None, port: int = 80) -> Frontend:
    return Frontend(LB, port, "TCP", f"default/s{port}", "", source_ranges=ranges, backends=_backends())


def _backends() -> tuple[Any, ...]:
    from flannel_lb.plan.model import Backend

    return tuple(Backend(ip, 8080) for ip in PODS)


def test_iptables_a_range_change_rewrites_only_the_firewall_chain() -> None:
    other = _frontend(None, 8080)
    builder = RuleBuilder()
    first = builder.build(Plan(1, (_frontend(("10.0.0.0/8",)), other)))
    second = builder.build(Plan(2, (_frontend(("10.0.0.0/8", "192.0.2.0/24")), other)))
    assert builder.rebuilt == (f"{LB}:80/TCP",)
    names = lambda rs, role: {c.name for c in rs.chains if c.role == role}  # noqa: E731
    assert names(first, "frontend") == names(second, "frontend")  # DNAT chains (and counters) stay
    assert names(first, "firewall") != names(second, "firewall")
    (fw,) = [c for c in second.chains if c.role == "firewall"]
    assert [r.matches for r in fw.rules] == [("-s", "10.0.0.0/8"), ("-s", "192.0.2.0/24")]
    # the same rules as a Plan without any restriction, for the frontend that has none
    plain = build_ruleset(Plan(1, (_frontend(None), other)))
    fe_of = {label: fe for label, fe in plain.frontend_chains}
    assert fe_of[f"{LB}:8080/TCP"] in {c.name for c in second.chains}
    drops = [r for c in second.chains for r in c.rules if r.target == ("DROP",)]
    assert len(drops) == 1 and drops[0].matches[-2:] == ("--dport", "80")


def test_nftables_a_restricted_frontend_gets_its_own_chain_and_the_others_nothing() -> None:
    entries = frontend_entries(_frontend(("10.0.0.0/8", "192.0.2.7/32")), Options())
    (chain,) = [o for o in entries.objects if isinstance(o, NftChain)]
    firewall = [e for e in entries.elements if e[0] in (FIREWALL, RESTRICTED)]
    key = f"{LB} . tcp . 80"
    assert firewall == [(FIREWALL, key, f"goto {chain.name}"), (RESTRICTED, key, "")]
    assert chain.rules == (
        "ip saddr { 10.0.0.0/8, 192.0.2.7/32 } return",
        f"ip daddr . meta l4proto . th dport @{RESTRICTED} drop",
    )
    nobody = frontend_entries(_frontend(()), Options())
    assert [o.rules for o in nobody.objects if isinstance(o, NftChain)] == [(chain.rules[-1],)]
    other = frontend_entries(_frontend(("10.0.0.0/9",)), Options())
    assert {o.name for o in other.objects} != {chain.name}  # other ranges: another chain
    open_entries = frontend_entries(_frontend(None), Options())
    assert not open_entries.objects
    assert not [e for e in open_entries.elements if e[0] in (FIREWALL, RESTRICTED)]


def test_drop_counters_are_read_back_from_both_kernels_listings() -> None:
    save = "\n".join(
        [
            "*filter",
            ":FLB-REJECT - [0:0]",
            f'[7:420] -A FLB-REJECT -d {LB}/32 -p tcp -m tcp --dport 80 -m comment --comment "x" -j DROP',
            f"[3:180] -A FLB-REJECT -s 10.0.0.0/8 -d {LB}/32 -p tcp -m tcp --dport 81 -j REJECT",
            f"[2:90] -A FLB-REJ-C0A879C90000-40 -d {LB}/32 -p udp -m udp --dport 53 -j DROP",
            f"[9:9] -A OTHER -d {LB}/32 -p tcp -m tcp --dport 80 -j DROP",
            "COMMIT",
        ]
    )
    assert source_range_drops(save, "FLB-") == {(LB, 80, "TCP"): 7, (LB, 53, "UDP"): 2}
    listing = {
        "nftables": [
            {"metainfo": {}},
            {
                "set": {
                    "name": RESTRICTED,
                    "elem": [
                        {"elem": {"val": {"concat": [LB, "tcp", 80]}, "counter": {"packets": 5, "bytes": 3}}},
                        {"elem": {"val": {"concat": [LB, "bogus", 80]}, "counter": {"packets": 1}}},
                        "not an element",
                    ],
                }
            },
        ]
    }
    assert restricted_counters(listing) == {(LB, 80, "TCP"): 5}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(_JSON, st.lists(st.text(max_size=60), max_size=8))
def test_hostile_listings_never_break_the_counter_readers(doc: Any, lines: list[str]) -> None:
    restricted_counters({"nftables": [{"set": {"elem": doc}}]} if not isinstance(doc, dict) else doc)
    source_range_drops("*filter\n" + "\n".join(lines) + "\nCOMMIT\n", "FLB-")


class _Plane:
    def __init__(self, counts: dict[tuple[str, int, str], int] | Exception) -> None:
        self.counts = counts

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        if isinstance(self.counts, Exception):
            raise self.counts
        return self.counts


def test_the_sampler_labels_drops_by_service_and_keeps_them_through_a_failed_read() -> None:
    metrics = Metrics()
    sampler = DropSampler(metrics)
    plan = Plan(1, (_frontend(("10.0.0.0/8",)), _frontend(None, 8080)))
    sampler.sample(plan, _Plane({(LB, 80, "TCP"): 4}))  # type: ignore[arg-type]
    text = metrics.exposition().decode()
    assert f'flannel_lb_source_range_drops_total{{frontend="{LB}:80/TCP",service="default/s80"}} 4.0' in text
    assert [ln for ln in text.splitlines() if "source_range_drops_total{" in ln and "8080" in ln] == []
    sampler.sample(plan, _Plane(RuntimeError("iptables-save timed out")))  # type: ignore[arg-type]
    assert metrics.source_range_drops.values == {("default/s80", f"{LB}:80/TCP"): 4}
    sampler.sample(Plan(2, (_frontend(None),)), _Plane(RuntimeError("not read")))  # type: ignore[arg-type]
    assert metrics.source_range_drops.values == {}


def test_the_state_file_keeps_a_restriction_across_a_restart(tmp_path: Path) -> None:
    """A reboot into an etcd outage serves the saved plan: a restricted Service must stay restricted."""
    plan = _plan(_web(["10.0.0.0/8", "2001:db8::/32"]))
    saver = holdover.Saver(tmp_path / "state.jsonl")
    try:
        saver.write(plan)
    finally:
        saver.close()
    loaded = holdover.load(tmp_path / "state.jsonl")
    assert not loaded.skipped
    assert {f.source_ranges for f in loaded.saved["default/web"]} == {("10.0.0.0/8",)}


@given(_JSON)
def test_a_damaged_saved_range_skips_its_line_and_never_opens_the_service(value: Any) -> None:
    f = dict(frontend_json(_frontend(("10.0.0.0/8",))), source_ranges=value)
    lines = [json.dumps({"version": 1}), json.dumps({"service": "default/s80", "frontends": [f]})]
    path = Path(tempfile.mkdtemp()) / "state.jsonl"
    try:
        path.write_text("\n".join(lines) + "\n")
        loaded = holdover.load(path)
    finally:
        shutil.rmtree(path.parent)
    if loaded.skipped:
        assert loaded.saved == {}
        return
    (held,) = loaded.saved["default/s80"]
    if value is None:
        assert held.source_ranges is None  # as written: open (a file from before ranges were saved)
    else:
        assert held.source_ranges is not None
        assert all(str(ipaddress.IPv4Network(r)) == r for r in held.source_ranges)
