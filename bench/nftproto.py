"""A prototype of a native nftables layout for a flannel-lb Plan: how long would the kernel side take?

Layout (one table, what an nftables writer could program):

    map services   ipv4_addr . inet_proto . inet_service : verdict      one element per frontend
    map endpoints  ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service
                   one element per (frontend, endpoint index)
    prerouting     nat hook: ip daddr . meta l4proto . th dport vmap @services
    postrouting    nat hook: ct mark & MARK == MARK masquerade fully-random
    n<k>-<proto>   one chain per distinct endpoint count k and protocol (a handful, not per frontend):
                   ct mark set ct mark | MARK; meta mark set numgen random mod k;
                   dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoints

Dispatch is a hash lookup whatever the number of frontends; the endpoints live in one map, so a
10k x 10 load is ~100k map elements in a handful of objects, and an endpoint change is a few
element deletes and adds. Measured in this lab (`bench.sync_breakdown`), this loads ~20x faster than
one chain per frontend (with anonymous maps: 18 s at 10k x 10; kube-proxy-style per-endpoint chains:
110 s): nft's userspace cost grows with the number of chains and anonymous sets, not of elements.

Caveats of the prototype: it uses the *packet* mark as scratch for the endpoint index (a writer
would keep other users' mark bits), and renders only TCP/UDP frontends without session affinity
(the benchmark's). It is a measurement aid, not a writer.
"""

from __future__ import annotations

from collections.abc import Iterable

from flannel_lb.desired import Frontend, Plan

TABLE = "flbnft"


def _served(frontends: Iterable[Frontend]) -> list[Frontend]:
    return [f for f in frontends if f.backends and f.protocol in ("TCP", "UDP") and f.affinity is None]


def _count_chain(f: Frontend) -> str:
    return f"n{len(f.backends)}-{f.protocol.lower()}"


def _service_element(f: Frontend) -> str:
    return f"{f.address} . {f.protocol.lower()} . {f.port} : goto {_count_chain(f)}"


def _service_key(f: Frontend) -> str:
    return f"{f.address} . {f.protocol.lower()} . {f.port}"


def _endpoint_elements(f: Frontend) -> list[str]:
    key = f"{f.address} . {f.protocol.lower()} . {f.port}"
    return [f"{key} . {i} : {b.ip} . {b.port}" for i, b in enumerate(f.backends)]


def _endpoint_keys(f: Frontend) -> list[str]:
    key = f"{f.address} . {f.protocol.lower()} . {f.port}"
    return [f"{key} . {i}" for i in range(len(f.backends))]


def _count_chain_text(name: str, mark: int) -> list[str]:
    k, proto = name[1:].split("-")
    return [
        f"add chain ip {TABLE} {name}",
        f"add rule ip {TABLE} {name} ct mark set ct mark | {mark:#x} meta mark set numgen random mod {k} "
        f"meta l4proto {proto} dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoints",
    ]


def _add(what: str, items: list[str], batch: int = 5000) -> list[str]:
    return [
        f"add element ip {TABLE} {what} {{ {', '.join(items[i : i + batch])} }}"
        for i in range(0, len(items), batch)
    ]


def full_ruleset(plan: Plan, mark: int) -> str:
    """`nft -f` text replacing the whole table."""
    served = _served(plan.frontends)
    lines = [
        f"table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  map services {",
        "    type ipv4_addr . inet_proto . inet_service : verdict",
        "  }",
        "  map endpoints {",
        "    type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service",
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    ip daddr . meta l4proto . th dport vmap @services",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ct mark & {mark:#x} == {mark:#x} masquerade fully-random",
        "  }",
        "}",
    ]
    for name in sorted({_count_chain(f) for f in served}):
        lines += _count_chain_text(name, mark)
    lines += _add("endpoints", [e for f in served for e in _endpoint_elements(f)])
    lines += _add("services", [_service_element(f) for f in served])
    return "\n".join(lines) + "\n"


def change(old: Frontend, new: Frontend, mark: int, chains: set[str]) -> str:
    """`nft -f` text for one frontend whose endpoints changed: element deletes and adds only
    (plus the count chain if no frontend had that many endpoints before; `chains` tracks them)."""
    lines = []
    name = _count_chain(new)
    if name not in chains:
        lines += _count_chain_text(name, mark)
        chains.add(name)
    if _count_chain(old) != name:
        lines.append(f"delete element ip {TABLE} services {{ {_service_key(old)} }}")
        lines.append(f"add element ip {TABLE} services {{ {_service_element(new)} }}")
    lines.append(f"delete element ip {TABLE} endpoints {{ {', '.join(_endpoint_keys(old))} }}")
    lines += _add("endpoints", _endpoint_elements(new))
    return "\n".join(lines) + "\n"


def count_chains(plan: Plan) -> set[str]:
    return {_count_chain(f) for f in _served(plan.frontends)}


def delete_table() -> str:
    return f"table ip {TABLE}\ndelete table ip {TABLE}\n"
