"""The object factory writes only real Kubernetes fields, of the right types: every keyword it takes
survives kube-apiserver's protobuf encoding and the decoder's converters (pure, no root)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flannel_lb.decode import objects as converters
from flannel_lb.decode.flannel import parse_lease
from flannel_lb.decode.kube import decode_value, encode_protobuf
from flannel_lb.lab import objects as k

OWNER = k.controller_ref("Service", "web", "uid-svc")
ALL_KEYWORDS = {
    "service": k.service(
        "web",
        "team-a",
        ports=[k.port(80, "http", name="http"), k.port(53, protocol="UDP")],
        selector={"app": "web"},
        type="LoadBalancer",
        external_ips=["192.0.2.1"],
        load_balancer_ip="192.0.2.2",
        affinity_timeout=600,
        ingress=["192.0.2.3"],
        uid="uid-svc",
        created="2025-05-05T05:05:05Z",
        labels={"app": "web"},
        apiserver_defaults=True,
    ),
    "endpoints": k.endpoints(
        "web",
        [
            k.endpoints_subset(
                [k.endpoints_address("10.246.1.2", "n1", pod="web-1", pod_namespace="team-a", pod_uid="u1")],
                [("http", 8080, "TCP"), ("", 53, "UDP")],
                not_ready=[("10.246.1.3", "n2")],
            )
        ],
        "team-a",
        uid="uid-ep",
        created="2025-05-05T05:05:05Z",
        labels={"app": "web"},
    ),
    "endpoint_slice": k.endpoint_slice(
        "web-abcde",
        "web",
        [
            k.endpoint("10.246.1.2", "n1", pod="web-1", pod_namespace="team-a", pod_uid="u1"),
            k.endpoint("10.246.1.3", "n2", ready=False, serving=True, terminating=True),
            k.endpoint("10.246.1.4", conditions={"ready": True}),
        ],
        [("http", 8080, "TCP"), ("", 53, "UDP")],
        "team-a",
        labels={"app": "web"},
        uid="uid-slice",
        created="2025-05-05T05:05:05Z",
        generate_name="web-",
        owners=[OWNER],
    ),
    "node": k.node(
        "n1",
        "10.246.1.0/24",
        "10.245.1.3",
        flannel=k.flannel_annotations("10.245.1.3", "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}),
        uid="uid-node",
        created="2025-05-05T05:05:05Z",
        labels={"kubernetes.io/hostname": "n1"},
        unschedulable_since="2025-06-06T06:06:06Z",
        ready_since="2025-05-05T05:05:05Z",
    ),
}


def _within(part: Any, whole: Any, path: str = "") -> list[str]:
    """Where `part` is not contained in `whole` (decoding adds the zero values of absent fields)."""
    if isinstance(part, dict):
        if not isinstance(whole, dict):
            return [path]
        return [m for key, v in part.items() for m in _within(v, whole.get(key), f"{path}.{key}")]
    if isinstance(part, list):
        if not isinstance(whole, list) or len(whole) != len(part):
            return [path]
        return [
            m for i, (a, b) in enumerate(zip(part, whole, strict=True)) for m in _within(a, b, f"{path}[{i}]")
        ]
    return [] if part == whole else [f"{path}: {part!r} != {whole!r}"]


@pytest.mark.parametrize("kind", sorted(ALL_KEYWORDS))
def test_every_field_survives_protobuf_and_converts_without_warnings(kind: str) -> None:
    obj = ALL_KEYWORDS[kind]
    decoded = decode_value(encode_protobuf(obj))  # EncodeError on a field Kubernetes does not have
    assert _within(obj, decoded) == []
    converted = getattr(converters, kind)(decoded)
    assert converted.warnings == []


def test_the_lease_is_what_flannel_writes_and_parses() -> None:
    value = k.lease("10.245.1.3", "aa:bb:cc:dd:ee:01", vni=7)
    assert value == (
        b'{"PublicIP":"10.245.1.3","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":7,"VtepMAC":"aa:bb:cc:dd:ee:01"}}'
    )
    lease = parse_lease("10.246.1.0-24", value)
    assert (lease.public_ip, lease.vtep_mac, lease.vni) == (
        ipaddress.IPv4Address("10.245.1.3"),
        "aa:bb:cc:dd:ee:01",
        7,
    )
    assert parse_lease("10.246.2.0-24", k.lease("10.245.1.4", backend="host-gw")).backend_type == "host-gw"
