"""Fail static across restarts: a Service whose spec does not decode at start-up keeps its frontends."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.plan.holdover import Saver, StateFile, frontend_from_json, load
from flannel_lb.plan.model import Affinity, Backend, Excluded, Frontend, frontend_json
from flannel_lb.plan.planner import Planner
from flannel_lb.state.cluster import ClusterState
from tests.test_plan import LB, SETTINGS, SLICES, SVC, base_state

GARBAGE = b"k8s\x00\n\x0c\n\x02v1\x12\x07Service\x12\xff\xff"  # truncated protobuf


def cluster(web_spec: bytes) -> ClusterState:
    state = base_state()
    state.put(SVC + "default/web", web_spec)
    state.put(SVC + "default/api", encode_protobuf(k.service("api", external_ips=[LB], ports=[k.port(81)])))
    for name, port in (("web", 80), ("api", 81)):
        eps = [k.endpoint("10.246.92.8", "node-1"), k.endpoint("10.246.55.9", "node-2")]
        state.put(
            SLICES + f"default/{name}-1",
            encode_protobuf(k.endpoint_slice(f"{name}-1", name, eps, [("", port, "TCP")])),
        )
    return state


def saved_plan(tmp_path: Path) -> Path:
    """A first run: both services decode; their frontends are saved."""
    path = tmp_path / "last-good.jsonl"
    planner = Planner(cluster(encode_protobuf(k.service("web", external_ips=[LB]))), SETTINGS)
    saver = Saver(path, interval=0)
    saver.offer(planner.plan())
    saver.close()
    assert saver.writes == 1
    return path


def labels(plan: object) -> dict[str, str]:
    return {f.label: f.service for f in plan.frontends}  # type: ignore[attr-defined]


def test_undecodable_spec_after_a_restart_is_served_from_the_saved_frontends(tmp_path: Path) -> None:
    path = saved_plan(tmp_path)
    # The restart: web's spec is garbage now, and this run never saw a good value of it.
    state = cluster(GARBAGE)
    without = Planner(state, SETTINGS).plan()
    assert labels(without) == {f"{LB}:81/TCP": "default/api"}  # what dropping it would look like

    planner = Planner(state, SETTINGS)
    planner.holdover = load(path).saved
    plan = planner.plan()
    assert labels(plan) == {f"{LB}:80/TCP": "default/web", f"{LB}:81/TCP": "default/api"}
    web = next(f for f in plan.frontends if f.service == "default/web")
    assert {b.ip for b in web.backends} == {"10.246.92.8", "10.246.55.9"}
    assert planner.held == {"default/web"}
    assert plan.verdicts["default/web"].reason.startswith("held over: its etcd value does not decode")
    assert [p.key for p in plan.problems] == [SVC + "default/web"]  # still reported as bad input

    # It decodes again (with another port): the live value wins, nothing is held.
    state.put(SVC + "default/web", encode_protobuf(k.service("web", external_ips=[LB], ports=[k.port(82)])))
    from flannel_lb.state.cluster import Change

    plan = planner.plan(Change({("default", "web")}))
    assert planner.held == set()
    assert f"{LB}:82/TCP" in labels(plan) and f"{LB}:80/TCP" not in labels(plan)


def test_deleted_spec_is_not_held(tmp_path: Path) -> None:
    planner = Planner(cluster(GARBAGE), SETTINGS)
    planner.holdover = load(saved_plan(tmp_path)).saved
    planner.state.delete(SVC + "default/web")
    assert labels(planner.plan()) == {f"{LB}:81/TCP": "default/api"} and planner.held == set()


def test_a_live_service_claiming_the_port_beats_the_held_one(tmp_path: Path) -> None:
    planner = Planner(cluster(GARBAGE), SETTINGS)
    planner.holdover = load(saved_plan(tmp_path)).saved
    planner.state.put(
        SVC + "other/web2",
        encode_protobuf(k.service("web2", "other", external_ips=[LB], created="2025-01-01T00:00:00Z")),
    )
    eps = [k.endpoint("10.246.92.20", "node-1")]
    planner.state.put(
        SLICES + "other/web2-1",
        encode_protobuf(k.endpoint_slice("web2-1", "web2", eps, [("", 80, "TCP")], namespace="other")),
    )
    plan = planner.plan()
    assert labels(plan)[f"{LB}:80/TCP"] == "other/web2"
    assert [(c.winner, c.loser) for c in plan.conflicts] == [("other/web2", "default/web")]


def test_damaged_or_missing_file_holds_nothing_and_keeps_the_rest(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.jsonl") == StateFile({})
    path = saved_plan(tmp_path)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 1 and "revision" in header and header["saved"] > 0
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    loaded = load(path)
    assert set(loaded.saved) == {"default/web", "default/api"} and loaded.skipped == (2,)


def test_saver_writes_the_latest_plan_and_rebuilds_only_changed_lines(tmp_path: Path) -> None:
    path = tmp_path / "state" / "last-good.jsonl"
    planner = Planner(cluster(encode_protobuf(k.service("web", external_ips=[LB]))), SETTINGS)
    saver = Saver(path, interval=3600)
    first = planner.plan()
    saver.write(first)
    built = saver.lines_built
    saver.offer(first)
    saver.offer(first)
    saver.close()  # writes the pending plan once, at once, despite the interval
    assert saver.writes == 2
    assert built > 0 and saver.lines_built == built  # unchanged services reused their lines
    assert not list(path.parent.glob(".*.tmp"))


frontends = st.builds(
    Frontend,
    address=st.sampled_from(["192.168.121.201", "10.0.0.1"]),
    port=st.integers(1, 65535),
    protocol=st.sampled_from(["TCP", "UDP", "SCTP"]),
    service=st.from_regex(r"[a-z]{1,5}/[a-z]{1,5}", fullmatch=True),
    port_name=st.text(max_size=5),
    affinity=st.none() | st.builds(Affinity, st.just("ClientIP"), st.integers(1, 86400)),
    backends=st.lists(
        st.builds(Backend, st.just("10.246.1.2"), st.integers(1, 65535), st.text(max_size=5)), max_size=3
    ).map(tuple),
    excluded=st.lists(
        st.builds(Excluded, st.just("10.246.9.9"), st.text(max_size=9), st.none() | st.integers(1, 9)),
        max_size=2,
    ).map(tuple),
    kind=st.sampled_from(["external", "cluster-ip"]),
)


@given(frontends)
def test_frontend_json_round_trips(f: Frontend) -> None:
    assert frontend_from_json(json.loads(json.dumps(frontend_json(f)))) == f
