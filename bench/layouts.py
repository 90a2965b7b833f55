"""Alternative dispatch layouts, measured next to flannel-lb's own in the same LB namespace.

flannel-lb's FLB-SERVICES is one linear chain: a new connection to the k-th frontend evaluates k
rules. To show what a different layout would give, the first-connection benchmark can add two more,
each on its own extra LB address, reusing the agent's per-frontend FLB-FE-* chains (so DNAT,
connmark and MASQUERADE are exactly flannel-lb's):

  buckets  (192.168.121.203) iptables, two levels: a root chain with one `--dport LO:HI` rule per
           bucket of ~sqrt(N) consecutive frontends, then the bucket's own `--dport P -j FLB-FE-*`
           rules: about 2*sqrt(N) rules per new connection instead of N. A change in rules.py only.
  nft-map  (192.168.121.202) native nftables: one `ip daddr . tcp dport vmap @svc` lookup (a hash)
           in a nat prerouting chain at priority dstnat-10, then a per-service chain that sets the
           connmark and picks an endpoint with `numgen random`, as kube-proxy's nftables mode does.
           The map holds all N elements; only the probed services get their own chains (per-packet
           cost is the lookup, whatever the number of chains). This needs an nftables writer.

The extra chains jump into the agent's FE chains, which the agent could then not delete: they are
installed only around a measurement (`install`/`remove`) while the agent is paused.

The overlay guard. Every new TCP connection through the LB also creates two new *UDP* conntrack
entries: the vxlan packets carrying it (flannel derives the outer UDP source port from the inner
flow's hash), one leaving the LB (nat OUTPUT -> FLB-LOCAL -> FLB-SERVICES) and one coming back
(nat PREROUTING -> FLB-SERVICES). Neither matches any frontend, so each walks the whole linear
dispatch chain: two full walks per connection, whatever the layout of the frontend's own lookup.
`guard(lab, True)` puts `-p udp --dport 8472 -j ACCEPT` at the top of nat PREROUTING and OUTPUT
(ACCEPT in nat ends the nat lookup; vxlan is never NATed), standing in for a fix in flannel-lb
(only send packets that can match a frontend into FLB-SERVICES), so the layouts can be compared
with and without that cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST

NFT_ADDR = "192.168.121.202"
BUCKET_ADDR = "192.168.121.203"
BUCKET_PREFIX = "BKT-"
NFT_TABLE = "flbbench"
_DISPATCH = re.compile(r"^-A FLB-SERVICES -d (\S+)/32 -p tcp .*--dport (\d+) .*-j (FLB-FE-\S+)$")


@dataclass(frozen=True, slots=True)
class Dispatch:
    port: int
    chain: str  # the agent's FLB-FE-* chain for VIP:port


def add_addresses(lab: Lab) -> None:
    for addr in (NFT_ADDR, BUCKET_ADDR):
        lab.exec_in(LB_HOST, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"], check=True)


def read_dispatch(lab: Lab, vip: str) -> list[Dispatch]:
    """The agent's FLB-SERVICES rules for `vip` (TCP), in chain order."""
    saved = lab.exec_in(LB_HOST, ["iptables-save", "-t", "nat"], check=True, timeout=300).stdout
    out = []
    for line in saved.splitlines():
        m = _DISPATCH.match(line)
        if m and m.group(1) == vip:
            out.append(Dispatch(int(m.group(2)), m.group(3)))
    return out


def bucket_rules(dispatch: Sequence[Dispatch]) -> str:
    """iptables-restore --noflush text for the two-level layout on BUCKET_ADDR."""
    size = max(1, math.ceil(math.sqrt(len(dispatch))))
    chunks = [dispatch[i : i + size] for i in range(0, len(dispatch), size)]
    names = [f"{BUCKET_PREFIX}{k}" for k in range(len(chunks))]
    root = f"{BUCKET_PREFIX}ROOT"
    lines = ["*nat", f":{root} - [0:0]", *(f":{n} - [0:0]" for n in names)]
    for name, chunk in zip(names, chunks, strict=True):
        lo, hi = chunk[0].port, chunk[-1].port
        lines.append(f"-A {root} -p tcp -m tcp --dport {lo}:{hi} -j {name}")
        lines += [f"-A {name} -p tcp -m tcp --dport {d.port} -j {d.chain}" for d in chunk]
    lines += [f"-I PREROUTING 1 -d {BUCKET_ADDR}/32 -j {root}", "COMMIT", ""]
    return "\n".join(lines)


