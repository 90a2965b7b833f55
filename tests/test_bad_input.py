"""The bad-input catalog: each value is written into a real etcd, and flannel-lb must report it and serve
everything else.

Per case: the value goes into etcd next to a healthy cluster (two good Services, two leases); then
1. a fresh snapshot is planned (what `plan` and a restarted agent see): the problem is listed under its key
   with its kind (the `flannel_lb_input_problems{kind=...}` label) and a precise reason, and every good
   Service keeps exactly its backends;
2. an agent that was serving the healthy cluster re-lists (applied as a diff) and syncs: same problem, the
   metric carries it, and the good frontends' rules are untouched;
3. the watch path (`ClusterState.put`) gives the same answer.
At the end, `flannel-lb plan --json --no-netcheck` runs once over the whole catalog at once.

The agent here has an in-memory writer and no netcheck or conntrack: nothing touches the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from flannel_lb import config as config_mod
from flannel_lb import parts
from flannel_lb.daemon.agent import Agent
from flannel_lb.dataplane.iptables.rules import build_ruleset
from flannel_lb.decode import wire
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.plan.compute import PlanSettings, compute_plan
from flannel_lb.plan.model import Plan
from flannel_lb.plan.planner import Planner
from flannel_lb.source import EventBatch, Snapshot
from flannel_lb.state.cluster import MAX_REASON, ClusterState
from tests import fuzz_decoders as fuzz
from tests.conftest import FAST_ETCD_ARGS, StreamConsumer, memory_agent, require_etcd

pytestmark = pytest.mark.etcd

LB = "192.168.121.201"
FLANNEL = "/coreos.com/network"
SVC = "/registry/services/specs/default/"
SLICES = "/registry/endpointslices/default/"
EPS = "/registry/services/endpoints/default/"
NETWORK = b'{"Network": "10.246.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
LEASES = {"10.246.1.0-24": "10.245.1.3", "10.246.2.0-24": "10.245.1.4"}


def _svc(name: str, port: int, **kw: Any) -> bytes:
    return encode_protobuf(k.service(name, ports=[k.port(port, name="web")], external_ips=[LB], **kw))


def _slice(name: str, service: str, ips: list[str], port: int) -> bytes:
    eps = [k.endpoint(ip, f"node-{ip.split('.')[2]}") for ip in ips]
    return encode_protobuf(k.endpoint_slice(name, service, eps, [("web", port, "TCP")]))


# The healthy cluster every case runs next to: its plan must never change.
HEALTHY: dict[str, bytes] = {
    f"{FLANNEL}/config": NETWORK,
    **{
        f"{FLANNEL}/subnets/{s}": k.lease(ip, f"aa:00:00:00:00:0{i}")
        for i, (s, ip) in enumerate(LEASES.items())
    },
    SVC + "good-a": _svc("good-a", 80),
    SLICES + "good-a-1": _slice("good-a-1", "good-a", ["10.246.1.2", "10.246.2.2"], 8080),
    SVC + "good-b": _svc("good-b", 81),
    SLICES + "good-b-1": _slice("good-b-1", "good-b", ["10.246.1.3"], 8081),
}
GOOD = {f"{LB}:80/TCP": [("10.246.1.2", 8080), ("10.246.2.2", 8080)], f"{LB}:81/TCP": [("10.246.1.3", 8081)]}


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    """kube-apiserver's protobuf envelope (runtime.Unknown) around `raw`."""
    type_meta = bytearray()
    wire.write_bytes_field(type_meta, 1, api_version.encode())
    wire.write_bytes_field(type_meta, 2, kind.encode())
    unknown = bytearray()
    wire.write_bytes_field(unknown, 1, type_meta)
    wire.write_bytes_field(unknown, 2, raw)
    return b"k8s\x00" + bytes(unknown)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _service_json(name: str, **spec: Any) -> bytes:
    obj = k.service(name, external_ips=[LB], ports=[k.port(90, name="web")])
    obj["spec"].update(spec)
    return _json(obj)


@dataclass
class Case:
    id: str
    writes: dict[str, bytes]
    # (key, kind, text in the reason): each must be among the plan's problems
    problems: list[tuple[str, str, str]]
    check: Callable[[Plan], None] | None = None
    extra_frontends: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def _frontends(plan: Plan) -> dict[str, list[tuple[str, int]]]:
    return {f.label: [(b.ip, b.port) for b in f.backends] for f in plan.frontends}


def _excluded(plan: Plan, label: str) -> dict[str, str]:
    return {e.ip: e.reason for f in plan.frontends if f.label == label for e in f.excluded}


def _check_odd_ips(plan: Plan) -> None:
    ex = _excluded(plan, f"{LB}:92/TCP")
    assert ex["10.99.0.5"] == "outside the flannel network 10.246.0.0/16", ex


