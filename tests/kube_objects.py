"""Builders for Kubernetes objects in their JSON form, shaped as kube-apiserver stores them."""

from __future__ import annotations

import json
from typing import Any


def service(
    name: str,
    ns: str = "default",
    *,
    ports: list[dict[str, Any]] | None = None,
    external_ips: list[str] | None = None,
    load_balancer_ip: str = "",
    ingress: list[str] | None = None,
    cluster_ip: str = "10.247.0.10",
    created: str = "2026-01-01T00:00:00Z",
    affinity_timeout: int | None = None,
    type: str = "ClusterIP",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": ports if ports is not None else [{"protocol": "TCP", "port": 80, "targetPort": 80}],
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "type": type,
        "sessionAffinity": "ClientIP" if affinity_timeout else "None",
    }
    if external_ips:
        spec["externalIPs"] = external_ips
    if load_balancer_ip:
        spec["loadBalancerIP"] = load_balancer_ip
    if affinity_timeout:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    obj: dict[str, Any] = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "creationTimestamp": created},
        "spec": spec,
    }
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return obj


def port(
    port: int, target: int | str | None = None, *, name: str = "", protocol: str = "TCP"
) -> dict[str, Any]:
    p: dict[str, Any] = {"protocol": protocol, "port": port, "targetPort": port if target is None else target}
    if name:
        p["name"] = name
    return p


def endpoint(
    ip: str,
    node: str = "",
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    pod: str = "",
) -> dict[str, Any]:
    conditions: dict[str, Any] = {"ready": ready, "serving": ready if serving is None else serving}
    if terminating:
        conditions["terminating"] = True
    ep: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node:
        ep["nodeName"] = node
    if pod:
        ep["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod}
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: list[dict[str, Any]],
    ports: list[tuple[str, int, str]],
    ns: str = "default",
    *,
    api_version: str = "discovery.k8s.io/v1",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": api_version,
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def endpoints(
    name: str,
    ready: list[tuple[str, str]],
    ports: list[tuple[str, int, str]],
    ns: str = "default",
    *,
    not_ready: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    subset: dict[str, Any] = {
        "addresses": [{"ip": ip, "nodeName": node} for ip, node in ready],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip, "nodeName": node} for ip, node in not_ready]
    return {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns},
        "subsets": [subset],
    }


def node(
    name: str, pod_cidr: str, internal_ip: str, *, flannel: dict[str, str] | None = None
) -> dict[str, Any]:
    annotations = {f"flannel.alpha.coreos.com/{k}": v for k, v in (flannel or {}).items()}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]
        },
    }


def vxlan_lease(public_ip: str, mac: str) -> bytes:
    lease = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan"}
    lease["BackendData"] = {"VNI": 1, "VtepMAC": mac}
    return json.dumps(lease).encode()
