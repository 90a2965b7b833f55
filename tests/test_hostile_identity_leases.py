"""Issue 10 classes 4 and 5: a value's identity is its key, leases are trusted only when exact and
alone. Pure: ClusterState + compute_plan, no etcd, no root."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.decode.flannel import Lease, parse_lease
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.kernel.netcheck import own_lease_subnet
from flannel_lb.lab import objects as k
from flannel_lb.plan.compute import PlanSettings, compute_plan
from flannel_lb.plan.model import Exclusion, Plan
from flannel_lb.plan.policy import ExposurePolicy
from flannel_lb.state.cluster import ClusterState

LB = "192.168.121.201"
NOW = 1_800_000_000.0
SETTINGS = PlanSettings(addresses=frozenset({LB}))
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}'
SUBNETS = "/coreos.com/network/subnets/"
SVC = "/registry/services/specs/"
SLICES = "/registry/endpointslices/"
NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


def _state() -> ClusterState:
    state = ClusterState()
    state.put("/coreos.com/network/config", NETWORK)
    state.put(SUBNETS + "10.246.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    _serve(state, "default", "good", 80, ["10.246.1.5", "10.246.1.6"])
    return state


def _serve(state: ClusterState, ns: str, name: str, port: int, ips: list[str], lb: str = LB) -> None:
    svc = k.service(name, ns, ports=[k.port(port, name="web")], external_ips=[lb])
    state.put(f"{SVC}{ns}/{name}", encode_protobuf(svc))
    eps = [k.endpoint(ip, "node-1") for ip in ips]
    state.put(
        f"{SLICES}{ns}/{name}-x",
        encode_protobuf(k.endpoint_slice(f"{name}-x", name, eps, [("web", 8080, "TCP")], ns)),
    )


def _frontends(plan: Plan) -> dict[str, list[tuple[str, int]]]:
    return {f.label: sorted((b.ip, b.port) for b in f.backends) for f in plan.frontends}


def _kinds(plan: Plan) -> dict[str, str]:
    return {p.key: p.kind for p in plan.problems}


def _excluded(plan: Plan) -> dict[str, Exclusion]:
    return {e.ip: e.kind for f in plan.frontends for e in f.excluded}


GOOD = _frontends(compute_plan(_state(), SETTINGS, now=NOW))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["service", "slice", "endpoints", "node"]),
    key=st.tuples(NAMES, NAMES),
    meta=st.tuples(NAMES, NAMES),
)
def test_identity_mismatch_is_reported_under_its_key_and_skipped(
    kind: str, key: tuple[str, str], meta: tuple[str, str]
) -> None:
    state = _state()
    if kind == "service":
        if key == meta:
            meta = (meta[0], meta[1] + "z")
        path = f"{SVC}{key[0]}/{key[1]}"
        value = encode_protobuf(
            k.service(meta[1], meta[0], ports=[k.port(81, name="web")], external_ips=[LB])
        )
    elif kind == "slice":
        if key == meta:
            meta = (meta[0], meta[1] + "z")
        path = f"{SLICES}{key[0]}/{key[1]}"
        ep = [k.endpoint("10.246.1.99", "node-1")]
        value = encode_protobuf(k.endpoint_slice(meta[1], "good", ep, [("web", 8080, "TCP")], meta[0]))
    elif kind == "endpoints":  # read for a Service without slices: the forged value must feed nobody
        if key == meta:
            meta = (meta[0], meta[1] + "z")
        if key == ("default", "good"):
            key = ("default", "legacy")
        legacy = k.service(key[1], key[0], ports=[k.port(82, name="web")], external_ips=[LB])
        state.put(f"{SVC}{key[0]}/{key[1]}", encode_protobuf(legacy))
        path = f"/registry/services/endpoints/{key[0]}/{key[1]}"
        value = encode_protobuf(
            k.endpoints(
                meta[1], [k.endpoints_subset([("10.246.1.99", "node-1")], [("web", 8080, "TCP")])], meta[0]
            )
        )
    else:
        if key[1] == meta[1]:
            meta = (meta[0], meta[1] + "z")
        path = f"/registry/minions/{key[1]}"
        value = encode_protobuf(k.node(meta[1], "10.246.9.0/24", "10.245.1.20"))
    state.put(path, value)
    plan = compute_plan(state, SETTINGS, now=NOW)
    assert _kinds(plan).get(path) == "identity"
    served = _frontends(plan)
    if kind == "endpoints":  # the legacy Service is served, without the forged value's backend
        assert set(served) - set(GOOD) == {f"{LB}:82/TCP"}, served
        served = {label: backends for label, backends in served.items() if label in GOOD}
        assert all(not backends for label, backends in _frontends(plan).items() if label not in GOOD)
    assert served == GOOD


def test_node_with_a_namespace_is_an_identity_mismatch() -> None:
    state = _state()
    node = k.node("n1", "10.246.9.0/24", "10.245.1.20")
    node["metadata"]["namespace"] = "default"
    state.put("/registry/minions/n1", encode_protobuf(node))
    assert _kinds(compute_plan(state, SETTINGS, now=NOW)).get("/registry/minions/n1") == "identity"


def test_mismatched_namespace_never_passes_policy() -> None:
    state = _state()
    svc = k.service("web", "team-a", ports=[k.port(81, name="web")], external_ips=[LB])
    state.put(SVC + "team-b/web", encode_protobuf(svc))
    policy = PlanSettings(addresses=frozenset({LB}), policy=ExposurePolicy(namespaces=("default", "team-a")))
    plan = compute_plan(state, policy, now=NOW)
    assert _kinds(plan).get(SVC + "team-b/web") == "identity"
    assert not any(":81" in f.label for f in plan.frontends)


def test_last_good_value_stays_after_a_mismatched_one() -> None:
    state = _state()
    before = _frontends(compute_plan(state, SETTINGS, now=NOW))
    evil = k.service("evil", "default", ports=[k.port(80, name="web")], external_ips=[LB])
    state.put(SVC + "default/good", encode_protobuf(evil))
    plan = compute_plan(state, SETTINGS, now=NOW)
    assert _frontends(plan) == before
    assert _kinds(plan).get(SVC + "default/good") == "identity"


def _bad_key_suffixes() -> st.SearchStrategy[str]:
    junk = st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=6).map(
        lambda s: "10.246.1.0-24" + s
    )
    digit = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
    uni = digit.map(lambda d: "10.246.1.0-2" + d)
    zeros = st.sampled_from(["10.246.1.0-024", "010.246.1.0-24", "10.246.01.0-24", "10.246.1.00-24"])
    return st.one_of(junk, uni, zeros)


@settings(max_examples=80, deadline=None)
@given(name=_bad_key_suffixes())
def test_lease_keys_must_be_flannels_exact_spelling(name: str) -> None:
    state = _state()
    key = SUBNETS + name
    state.put(key, k.lease("10.245.1.9", "aa:00:00:00:00:09"))
    plan = compute_plan(state, SETTINGS, now=NOW)
    assert len(state.leases()) == 1
    assert _frontends(plan) == GOOD
    assert key in _kinds(plan)


@settings(max_examples=60, deadline=None)
@given(prefix=st.integers(16, 30).filter(lambda p: p != 24), offset=st.integers(0, 255))
def test_overlapping_leases_exclude_only_the_overlap(prefix: int, offset: int) -> None:
    state = _state()
    net = ipaddress.ip_network(f"10.246.1.{offset}/{prefix}", strict=False)
    key = SUBNETS + f"{net.network_address}-{prefix}"
    state.put(key, k.lease("10.245.1.8", "aa:00:00:00:00:08"))
    plan = compute_plan(state, SETTINGS, now=NOW)
    kinds = _kinds(plan)
    assert kinds.get(key) == "lease" and kinds.get(SUBNETS + "10.246.1.0-24") == "lease"
    ex = _excluded(plan)
    backends = {ip for bs in _frontends(plan).values() for ip, _ in bs}
    for ip in ("10.246.1.5", "10.246.1.6"):
        if ipaddress.ip_address(ip) in net:
            assert ex[ip] is Exclusion.LEASE_OVERLAP
        else:
            assert ip in backends


def test_lease_network_broadcast_and_lb_addresses_are_excluded() -> None:
    state = _state()
    state.put(SUBNETS + "10.246.7.0-24", k.lease("10.245.1.7", "aa:00:00:00:00:07"))
    _serve(state, "default", "odd", 90, ["10.246.1.0", "10.246.1.255", "10.246.7.9"])
    plan = compute_plan(state, PlanSettings(addresses=frozenset({LB, "10.246.7.9"})), now=NOW)
    ex = _excluded(plan)
    assert ex["10.246.1.0"] is Exclusion.LEASE_ADDRESS
    assert ex["10.246.1.255"] is Exclusion.LEASE_ADDRESS
    assert ex["10.246.7.9"] is Exclusion.LB_ADDRESS


def _lease(subnet: str, public: str) -> Lease:
    return parse_lease(subnet.replace("/", "-"), k.lease(public, "aa:00:00:00:00:01"))


def test_own_lease_subnet_rules() -> None:
    mine, other = _lease("10.246.1.0/24", LB), _lease("10.246.2.0/24", LB)
    forged = _lease("10.246.0.0/23", LB)
    inside = {ipaddress.ip_address(LB), ipaddress.ip_address("10.246.1.0")}
    own = ipaddress.ip_network("10.246.1.0/24")
    assert own_lease_subnet([mine, other], own, inside) == own
    assert own_lease_subnet([mine], own, {ipaddress.ip_address(LB)}) is None  # no address inside it
    assert own_lease_subnet([mine, forged], None, inside) == own  # most specific wins, /23 is path-checked
    assert own_lease_subnet([other], own, inside) is None


def _one(ips: list[str], *, network: bool = True, family: str = "IPv4", **kw: bool) -> ClusterState:
    state = ClusterState()
    if network:
        state.put("/coreos.com/network/config", NETWORK)
    state.put(SUBNETS + "10.246.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    state.put(SUBNETS + "10.246.1.0-25", k.lease("10.245.1.4", "aa:00:00:00:00:02"))
    svc = k.service("s", ports=[k.port(80, name="web")], external_ips=[LB])
    state.put(SVC + "default/s", encode_protobuf(svc))
    eps = [k.endpoint(ip, "node-1", **kw) for ip in ips]
    state.put(
        SLICES + "default/s-x",
        encode_protobuf(k.endpoint_slice("s-x", "s", eps, [("web", 8080, "TCP")], address_type=family)),
    )
    return state


def _second_node(state: ClusterState) -> ClusterState:
    state.put(SUBNETS + "10.246.2.0-24", k.lease("10.245.1.5", "aa:00:00:00:00:03"))
    return state


def _kinds_of(
    state: ClusterState,
    faults: dict[ipaddress.IPv4Network, str] | None = None,
    unhealthy: tuple[tuple[str, int], ...] = (),
    failing_paths: tuple[ipaddress.IPv4Network, ...] = (),
) -> set[Exclusion]:
    settings = PlanSettings(addresses=frozenset({LB, "10.246.1.200"}))
    plan = compute_plan(
        state, settings, now=NOW, path_faults=faults, unhealthy=unhealthy, failing_paths=failing_paths
    )
    return {e.kind for f in plan.frontends for e in f.excluded}


def _holdover_other() -> set[Exclusion]:
    from flannel_lb.plan.holdover import frontend_from_json

    f = frontend_from_json(
        {
            "address": LB,
            "port": 80,
            "protocol": "TCP",
            "service": "default/s",
            "backends": [],
            "excluded": [{"ip": "10.246.1.5", "reason": "saved"}],
        }
    )
    return {e.kind for e in f.excluded}


EXCLUSION_INPUTS = {
    Exclusion.NOT_READY: lambda: _kinds_of(_one(["10.246.1.130"], ready=False)),
    Exclusion.TERMINATING: lambda: _kinds_of(_one(["10.246.1.130"], ready=False, terminating=True)),
    Exclusion.ADDRESS: lambda: _kinds_of(_one(["fd00::1"], family="IPv6")),
    Exclusion.PORT: lambda: {
        e.kind for f in compute_plan(_port_state(), SETTINGS, now=NOW).frontends for e in f.excluded
    },
    Exclusion.NO_NETWORK: lambda: _kinds_of(_one(["10.246.1.130"], network=False)),
    Exclusion.OUTSIDE_NETWORK: lambda: _kinds_of(_one(["10.9.1.130"])),
    Exclusion.NO_LEASE: lambda: _kinds_of(_one(["10.246.2.5"])),
    Exclusion.NO_PATH: lambda: _kinds_of(
        _one(["10.246.1.130"]), {ipaddress.ip_network("10.246.1.0/24"): "down"}
    ),
    Exclusion.LEASE_OVERLAP: lambda: _kinds_of(_one(["10.246.1.5"])),
    Exclusion.HEALTH: lambda: _kinds_of(
        _one(["10.246.1.130", "10.246.1.131"]), unhealthy=(("10.246.1.131", 8080),)
    ),
    Exclusion.NODE_PATH: lambda: _kinds_of(
        _second_node(_one(["10.246.1.130", "10.246.2.5"])),
        failing_paths=(ipaddress.IPv4Network("10.246.1.0/24"),),
    ),
    Exclusion.LEASE_ADDRESS: lambda: _kinds_of(_one(["10.246.1.255"])),
    Exclusion.LB_ADDRESS: lambda: _kinds_of(_one(["10.246.1.200"])),
    Exclusion.OTHER: _holdover_other,
}


def _port_state() -> ClusterState:
    state = _one([])
    eps = [k.endpoint("10.246.1.130", "node-1")]
    state.put(
        SLICES + "default/s-x", encode_protobuf(k.endpoint_slice("s-x", "s", eps, [("nope", 8080, "TCP")]))
    )
    return state


def test_every_exclusion_kind_has_an_input_that_produces_it() -> None:
    assert set(EXCLUSION_INPUTS) == set(Exclusion)
    for kind, make in EXCLUSION_INPUTS.items():
        assert kind in make(), kind
        assert kind.value.isidentifier()  # a metric label