def remove_buckets(lab: Lab) -> None:
    saved = lab.exec_in(LB_HOST, ["iptables-save", "-t", "nat"], check=True, timeout=300).stdout
    chains = [ln[1:].split()[0] for ln in saved.splitlines() if ln.startswith(f":{BUCKET_PREFIX}")]
    if not chains:
        return
    lines = ["*nat", *(f":{c} - [0:0]" for c in chains)]  # empties them
    lines.append(f"-D PREROUTING -d {BUCKET_ADDR}/32 -j {BUCKET_PREFIX}ROOT")
    lines += [f"-X {c}" for c in chains]
    lines += ["COMMIT", ""]
    lab.exec_in(LB_HOST, ["iptables-restore", "--noflush"], input="\n".join(lines), check=True, timeout=300)


def nft_ruleset(
    ports: Sequence[int], probed: Mapping[int, Sequence[str]], target_port: int, mark: int
) -> str:
    """`nft -f` text: the map with every port, per-service chains for the probed ports only."""
    lines = [
        f"table ip {NFT_TABLE}",
        f"delete table ip {NFT_TABLE}",
        f"table ip {NFT_TABLE} {{",
        "    map svc { type ipv4_addr . inet_service : verdict; }",
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat - 10; policy accept;",
        "        ip daddr . tcp dport vmap @svc",
        "    }",
    ]
    default = min(probed)
    for port, backends in probed.items():
        n = len(backends)
        picks = ", ".join(f"{i} : goto ep-{port}-{i}" for i in range(n))
        lines += [
            f"    chain svc-{port} {{",
            f"        ct mark set ct mark or {mark:#x}",
            f"        numgen random mod {n} vmap {{ {picks} }}",
            "    }",
        ]
        for i, ip in enumerate(backends):
            dnat = f"        meta l4proto tcp dnat to {ip}:{target_port}"
            lines += [f"    chain ep-{port}-{i} {{", dnat, "    }"]
    lines.append("}")
    elements = [f"{NFT_ADDR} . {p} : goto svc-{p if p in probed else default}" for p in ports]
    for i in range(0, len(elements), 5000):
        lines.append(f"add element ip {NFT_TABLE} svc {{ {', '.join(elements[i : i + 5000])} }}")
    return "\n".join(lines) + "\n"


def install(lab: Lab, vip: str, probed: Mapping[int, Sequence[str]], target_port: int, mark: int) -> int:
    """Both layouts for the agent's current frontends on `vip`; returns the number of frontends."""
    dispatch = read_dispatch(lab, vip)
    remove_buckets(lab)
    rules = bucket_rules(dispatch)
    lab.exec_in(LB_HOST, ["iptables-restore", "--noflush"], input=rules, check=True, timeout=300)
    text = nft_ruleset([d.port for d in dispatch], probed, target_port, mark)
    lab.exec_in(LB_HOST, ["nft", "-f", "-"], input=text, check=True, timeout=300)
    return len(dispatch)


GUARD_RULES = ("PREROUTING", "OUTPUT")


def guard(lab: Lab, on: bool, port: int = 8472) -> None:
    """Keep (on) or stop keeping the overlay's vxlan packets out of the nat dispatch chains."""
    op = "-I" if on else "-D"
    pos = ["1"] if on else []
    lines = ["*nat"]
    lines += [
        " ".join([op, chain, *pos, "-p udp -m udp --dport", str(port), "-j ACCEPT"]) for chain in GUARD_RULES
    ]
    lines += ["COMMIT", ""]
    lab.exec_in(LB_HOST, ["iptables-restore", "--noflush"], input="\n".join(lines), check=True, timeout=60)


def remove(lab: Lab) -> None:
    remove_buckets(lab)
    lab.exec_in(LB_HOST, ["nft", "delete", "table", "ip", NFT_TABLE], check=False)
