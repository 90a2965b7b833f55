"""Kubernetes objects in their JSON form (as `decode.kube` yields them) -> flannel-lb's typed records.

One converter per kind, shared by protobuf and JSON values. Input is untrusted: a wrong type raises
ObjectError; a single bad port or address is dropped and reported, so the rest of the object is used.

The records are what the agent keeps for every Service and endpoint, so they are kept small: strings
that repeat across objects (namespaces, node names, port names, protocols) are interned, identical
port lists of EndpointSlices are shared, and an address string that is already a canonical IPv4
address is kept as it is. The fields read here are listed in `kube_schema.USED`, which
`kube.decode_used` decodes (and nothing else).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from flannel_lb.decode.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
    PROTOCOLS,
    Endpoint,
    EndpointGroup,
    EndpointPort,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)
from flannel_lb.untrusted import ascii_decimal

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# kubectl apply's copy of the whole object: often the largest annotation, never read (the exposure
# policy's annotation must be "true", which this JSON document never is), so it is not kept.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
HEALTH_CHECK_PATH = "flannel-lb.io/health-check-path"  # [health]: GET this path instead of a bare connect
_URL_PATH = re.compile(r"/[!-~]{0,255}")  # printable ASCII without spaces: it goes into a request line
# Read when spec.loadBalancerSourceRanges is empty, as kube-proxy and the cloud providers do.
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
MAX_SOURCE_RANGES = 1000  # per Service: each is a rule (iptables) or an element (nft) on every port

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# The strings ipaddress.IPv4Address accepts (four decimal octets, no leading zeros) are exactly the
# canonical ones, so a match is its own normal form. ASCII digits only, as ipaddress requires.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
is_canonical_ipv4 = _IPV4.fullmatch


class ObjectError(ValueError):
    """The object's shape is unusable (e.g. `spec.ports` is not a list)."""


@dataclass(slots=True)
class Converted:
    obj: Service | Node | tuple[EndpointGroup, ...]
    warnings: list[str] = field(default_factory=list)


