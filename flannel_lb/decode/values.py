"""`flannel-lb decode`: make sense of one raw etcd value, whatever wrote it."""

from __future__ import annotations

from typing import Any

from flannel_lb.decode import flannel
from flannel_lb.decode.kube import DecodeError, decode_value, detect
from flannel_lb.untrusted import load_json


def decode_any(raw: bytes, key: str | None = None) -> dict[str, Any]:
    """A Kubernetes object in its JSON form, or a flannel network config / lease with flannel's defaults.

    `etcdctl get --print-value-only` appends a newline; it is dropped when the value only decodes without it.
    """
    candidates = [raw, raw[:-1]] if raw.endswith(b"\n") else [raw]
    first_error: ValueError | None = None
    for value in candidates:
        try:
            return _decode(value, key)
        except ValueError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def _decode(value: bytes, key: str | None) -> dict[str, Any]:
    if detect(value) == "json":
        doc = load_json(value)
        folded = {k.lower() for k in doc} if isinstance(doc, dict) else set()
        if "publicip" in folded:
            return _lease(value, key)
        if "network" in folded or "backend" in folded:
            return _network(value)
    try:
        return decode_value(value)
    except DecodeError as e:
        raise ValueError(e.reason) from None


def _network(value: bytes) -> dict[str, Any]:
    cfg = flannel.parse_network_config(value)
    return {
        "kind": "FlannelNetworkConfig",
        "Network": str(cfg.network) if cfg.network else None,
        "SubnetLen": cfg.subnet_len,
        "SubnetMin": str(cfg.subnet_min) if cfg.subnet_min else None,
        "SubnetMax": str(cfg.subnet_max) if cfg.subnet_max else None,
        "IPv6Network": str(cfg.ipv6_network) if cfg.ipv6_network else None,
        "Backend": {"Type": cfg.backend_type, "VNI": cfg.vni, "Port": cfg.port},
        "raw": load_json(value),
    }


def _lease(value: bytes, key: str | None) -> dict[str, Any]:
    name = key.rstrip("/").rsplit("/", 1)[-1] if key else None
    out: dict[str, Any] = {"kind": "FlannelLease"}
    if name:
        lease = flannel.parse_lease(name, value, key=key or "")
        out["Subnet"] = str(lease.subnet)
        out["SubnetIPv6"] = str(lease.subnet6) if lease.subnet6 else None
    else:
        lease = flannel.parse_lease("0.0.0.0-32", value)  # the subnet lives in the key, which we lack
    out.update(
        {
            "PublicIP": str(lease.public_ip),
            "PublicIPv6": str(lease.public_ipv6) if lease.public_ipv6 else None,
            "BackendType": lease.backend_type,
            "VtepMAC": lease.vtep_mac or None,
            "VNI": lease.vni,
            "raw": load_json(value),
        }
    )
    return out
