"""A prototype of a native nftables layout for a flannel-lb Plan: how long would the kernel side take?

Layout (one table, what an nftables writer could program; kube-proxy's nftables mode is similar):

    map services  ipv4_addr . inet_proto . inet_service : verdict   (one element per frontend)
    prerouting    nat hook: ip daddr . meta l4proto . th dport vmap @services
    postrouting   nat hook: ct mark & MARK == MARK masquerade fully-random
    fe-<hash>     one chain per frontend: ct mark set ct mark | MARK;
                  dnat ip to numgen random mod N map { i : ip . port }   (the endpoints, 1/N each)

Dispatch is one hash lookup whatever the number of frontends, and a changed frontend is a two-line
transaction (flush its chain, add its rule) whatever the size of the rest. Only TCP/UDP frontends
without session affinity are rendered (the benchmark's); this is a measurement aid, not a writer.
"""

from __future__ import annotations

from collections.abc import Iterable

from flannel_lb.dataplane.rules import hash16
from flannel_lb.desired import Frontend, Plan

TABLE = "flbnft"


def chain_name(f: Frontend) -> str:
    return "fe-" + hash16(f"{f.address}|{f.protocol}|{f.port}").lower()


def _rule(f: Frontend, mark: int) -> str:
    n = len(f.backends)
    targets = ", ".join(f"{i} : {b.ip} . {b.port}" for i, b in enumerate(f.backends))
    proto = f.protocol.lower()
    return (
        f"ct mark set ct mark | {mark:#x} meta l4proto {proto} "
        f"dnat ip to numgen random mod {n} map {{ {targets} }}"
    )


def _served(frontends: Iterable[Frontend]) -> list[Frontend]:
    return [f for f in frontends if f.backends and f.protocol in ("TCP", "UDP") and f.affinity is None]


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
    for f in served:
        lines.append(f"add chain ip {TABLE} {chain_name(f)}")
        lines.append(f"add rule ip {TABLE} {chain_name(f)} {_rule(f, mark)}")
    elements = [f"{f.address} . {f.protocol.lower()} . {f.port} : goto {chain_name(f)}" for f in served]
    for i in range(0, len(elements), 2000):
        lines.append(f"add element ip {TABLE} services {{ {', '.join(elements[i : i + 2000])} }}")
    return "\n".join(lines) + "\n"


def change(f: Frontend, mark: int) -> str:
    """`nft -f` text for one frontend whose endpoints changed (it keeps its chain and element)."""
    name = chain_name(f)
    return f"flush chain ip {TABLE} {name}\nadd rule ip {TABLE} {name} {_rule(f, mark)}\n"


def delete_table() -> str:
    return f"table ip {TABLE}\ndelete table ip {TABLE}\n"
