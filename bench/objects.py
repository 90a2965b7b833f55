"""Services, Endpoints and EndpointSlices for the benchmarks, as kube-apiserver stores them.

The objects come from the one factory, `flannel_lb.lab.objects`, shaped as the lab's controllers
write them: a Service exposed on the LB's address, its Endpoints object and one EndpointSlice
managed by the EndpointSlice controller, all protobuf-encoded (`k8s\\0` envelope,
`flannel_lb.decode.kube.encode_protobuf`). The lab's `Cluster` model is not used for bulk objects:
it re-renders every object on each sync, which is fine for a few services and far too slow for 30,000.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects
from flannel_lb.lab.cluster import REGISTRY
from flannel_lb.lab.objects import now_rfc3339

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
    source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges (none: open)

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


def service_object(svc: BenchService, cluster_ip: str) -> dict[str, Any]:
    return objects.service(
        svc.name,
        NAMESPACE,
        ports=[objects.port(svc.port, svc.target_port, name="http")],
        selector={"app": svc.name},
        cluster_ip=cluster_ip,
        external_ips=[svc.address],
        uid=str(uuid.uuid4()),
        created=now_rfc3339(),
        labels={"app": svc.name},
        apiserver_defaults=True,
        source_ranges=svc.source_ranges,
    )


def _pod(svc: BenchService, i: int) -> str:
    return f"{svc.name}-pod-{i}"


def endpoints_object(svc: BenchService) -> dict[str, Any]:
    addresses = [
        objects.endpoints_address(
            e.ip, e.node, pod=_pod(svc, i), pod_namespace=NAMESPACE, pod_uid=str(uuid.uuid4())
        )
        for i, e in enumerate(svc.endpoints)
    ]
    subsets = [objects.endpoints_subset(addresses, [("http", svc.target_port, "TCP")])] if addresses else []
    return objects.endpoints(
        svc.name, subsets, NAMESPACE, uid=str(uuid.uuid4()), created=now_rfc3339(), labels={"app": svc.name}
    )


def slice_object(svc: BenchService) -> dict[str, Any]:
    endpoints = [
        objects.endpoint(
            e.ip,
            e.node,
            terminating=False,
            pod=_pod(svc, i),
            pod_namespace=NAMESPACE,
            pod_uid=str(uuid.uuid4()),
        )
        for i, e in enumerate(svc.endpoints)
    ]
    return objects.endpoint_slice(
        svc.name + SLICE_SUFFIX,
        svc.name,
        endpoints,
        [("http", svc.target_port, "TCP")] if svc.endpoints else [],
        NAMESPACE,
        labels={"app": svc.name},
        uid=str(uuid.uuid4()),
        created=now_rfc3339(),
        generate_name=f"{svc.name}-",
    )


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
