"""The plan, from etcd values to frontends: pure, no etcd and no root needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.plan.compute import PlanSettings, compute_plan
from flannel_lb.plan.model import Plan
from flannel_lb.plan.planner import Planner
from flannel_lb.state.cluster import ClusterState

LB = "192.168.121.201"
SETTINGS = PlanSettings(addresses=frozenset({LB, "10.245.1.142"}))
NOW = 1_800_000_000.0
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}'
SVC = "/registry/services/specs/"
SLICES = "/registry/endpointslices/"
EPS = "/registry/services/endpoints/"

Encoder = Callable[[dict[str, Any]], bytes]


def as_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture(params=["protobuf", "json"])
def encode(request: pytest.FixtureRequest) -> Encoder:
    return encode_protobuf if request.param == "protobuf" else as_json


def base_state() -> ClusterState:
    state = ClusterState()
    state.put("/coreos.com/network/config", NETWORK)
    state.put("/coreos.com/network/subnets/10.246.92.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    state.put("/coreos.com/network/subnets/10.246.55.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"))
    state.put("/coreos.com/network/subnets/10.246.90.0-24", k.lease("10.245.1.142", "aa:00:00:00:00:03"))
    return state


def plan_of(state: ClusterState) -> Plan:
    return compute_plan(state, SETTINGS, now=NOW)


def frontends(plan: Plan) -> dict[str, list[tuple[str, int, str]]]:
    return {f.label: [(b.ip, b.port, b.node) for b in f.backends] for f in plan.frontends}


def excluded(plan: Plan, label: str) -> dict[str, str]:
    f = next(f for f in plan.frontends if f.label == label)
    return {e.ip: e.reason for e in f.excluded}


def test_seed_nginx_exposed_on_the_lb_address(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/nginx", encode(k.service("nginx", external_ips=[LB])))
    state.put(
        SLICES + "default/nginx-abc",
        encode(
            k.endpoint_slice(
                "nginx-abc", "nginx", [k.endpoint("10.246.92.8", "kubernetes-node-1")], [("", 80, "TCP")]
            )
        ),
    )
    plan = plan_of(state)
    assert frontends(plan) == {f"{LB}:80/TCP": [("10.246.92.8", 80, "kubernetes-node-1")]}
    assert plan.to_json()["frontends"][0]["service"] == "default/nginx"
    assert plan.problems == ()


def test_multi_port_udp_service_across_several_slices(encode: Encoder) -> None:
    state = base_state()
    ports = [k.port(53, name="dns", protocol="UDP"), k.port(53, name="dns-tcp"), k.port(9153, name="metrics")]
    state.put(
        SVC + "kube-system/dns", encode(k.service("dns", "kube-system", ports=ports, external_ips=[LB]))
    )
    slice_ports = [("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP"), ("metrics", 9153, "TCP")]
    state.put(
        SLICES + "kube-system/dns-1",
        encode(
            k.endpoint_slice("dns-1", "dns", [k.endpoint("10.246.92.2", "n1")], slice_ports, "kube-system")
        ),
    )
    state.put(
        SLICES + "kube-system/dns-2",
        encode(
            k.endpoint_slice(
                "dns-2",
                "dns",
                [k.endpoint("10.246.55.2", "n2"), k.endpoint("10.246.92.2", "n1")],  # .92.2 also in dns-1
                slice_ports,
                "kube-system",
            )
        ),
    )
    got = frontends(plan_of(state))
    both = [("10.246.55.2", 5353, "n2"), ("10.246.92.2", 5353, "n1")]
    assert got == {
        f"{LB}:53/TCP": both,
        f"{LB}:53/UDP": both,
        f"{LB}:9153/TCP": [("10.246.55.2", 9153, "n2"), ("10.246.92.2", 9153, "n1")],
    }


def test_named_target_port_resolves_per_endpoint(encode: Encoder) -> None:
    """Two pod versions name their container port `web` differently: each slice carries its own number."""
    state = base_state()
    state.put(
        SVC + "default/web",
        encode(k.service("web", ports=[k.port(80, "web", name="http")], external_ips=[LB])),
    )
    state.put(
        SLICES + "default/web-a",
        encode(k.endpoint_slice("web-a", "web", [k.endpoint("10.246.92.3")], [("http", 8080, "TCP")])),
    )
    state.put(
        SLICES + "default/web-b",
        encode(k.endpoint_slice("web-b", "web", [k.endpoint("10.246.55.3")], [("http", 9090, "TCP")])),
    )
    assert [(ip, p) for ip, p, _ in frontends(plan_of(state))[f"{LB}:80/TCP"]] == [
        ("10.246.55.3", 9090),
        ("10.246.92.3", 8080),
    ]


def test_not_ready_excluded_and_terminating_fallback(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/app", encode(k.service("app", external_ips=[LB])))
    eps = [
        k.endpoint("10.246.92.4", ready=True),
        k.endpoint("10.246.92.5", ready=False),
        k.endpoint("10.246.55.4", ready=False, serving=True, terminating=True),
    ]
    state.put(SLICES + "default/app-1", encode(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    plan = plan_of(state)
    assert [b[0] for b in frontends(plan)[f"{LB}:80/TCP"]] == ["10.246.92.4"]
    assert excluded(plan, f"{LB}:80/TCP") == {
        "10.246.92.5": "not ready",
        "10.246.55.4": "draining: terminating, so no new connections; its established ones go on",
    }
    # the only ready pod goes away: the serving-and-terminating one takes over, as in kube-proxy
    eps[0] = k.endpoint("10.246.92.4", ready=False)
    state.put(SLICES + "default/app-1", encode(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    assert [b[0] for b in frontends(plan_of(state))[f"{LB}:80/TCP"]] == ["10.246.55.4"]


def test_endpoints_without_a_live_lease_or_outside_the_network_are_excluded(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/app", encode(k.service("app", external_ips=[LB])))
    eps = [k.endpoint("10.246.92.4", "n1"), k.endpoint("10.246.7.4", "n3"), k.endpoint("172.17.0.2", "n4")]
    state.put(SLICES + "default/app-1", encode(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    plan = plan_of(state)
    assert excluded(plan, f"{LB}:80/TCP") == {
        "10.246.7.4": "no live flannel lease covers this address (node gone or lease expired)",
        "172.17.0.2": "outside the flannel network 10.246.0.0/16",
    }
    state.delete("/coreos.com/network/subnets/10.246.92.0-24")  # node-1's lease expires (v3: key deleted)
    assert frontends(plan_of(state))[f"{LB}:80/TCP"] == []


def test_v2_lease_past_its_ttl_is_expired() -> None:
    state = base_state()
    state.put(
        "/coreos.com/network/subnets/10.246.92.0-24",
        k.lease("10.245.1.3", "aa:00:00:00:00:01"),
        expires=NOW - 1,
    )
    state.put(SVC + "default/app", as_json(k.service("app", external_ips=[LB])))
    state.put(
        SLICES + "default/app-1",
        as_json(k.endpoint_slice("app-1", "app", [k.endpoint("10.246.92.4")], [("", 80, "TCP")])),
    )
    assert "has expired" in excluded(plan_of(state), f"{LB}:80/TCP")["10.246.92.4"]


def test_endpoints_object_used_when_there_are_no_slices(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/legacy", encode(k.service("legacy", external_ips=[LB])))
    state.put(
        EPS + "default/legacy",
        encode(
            k.endpoints(
                "legacy",
                [
                    k.endpoints_subset(
                        [("10.246.92.6", "n1")], [("", 80, "TCP")], not_ready=[("10.246.92.7", "n1")]
                    )
                ],
            )
        ),
    )
    plan = plan_of(state)
    assert [b[0] for b in frontends(plan)[f"{LB}:80/TCP"]] == ["10.246.92.6"]
    assert excluded(plan, f"{LB}:80/TCP") == {"10.246.92.7": "not ready"}
    # once a slice exists, slices win
    state.put(
        SLICES + "default/legacy-1",
        encode(k.endpoint_slice("legacy-1", "legacy", [k.endpoint("10.246.55.6")], [("", 80, "TCP")])),
    )
    assert [b[0] for b in frontends(plan_of(state))[f"{LB}:80/TCP"]] == ["10.246.55.6"]


def test_conflicting_services_oldest_wins(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "b/old", encode(k.service("old", "b", external_ips=[LB], created="2025-01-01T00:00:00Z")))
    state.put(SVC + "a/new", encode(k.service("new", "a", external_ips=[LB], created="2026-01-01T00:00:00Z")))
    state.put(
        SVC + "c/same", encode(k.service("same", "c", external_ips=[LB], created="2025-01-01T00:00:00Z"))
    )
    plan = plan_of(state)
    assert [f.service for f in plan.frontends] == ["b/old"]
    assert sorted((c.winner, c.loser) for c in plan.conflicts) == [("b/old", "a/new"), ("b/old", "c/same")]
    assert "created earlier" in next(c.reason for c in plan.conflicts if c.loser == "a/new")
    assert "namespace/name" in next(c.reason for c in plan.conflicts if c.loser == "c/same")


def test_exposure_by_load_balancer_ip_and_ingress_and_affinity(encode: Encoder) -> None:
    state = base_state()
    state.put(
        SVC + "default/lbip", encode(k.service("lbip", load_balancer_ip="10.245.1.142", type="LoadBalancer"))
    )
    state.put(
        SVC + "default/ing",
        encode(
            k.service("ing", ports=[k.port(443)], ingress=[LB], type="LoadBalancer", affinity_timeout=600)
        ),
    )
    state.put(SVC + "default/other", encode(k.service("other", external_ips=["192.0.2.1"])))
    state.put(SVC + "default/none", encode(k.service("none")))
    plan = plan_of(state)
    assert sorted(frontends(plan)) == ["10.245.1.142:80/TCP", f"{LB}:443/TCP"]
    aff = next(f for f in plan.frontends if f.port == 443).affinity
    assert aff is not None and (aff.mode, aff.timeout) == ("ClientIP", 600)
    assert "192.0.2.1" in plan.verdicts["default/other"].reason
    assert "no externalIPs" in plan.verdicts["default/none"].reason


def test_bad_values_are_reported_and_everything_else_is_served(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/good", encode(k.service("good", external_ips=[LB])))
    state.put(
        SLICES + "default/good-1",
        encode(k.endpoint_slice("good-1", "good", [k.endpoint("10.246.92.9")], [("", 80, "TCP")])),
    )
    state.put(SVC + "default/secret", b"k8s:enc:aescbc:v1:key1:\x00\x01garbage")
    state.put(SVC + "default/trunc", encode(k.service("trunc", external_ips=[LB]))[:-7])
    bad_ports = k.service("ports", external_ips=[LB], ports=[k.port(0), k.port(65536), k.port(81)])
    state.put(SVC + "default/ports", encode(bad_ports))
    state.put("/coreos.com/network/subnets/10.99.0.0-24", k.lease("10.245.1.9", "aa:00:00:00:00:09"))
    state.put("/coreos.com/network/subnets/garbage", b"{}")
    plan = plan_of(state)
    assert frontends(plan)[f"{LB}:80/TCP"] == [("10.246.92.9", 80, "")]
    assert f"{LB}:81/TCP" in frontends(plan)
    reasons = {p.key: p.reason for p in plan.problems}
    assert "aescbc" in reasons[SVC + "default/secret"] and "key1" in reasons[SVC + "default/secret"]
    assert SVC + "default/trunc" in reasons
    assert "/coreos.com/network/subnets/garbage" in reasons
    assert "outside the flannel network" in reasons["/coreos.com/network/subnets/10.99.0.0-24"]
    port_problems = [p.reason for p in plan.problems if p.key == SVC + "default/ports"]
    assert len(port_problems) == 2 and all("not in 1-65535" in r for r in port_problems)


def test_a_broken_update_keeps_the_last_good_value(encode: Encoder) -> None:
    state = base_state()
    state.put(SVC + "default/app", encode(k.service("app", external_ips=[LB])))
    state.put(SVC + "default/app", b"\x00garbage")
    plan = plan_of(state)
    assert f"{LB}:80/TCP" in frontends(plan)
    assert "keeping the last good value" in plan.problems[0].reason
    state.delete(SVC + "default/app")
    assert plan_of(state).frontends == () and plan_of(state).problems == ()


def test_kube_subnet_manager_leases_come_from_nodes(encode: Encoder) -> None:
    import ipaddress

    state = ClusterState(subnet_manager="kube", configured_network=ipaddress.IPv4Network("10.244.0.0/16"))
    flannel = {
        "public-ip": "10.245.1.3",
        "backend-type": "vxlan",
        "backend-data": '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}',
    }
    state.put(
        "/registry/minions/node-1", encode(k.node("node-1", "10.244.1.0/24", "10.245.1.3", flannel=flannel))
    )
    state.put(
        "/registry/minions/node-2", encode(k.node("node-2", "10.244.2.0/24", "10.245.1.4"))
    )  # no flanneld yet
    state.put(SVC + "default/app", encode(k.service("app", external_ips=[LB])))
    eps = [k.endpoint("10.244.1.5"), k.endpoint("10.244.2.5")]
    state.put(SLICES + "default/app-1", encode(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    plan = plan_of(state)
    assert frontends(plan)[f"{LB}:80/TCP"] == [("10.244.1.5", 80, "node-1")]
    assert "no live flannel lease" in excluded(plan, f"{LB}:80/TCP")["10.244.2.5"]


def test_v1beta1_slices_and_cluster_ips_from_the_lb() -> None:
    state = base_state()
    state.put(SVC + "default/app", encode_protobuf(k.service("app", cluster_ip="10.247.3.4")))
    state.put(
        SLICES + "default/app-1",
        encode_protobuf(
            k.endpoint_slice(
                "app-1",
                "app",
                [k.endpoint("10.246.92.4")],
                [("", 80, "TCP")],
                api_version="discovery.k8s.io/v1beta1",
            )
        ),
    )
    assert plan_of(state).frontends == ()
    plan = compute_plan(state, PlanSettings(frozenset({LB}), cluster_ips=True), now=NOW)
    assert [(f.label, f.kind) for f in plan.frontends] == [("10.247.3.4:80/TCP", "cluster-ip")]


# --- the incremental planner gives exactly the full plan ------------------------------------------

_IPS = [f"10.246.{n}.{h}" for n in (92, 55, 7) for h in (2, 3)]
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("svc"), st.sampled_from("abc"), st.booleans(), st.sampled_from([80, 443])),
        st.tuples(
            st.just("slice"),
            st.sampled_from("abc"),
            st.integers(0, 1),
            st.lists(st.sampled_from(_IPS), max_size=4),
        ),
        st.tuples(st.just("del-svc"), st.sampled_from("abc")),
        st.tuples(st.just("del-slice"), st.sampled_from("abc"), st.integers(0, 1)),
        st.tuples(
            st.just("lease"),
            st.sampled_from(["10.246.92.0-24", "10.246.55.0-24", "10.246.7.0-24"]),
            st.booleans(),
        ),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_incremental_planner_equals_full_plan(ops: list[tuple[Any, ...]]) -> None:
    state = base_state()
    planner = Planner(state, SETTINGS, clock=lambda: NOW)
    planner.plan()
    for op in ops:
        match op:
            case ("svc", name, exposed, p):
                change = state.put(
                    SVC + f"default/{name}",
                    as_json(k.service(name, ports=[k.port(p)], external_ips=[LB] if exposed else [])),
                )
            case ("slice", name, i, ips):
                obj = k.endpoint_slice(
                    f"{name}-{i}", name, [k.endpoint(ip) for ip in ips], [("", 8080, "TCP")]
                )
                change = state.put(SLICES + f"default/{name}-{i}", as_json(obj))
            case ("del-svc", name):
                change = state.delete(SVC + f"default/{name}")
            case ("del-slice", name, i):
                change = state.delete(SLICES + f"default/{name}-{i}")
            case ("lease", key, present):
                path = f"/coreos.com/network/subnets/{key}"
                change = (
                    state.put(path, k.lease("10.245.1.9", "aa:00:00:00:00:09"))
                    if present
                    else state.delete(path)
                )
        assert planner.plan(change) == compute_plan(state, SETTINGS, now=NOW)


def test_a_relist_is_applied_as_a_diff_and_keeps_last_good_values() -> None:
    state = base_state()
    good = as_json(k.service("app", external_ips=[LB]))
    other = as_json(k.service("other", external_ips=[LB], ports=[k.port(81)]))
    state.put(SVC + "default/app", good)
    state.put(SVC + "default/other", other)
    items = [(SVC + "default/app", good, None), (SVC + "default/other", other, None)]
    flannel = [
        ("/coreos.com/network/config", NETWORK, None),
        *((key, state_value, None) for key, state_value in _lease_items()),
    ]
    assert state.replace([*flannel, *items], 10).services == set()  # nothing changed: nothing re-planned
    # after a broken watch the re-list finds app's value corrupted and other deleted
    change = state.replace([*flannel, (SVC + "default/app", b"\x00garbage", None)], 11)
    assert change.services == {("default", "other")}  # the corrupted app value changes nothing
    plan = plan_of(state)
    assert list(frontends(plan)) == [f"{LB}:80/TCP"]  # app's last good value still serves
    assert "keeping the last good value" in plan.problems[0].reason
    assert state.revision == 11


def _lease_items() -> list[tuple[str, bytes]]:
    return [
        ("/coreos.com/network/subnets/10.246.92.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01")),
        ("/coreos.com/network/subnets/10.246.55.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02")),
        ("/coreos.com/network/subnets/10.246.90.0-24", k.lease("10.245.1.142", "aa:00:00:00:00:03")),
    ]


# --- the exposure policy (hijack guard) --------------------------------------------------------------


def test_policy_limits_namespaces_annotations_and_ports() -> None:
    from flannel_lb.plan.policy import ExposurePolicy

    state = base_state()
    state.put(
        SVC + "default/web", as_json(k.service("web", ports=[k.port(80), k.port(22)], external_ips=[LB]))
    )
    state.put(
        SVC + "tenant-a/grab", as_json(k.service("grab", "tenant-a", ports=[k.port(443)], external_ips=[LB]))
    )
    tagged = k.service("tagged", "web-1", ports=[k.port(8080)], external_ips=[LB])
    tagged["metadata"]["annotations"] = {"flannel-lb.io/expose": "true"}
    state.put(SVC + "web-1/tagged", as_json(tagged))
    state.put(
        SVC + "web-2/untagged",
        as_json(k.service("untagged", "web-2", ports=[k.port(8081)], external_ips=[LB])),
    )

    open_plan = plan_of(state)
    assert len(open_plan.frontends) == 5 and open_plan.denied == ()  # the default lets everyone claim

    policy = ExposurePolicy(namespaces=("default", "web-*"), ports={LB: ((80, 80), (8000, 8100))})
    plan = compute_plan(state, PlanSettings(SETTINGS.addresses, policy=policy), now=NOW)
    assert sorted(frontends(plan)) == [f"{LB}:80/TCP", f"{LB}:8080/TCP", f"{LB}:8081/TCP"]
    denied = {(d.service, d.port): d.reason for d in plan.denied}
    assert "namespace 'tenant-a' may not claim" in denied[("tenant-a/grab", 443)]
    assert "port 22 is not allowed on 192.168.121.201" in denied[("default/web", 22)]
    assert plan.verdicts["tenant-a/grab"].reason.startswith("denied:")
    assert plan.to_json()["denied"][0]["service"] in {"default/web", "tenant-a/grab"}

    strict = ExposurePolicy(namespaces=("default", "web-*"), annotation="flannel-lb.io/expose")
    plan = compute_plan(state, PlanSettings(SETTINGS.addresses, policy=strict), now=NOW)
    assert sorted(f.service for f in plan.frontends) == ["web-1/tagged"]
    assert 'lacks the annotation flannel-lb.io/expose: "true"' in plan.verdicts["web-2/untagged"].reason


def test_a_denied_hijacker_does_not_win_a_conflict() -> None:
    """An older Service in a forbidden namespace must not take the address from an allowed one."""
    from flannel_lb.plan.policy import ExposurePolicy

    state = base_state()
    state.put(
        SVC + "evil/old", as_json(k.service("old", "evil", external_ips=[LB], created="2020-01-01T00:00:00Z"))
    )
    state.put(SVC + "default/app", as_json(k.service("app", external_ips=[LB])))
    policy = ExposurePolicy(namespaces=("default",))
    plan = compute_plan(state, PlanSettings(SETTINGS.addresses, policy=policy), now=NOW)
    assert [f.service for f in plan.frontends] == ["default/app"] and plan.conflicts == ()


def test_planner_knows_when_a_v2_lease_runs_out() -> None:
    now = [NOW]
    state = base_state()
    state.put(
        "/coreos.com/network/subnets/10.246.92.0-24",
        k.lease("10.245.1.3", "aa:00:00:00:00:01"),
        expires=NOW + 30,
    )
    state.put(SVC + "default/app", as_json(k.service("app", external_ips=[LB])))
    state.put(
        SLICES + "default/app-1",
        as_json(k.endpoint_slice("app-1", "app", [k.endpoint("10.246.92.4")], [("", 80, "TCP")])),
    )
    planner = Planner(state, SETTINGS, clock=lambda: now[0])
    assert frontends(planner.plan())[f"{LB}:80/TCP"] == [("10.246.92.4", 80, "")]
    assert planner.next_expiry() == NOW + 30
    now[0] = NOW + 31  # the agent sees the time has passed and re-plans everything
    assert planner.next_expiry() == NOW + 30
    assert frontends(planner.plan(None))[f"{LB}:80/TCP"] == []
    assert planner.next_expiry() is None
