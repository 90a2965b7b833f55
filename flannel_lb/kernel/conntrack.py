"""Deleting UDP/SCTP conntrack entries that still pin clients to backends a sync removed.

NAT is decided on a connection's first packet; afterwards conntrack keeps sending the flow to the same
backend. A TCP peer notices a dead backend (RST/timeout) and reconnects, but a UDP client that keeps
sending from the same port refreshes its entry forever and is blackholed (kubernetes#19029, #139628).
So after a sync (rules first, so new packets cannot recreate the entries), entries for the frontend's
address:port whose reply source is a removed backend are deleted. TCP entries are never touched.

Also handled: a UDP frontend that is new or had no backends. Packets that reached the LB before it had a
DNAT rule may have created un-NATed entries, which would keep bypassing the new rule (kubernetes#48370).

And counting the open TCP flows to the VIPs, which a BGP drain waits for (`open_flows`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flannel_lb.plan.model import Frontend, Plan

IPS_DST_NAT = 1 << 5  # the entry's original destination was rewritten (our DNAT)
PROTO_NUMBERS = {"UDP": socket.IPPROTO_UDP, "SCTP": getattr(socket, "IPPROTO_SCTP", 132)}
ENOENT = 2


@dataclass(frozen=True, slots=True)
class StaleFlows:
    """Entries to delete for one frontend: DNATed to a backend not in `keep`, and maybe un-NATed ones."""

    address: str
    port: int
    protocol: str
    keep: frozenset[tuple[str, int]]  # the frontend's current backends (ip, port)
    unnatted: bool = False  # also delete entries that were never DNATed (frontend new or was empty)


@dataclass(frozen=True, slots=True)
class ConntrackCounts:
    deleted: int = 0  # entries DNATed to a removed backend
    unnatted: int = 0  # un-NATed entries of a frontend that just got backends
    vanished: int = 0  # gone before we could delete them (NetlinkError 2)

    def __add__(self, other: ConntrackCounts) -> ConntrackCounts:
        return ConntrackCounts(
            self.deleted + other.deleted, self.unnatted + other.unnatted, self.vanished + other.vanished
        )


def stale_flows(old: Plan | None, new: Plan) -> tuple[StaleFlows, ...]:
    """The UDP/SCTP frontends whose entries must be checked after moving from `old` to `new` (pure).

    With `old` None (first sync after a start: what was removed meanwhile is unknown) every UDP/SCTP
    frontend is checked against its current backends, which is also correct, only more work.
    """
    before = {f.key: f for f in old.frontends} if old is not None else None
    after = {f.key: f for f in new.frontends if f.protocol in PROTO_NUMBERS}
    out: list[StaleFlows] = []
    for key, f in after.items():
        prev = before.get(key) if before is not None else None
        if prev is f:  # the planner keeps unchanged frontends as the same objects
            continue
        keep = _endpoints(f)
        newly_served = bool(f.backends)
        if before is not None:
            removed = _endpoints(prev) - keep if prev is not None else frozenset()
            newly_served = bool(f.backends) and (prev is None or not prev.backends)
            if not removed and not newly_served:
                continue
        out.append(StaleFlows(f.address, f.port, f.protocol, keep, newly_served))
    for key, f in (before or {}).items():
        if key not in after and f.protocol in PROTO_NUMBERS and f.backends:
            out.append(StaleFlows(f.address, f.port, f.protocol, frozenset()))
    return tuple(out)


def _endpoints(f: Frontend) -> frozenset[tuple[str, int]]:
    return frozenset((b.ip, b.port) for b in f.backends)


def clear_stale(
    flows: Iterable[StaleFlows], *, netns: str | None = None, mark: int | None = None
) -> ConntrackCounts:
    """Delete the entries `flows` describe; with `mark`, only DNATed entries carrying that ctmark bit."""
    todo = [s for s in flows if s.protocol in PROTO_NUMBERS]
    if not todo:
        return ConntrackCounts()
    from pyroute2 import Conntrack

    ct = Conntrack(netns=netns) if netns else Conntrack()
    try:
        total = ConntrackCounts()
        for s in todo:
            total += _clear_one(ct, s, mark)
        return total
    finally:
        ct.close()


def _clear_one(ct: Any, s: StaleFlows, mark: int | None) -> ConntrackCounts:
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    flt = NFCTAttrTuple(proto=PROTO_NUMBERS[s.protocol], daddr=s.address, dport=s.port)
    deleted = unnatted = vanished = 0
    for e in list(ct.dump_entries(tuple_orig=flt)):  # kernel-side filter on >= 5.8, userspace below
        dnatted = bool((e.status or 0) & IPS_DST_NAT)
        if dnatted:
            if (e.tuple_reply.saddr, e.tuple_reply.sport) in s.keep:
                continue
            if mark is not None and not ((e.mark or 0) & mark):
                continue  # DNATed by someone else's rules: not ours to judge
        elif not s.unnatted:
            continue
        try:
            ct.delete(e)
        except NetlinkError as err:
            if err.code != ENOENT:
                raise
            vanished += 1
            continue
        if dnatted:
            deleted += 1
        else:
            unnatted += 1
    return ConntrackCounts(deleted, unnatted, vanished)


# TCP states in which a flow may still carry data (SYN_SENT .. LAST_ACK in the kernel's numbering):
# TIME_WAIT and CLOSE are over, whatever the entry's remaining timeout.
OPEN_TCP_STATES = frozenset({1, 2, 3, 4, 5, 6})


def open_flows(addresses: Iterable[str], *, netns: str | None = None) -> int:
    """TCP connections to `addresses` (the VIPs) that conntrack holds in an open state: what a drain
    waits for. UDP has no end to wait for and is not counted."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    ct = Conntrack(netns=netns) if netns else Conntrack()
    try:
        count = 0
        for address in dict.fromkeys(addresses):
            flt = NFCTAttrTuple(proto=socket.IPPROTO_TCP, daddr=address)
            for e in ct.dump_entries(tuple_orig=flt):
                orig = e.tuple_orig
                if orig.daddr != address or orig.proto != socket.IPPROTO_TCP:  # userspace filter before 5.8
                    continue
                info = e.protoinfo
                if info is not None and info.state in OPEN_TCP_STATES:
                    count += 1
        return count
    finally:
        ct.close()
