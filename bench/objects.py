"""Services, Endpoints and EndpointSlices for the benchmarks, as kube-apiserver stores them.

The shapes follow the lab's controllers (`flannel_lb.lab.cluster`): a Service exposed on the LB's
address, its Endpoints object and one EndpointSlice managed by the EndpointSlice controller, all
protobuf-encoded (`k8s\\0` envelope, `flannel_lb.decode.kube.encode_protobuf`). The lab's `Cluster`
model is not used for bulk objects: it re-renders every object on each sync, which is fine for a few
services and far too slow for 30,000.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab.cluster import REGISTRY, now_rfc3339

NAMESPACE = "bench"
SLICE_SUFFIX = "-bx7k2"  # one slice per service, with a stable generated-looking name


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    node: str


@dataclass(frozen=True, slots=True)
class BenchService:
    """One exposed Service: `address:port/TCP` -> the endpoints' `target_port`."""

    name: str
    address: str
    port: int
    target_port: int
    endpoints: tuple[Endpoint, ...]

    @property
    def service_key(self) -> str:
        return f"{REGISTRY}/services/specs/{NAMESPACE}/{self.name}"

    @property
    def endpoints_key(self) -> str:
        return f"{REGISTRY}/services/endpoints/{NAMESPACE}/{self.name}"

    @property
    def slice_key(self) -> str:
        return f"{REGISTRY}/endpointslices/{NAMESPACE}/{self.name}{SLICE_SUFFIX}"

    def all_keys(self) -> tuple[str, str, str]:
        return (self.service_key, self.endpoints_key, self.slice_key)


def _meta(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "uid": str(uuid.uuid4()),
        "creationTimestamp": now_rfc3339(),
    }
    if labels:
        meta["labels"] = labels
    return meta


def service_object(svc: BenchService, cluster_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(svc.name, {"app": svc.name}),
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": svc.port, "targetPort": svc.target_port}],
            "selector": {"app": svc.name},
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "externalIPs": [svc.address],
        },
        "status": {"loadBalancer": {}},
    }


def _target_ref(svc: BenchService, i: int) -> dict[str, Any]:
    return {"kind": "Pod", "namespace": NAMESPACE, "name": f"{svc.name}-pod-{i}", "uid": str(uuid.uuid4())}


def endpoints_object(svc: BenchService) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": _meta(svc.name, {"app": svc.name}),
    }
    if svc.endpoints:
        addresses = [
            {"ip": e.ip, "nodeName": e.node, "targetRef": _target_ref(svc, i)}
            for i, e in enumerate(svc.endpoints)
        ]
        ports = [{"name": "http", "port": svc.target_port, "protocol": "TCP"}]
        obj["subsets"] = [{"addresses": addresses, "ports": ports}]
    return obj


def slice_object(svc: BenchService) -> dict[str, Any]:
    labels = {
        "app": svc.name,
        "kubernetes.io/service-name": svc.name,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    meta = _meta(svc.name + SLICE_SUFFIX, labels)
    meta["generateName"] = f"{svc.name}-"
    endpoints = [
        {
            "addresses": [e.ip],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": e.node,
            "targetRef": _target_ref(svc, i),
        }
        for i, e in enumerate(svc.endpoints)
    ]
    ports = [{"name": "http", "protocol": "TCP", "port": svc.target_port}] if svc.endpoints else []
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


def cluster_ip(index: int) -> str:
    """A distinct clusterIP in the lab's service network 10.247.0.0/16 (skipping .0.0/.0.1)."""
    n = index + 2
    return f"10.247.{(n >> 8) & 0xFF}.{n & 0xFF}"


def encoded(svc: BenchService, index: int, *, with_service: bool = True) -> Iterator[tuple[str, bytes]]:
    """(key, protobuf value) of the Service (optional), its Endpoints and its EndpointSlice."""
    if with_service:
        yield svc.service_key, encode_protobuf(service_object(svc, cluster_ip(index)))
    yield svc.endpoints_key, encode_protobuf(endpoints_object(svc))
    yield svc.slice_key, encode_protobuf(slice_object(svc))


def fake_endpoints(index: int, count: int, subnets: Sequence[tuple[str, str]]) -> tuple[Endpoint, ...]:
    """`count` distinct endpoint addresses inside the nodes' flannel subnets (`(node, "10.246.X")`).

    They are admitted (a live lease covers them) but nothing answers there: enough for rule counts,
    cold start, memory and churn, where no packet is sent to them.
    """
    out = []
    for j in range(count):
        node, net = subnets[(index + j) % len(subnets)]
        host = 10 + (index * 7 + j * 13) % 240
        out.append(Endpoint(f"{net}.{host}", node))
    return tuple(dict.fromkeys(out))