def _check_ipv6_slice(plan: Plan) -> None:
    ex = _excluded(plan, f"{LB}:93/TCP")
    assert ex == {"fd00::5": "IPv6 endpoint: flannel-lb serves IPv4 only"}, ex


def _check_odd(plan: Plan) -> None:
    _check_odd_ips(plan)
    _check_ipv6_slice(plan)


def _bad_slice_doc() -> dict[str, Any]:
    """An EndpointSlice claiming the good Service, with `endpoints` an object instead of a list."""
    doc = k.endpoint_slice("eps-object", "good-a", [], [("web", 8080, "TCP")])
    doc["endpoints"] = {"addresses": ["10.246.1.2"]}
    return doc


def _check_unread_endpoints(plan: Plan) -> None:
    """good-a is served from its EndpointSlice: its (bad) Endpoints value is never decoded nor reported."""
    assert not [p for p in plan.problems if p.key == EPS + "good-a"], plan.problems


def _check_lease_outside(plan: Plan) -> None:
    ex = _excluded(plan, f"{LB}:95/TCP")
    assert ex == {"10.99.1.2": "outside the flannel network 10.246.0.0/16"}, ex


CATALOG: list[Case] = [
    Case(
        "truncated-protobuf",
        {SVC + "trunc": _svc("trunc", 90)[:60]},
        [(SVC + "trunc", "decode", "malformed protobuf")],
    ),
    Case(
        "garbage-protobuf",
        {SVC + "garbage": b"k8s\x00\x0a\xff\xff\xff\xff\x0f\x12\x03abc"},
        [(SVC + "garbage", "decode", "malformed protobuf envelope")],
    ),
    Case(
        "garbage-bytes",
        {SLICES + "noise": bytes(range(256)) * 4},
        [(SLICES + "noise", "decode", "not a Kubernetes value")],
    ),
    Case(
        "unknown-kind-protobuf",
        {SVC + "cm": _envelope("v1", "ConfigMap", b"\x0a\x00")},
        [(SVC + "cm", "kind", "ConfigMap")],
    ),
    Case(
        "wrong-kind-for-key",
        {SVC + "node": encode_protobuf(k.node("node-9", "10.246.9.0/24", "10.245.1.9"))},
        [(SVC + "node", "decode", "expected a Service under this key, found v1 Node")],
    ),
    Case(
        "json-wrong-types",
        {
            SVC + "ports-string": _service_json("ports-string", ports="80"),
            SVC + "metadata-list": _json({"kind": "Service", "apiVersion": "v1", "metadata": []}),
            SVC + "port-word": _service_json("port-word", ports=[{"port": "eighty", "protocol": "TCP"}]),
            SLICES + "eps-object": _json(_bad_slice_doc()),
            # a wrong type that is huge: the reason must not quote it
            SVC + "name-list": _json(
                {"kind": "Service", "apiVersion": "v1", "metadata": {"name": ["x" * 99] * 5000}}
            ),
            f"{FLANNEL}/subnets/10.246.7.0-24": _json({"PublicIP": 12345, "BackendType": "vxlan"}),
        },
        [
            (SVC + "ports-string", "invalid", "spec.ports must be a list, got str"),
            (SVC + "metadata-list", "decode", "metadata is not an object"),
            (SVC + "port-word", "invalid", "port 'eighty' is not in 1-65535; port ignored"),
            (SLICES + "eps-object", "invalid", "endpoints must be a list, got dict"),
            (SVC + "name-list", "invalid", "metadata.name must be a string, got list"),
            (f"{FLANNEL}/subnets/10.246.7.0-24", "lease", "PublicIP 12345 is not an IPv4 address"),
        ],
    ),
    Case(
        "encrypted",
        {
            SVC + "secret": b"k8s:enc:aescbc:v1:key1:\x8a\x01\x02ciphertext",
            SLICES + "kms": b"k8s:enc:kms:v2:vault-kms:" + bytes(300),
        },
        [(SVC + "secret", "encrypted", "aescbc"), (SLICES + "kms", "encrypted", "vault-kms")],
    ),
    Case(
        "ipv6-and-odd-ip-strings",
        {
            SVC + "odd": _service_json(
                "odd",
                ports=[k.port(92, name="web")],
                externalIPs=["2001:db8::1", " 192.168.121.201", "192.168.121.201/32", "0xc0.168.121.201", LB],
                loadBalancerIP="192.168.121.0201",
            ),
            SLICES + "odd-1": _json(
                k.endpoint_slice(
                    "odd-1",
                    "odd",
                    [
                        k.endpoint(ip, "node-1")
                        for ip in ("fe80::1", "010.246.1.9", "10.246.1.9 ", "10.99.0.5")
                    ]
                    + [{"addresses": [7], "conditions": {"ready": True}}],
                    [("web", 8092, "TCP")],
                )
            ),
            SVC + "v6": _service_json("v6", ports=[k.port(93, name="web")]),
            SLICES + "v6-1": _json(
                k.endpoint_slice(
                    "v6-1",
                    "v6",
                    [k.endpoint("fd00::5", "node-1")],
                    [("web", 8093, "TCP")],
                    address_type="IPv6",
                )
            ),
        },
        [
            (SVC + "odd", "invalid", "2001:db8::1 is IPv6, which flannel-lb does not serve; ignored"),
            (SVC + "odd", "invalid", "' 192.168.121.201' is not an IPv4 address; ignored"),
            (SVC + "odd", "invalid", "'192.168.121.201/32' is not an IPv4 address; ignored"),
            (SVC + "odd", "invalid", "'0xc0.168.121.201' is not an IPv4 address; ignored"),
            (SVC + "odd", "invalid", "spec.loadBalancerIP: '192.168.121.0201' is not an IPv4 address"),
            (SLICES + "odd-1", "invalid", "fe80::1 is IPv6"),
            (SLICES + "odd-1", "invalid", "'010.246.1.9' is not an IPv4 address"),
            (SLICES + "odd-1", "invalid", "'10.246.1.9 ' is not an IPv4 address"),
            (SLICES + "odd-1", "invalid", "7 is not an IP address string"),
        ],
        _check_odd,
        {f"{LB}:92/TCP": [], f"{LB}:93/TCP": []},
    ),
    Case(
        "port-0-and-65536",
        {
            SVC + "ports": _service_json(
                "ports",
                ports=[
                    k.port(0, name="zero"),
                    k.port(65536, name="big"),
                    k.port(94, 70000, name="target"),
                    k.port(94, name="web"),
                ],
            ),
            SLICES + "ports-1": _json(
                k.endpoint_slice(
                    "ports-1",
                    "ports",
                    [k.endpoint("10.246.2.4", "node-2")],
                    [("web", 8094, "TCP"), ("zero", 0, "TCP"), ("big", 65536, "TCP")],
                )
            ),
        },
        [
            (SVC + "ports", "invalid", "spec.ports[0] (zero): port 0 is not in 1-65535; port ignored"),
            (SVC + "ports", "invalid", "spec.ports[1] (big): port 65536 is not in 1-65535; port ignored"),
            (SVC + "ports", "invalid", "targetPort 70000 is not in 1-65535; port ignored"),
            (SLICES + "ports-1", "invalid", "ports[1]: port 0 is not in 1-65535; ignored"),
            (SLICES + "ports-1", "invalid", "ports[2]: port 65536 is not in 1-65535; ignored"),
        ],
        None,
        {f"{LB}:94/TCP": [("10.246.2.4", 8094)]},
    ),
    Case(
        "lease-key-does-not-parse",
        {
            f"{FLANNEL}/subnets/garbage": k.lease("10.245.1.9", "aa:00:00:00:00:09"),
            f"{FLANNEL}/subnets/10.246.3.0-33": k.lease("10.245.1.9", "aa:00:00:00:00:09"),
            f"{FLANNEL}/subnets/10.246.3.7-24": k.lease("10.245.1.9", "aa:00:00:00:00:09"),
        },
        [
            (f"{FLANNEL}/subnets/garbage", "lease", "lease key 'garbage' is not of the form"),
            (f"{FLANNEL}/subnets/10.246.3.0-33", "lease", "lease key '10.246.3.0-33'"),
            (f"{FLANNEL}/subnets/10.246.3.7-24", "lease", "has host bits set"),
        ],
    ),
    Case(
        "lease-outside-the-network",
        {
            f"{FLANNEL}/subnets/10.99.1.0-24": k.lease("10.245.1.8", "aa:00:00:00:00:08"),
            SVC + "outside": _service_json("outside", ports=[k.port(95, name="web")]),
            SLICES + "outside-1": _json(
                k.endpoint_slice(
                    "outside-1", "outside", [k.endpoint("10.99.1.2", "node-8")], [("web", 95, "TCP")]
                )
            ),
        },
        [(f"{FLANNEL}/subnets/10.99.1.0-24", "lease", "lies outside the flannel network 10.246.0.0/16")],
        _check_lease_outside,
        {f"{LB}:95/TCP": []},
    ),
    Case(
        # v1 Endpoints are only read for Services without EndpointSlices (decoded lazily)
        "endpoints-without-slices",
        {
            SVC + "legacy": _service_json("legacy", ports=[k.port(99, name="web")]),
            EPS + "legacy": encode_protobuf(
                k.endpoints(
                    "legacy", [k.endpoints_subset([("10.246.1.9", "node-1")], [("web", 8099, "TCP")])]
                )
            ),
            SVC + "legacy-bad": _service_json("legacy-bad", ports=[k.port(89, name="web")]),
            EPS + "legacy-bad": b"k8s:enc:aescbc:v1:key1:\x8a\x01\x02ciphertext",
            EPS + "good-a": b"k8s\x00\x0a\xff\xff\xff\xff\x0f\x12\x03abc",
        },
        [(EPS + "legacy-bad", "encrypted", "aescbc")],
        _check_unread_endpoints,
        {f"{LB}:99/TCP": [("10.246.1.9", 8099)], f"{LB}:89/TCP": []},
    ),
    Case(
        "duplicated-endpoints",
        {
            SVC + "dup": _service_json("dup", ports=[k.port(96, name="web")]),
            SLICES + "dup-1": _json(
                k.endpoint_slice(
                    "dup-1",
                    "dup",
                    [k.endpoint("10.246.1.6", "node-1")] * 3
                    + [k.endpoint("10.246.2.6", "node-2", ready=False)],
                    [("web", 8096, "TCP")],
                )
            ),
            SLICES + "dup-2": _json(
                k.endpoint_slice(
                    "dup-2",
                    "dup",
                    [k.endpoint("10.246.1.6", "node-1"), k.endpoint("10.246.2.6", "node-2")],
                    [("web", 8096, "TCP")],
                )
            ),
        },
        [],
        None,
        # one backend per ip:port, and the ready copy of 10.246.2.6 wins over the unready one
        {f"{LB}:96/TCP": [("10.246.1.6", 8096), ("10.246.2.6", 8096)]},
    ),
]


