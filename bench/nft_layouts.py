"""How fast nftables loads and updates 10k Services x 10 endpoints, by layout (kernel side only).

What is measured: the wall time of `nft -f` (in a scratch network namespace of its own) loading one
table in each of these layouts, all with the same prerouting verdict map `ip daddr . meta l4proto .
th dport vmap @services` of N elements, and the time of one endpoint change where it is cheap:

  per-frontend chain   one chain per Service: ct mark, then `dnat ip to numgen random mod 10 map
                       { i : ip . port }` (an anonymous map per chain)
  kube-proxy style     one chain per Service with `numgen random mod 10 vmap { i : goto ep }`, and
                       one chain per endpoint doing the DNAT (optional: slow, `--kube-proxy-style`)
  global endpoint map  a handful of chains (one per endpoint count) and one map
                       `addr . proto . port . index -> ip . port` holding every endpoint
                       (the layout the nft writer, flannel_lb/dataplane/nftables/layout.py, grew from)
  vmap only            the N-element verdict map alone, pointing at one chain (the floor)

nft's userspace cost grows with the number of chains and anonymous sets, not with map elements;
that decides whether a native nftables writer can load 10k x 10 within the 2 s cold-start target.

Run (as root): .venv/bin/python -m bench.nft_layouts [--services 10000] [--kube-proxy-style]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable, Sequence

from bench import report
from flannel_lb.lab.netns import Namespaces, unique_prefix

HEADER = [
    "table ip t {",
    "  map services { type ipv4_addr . inet_proto . inet_service : verdict; }",
    "  chain prerouting {",
    "    type nat hook prerouting priority dstnat; policy accept;",
    "    ip daddr . meta l4proto . th dport vmap @services",
    "  }",
    "}",
]
VIP = "192.168.121.201"


def endpoints(i: int, per: int) -> list[str]:
    return [f"10.246.{(i + j) % 2 + 1}.{10 + (i * 7 + j * 13) % 240}" for j in range(per)]


def services(n: int, target: Callable[[int], str]) -> list[str]:
    items = [f"{VIP} . tcp . {20000 + i} : goto {target(i)}" for i in range(n)]
    return [f"add element ip t services {{ {', '.join(items[k : k + 2000])} }}" for k in range(0, n, 2000)]


def per_frontend_chain(n: int, per: int) -> tuple[list[str], str]:
    lines = list(HEADER)
    for i in range(n):
        m = ", ".join(f"{j} : {ip} . 8000" for j, ip in enumerate(endpoints(i, per)))
        lines += [
            f"add chain ip t s{i}",
            f"add rule ip t s{i} ct mark set ct mark | 0x2000 meta l4proto tcp "
            f"dnat ip to numgen random mod {per} map {{ {m} }}",
        ]
    k = n // 2
    m = ", ".join(f"{j} : {ip} . 8000" for j, ip in enumerate(endpoints(k, per)[:-1]))
    change = (
        f"flush chain ip t s{k}\nadd rule ip t s{k} ct mark set ct mark | 0x2000 meta l4proto tcp "
        f"dnat ip to numgen random mod {per - 1} map {{ {m} }}\n"
    )
    return [*lines, *services(n, lambda i: f"s{i}")], change


def kube_proxy_style(n: int, per: int) -> tuple[list[str], str]:
    lines = list(HEADER)
    for i in range(n):
        for j, ip in enumerate(endpoints(i, per)):
            lines += [
                f"add chain ip t e{i}-{j}",
                f"add rule ip t e{i}-{j} meta l4proto tcp dnat to {ip}:8000",
            ]
        v = ", ".join(f"{j} : goto e{i}-{j}" for j in range(per))
        lines += [f"add chain ip t s{i}", f"add rule ip t s{i} numgen random mod {per} vmap {{ {v} }}"]
    return [*lines, *services(n, lambda i: f"s{i}")], ""


def global_map(n: int, per: int) -> tuple[list[str], str]:
    lines = [
        *HEADER,
        "add map ip t eps { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service; }",
        "add chain ip t n10",
        f"add rule ip t n10 ct mark set ct mark | 0x2000 meta mark set numgen random mod {per} "
        "meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . meta mark map @eps",
    ]
    items = [
        f"{VIP} . tcp . {20000 + i} . {j} : {ip} . 8000"
        for i in range(n)
        for j, ip in enumerate(endpoints(i, per))
    ]
    lines += [
        f"add element ip t eps {{ {', '.join(items[k : k + 5000])} }}" for k in range(0, len(items), 5000)
    ]
    change = f"delete element ip t eps {{ {VIP} . tcp . {20000 + n // 2} . {per - 1} }}\n"
    return [*lines, *services(n, lambda i: "n10")], change


def vmap_only(n: int, per: int) -> tuple[list[str], str]:
    lines = [*HEADER, "add chain ip t one", "add rule ip t one meta l4proto tcp dnat to 10.246.1.10:8000"]
    return [*lines, *services(n, lambda i: "one")], ""


def nft(ns: Namespaces, text: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run(ns.argv("scratch", ["nft", "-f", "-"]), input=text, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[:500])
    return time.perf_counter() - t


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument(
        "--kube-proxy-style", action="store_true", help="also the per-endpoint-chain layout (slow)"
    )
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    layouts = {
        "per-frontend chain, anonymous dnat map": per_frontend_chain,
        "global endpoint map": global_map,
        "verdict map only (floor)": vmap_only,
    }
    if args.kube_proxy_style:
        layouts["kube-proxy style (per-endpoint chains)"] = kube_proxy_style
    started = report.now()
    rows = []
    with Namespaces(unique_prefix("bn")) as ns:
        ns.add("scratch")
        for name, build in layouts.items():
            nft(ns, "table ip t\ndelete table ip t\n")
            lines, change = build(args.services, args.endpoints)
            load = nft(ns, "\n".join(lines) + "\n")
            upd = f"{nft(ns, change) * 1000:.0f}" if change else "-"
            rows.append([name, f"{load:.2f}", upd])
        empty = nft(ns, "table ip u\n")
        rows.append(["(a one-line `nft -f` in the same namespace)", "-", f"{empty * 1000:.0f}"])
    table = report.table(
        ["layout", f"load {args.services:,} x {args.endpoints} (s)", "one change (ms)"], rows
    )
    print(table)
    if not args.no_doc:
        note = f"{args.services:,} Services x {args.endpoints} endpoints; nft -f in a scratch namespace"
        body = report.preamble("nftables load time by layout", started, note)
        report.update_section("sync_breakdown_nft_layouts", f"{body}\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
