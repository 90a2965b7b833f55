"""Backends failing the LB's own checks leave their frontend, unless all of them fail (pure planning)."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.daemon.backend_checks import check_targets
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.plan.compute import PlanSettings, admission_for, compute_plan
from flannel_lb.plan.model import Exclusion
from flannel_lb.plan.planner import Planner
from flannel_lb.plan.report import explain, explain_text
from flannel_lb.state.cluster import ClusterState

LB = "192.168.121.201"
NOW = 1_800_000_000.0
SETTINGS = PlanSettings(addresses=frozenset({LB}))
PODS = ["10.246.1.5", "10.246.1.6", "10.246.2.5"]


def _state() -> ClusterState:
    state = ClusterState()
    state.put("/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}')
    state.put("/coreos.com/network/subnets/10.246.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    state.put("/coreos.com/network/subnets/10.246.2.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"))
    state.put(
        "/registry/services/specs/default/web",
        encode_protobuf(k.service("web", ports=[k.port(80, name="http")], external_ips=[LB])),
    )
    eps = [k.endpoint(ip, "node-1" if ip.startswith("10.246.1.") else "node-2") for ip in PODS]
    state.put(
        "/registry/endpointslices/default/web-x",
        encode_protobuf(k.endpoint_slice("web-x", "web", eps, [("http", 8080, "TCP")])),
    )
    return state


def test_a_failing_backend_leaves_and_the_others_serve() -> None:
    plan = compute_plan(_state(), SETTINGS, now=NOW, unhealthy=[("10.246.1.6", 8080), ("10.9.9.9", 1)])
    (f,) = plan.frontends
    assert [b.ip for b in f.backends] == ["10.246.1.5", "10.246.2.5"]
    assert [(e.ip, e.kind) for e in f.excluded] == [("10.246.1.6", Exclusion.HEALTH)]


def test_when_every_backend_fails_all_are_served_and_explain_says_so() -> None:
    state = _state()
    failing = [(ip, 8080) for ip in PODS]
    plan = compute_plan(state, SETTINGS, now=NOW, unhealthy=failing)
    (f,) = plan.frontends
    assert [b.ip for b in f.backends] == sorted(PODS) and not f.excluded
    story = explain(state, plan, ("default", "web"), SETTINGS, admission_for(state, NOW, None, [LB], failing))
    assert story is not None and story["ports"][0]["health_kept"] is True
    assert "every backend fails its health check: all are served" in explain_text(story)


def test_the_planner_replans_when_health_changes_and_agrees_with_a_fresh_plan() -> None:
    state = _state()
    planner = Planner(state, SETTINGS, clock=lambda: NOW)
    planner.plan()
    assert planner.set_unhealthy([("10.246.2.5", 8080)]) is True
    assert planner.set_unhealthy([("10.246.2.5", 8080)]) is False  # unchanged: nothing to re-plan
    assert planner.plan() == compute_plan(state, SETTINGS, now=NOW, unhealthy=[("10.246.2.5", 8080)])
    assert planner.set_unhealthy([]) is True
    assert [b.ip for b in planner.plan().frontends[0].backends] == sorted(PODS)


def _annotated(path: str) -> ClusterState:
    state = _state()
    svc = k.service("web", ports=[k.port(80, name="http")], external_ips=[LB])
    svc["metadata"]["annotations"] = {"flannel-lb.io/health-check-path": path}
    state.put("/registry/services/specs/default/web", encode_protobuf(svc))
    return state


def test_a_check_path_annotation_reaches_the_tcp_frontends_and_their_check_targets() -> None:
    plan = compute_plan(_annotated("/healthz"), SETTINGS, now=NOW)
    (f,) = plan.frontends
    assert f.check_path == "/healthz" and not plan.problems
    assert check_targets(plan) == {(ip, 8080, "/healthz") for ip in PODS}
    assert check_targets(compute_plan(_state(), SETTINGS, now=NOW)) == {(ip, 8080, "") for ip in PODS}


@given(st.text(max_size=300).filter(lambda p: not re.fullmatch(r"/[!-~]{0,255}", p) and p != ""))
def test_a_bad_check_path_is_reported_under_its_key_and_the_tcp_check_used(path: str) -> None:
    plan = compute_plan(_annotated(path), SETTINGS, now=NOW)
    (f,) = plan.frontends
    assert f.check_path == "" and [b.ip for b in f.backends] == sorted(PODS)  # still served
    (problem,) = plan.problems
    assert problem.key == "/registry/services/specs/default/web" and "health-check-path" in problem.reason


# --- a node whose overlay path fails the checks ([health]): all its pods leave at once ---------------

NODE1 = ipaddress.IPv4Network("10.246.1.0/24")


def _with_udp() -> ClusterState:
    """web with 80/TCP and 53/UDP on the same three pods (two on node-1's lease, one on node-2's)."""
    state = _state()
    svc = k.service(
        "web", ports=[k.port(80, name="http"), k.port(53, name="dns", protocol="UDP")], external_ips=[LB]
    )
    state.put("/registry/services/specs/default/web", encode_protobuf(svc))
    eps = [k.endpoint(ip, "node-1" if ip.startswith("10.246.1.") else "node-2") for ip in PODS]
    slice_ = k.endpoint_slice("web-x", "web", eps, [("http", 8080, "TCP"), ("dns", 53, "UDP")])
    state.put("/registry/endpointslices/default/web-x", encode_protobuf(slice_))
    return state


def test_a_failing_node_path_takes_out_all_its_pods_udp_ones_too() -> None:
    plan = compute_plan(_with_udp(), SETTINGS, now=NOW, failing_paths=[NODE1])
    by_proto = {f.protocol: f for f in plan.frontends}
    for proto in ("TCP", "UDP"):
        f = by_proto[proto]
        assert [b.ip for b in f.backends] == ["10.246.2.5"], proto
        assert sorted((e.ip, e.kind) for e in f.excluded) == [
            ("10.246.1.5", Exclusion.NODE_PATH),
            ("10.246.1.6", Exclusion.NODE_PATH),
        ]
        assert all("node path failing" in e.reason and "10.246.1.0/24" in e.reason for e in f.excluded)
    # still checked while out, so one answer brings the node back; UDP has no check
    assert check_targets(plan) == {(ip, 8080, "") for ip in PODS}


def test_the_node_reason_wins_over_the_backend_one_and_all_failing_keeps_all() -> None:
    state = _with_udp()
    plan = compute_plan(state, SETTINGS, now=NOW, failing_paths=[NODE1], unhealthy=[("10.246.1.5", 8080)])
    tcp = next(f for f in plan.frontends if f.protocol == "TCP")
    assert {e.ip: e.kind for e in tcp.excluded} == {
        "10.246.1.5": Exclusion.NODE_PATH,
        "10.246.1.6": Exclusion.NODE_PATH,
    }
    # node-1's path and node-2's pod's own check: nothing left would serve, so all serve
    unhealthy = [("10.246.2.5", 8080)]
    plan = compute_plan(state, SETTINGS, now=NOW, failing_paths=[NODE1], unhealthy=unhealthy)
    tcp = next(f for f in plan.frontends if f.protocol == "TCP")
    assert [b.ip for b in tcp.backends] == sorted(PODS) and not tcp.excluded
    admission = admission_for(state, NOW, None, [LB], unhealthy, [NODE1])
    story = explain(state, plan, ("default", "web"), SETTINGS, admission)
    assert story is not None
    assert [p["health_kept"] for p in story["ports"]] == [True, False]  # UDP: node-2's pod still serves
    assert "every backend fails its health check: all are served" in explain_text(story)


def test_the_planner_follows_failing_paths_and_agrees_with_a_fresh_plan() -> None:
    state = _with_udp()
    planner = Planner(state, SETTINGS, clock=lambda: NOW)
    planner.plan()
    assert planner.set_failing_paths([NODE1]) is True
    assert planner.set_failing_paths([NODE1]) is False
    assert planner.plan() == compute_plan(state, SETTINGS, now=NOW, failing_paths=[NODE1])
    assert planner.set_failing_paths([]) is True
    assert all(len(f.backends) == 3 for f in planner.plan().frontends)