# -- fixtures and plumbing --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    require_etcd()
    etcd = EtcdServer(tmp_path_factory.mktemp("bad-input-etcd"), extra_args=FAST_ETCD_ARGS)
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


def client_of(server: EtcdServer) -> Any:
    u = urllib.parse.urlsplit(server.client_url)
    return etcd3.client(host=u.hostname, port=u.port)


@pytest.fixture
def etcd_client(server: EtcdServer) -> Iterator[Any]:
    """A client on the module's etcd, which holds exactly the healthy cluster when the test starts."""
    c = client_of(server)
    c.delete_prefix("/")
    for key, value in HEALTHY.items():
        c.put(key, value)
    try:
        yield c
    finally:
        c.delete_prefix("/")
        c.close()


def make_config(server: EtcdServer) -> config_mod.Config:
    return config_mod.parse(
        {
            "etcd": {"endpoints": [server.client_url], "retry_budget": 5.0},
            "lb": {"addresses": [LB, "10.245.1.142"]},
            # nothing here may touch the kernel: no conntrack cleanup, no ip_forward
            "dataplane": {"conntrack_cleanup": False, "manage_ip_forward": False},
        }
    )


def snapshot(cfg: config_mod.Config) -> Snapshot:
    return parts.source(cfg).snapshot(retry_budget=5)


