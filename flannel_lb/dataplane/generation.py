"""nf_tables' ruleset generation: a counter the kernel bumps with every committed transaction.

Reading the owned rules back costs seconds at 10k services (iptables-save and its parse, or an
`nft -j list` of 100k map elements). A writer that remembers the generation right after its own
commit can skip that read while the generation is unchanged: nobody else has committed anything in
the namespace since (iptables-nft, nft, firewalld, Docker all commit through nf_tables).
"""

from __future__ import annotations

import socket
import struct

from flannel_lb.kernel.netcheck import open_netlink


class GenerationError(RuntimeError):
    """The kernel did not tell its nf_tables generation."""


NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, NFT_MSG_NEWGEN, NFTA_GEN_ID = 10, 16, 15, 1
NETLINK_NETFILTER, NLM_F_REQUEST, NLMSG_ERROR = 12, 1, 2


def read_generation(netns: str | None = None) -> int:
    """nf_tables' generation id in `netns`: it changes with every committed transaction."""
    sock = open_netlink(netns, protocol=NETLINK_NETFILTER)
    try:
        sock.settimeout(5)
        header = struct.pack("=IHHII", 20, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, NLM_F_REQUEST, 1, 0)
        sock.send(header + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0))
        data = sock.recv(65536)
    finally:
        sock.close()
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        raise GenerationError(f"NFT_MSG_GETGEN failed: errno {-err}")
    if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN:
        raise GenerationError(f"NFT_MSG_GETGEN: unexpected netlink message type {kind:#x}")
    at = 16 + 4  # nlmsghdr, nfgenmsg; then attributes
    while at + 4 <= length:
        size, attr = struct.unpack_from("=HH", data, at)
        if attr & 0x3FFF == NFTA_GEN_ID and size >= 8:
            (gen,) = struct.unpack_from(">I", data, at + 4)
            return int(gen)
        at += (size + 3) & ~3
    raise GenerationError("NFT_MSG_GETGEN: no generation id in the answer")


def after_own_commits(before: int | None, after: int | None, commits: int = 1) -> int | None:
    """`after` if the generation moved by exactly our `commits` (nobody else committed in between, so
    memory and kernel agree), else None: the next verify must read the kernel back."""
    if before is None or after is None or after != (before + commits) & 0xFFFFFFFF:
        return None
    return after
