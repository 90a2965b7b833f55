"""flannel's own records: the network config, subnet leases, and their kube-subnet-mgr twins on Nodes.

The formats follow flannel's code (pkg/subnet/config.go, pkg/lease/lease.go, pkg/subnet/subnet.go),
including its defaults; JSON field names match case-insensitively, as Go's encoding/json does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from flannel_lb.decode.model import Lease, NetworkConfig, Node
from flannel_lb.untrusted import JSONDepthError, load_json

# v0.17+: "A.B.C.D-len" with an optional "&<ipv6>-<len>" for dual stack (MakeSubnetKey/ParseSubnetKey).
# Matched whole (fullmatch: `$` would let a trailing newline through) and in ASCII (`\d` would take
# other scripts' digits): a key with anything more is not flannel's and must not pose as a lease.
_SUBNET_KEY = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-fA-F\d:]+)-(\d+))?", re.ASCII)


class FlannelError(ValueError):
    """A flannel value that cannot be used; the message says why."""


def _fold(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def _load_object(value: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = load_json(value)
    except JSONDepthError as e:
        raise FlannelError(f"{what} is not flannel JSON: {e}") from None
    except ValueError as e:
        raise FlannelError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise FlannelError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _int(doc: Mapping[str, Any], key: str, default: int, what: str) -> int:
    v = doc.get(key.lower(), default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise FlannelError(f"{what} {key} must be an integer, got {v!r}")
    return v


def parse_network_config(value: bytes | str) -> NetworkConfig:
    """`<prefix>/config`, with flannel's defaults (SubnetLen, SubnetMin/Max, Backend type udp)."""
    doc = _fold(_load_object(value, "network config"))
    enable_ipv4 = doc.get("enableipv4", True) is not False
    network: ipaddress.IPv4Network | None = None
    if enable_ipv4:
        raw = doc.get("network")
        if not isinstance(raw, str):
            raise FlannelError('network config has no Network (an IPv4 CIDR string such as "10.246.0.0/16")')
        try:
            network = ipaddress.IPv4Network(raw)
        except ValueError as e:
            raise FlannelError(f"network config Network {raw!r} is not an IPv4 network: {e}") from None
    default_len = 24 if network is None or network.prefixlen <= 22 else network.prefixlen + 2
    subnet_len = _int(doc, "SubnetLen", default_len, "network config")
    if network is not None and not network.prefixlen < subnet_len <= 32:
        raise FlannelError(f"network config SubnetLen {subnet_len} does not fit inside Network {network}")
    subnet_min = subnet_max = None
    if network is not None:
        size = 1 << (32 - subnet_len)
        # In integers: a Network ending at 255.255.255.255 would overflow IPv4Address arithmetic.
        first, last = int(network.network_address), int(network.broadcast_address)
        subnet_min = _address(doc.get("subnetmin"), ipaddress.IPv4Address(first + size), "SubnetMin")
        subnet_max = _address(doc.get("subnetmax"), ipaddress.IPv4Address(last + 1 - size), "SubnetMax")
        _check_subnet_range(network, size, subnet_min, subnet_max)
    backend = doc.get("backend") or {}
    if not isinstance(backend, dict):
        raise FlannelError(f"network config Backend must be an object, got {backend!r}")
    backend = _fold(backend)
    backend_type = backend.get("type") or "udp"  # flannel's code defaults to udp (its docs say vxlan)
    if not isinstance(backend_type, str):
        raise FlannelError(f"network config Backend.Type must be a string, got {backend_type!r}")
    ipv6: ipaddress.IPv6Network | None = None
    if doc.get("enableipv6") is True and isinstance(doc.get("ipv6network"), str):
        try:
            ipv6 = ipaddress.IPv6Network(doc["ipv6network"])
        except ValueError as e:
            raise FlannelError(f"network config IPv6Network is not an IPv6 network: {e}") from None
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend_type=backend_type,
        vni=_int(backend, "VNI", 1, "network config Backend"),
        # The backend's UDP port: vxlan and udp call it Port, wireguard ListenPort (0 = the default).
        port=_int(
            backend, "ListenPort" if backend_type == "wireguard" else "Port", 0, "network config Backend"
        ),
        ipv6_network=ipv6,
    )


def _check_subnet_range(
    network: ipaddress.IPv4Network, size: int, lo: ipaddress.IPv4Address, hi: ipaddress.IPv4Address
) -> None:
    """flannel's own CheckNetworkConfig rules: inside Network, on a SubnetLen boundary, Min <= Max."""
    for what, address in (("SubnetMin", lo), ("SubnetMax", hi)):
        if address not in network:
            raise FlannelError(f"network config {what} {address} is outside Network {network}")
        if int(address) % size:
            raise FlannelError(f"network config {what} {address} is not on a SubnetLen boundary")
    if lo > hi:
        raise FlannelError(f"network config SubnetMin {lo} is above SubnetMax {hi}")