def fresh_plan(cfg: config_mod.Config, snap: Snapshot) -> Plan:
    state = parts.new_state(cfg)
    parts.apply_update(state, snap)
    return compute_plan(state, parts.plan_settings(cfg), now=time.time())


def new_agent(cfg: config_mod.Config, snap: Snapshot) -> Agent:
    agent = memory_agent(cfg)
    agent.handle(snap)
    assert agent.sync(full=False) is not None
    return agent


def problem_metrics(agent: Agent) -> dict[str, float]:
    out = {}
    for line in generate_latest(agent.metrics.registry).decode().splitlines():
        if line.startswith("flannel_lb_input_problems{"):
            label, value = line.split("} ")
            out[label.split('kind="')[1].rstrip('"')] = float(value)
    return out


def good_chains(agent: Agent) -> dict[str, str]:
    """The nat chain of each good frontend (its name is a hash of its rules)."""
    assert agent.plan is not None
    chains = dict(build_ruleset(agent.plan, agent.options).frontend_chains)
    return {label: chains[label] for label in GOOD}


def assert_reports(plan: Plan, case: Case) -> None:
    for key, kind, text in case.problems:
        matches = [p for p in plan.problems if p.key == key and p.kind == kind and text in p.reason]
        assert matches, f"no {kind} problem under {key} containing {text!r}: " + "\n".join(
            f"{p.key} [{p.kind}] {p.reason}" for p in plan.problems
        )
    for p in plan.problems:
        assert len(p.reason) <= MAX_REASON + 40, f"{p.key}: a {len(p.reason)}-character reason"
    frontends = _frontends(plan)
    for label, want in {**GOOD, **case.extra_frontends}.items():
        assert frontends.get(label) == want, (label, frontends.get(label))
    if case.check is not None:
        case.check(plan)


