"""Maglev consistent hashing (Eisenbud et al., NSDI'16, section 3.4): a frontend's lookup table (pure).

`balance = "maglev"` makes the nftables writer pick a frontend's backend with
`jhash <5-tuple> mod M seed SEED` into a table of M slots -> backend built here. Two boxes given the
same backends build the same table (backends are sorted, the hashes are keyed BLAKE2b, never Python's
per-process `hash()`), so a flow the standby has no conntrack entry for still reaches the same pod
after a takeover. One backend more or less changes about 1/N of the slots, not (N-1)/N as `mod N`.

Population, as in the paper: backend i prefers the slots `(offset_i + j * skip_i) mod M`, j = 0, 1, ...
(a permutation of the table because M is prime); the backends take turns, each taking its next
preferred slot that is still free, until the table is full. Every backend ends with floor(M/N) or
ceil(M/N) slots.

`flow_slot` is the kernel's choice computed here (Linux's jhash over the 5-tuple as nft lays it out):
the namespace tests check every observed pod against it, and a tool can say where a flow goes.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Sequence

# The jhash seed of every maglev rule. Fixed on purpose: without a seed the kernel picks a random one
# per rule (nft_hash.c), and two boxes (or two reloads) would hash the same flow differently.
SEED = 0x666C62  # "flb"

# Table sizes (primes). A frontend with N backends gets the smallest one with at least
# SLOTS_PER_BACKEND * N slots: every backend's share is within one slot, 1/SLOTS_PER_BACKEND (2%), of
# the mean, and removing one backend moves 1 to 2.4 times its own share of the slots (measured for
# N <= 30; tests/test_maglev.py bounds it at 3x; the paper's 100 x N brings it closer to 1x at twice
# the map elements). Beyond 1310 backends the largest size is used (more imbalance). A frontend whose
# backend count crosses a step (5 -> 6, 20 -> 21, ...) gets a new table: nearly every slot moves then;
# established flows keep their conntrack entries.
SIZES = (251, 1021, 4093, 16381, 65521)
SLOTS_PER_BACKEND = 50


def table_size(backends: int) -> int:
    """The prime table size for a frontend with this many backends (1 for one: every flow is its)."""
    if backends <= 1:
        return 1
    for size in SIZES:
        if size >= SLOTS_PER_BACKEND * backends:
            return size
    return SIZES[-1]


def _hash(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, person=salt).digest(), "big")


def preference(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's permutation of the slots: two independent hashes of its name."""
    return _hash(name, b"flb-maglev-off") % size, _hash(name, b"flb-maglev-skip") % (size - 1) + 1


def canonical(names: Sequence[str]) -> tuple[str, ...]:
    """The order every box populates in: sorted, without duplicates."""
    return tuple(sorted(set(names)))


def populate(names: Sequence[str], size: int) -> tuple[int, ...]:
    """slot -> index into `canonical(names)` for a table of `size` slots (a prime > len(names)).

    Deterministic for a given set of names, whatever their order. Memoised: frontends of the same
    pods on the same port (the usual Service with several LB addresses) share one table.
    """
    return _populate(canonical(names), size)


@functools.lru_cache(maxsize=1024)  # live frontends hold their own tables: this only spares rebuilds
def _populate(names: tuple[str, ...], size: int) -> tuple[int, ...]:
    n = len(names)
    if n == 0:
        return ()
    if size < n or any(size % d == 0 for d in range(2, int(size**0.5) + 1)):
        raise ValueError(f"maglev table size {size}: must be a prime of at least {n} (the backends)")
    if n == 1:
        return (0,) * size
    prefs = [preference(name, size) for name in names]
    nxt = [0] * n
    entry = [-1] * size
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(prefs):
            j = nxt[i]
            slot = (offset + j * skip) % size
            while entry[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % size
            entry[slot] = i
            nxt[i] = j + 1
            filled += 1
            if filled == size:
                return tuple(entry)


# --- which slot the kernel picks (the model of `jhash ... mod M seed S`, for tests and explanations) ---

_M32 = 0xFFFFFFFF


def _rol(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def jhash(key: bytes, initval: int) -> int:
    """Linux's `jhash()` (include/linux/jhash.h, Bob Jenkins' lookup3), as nft_hash.c calls it."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    while length > 12:
        a = (a + int.from_bytes(key[0:4], "little")) & _M32
        b = (b + int.from_bytes(key[4:8], "little")) & _M32
        c = (c + int.from_bytes(key[8:12], "little")) & _M32
        a = (a - c) & _M32 ^ _rol(c, 4)  # __jhash_mix
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rol(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rol(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32 ^ _rol(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rol(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rol(b, 4)
        b = (b + a) & _M32
        length -= 12
        key = key[12:]
    if length == 0:
        return c
    tail = key + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    c = ((c ^ b) - _rol(b, 14)) & _M32  # __jhash_final
    a = ((a ^ c) - _rol(c, 11)) & _M32
    b = ((b ^ a) - _rol(a, 25)) & _M32
    c = ((c ^ b) - _rol(b, 16)) & _M32
    a = ((a ^ c) - _rol(c, 4)) & _M32
    b = ((b ^ a) - _rol(a, 14)) & _M32
    c = ((c ^ b) - _rol(b, 24)) & _M32
    return c


def flow_slot(saddr: str, sport: int, daddr: str, dport: int, modulus: int, seed: int = SEED) -> int:
    """The slot `jhash ip saddr . th sport . ip daddr . th dport mod modulus seed seed` gives a flow:
    nft hashes the concatenation as registers hold it, each field padded to 4 bytes with zeros."""
    key = (
        ipaddress.IPv4Address(saddr).packed
        + sport.to_bytes(2, "big")
        + bytes(2)
        + ipaddress.IPv4Address(daddr).packed
        + dport.to_bytes(2, "big")
        + bytes(2)
    )
    return (jhash(key, seed) * modulus) >> 32  # reciprocal_scale()
