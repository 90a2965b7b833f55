"""Second chance for flows the router moved: what lets a drain keep the drained box's open flows.

A router's ECMP is stateless: once a box withdraws, the router hashes every packet of that box's open
flows onto the others. There conntrack knows nothing of them; the kernel picks the mid-stream packet up
as a new flow, DNATs it to the same pod (maglev) but from another SNAT address, and the pod answers with
a reset (measured: every one of them, tests/test_bgp_drain.py). So every box of the group, given its
peers (`[bgp] peers`), forwards such packets to them instead, as Cloudflare's Unimog daisy-chains them
to the previous owner and GitHub's GLB to its secondary:

* a TCP packet to a VIP that conntrack has no entry for (`ct state new` for a data packet picked up
  mid-stream, `invalid` for a FIN or RST) and that opens nothing (no SYN), arriving
  straight from a router (its link-layer source is a BGP neighbour's MAC), is copied unchanged to every
  peer (`dup to`, which sends the copy untracked, bypassing this box's NAT) and dropped here;
* the peer that holds the flow forwards it as usual (conntrack: established); a peer that does not
  drops it (it came from a peer, not from a router), so that no peer answers with a reset and no
  packet goes round in circles.

The routers' MACs come from the neighbour table, which the BGP sessions keep resolved; the rules are
refreshed when they change. The table is `ip flb_bgp`, its own, written in one `nft -f` transaction.
A box that died takes its flows with it either way; with second chance they stall at the client (until
its own timeout) instead of being reset by the survivor. docs/bgp.md has the measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flannel_lb.config import BGPConfig
from flannel_lb.kernel.netns import RunError, output, run
from flannel_lb.untrusted import load_json

TABLE = "flb_bgp"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DEAD = {"FAILED", "INCOMPLETE"}


@dataclass(frozen=True, slots=True)
class Redirect:
    vips: tuple[str, ...]
    peers: tuple[str, ...]
    routers: tuple[str, ...]  # the BGP neighbours' addresses
    netns: str | None = None

    @classmethod
    def of(cls, bgp: BGPConfig, netns: str | None = None) -> Redirect | None:
        """None when no peers are configured: nothing to forward to."""
        if not bgp.peers:
            return None
        return cls(bgp.addresses, bgp.peers, tuple(n.address for n in bgp.neighbors), netns)

    def local(self) -> frozenset[str]:
        """This box's own IPv4 addresses: a peer among them is this box (one file for the whole group)."""
        text = output(["ip", "-j", "-4", "addr", "show"], self.netns, timeout=30)
        return frozenset(
            info["local"]
            for link in load_json(text) or []
            if isinstance(link, dict)
            for info in link.get("addr_info", [])
            if isinstance(info, dict) and isinstance(info.get("local"), str)
        )

    def others(self) -> tuple[str, ...]:
        """The peers that are not this box."""
        mine = self.local()
        return tuple(p for p in self.peers if p not in mine)

    def router_macs(self) -> tuple[str, ...]:
        """The routers' link-layer addresses, as the neighbour table has them (sorted, checked)."""
        text = output(["ip", "-j", "-4", "neigh", "show"], self.netns, timeout=30)
        macs = set()
        for entry in load_json(text) or []:
            if not isinstance(entry, dict) or entry.get("dst") not in self.routers:
                continue
            mac, state = entry.get("lladdr"), entry.get("state", [])
            if (
                isinstance(mac, str)
                and _MAC.match(mac)
                and not (isinstance(state, list) and _DEAD & set(state))
            ):
                macs.add(mac)
        return tuple(sorted(macs))

    def render(self, macs: tuple[str, ...], peers: tuple[str, ...] | None = None) -> str:
        """The whole table, replacing any earlier one in the same transaction; `peers`: the ones to pass
        packets on to (default: all configured)."""
        vips = ", ".join(self.vips)
        peers = self.peers if peers is None else peers
        dups = " ".join(f"dup to {p}" for p in peers)
        out = [
            f"table ip {TABLE}\n",
            f"delete table ip {TABLE}\n",
            f"table ip {TABLE} {{\n",
            f"    set vips {{ type ipv4_addr; elements = {{ {vips} }}; }}\n",
        ]
        if macs:
            out.append(f"    set routers {{ type ether_addr; elements = {{ {', '.join(macs)} }}; }}\n")
        out += [
            "    chain prerouting {\n",
            "        # after conntrack's lookup (-200), before the load balancer's DNAT (-100)\n",
            "        type filter hook prerouting priority -150; policy accept;\n",
        ]
        # no entry: picked up mid-stream (new) or not even that (invalid: a FIN or RST with no entry)
        midstream = "ip daddr @vips meta l4proto tcp ct state { new, invalid } tcp flags & syn == 0"
        if macs and peers:
            out.append(f"        {midstream} ether saddr @routers counter {dups} drop\n")
            out.append(f"        {midstream} ether saddr != @routers counter drop\n")
        elif macs:  # no peer but this box: nobody else can hold the flow
            out.append(f"        {midstream} counter drop\n")
        else:  # no router resolved yet: nothing can be told apart; drop rather than reset
            out.append(f"        {midstream} counter drop\n")
        out += ["    }\n", "}\n"]
        return "".join(out)

    def apply(self, macs: tuple[str, ...], peers: tuple[str, ...] | None = None) -> None:
        proc = run(["nft", "-f", "-"], self.netns, input=self.render(macs, peers), timeout=30)
        if proc.returncode != 0:
            raise RunError(f"nft -f (table ip {TABLE}) exited {proc.returncode}: {proc.stderr.strip()}")

    def remove(self) -> bool:
        """Delete the table; False when there was none."""
        return run(["nft", "delete", "table", "ip", TABLE], self.netns, timeout=30).returncode == 0