# -- the catalog ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CATALOG, ids=[c.id for c in CATALOG])
def test_bad_input_is_reported_and_everything_else_served(
    server: EtcdServer, etcd_client: Any, case: Case
) -> None:
    cfg = make_config(server)
    healthy = snapshot(cfg)
    agent = new_agent(cfg, healthy)
    before = good_chains(agent)
    for key, value in case.writes.items():
        etcd_client.put(key, value)
    snap = snapshot(cfg)
    assert {kv.key for kv in snap.items} == set(HEALTHY) | set(case.writes)

    # 1. what `plan` and a freshly started agent see
    assert_reports(fresh_plan(cfg, snap), case)

    # 2. the running agent re-lists (applied as a diff) and syncs
    agent.handle(snap)
    assert agent.sync(full=False) is not None
    assert agent.plan is not None
    assert_reports(agent.plan, case)
    kinds = {kind for _, kind, _ in case.problems}
    metric = problem_metrics(agent)
    assert kinds <= set(metric), metric
    assert sum(metric.values()) == len(
        {(p.kind, p.key) for p in agent.plan.problems}
    )  # bad keys, not problems
    assert good_chains(agent) == before  # the good frontends' rules were not rewritten

    # 3. the same values arriving as watch events
    state = parts.new_state(cfg)
    parts.apply_update(state, healthy)
    events = [ev for ev in _events(snap) if ev.key in case.writes]
    parts.apply_update(state, EventBatch(events, snap.revision))
    assert_reports(compute_plan(state, parts.plan_settings(cfg), now=time.time()), case)


def _events(snap: Snapshot) -> list[Any]:
    from flannel_lb.source.records import Event

    return [Event("put", kv.key, kv.value, kv.mod_revision, kv.lease) for kv in snap.items]


def test_good_values_turning_bad_keep_their_last_good_record(server: EtcdServer, etcd_client: Any) -> None:
    """A Service, a slice, a lease and the network config all turn bad: nothing that worked stops."""
    cfg = make_config(server)
    agent = new_agent(cfg, snapshot(cfg))
    before = good_chains(agent)
    broken = {
        SVC + "good-a": b"k8s\x00\x0a\x02\x0a",
        SLICES + "good-a-1": b"k8s:enc:aesgcm:v1:key2:xx",
        f"{FLANNEL}/subnets/10.246.2.0-24": b'{"PublicIP": "10.245.1"}',
        f"{FLANNEL}/config": b'{"Network": 10}',
    }
    for key, value in broken.items():
        etcd_client.put(key, value)
    agent.handle(snapshot(cfg))
    assert agent.sync(full=False) is not None
    assert agent.plan is not None
    assert _frontends(agent.plan) == GOOD
    assert good_chains(agent) == before
    reasons = {p.key: (p.kind, p.reason) for p in agent.plan.problems}
    assert set(reasons) == set(broken)
    assert all(r.endswith("; keeping the last good value") for _, r in reasons.values()), reasons
    assert [reasons[k][0] for k in broken] == ["decode", "encrypted", "lease", "network"]
    assert problem_metrics(agent) == {"decode": 1, "encrypted": 1, "lease": 1, "network": 1}
    # ... and once they are good again, the problems are gone
    for key in broken:
        etcd_client.put(key, HEALTHY[key])
    agent.handle(snapshot(cfg))
    assert agent.sync(full=False) is not None
    assert agent.plan is not None and not agent.plan.problems
    assert problem_metrics(agent) == {}


# -- size -----------------------------------------------------------------------------------------


def _timed_plan(cfg: config_mod.Config, snap: Snapshot) -> tuple[Plan, float, float, float]:
    state = parts.new_state(cfg)
    t0 = time.perf_counter()
    parts.apply_update(state, snap)
    t1 = time.perf_counter()
    plan = compute_plan(state, parts.plan_settings(cfg), now=time.time())
    t2 = time.perf_counter()
    build_ruleset(plan)
    t3 = time.perf_counter()
    return plan, t1 - t0, t2 - t1, t3 - t2


def test_service_with_1000_ports(server: EtcdServer, etcd_client: Any) -> None:
    ports = [k.port(10_000 + i, f"p{i}", name=f"p{i}") for i in range(1000)]
    svc = k.service("wide", ports=ports, external_ips=[LB])
    eps = [k.endpoint("10.246.1.20", "node-1"), k.endpoint("10.246.2.20", "node-2")]
    sl = k.endpoint_slice("wide-1", "wide", eps, [(f"p{i}", 20_000 + i, "TCP") for i in range(1000)])
    etcd_client.put(SVC + "wide", encode_protobuf(svc))
    etcd_client.put(SLICES + "wide-1", encode_protobuf(sl))
    cfg = make_config(server)
    plan, decode_s, plan_s, rules_s = _timed_plan(cfg, snapshot(cfg))
    print(
        f"\n1,000-port Service: decode {decode_s * 1000:.1f} ms, plan {plan_s * 1000:.1f} ms,"
        f" rules {rules_s * 1000:.1f} ms"
    )
    wide = [f for f in plan.frontends if f.service == "default/wide"]
    assert len(wide) == 1000 and all(len(f.backends) == 2 for f in wide)
    assert {(b.ip, b.port) for b in wide[999].backends} == {("10.246.1.20", 20_999), ("10.246.2.20", 20_999)}
    assert not plan.problems
    assert_reports(plan, Case("wide", {}, []))
    assert decode_s + plan_s < 10