def _address(raw: Any, default: ipaddress.IPv4Address, what: str) -> ipaddress.IPv4Address:
    if raw is None:
        return default
    if not isinstance(raw, str):  # ipaddress would take an integer (or a bool) as an address
        raise FlannelError(f"network config {what} {raw!r} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise FlannelError(f"network config {what} {raw!r} is not an IPv4 address") from None


def parse_subnet_key(name: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """`10.246.90.0-24` or `10.12.13.0-24&fd00:12:13::-56` -> the lease's subnets."""
    m = _SUBNET_KEY.fullmatch(name)
    if not m:
        raise FlannelError(f"lease key {name!r} is not of the form A.B.C.D-len or A.B.C.D-len&ipv6-len")
    try:
        v4 = ipaddress.IPv4Network(f"{m[1]}/{m[2]}")
        v6 = ipaddress.IPv6Network(f"{m[3]}/{m[4]}") if m[3] else None
    except ValueError as e:
        raise FlannelError(f"lease key {name!r}: {e}") from None
    canonical = f"{v4.network_address}-{v4.prefixlen}" + (
        f"&{v6.network_address}-{v6.prefixlen}" if v6 is not None else ""
    )
    if name != canonical:  # e.g. "-024": a second key for one subnet, which flannel never writes
        raise FlannelError(f"lease key {name!r} is not flannel's spelling of its subnet ({canonical!r})")
    return v4, v6


def parse_lease(name: str, value: bytes | str, *, expires: float | None = None, key: str = "") -> Lease:
    """One `<prefix>/subnets/<name>` value (LeaseAttrs JSON) -> a Lease."""
    subnet, subnet6 = parse_subnet_key(name)
    doc = _fold(_load_object(value, "lease"))
    return _lease(subnet, subnet6, doc, expires=expires, key=key or name)


def _lease(
    subnet: ipaddress.IPv4Network,
    subnet6: ipaddress.IPv6Network | None,
    doc: Mapping[str, Any],
    *,
    expires: float | None = None,
    key: str = "",
    node: str = "",
) -> Lease:
    # flannel writes addresses as strings; ipaddress would also take an integer (or a bool)
    try:
        public_ip = ipaddress.IPv4Address(_text(doc.get("publicip")))
    except ValueError:
        raise FlannelError(f"lease PublicIP {doc.get('publicip')!r} is not an IPv4 address") from None
    public_ipv6 = None
    if doc.get("publicipv6"):
        try:
            public_ipv6 = ipaddress.IPv6Address(_text(doc["publicipv6"]))
        except ValueError:
            raise FlannelError(f"lease PublicIPv6 {doc['publicipv6']!r} is not an IPv6 address") from None
    backend_type = doc.get("backendtype") or "udp"  # the udp backend omits BackendType entirely
    if not isinstance(backend_type, str):
        raise FlannelError(f"lease BackendType must be a string, got {backend_type!r}")
    data = doc.get("backenddata") or {}
    if not isinstance(data, dict):
        raise FlannelError(f"lease BackendData must be an object, got {data!r}")
    data = _fold(data)
    vtep_mac = data.get("vtepmac") or ""
    if backend_type == "vxlan" and not _is_mac(vtep_mac):
        raise FlannelError(f"vxlan lease BackendData.VtepMAC {vtep_mac!r} is not a MAC address")
    vni = data.get("vni")
    port = data.get("port")
    return Lease(
        subnet=subnet,
        subnet6=subnet6,
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=backend_type,
        vtep_mac=str(vtep_mac).lower(),
        vni=vni if isinstance(vni, int) and not isinstance(vni, bool) else None,
        wg_public_key=str(data.get("publickey") or ""),
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        expires=expires,
        key=key,
        node=node,
    )


def _text(v: Any) -> str:
    """An address field's string, or ValueError."""
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _is_mac(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", v) is not None


def lease_from_node(node: Node, annotation_prefix: str = "flannel.alpha.coreos.com") -> Lease | None:
    """The lease flanneld --kube-subnet-mgr keeps on a Node: podCIDR + flannel annotations.

    Returns None when flanneld has not (yet) claimed the node: no podCIDR or no public-ip annotation.
    """
    ann = node.annotations
    public_ip = ann.get(f"{annotation_prefix}/public-ip-overwrite") or ann.get(
        f"{annotation_prefix}/public-ip"
    )
    cidrs = [c for c in node.pod_cidrs if ":" not in c]
    if not public_ip or not cidrs:
        return None
    try:
        subnet = ipaddress.IPv4Network(cidrs[0])
    except ValueError:
        raise FlannelError(f"node {node.name} podCIDR {cidrs[0]!r} is not an IPv4 network") from None
    data_raw = ann.get(f"{annotation_prefix}/backend-data") or "{}"
    try:
        data = load_json(data_raw)
    except JSONDepthError as e:
        raise FlannelError(f"node {node.name} annotation backend-data: {e}") from None
    except ValueError:
        raise FlannelError(f"node {node.name} annotation backend-data is not JSON: {data_raw!r}") from None
    doc = {
        "publicip": public_ip,
        "publicipv6": ann.get(f"{annotation_prefix}/public-ipv6") or None,
        "backendtype": ann.get(f"{annotation_prefix}/backend-type") or "udp",
        "backenddata": data if isinstance(data, dict) else {},
    }
    return _lease(subnet, None, doc, key=f"node {node.name}", node=node.name)