def _intern(text: str) -> str:
    """One shared copy of a string that repeats across objects (str subclasses cannot be interned)."""
    return sys.intern(text) if type(text) is str else text


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _map(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = parent.get(key)
    if v is None:
        return _EMPTY
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


def _strmap(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, str]:
    """A string map, copied (or a shared empty one): keys are interned, they repeat across objects."""
    m = _map(parent, key, where)
    if not m:
        return _EMPTY
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise ObjectError(f"{_path(where, key)} must map strings to strings")
    return {_intern(k): v for k, v in m.items()}


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
    return meta, _intern(_str(meta, "namespace", "metadata")), _str(meta, "name", "metadata")


def _interned(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(map(_intern, values)) if values else ()


def _ipv4_list(values: list[Any], where: str, warnings: list[str]) -> tuple[str, ...]:
    out = []
    for v in values:
        if type(v) is str and is_canonical_ipv4(v):
            out.append(v)  # already canonical: no need to build an IPv4Address and a new string
            continue
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
        port_name = _intern(_str(p, "name", where))
        protocol = _intern(_str(p, "protocol", where, "TCP") or "TCP")
        port = _int(p.get("port"))
        label = f"{where} ({port_name or '-'})"
        if protocol not in PROTOCOLS:
            warnings.append(f"{label}: protocol {protocol!r} is not TCP, UDP or SCTP; port ignored")
            continue
        if port is None or not 1 <= port <= 65535:
            warnings.append(f"{label}: port {p.get('port')!r} is not in 1-65535; port ignored")
            continue
        target = p.get("targetPort", port)
        if isinstance(target, str) and target.isnumeric():  # a number, in whatever script
            number = ascii_decimal(target)
            if number is None:
                warnings.append(f"{label}: targetPort {target!r} is not in ASCII digits; port ignored")
                continue
            target = number
        if _int(target) is not None:
            if not 1 <= target <= 65535:
                warnings.append(f"{label}: targetPort {target} is not in 1-65535; port ignored")
                continue
        elif not isinstance(target, str) or not target:
            target = port  # unset targetPort defaults to port
        ports.append(ServicePort(port_name, protocol, port, target, _int(p.get("nodePort")) or 0))
    affinity_cfg = _map(_map(spec, "sessionAffinityConfig", "spec"), "clientIP", "spec.sessionAffinityConfig")
    timeout = _int(affinity_cfg.get("timeoutSeconds")) or DEFAULT_AFFINITY_TIMEOUT
    if not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:  # kube-apiserver's own bound; the kernel refuses 2**32
        warnings.append(
            f"spec.sessionAffinityConfig.clientIP.timeoutSeconds {timeout} is not in "
            f"1-{MAX_AFFINITY_TIMEOUT}; using the default {DEFAULT_AFFINITY_TIMEOUT}"
        )
        timeout = DEFAULT_AFFINITY_TIMEOUT
    ingress = [
        i.get("ip")
        for i in _list(_map(status, "loadBalancer", "status"), "ingress", "status.loadBalancer")
        if isinstance(i, Mapping) and i.get("ip")
    ]
    cluster_ips = _list(spec, "clusterIPs", "spec") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    lb_ip = _str(spec, "loadBalancerIP", "spec")
    # (evaluated in the order of the fields, so an object with several faults reports the same one)
    uid = _str(meta, "uid", "metadata")
    created = _timestamp(meta.get("creationTimestamp"))
    type_ = _intern(_str(spec, "type", "spec", "ClusterIP") or "ClusterIP")
    # the LB's own addresses are claimed by every exposed Service: one copy each
    external_ips = _interned(_ipv4_list(_list(spec, "externalIPs", "spec"), "spec.externalIPs", warnings))
    load_balancer_ip = (
        _intern((_ipv4_list([lb_ip], "spec.loadBalancerIP", warnings) or ("",))[0]) if lb_ip else ""
    )
    ingress_ips = _interned(_ipv4_list(ingress, "status.loadBalancer.ingress", warnings))
    session_affinity = _intern(_str(spec, "sessionAffinity", "spec", "None") or "None")
    external_traffic_policy = _intern(_str(spec, "externalTrafficPolicy", "spec"))
    labels = _strmap(meta, "labels", "metadata")
    annotations = _strmap(meta, "annotations", "metadata")
    if LAST_APPLIED in annotations:
        annotations = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    check_path = annotations.get(HEALTH_CHECK_PATH, "")
    if check_path and not _URL_PATH.fullmatch(check_path):
        warnings.append(
            f"metadata.annotations[{HEALTH_CHECK_PATH}] {check_path[:80]!r} is not a URL path"
            " ('/' and up to 255 printable ASCII characters, no spaces); the TCP check is used"
        )
        check_path = ""
    source_ranges = _source_ranges(spec, annotations, warnings)
    return Converted(
        Service(
            namespace=ns,
            name=name,
            uid=uid,
            created=created,
            type=type_,
            cluster_ips=tuple(c for c in cluster_ips if isinstance(c, str)),
            external_ips=external_ips,
            load_balancer_ip=load_balancer_ip,
            ingress_ips=ingress_ips,
            ports=tuple(ports),
            session_affinity=session_affinity,
            affinity_timeout=timeout,
            external_traffic_policy=external_traffic_policy,
            labels=labels,
            annotations=annotations,
            health_check_path=check_path,
            source_ranges=source_ranges,
        ),
        warnings,
    )


def _source_ranges(
    spec: Mapping[str, Any], annotations: Mapping[str, str], warnings: list[str]
) -> tuple[str, ...] | None:
    """The client ranges the Service admits, canonical (`10.0.0.0/8`); None when it admits everyone.

    A malformed entry is reported and left out, which can only narrow who is admitted: a list whose
    every entry is malformed admits nobody. Opening a restricted Service to the world because of a
    typo would be the worse failure, and the report names it.
    """
    values = _list(spec, "loadBalancerSourceRanges", "spec")
    where = "spec.loadBalancerSourceRanges"
    if not values and annotations.get(SOURCE_RANGES_ANNOTATION, "").strip():
        values = annotations[SOURCE_RANGES_ANNOTATION].split(",")
        where = f"metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"
    if not values:
        return None
    out: dict[str, None] = {}
    for i, v in enumerate(values):
        if len(out) == MAX_SOURCE_RANGES:
            warnings.append(
                f"{where}: more than {MAX_SOURCE_RANGES} ranges; the rest ({len(values) - i}) are ignored"
            )
            break
        network = _cidr(v)
        if network is None:
            shown = v[:80] if isinstance(v, str) else type(v).__name__
            warnings.append(
                f"{where}[{i}] {shown!r} is not a CIDR range (e.g. 203.0.113.0/24); left out, "
                "so clients it meant to admit are dropped"
            )
            continue
        out[network] = None
    return tuple(out)


def _cidr(value: Any) -> str | None:
    """`value` as a canonical network, with kube-apiserver's leniency: surrounding spaces and host bits
    are accepted (Go's net.ParseCIDR), a bare address is not."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "/" not in text or not text.isascii():
        return None
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def _endpoint_ports(items: list[Any], where: str, warnings: list[str]) -> tuple[EndpointPort, ...]:
    out = []
    for i, p in enumerate(items):
        if not isinstance(p, Mapping):
            raise ObjectError(f"{where}[{i}] must be an object")
        port = _int(p.get("port"))
        if port is not None and not 1 <= port <= 65535:
            warnings.append(f"{where}[{i}]: port {port} is not in 1-65535; ignored")
            continue
        name = _intern(_str(p, "name", where))
        out.append(EndpointPort(name, port, _intern(_str(p, "protocol", where, "TCP") or "TCP")))
    return _shared_ports(tuple(out))


@lru_cache(maxsize=1024)
def _shared_ports(ports: tuple[EndpointPort, ...]) -> tuple[EndpointPort, ...]:
    """The first equal port list seen: the slices of most Services carry the same few lists."""
    return ports


def _slice_endpoint(e: Any, where: str, address_type: str, warnings: list[str]) -> Endpoint:
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
    return Endpoint(
        addresses=tuple(a for a in addresses if isinstance(a, str)),
        ready=ready,
        serving=bool(serving),
        terminating=terminating,
        node_name=_intern(node),
        hostname=_str(e, "hostname", where),
    )


def _plain_slice_endpoint(e: Any, ipv4: bool) -> Endpoint | None:
    """`_slice_endpoint` for the usual shape (plain types, canonical addresses, no v1beta1 topology),
    without building paths for messages that are not needed; None for anything else, which then
    takes the careful path (and gets its warnings or its error there)."""
    if type(e) is not dict:
        return None
    cond = e.get("conditions")
    if cond is None:
        ready = serving = True
        terminating = False
    elif type(cond) is dict:
        ready = cond.get("ready") is not False
        serving = cond.get("serving", ready)
        if type(serving) is not bool:
            serving = ready
        terminating = cond.get("terminating") is True
    else:
        return None
    node = e.get("nodeName", "")
    hostname = e.get("hostname", "")
    addresses = e.get("addresses")
    if type(node) is not str or type(hostname) is not str or type(addresses) is not list or "topology" in e:
        return None  # (an explicit null nodeName or hostname, too)
    if ipv4:
        for a in addresses:
            if type(a) is not str or not is_canonical_ipv4(a):
                return None
        addrs = tuple(addresses)
    else:
        addrs = tuple(a for a in addresses if isinstance(a, str))
    return Endpoint(addrs, ready, serving, terminating, _intern(node), hostname)


def endpoint_slice(obj: Mapping[str, Any], *, shortcuts: bool = True) -> Converted:
    """An EndpointSlice as one group. `shortcuts=False` takes the careful path for every endpoint:
    the reference the fast path must agree with."""
    meta, ns, name = _metadata(obj)
    labels = _strmap(meta, "labels", "metadata")
    warnings: list[str] = []
    address_type = _intern(_str(obj, "addressType", "", "IPv4"))
    ipv4 = address_type == "IPv4"
    endpoints = []
    for i, e in enumerate(_list(obj, "endpoints", "")):
        ep = _plain_slice_endpoint(e, ipv4) if shortcuts else None
        endpoints.append(ep or _slice_endpoint(e, f"endpoints[{i}]", address_type, warnings))
    group = EndpointGroup(
        namespace=ns,
        service=labels.get(SERVICE_NAME_LABEL, ""),
        source=f"EndpointSlice {ns}/{name}",
        address_type=address_type,
        ports=_endpoint_ports(_list(obj, "ports", ""), "ports", warnings),
        endpoints=tuple(endpoints),
    )
    return Converted((group,), warnings)


def _address(a: Any, ready: bool, where: str, j: int, key: str, warnings: list[str]) -> Endpoint | None:
    if not isinstance(a, Mapping):
        raise ObjectError(f"{where}.{key}[{j}] must be an object")
    ips = _ipv4_list([a.get("ip")], f"{where}.{key}[{j}].ip", warnings)
    if not ips:
        return None
    return Endpoint(
        addresses=ips,
        ready=ready,
        serving=ready,
        node_name=_intern(_str(a, "nodeName", where)),
        hostname=_str(a, "hostname", where),
    )


def _plain_address(a: Any, ready: bool) -> Endpoint | None:
    """`_address` for the usual shape (see `_plain_slice_endpoint`); None: take the careful path."""
    if type(a) is not dict:
        return None
    ip = a.get("ip")
    node = a.get("nodeName", "")
    hostname = a.get("hostname", "")
    if type(ip) is not str or type(node) is not str or type(hostname) is not str or not is_canonical_ipv4(ip):
        return None
    return Endpoint((ip,), ready, ready, False, _intern(node), hostname)


def endpoints(obj: Mapping[str, Any], *, shortcuts: bool = True) -> Converted:
    """Legacy Endpoints: one group per subset; notReadyAddresses become not-ready endpoints.
    `shortcuts=False` as in `endpoint_slice`."""
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
                ep = (_plain_address(a, ready) if shortcuts else None) or _address(
                    a, ready, where, j, key, warnings
                )
                if ep is not None:
                    eps.append(ep)
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