def test_slice_with_10000_endpoints(server: EtcdServer, etcd_client: Any) -> None:
    etcd_client.put(f"{FLANNEL}/subnets/10.246.64.0-18", k.lease("10.245.1.50", "aa:00:00:00:00:50"))
    ips = [str(0x0AF64000 + 1 + i) for i in range(10_000)]  # inside 10.246.64.0/18
    ips = [".".join(str((int(n) >> s) & 255) for s in (24, 16, 8, 0)) for n in ips]
    eps = [k.endpoint(ip, "node-big", ready=i % 10 != 0) for i, ip in enumerate(ips)]
    etcd_client.put(
        SVC + "big", encode_protobuf(k.service("big", ports=[k.port(97, name="web")], external_ips=[LB]))
    )
    value = encode_protobuf(k.endpoint_slice("big-1", "big", eps, [("web", 8097, "TCP")]))
    etcd_client.put(SLICES + "big-1", value)
    cfg = make_config(server)
    plan, decode_s, plan_s, rules_s = _timed_plan(cfg, snapshot(cfg))
    print(
        f"\n10,000-endpoint EndpointSlice ({len(value) / 1e6:.2f} MB protobuf):"
        f" decode {decode_s * 1000:.1f} ms,"
        f" plan {plan_s * 1000:.1f} ms, rules {rules_s * 1000:.1f} ms"
    )
    big = next(f for f in plan.frontends if f.service == "default/big")
    assert len(big.backends) == 9000 and len(big.excluded) == 1000
    assert {e.reason for e in big.excluded} == {"not ready"}
    assert_reports(plan, Case("big", {}, []))
    assert decode_s + plan_s < 10


def test_very_large_values(
    server: EtcdServer, etcd_client: Any, consume: Callable[..., StreamConsumer]
) -> None:
    """1.5 MB values (etcd's default request limit is 1.5 MiB): a valid Service carrying a huge annotation
    is served, a huge garbage value is reported in a short line, and neither breaks a snapshot or a watch."""
    cfg = make_config(server)
    svc = k.service("huge", ports=[k.port(98, name="web")], external_ips=[LB])
    svc["metadata"]["annotations"] = {"example.com/blob": "x" * 1_500_000}
    huge = encode_protobuf(svc)
    garbage = b"\x00\xff" * 750_000
    assert 1_500_000 <= len(huge) < 1_572_864 and len(garbage) == 1_500_000
    source = parts.source(cfg)
    consumer = consume(source)
    assert consumer.wait_for(lambda s: s.connected)
    etcd_client.put(SVC + "huge", huge)
    etcd_client.put(SLICES + "garbage", garbage)
    etcd_client.put(SLICES + "huge-1", _slice("huge-1", "huge", ["10.246.2.9"], 8098))
    assert consumer.wait_for(lambda s: SLICES + "huge-1" in s.state, timeout=10)
    assert consumer.state[SVC + "huge"] == huge and consumer.state[SLICES + "garbage"] == garbage
    t0 = time.perf_counter()
    snap = snapshot(cfg)
    took = time.perf_counter() - t0
    plan = fresh_plan(cfg, snap)
    print(f"\nsnapshot with two 1.5 MB values: {took * 1000:.0f} ms")
    case = Case(
        "huge",
        {},
        [(SLICES + "garbage", "decode", "not a Kubernetes value")],
        None,
        {f"{LB}:98/TCP": [("10.246.2.9", 8098)]},
    )
    assert_reports(plan, case)


# -- the CLI over the whole catalog at once ----------------------------------------------------------


