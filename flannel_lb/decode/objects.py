"""Kubernetes objects in their JSON form (as `decode.kube` yields them) -> flannel-lb's typed records.

One converter per kind, shared by protobuf and JSON values. Input is untrusted: a wrong type raises
ObjectError; a single bad port or address is dropped and reported, so the rest of the object is used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flannel_lb.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    PROTOCOLS,
    Endpoint,
    EndpointGroup,
    EndpointPort,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class ObjectError(ValueError):
    """The object's shape is unusable (e.g. `spec.ports` is not a list)."""


@dataclass(slots=True)
class Converted:
    obj: Service | Node | tuple[EndpointGroup, ...]
    warnings: list[str] = field(default_factory=list)


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _map(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = parent.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ObjectError(f"{_path(where, key)} must be an object, got {type(v).__name__}")
    return v


def _list(parent: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = parent.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ObjectError(f"{_path(where, key)} must be a list, got {type(v).__name__}")
    return v


def _str(parent: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    v = parent.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise ObjectError(f"{_path(where, key)} must be a string, got {type(v).__name__}")
    return v


def _strmap(parent: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    m = _map(parent, key, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise ObjectError(f"{_path(where, key)} must map strings to strings")
    return dict(m)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _timestamp(v: Any) -> float | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _metadata(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, str]:
    meta = _map(obj, "metadata", "")
    return meta, _str(meta, "namespace", "metadata"), _str(meta, "name", "metadata")


def _ipv4_list(values: list[Any], where: str, warnings: list[str]) -> tuple[str, ...]:
    out = []
    for v in values:
        if not isinstance(v, str):
            warnings.append(f"{where}: {v!r} is not an IP address string; ignored")
            continue
        try:
            out.append(str(ipaddress.IPv4Address(v)))
        except ValueError:
            if ":" in v:
                warnings.append(f"{where}: {v} is IPv6, which flannel-lb does not serve; ignored")
            else:
                warnings.append(f"{where}: {v!r} is not an IPv4 address; ignored")
    return tuple(out)


def service(obj: Mapping[str, Any]) -> Converted:
    meta, ns, name = _metadata(obj)
    spec = _map(obj, "spec", "")
    status = _map(obj, "status", "")
    warnings: list[str] = []
    ports = []
    for i, p in enumerate(_list(spec, "ports", "spec")):
        where = f"spec.ports[{i}]"
        if not isinstance(p, Mapping):
            raise ObjectError(f"{where} must be an object")
        port_name = _str(p, "name", where)
        protocol = _str(p, "protocol", where, "TCP") or "TCP"
        port = _int(p.get("port"))
        label = f"{where} ({port_name or '-'})"
        if protocol not in PROTOCOLS:
            warnings.append(f"{label}: protocol {protocol!r} is not TCP, UDP or SCTP; port ignored")
            continue
        if port is None or not 1 <= port <= 65535:
            warnings.append(f"{label}: port {p.get('port')!r} is not in 1-65535; port ignored")
            continue
        target = p.get("targetPort", port)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if _int(target) is not None:
            if not 1 <= target <= 65535:
                warnings.append(f"{label}: targetPort {target} is not in 1-65535; port ignored")
                continue
        elif not isinstance(target, str) or not target:
            target = port  # unset targetPort defaults to port
        ports.append(ServicePort(port_name, protocol, port, target, _int(p.get("nodePort")) or 0))
    affinity_cfg = _map(_map(spec, "sessionAffinityConfig", "spec"), "clientIP", "spec.sessionAffinityConfig")
    timeout = _int(affinity_cfg.get("timeoutSeconds")) or DEFAULT_AFFINITY_TIMEOUT
    ingress = [
        i.get("ip")
        for i in _list(_map(status, "loadBalancer", "status"), "ingress", "status.loadBalancer")
        if isinstance(i, Mapping) and i.get("ip")
    ]
    cluster_ips = _list(spec, "clusterIPs", "spec") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    lb_ip = _str(spec, "loadBalancerIP", "spec")
    return Converted(
        Service(
            namespace=ns,
            name=name,
            uid=_str(meta, "uid", "metadata"),
            created=_timestamp(meta.get("creationTimestamp")),
            type=_str(spec, "type", "spec", "ClusterIP") or "ClusterIP",
            cluster_ips=tuple(c for c in cluster_ips if isinstance(c, str)),
            external_ips=_ipv4_list(_list(spec, "externalIPs", "spec"), "spec.externalIPs", warnings),
            load_balancer_ip=(_ipv4_list([lb_ip], "spec.loadBalancerIP", warnings) or ("",))[0]
            if lb_ip
            else "",
            ingress_ips=_ipv4_list(ingress, "status.loadBalancer.ingress", warnings),
            ports=tuple(ports),
            session_affinity=_str(spec, "sessionAffinity", "spec", "None") or "None",
            affinity_timeout=timeout,
            external_traffic_policy=_str(spec, "externalTrafficPolicy", "spec"),
            labels=_strmap(meta, "labels", "metadata"),
            annotations=_strmap(meta, "annotations", "metadata"),
        ),
        warnings,
    )


def _endpoint_ports(items: list[Any], where: str, warnings: list[str]) -> tuple[EndpointPort, ...]:
    out = []
    for i, p in enumerate(items):
        if not isinstance(p, Mapping):
            raise ObjectError(f"{where}[{i}] must be an object")
        port = _int(p.get("port"))
        if port is not None and not 1 <= port <= 65535:
            warnings.append(f"{where}[{i}]: port {port} is not in 1-65535; ignored")
            continue
        out.append(EndpointPort(_str(p, "name", where), port, _str(p, "protocol", where, "TCP") or "TCP"))
    return tuple(out)


def _target_name(ref: Any) -> str:
    return ref.get("name", "") if isinstance(ref, Mapping) and isinstance(ref.get("name"), str) else ""


def endpoint_slice(obj: Mapping[str, Any]) -> Converted:
    meta, ns, name = _metadata(obj)
    labels = _strmap(meta, "labels", "metadata")
    warnings: list[str] = []
    address_type = _str(obj, "addressType", "", "IPv4")
    endpoints = []
    for i, e in enumerate(_list(obj, "endpoints", "")):
        where = f"endpoints[{i}]"
        if not isinstance(e, Mapping):
            raise ObjectError(f"{where} must be an object")
        cond = _map(e, "conditions", where)
        ready = cond.get("ready") is not False  # nil ready means ready (discovery/v1 types.go)
        serving = cond.get("serving") if isinstance(cond.get("serving"), bool) else ready
        terminating = cond.get("terminating") is True
        topology = _strmap(e, "topology", where)  # v1beta1 before 1.20 kept the node here
        node = _str(e, "nodeName", where) or topology.get("kubernetes.io/hostname", "")
        addresses = _list(e, "addresses", where)
        if address_type == "IPv4":
            addresses = list(_ipv4_list(addresses, f"{where}.addresses", warnings))
        endpoints.append(
            Endpoint(
                addresses=tuple(a for a in addresses if isinstance(a, str)),
                ready=ready,
                serving=bool(serving),
                terminating=terminating,
                node_name=node,
                hostname=_str(e, "hostname", where),
                target=_target_name(e.get("targetRef")),
            )
        )
    group = EndpointGroup(
        namespace=ns,
        service=labels.get(SERVICE_NAME_LABEL, ""),
        source=f"EndpointSlice {ns}/{name}",
        address_type=address_type,
        ports=_endpoint_ports(_list(obj, "ports", ""), "ports", warnings),
        endpoints=tuple(endpoints),
    )
    return Converted((group,), warnings)


def endpoints(obj: Mapping[str, Any]) -> Converted:
    """Legacy Endpoints: one group per subset; notReadyAddresses become not-ready endpoints."""
    _meta, ns, name = _metadata(obj)
    warnings: list[str] = []
    groups = []
    for i, subset in enumerate(_list(obj, "subsets", "")):
        where = f"subsets[{i}]"
        if not isinstance(subset, Mapping):
            raise ObjectError(f"{where} must be an object")
        eps = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, a in enumerate(_list(subset, key, where)):
                if not isinstance(a, Mapping):
                    raise ObjectError(f"{where}.{key}[{j}] must be an object")
                ips = _ipv4_list([a.get("ip")], f"{where}.{key}[{j}].ip", warnings)
                if ips:
                    eps.append(
                        Endpoint(
                            addresses=ips,
                            ready=ready,
                            serving=ready,
                            node_name=_str(a, "nodeName", where),
                            hostname=_str(a, "hostname", where),
                            target=_target_name(a.get("targetRef")),
                        )
                    )
        groups.append(
            EndpointGroup(
                namespace=ns,
                service=name,
                source=f"Endpoints {ns}/{name}[{i}]",
                ports=_endpoint_ports(_list(subset, "ports", where), f"{where}.ports", warnings),
                endpoints=tuple(eps),
            )
        )
    return Converted(tuple(groups), warnings)


def node(obj: Mapping[str, Any]) -> Converted:
    meta, _ns, name = _metadata(obj)
    spec = _map(obj, "spec", "")
    status = _map(obj, "status", "")
    cidrs = _list(spec, "podCIDRs", "spec") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    addresses = tuple(
        NodeAddress(a["type"], a["address"])
        for a in _list(status, "addresses", "status")
        if isinstance(a, Mapping) and isinstance(a.get("type"), str) and isinstance(a.get("address"), str)
    )
    return Converted(
        Node(
            name=name,
            pod_cidrs=tuple(c for c in cidrs if isinstance(c, str)),
            addresses=addresses,
            annotations=_strmap(meta, "annotations", "metadata"),
            unschedulable=spec.get("unschedulable") is True,
        )
    )
