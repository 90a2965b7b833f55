"""The flannel reservation a pair sharing one overlay identity needs: written once, by the operator.

flannel-lb stays read-only towards etcd, so it only prints the key and value (and an `etcdctl`
line); flannel's own format (etcd-formats.md §1): a lease without a TTL is a reservation, which
flannel never expires nor hands to another host.
"""

from __future__ import annotations

import ipaddress
import json
import shlex

from flannel_lb.config import Config


def key(cfg: Config) -> str:
    net = ipaddress.IPv4Network(cfg.ha.overlay_subnet)
    return f"{cfg.flannel.prefix.rstrip('/')}/subnets/{net.network_address}-{net.prefixlen}"


def value(cfg: Config, backend: str = "vxlan", vni: int = 1) -> str:
    """The lease JSON as flanneld writes it (PublicIP, BackendType, BackendData)."""
    doc: dict[str, object] = {"PublicIP": cfg.ha.overlay_public_ip, "BackendType": backend}
    if backend == "vxlan":
        doc["BackendData"] = {"VNI": vni, "VtepMAC": cfg.ha.vtep_mac}
    return json.dumps(doc, separators=(",", ":"))


def instructions(cfg: Config, backend: str = "vxlan", vni: int = 1) -> str:
    if not (cfg.ha.enabled and cfg.ha.shared_overlay):
        raise ValueError("[ha] has no overlay_subnet: the boxes do not share an overlay identity")
    k, v = key(cfg), value(cfg, backend, vni)
    return (
        "# The pair's flannel reservation (a lease without a TTL): write it once, with etcd's v3 API as\n"
        "# flannel's etcd subnet manager reads it, and run no flanneld on either box.\n"
        f"# key:   {k}\n# value: {v}\n"
        f"ETCDCTL_API=3 etcdctl put {shlex.quote(k)} {shlex.quote(v)}\n"
    )