def test_plan_cli_over_the_whole_catalog(server: EtcdServer, etcd_client: Any, tmp_path: Path) -> None:
    writes: dict[str, bytes] = {}
    for case in CATALOG:
        assert not set(case.writes) & set(writes), case.id
        writes.update(case.writes)
    for key, value in writes.items():
        etcd_client.put(key, value)
    config = tmp_path / "flannel-lb.toml"
    config.write_text(
        f'[etcd]\nendpoints = ["{server.client_url}"]\nretry_budget = 5.0\n[lb]\naddresses = ["{LB}"]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flannel_lb", "--config", str(config), "plan", "--json", "--no-netcheck"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    problems = [(p["key"], p["kind"], p["reason"]) for p in doc["problems"]]
    for case in CATALOG:
        for key, kind, text in case.problems:
            assert any(pk == key and pkind == kind and text in r for pk, pkind, r in problems), (
                case.id,
                key,
                text,
            )
    got = {
        f"{f['address']}:{f['port']}/{f['protocol']}": [(b["ip"], b["port"]) for b in f["backends"]]
        for f in doc["frontends"]
    }
    for case in CATALOG:
        for label, want in {**GOOD, **case.extra_frontends}.items():
            assert got.get(label) == want, (case.id, label, got.get(label))
    print("\n".join(f"  {k} [{kd}] {r}" for k, kd, r in problems))
    print(f"\nplan over the whole catalog: {len(doc['frontends'])} frontends, {len(problems)} problems")


# -- properties (hypothesis): random and hostile input, the plan's invariants hold ---------------------

NOW = 1_800_000_000.0
PROP_SETTINGS = PlanSettings(addresses=frozenset({LB, "10.245.1.142"}))
_LEASE_POOL = {
    "10.246.1.0-24": "10.246.1.",
    "10.246.2.0-24": "10.246.2.",
    "10.246.200.0-24": "10.246.200.",  # outside a /17 network
    "10.246.0.0-15": "10.246.3.",  # larger than the network: must never vouch for anything
    "0.0.0.0-0": "10.246.4.",  # the whole address space: the same
    "10.99.0.0-24": "10.99.0.",  # outside the network
}
_NETWORKS = [b'{"Network": "10.246.0.0/16"}'] * 8 + [
    b'{"Network": "10.246.0.0/17", "SubnetLen": 24}',
    None,
    b"{",
]
_ADDRESSES = [LB, LB, LB, "10.245.1.142", "10.0.0.1", "not-an-ip", "2001:db8::1", " " + LB]
_PORTS = [
    {"name": "web", "port": 80, "targetPort": "web", "protocol": "TCP"},
    {"name": "web", "port": 80, "targetPort": "web", "protocol": "TCP"},
    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
    {"name": "zero", "port": 0, "protocol": "TCP"},
    {"name": "big", "port": 70000, "protocol": "TCP"},
    {"name": "sctp", "port": 9, "protocol": "SCTP"},
    {"name": "web", "port": 8080, "targetPort": "missing", "protocol": "TCP"},
]


@st.composite
def _endpoint(draw: st.DrawFn) -> dict[str, Any]:
    prefix = draw(
        st.sampled_from([*_LEASE_POOL.values(), "10.246.1.", "10.246.2.", "10.246.9.", "192.168.1."])
    )
    valid = st.integers(1, 6).map(lambda h: f"{prefix}{h}")
    odd = st.sampled_from(["fe80::1", "10.246.1.256", "", "010.246.1.2", "10.246.1.2 "])
    ip = draw(st.one_of(valid, valid, valid, odd))
    cond = {
        "ready": draw(st.sampled_from([True, True, False, None])),
        "serving": draw(st.sampled_from([True, False, None])),
        "terminating": draw(st.sampled_from([False, False, True, None])),
    }
    ep: dict[str, Any] = {"addresses": [ip], "conditions": {k_: v for k_, v in cond.items() if v is not None}}
    if draw(st.booleans()):
        ep["nodeName"] = draw(st.sampled_from(["node-1", "node-2"]))
    return ep


Drawn = tuple[dict[str, bytes], dict[str, float | None], set[str]]


@st.composite
def _cluster(draw: st.DrawFn) -> Drawn:
    """etcd values (JSON or protobuf), lease expiry times, and the lease subnets with a path fault."""
    encode = draw(st.sampled_from([encode_protobuf, _json]))
    values: dict[str, bytes] = {}
    network = draw(st.sampled_from(_NETWORKS))
    if network is not None:
        values[f"{FLANNEL}/config"] = network
    expiry: dict[str, float | None] = {}
    leases = draw(st.lists(st.sampled_from(sorted(_LEASE_POOL)), unique=True))
    if "10.246.1.0-24" not in leases and draw(st.integers(0, 3)):
        leases.append("10.246.1.0-24")
    for i, name in enumerate(leases):
        key = f"{FLANNEL}/subnets/{name}"
        values[key] = k.lease(f"10.245.1.{10 + i}", f"aa:00:00:00:00:{i:02x}")
        expiry[key] = draw(st.sampled_from([None, None, NOW - 5, NOW + 60]))
    faults = set(draw(st.lists(st.sampled_from(sorted(_LEASE_POOL)), unique=True, max_size=2)))
    for s in range(draw(st.integers(1, 3))):
        name = f"svc{s}"
        ports = draw(st.lists(st.sampled_from(_PORTS), min_size=1, max_size=4))
        claims = draw(st.lists(st.sampled_from(_ADDRESSES), min_size=1, max_size=3))
        svc = k.service(name, ports=ports, external_ips=claims)
        svc["spec"]["type"] = draw(
            st.sampled_from(["ClusterIP", "ClusterIP", "LoadBalancer", "ExternalName"])
        )
        if draw(st.booleans()):
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": draw(st.sampled_from(_ADDRESSES))}]}}
        values[SVC + name] = encode(svc)
        for j in range(draw(st.sampled_from([1, 1, 2, 0]))):
            eps = draw(st.lists(_endpoint(), min_size=1, max_size=6))
            more = st.sampled_from([("web", 8081, "TCP"), ("dns", 5353, "UDP"), ("", 80, "TCP")])
            slice_ports = [("web", 8080, "TCP"), *draw(st.lists(more, max_size=3))]
            address_type = draw(st.sampled_from(["IPv4"] * 7 + ["IPv6"]))
            sl = k.endpoint_slice(f"{name}-{j}", name, eps, slice_ports, address_type=address_type)
            values[SLICES + f"{name}-{j}"] = encode(sl)
    return values, expiry, faults


def _check_invariants(state: ClusterState, plan: Plan, faults: set[str]) -> None:
    network = state.network()
    fault_nets = {ipaddress.IPv4Network(f.replace("-", "/"), strict=False) for f in faults}
    live = [
        lease
        for lease in state.leases()
        if (lease.expires is None or lease.expires > NOW) and lease.subnet not in fault_nets
    ]
    keys = [f.key for f in plan.frontends]
    assert len(keys) == len(set(keys)), "a frontend appears twice"
    for f in plan.frontends:
        assert f.address in PROP_SETTINGS.addresses
        assert 1 <= f.port <= 65535 and f.protocol in ("TCP", "UDP", "SCTP")
        assert len(set(f.backends)) == len(f.backends) and list(f.backends) == sorted(f.backends)
        for b in f.backends:
            ip = ipaddress.IPv4Address(b.ip)
            assert network is not None and ip in network, (b, network)
            covering = [lease for lease in live if ip in lease.subnet]
            assert covering, f"backend {b.ip} has no live, path-checked lease inside {network}"
            assert all(lease.subnet.subnet_of(network) for lease in covering)
            assert 1 <= b.port <= 65535
        for e in f.excluded:
            assert e.reason.strip(), e
    for p in plan.problems:
        assert p.kind and p.reason and len(p.reason) <= MAX_REASON + 40, p


def _build(values: dict[str, bytes], expiry: dict[str, float | None]) -> ClusterState:
    state = ClusterState()
    for key, value in values.items():
        state.put(key, value, expires=expiry.get(key))
    return state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cluster())
def test_plan_invariants_on_random_clusters(cluster: Drawn) -> None:
    values, expiry, faults = cluster
    state = _build(values, expiry)
    path_faults = {ipaddress.IPv4Network(f.replace("-", "/"), strict=False): "no route" for f in faults}
    plan = compute_plan(state, PROP_SETTINGS, now=NOW, path_faults=path_faults)
    _check_invariants(state, plan, faults)
    planner = Planner(state, PROP_SETTINGS, clock=lambda: NOW)
    planner.set_path_faults(path_faults)
    assert planner.plan() == plan  # the agent's incremental planner agrees, path faults included
    # the same cluster listed again (a re-list is a diff) plans the same
    state.replace(((key, value, expiry.get(key)) for key, value in values.items()), state.revision)
    assert compute_plan(state, PROP_SETTINGS, now=NOW, path_faults=path_faults) == plan


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.binary(max_size=512),
        st.tuples(st.integers(0, 5), st.binary(max_size=96)).map(lambda p: bytes([5, p[0]]) + p[1]),
        st.tuples(st.sampled_from([0, 4]), st.integers(0, 3), st.binary(max_size=32)).map(
            lambda p: bytes([p[0]]) + (bytes([p[1]]) if p[0] == 4 else b"") + fuzz.SEEDS[p[1]][:-7] + p[2]
        ),
    )
)
def test_fuzz_targets_refuse_cleanly(data: bytes) -> None:
    """The fuzz driver's targets (tests/fuzz_decoders.py) on a few hundred inputs: no crash."""
    fuzz.fuzz_one(data)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_cluster())
def test_plan_invariants_many_clusters(cluster: Drawn) -> None:
    values, expiry, faults = cluster
    state = _build(values, expiry)
    path_faults = {ipaddress.IPv4Network(f.replace("-", "/"), strict=False): "no route" for f in faults}
    _check_invariants(state, compute_plan(state, PROP_SETTINGS, now=NOW, path_faults=path_faults), faults)
