"""The nftables table flannel-lb owns, as data built from a Plan (pure; `nft_writer` does the I/O).

Layout (table `ip <prefix>`, e.g. `ip flb`; nothing outside it is ever touched):

    map services        addr . proto . port : verdict    external frontends (prerouting, output)
    map local-services  addr . proto . port : verdict    cluster-ip frontends (output only)
    map endpoints-<proto>  addr . port . index : pod addr . pod port (one map per protocol)
    set rejects, local-rejects                           frontends without backends (REJECT)
    chain balance-<k>-<proto>  one per distinct backend count k: set the ctmark, then
                               dnat to the endpoint `numgen random mod k` of this frontend
    chain maglev-<M>-<proto>   instead, with `balance = "maglev"`: one per table size M; the index is
                               `jhash ip saddr . sport . ip daddr . dport mod M seed <fixed>`, and the
                               frontend's M endpoint elements are its Maglev table (`maglev.py`)
    chain aff-<hash>...        ClientIP affinity only: per-frontend chains and per-endpoint sets
    prerouting/output (nat), postrouting (ctmark -> masquerade/snat), refuse-input/-output (filter)
    map firewall        addr . proto . port : verdict    frontends with loadBalancerSourceRanges
                                                         -> goto their chain fw-<hash>
    chain fw-<hash>     `ip saddr { RANGES } return`, then the counted drop (set `restricted`, a
                        counter per element)
    chain firewall-in/-out  before DNAT (filter, priority -110): new connections, one lookup in
                        `firewall`; only a restricted frontend's own clients meet its ranges

Dispatch is one hash lookup whatever the number of frontends, and 10k frontends x 10 endpoints are
100k map elements in a handful of objects: nft's cost grows with chains and rules, not elements. An
endpoint change is a few element deletes and adds. Each frontend's contribution (`Entries`) is
memoised by `LayoutBuilder` per Frontend object, so a sync costs O(changed frontends).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from flannel_lb.dataplane import maglev
from flannel_lb.dataplane.iptables.rules import (
    LAYOUT_VERSION,
    PROTOCOLS,
    frontend_problem,
    hash16,
    usable_backends,
)
from flannel_lb.dataplane.options import Options
from flannel_lb.plan.model import Backend, Frontend, Plan

FAMILY = "ip"
SERVICES, LOCAL_SERVICES = "services", "local-services"
REJECTS, LOCAL_REJECTS = "rejects", "local-rejects"
FIREWALL, RESTRICTED = "firewall", "restricted"
MAPS = (SERVICES, LOCAL_SERVICES, FIREWALL, *(f"endpoints-{p}" for p in PROTOCOLS.values()))
SETS = (REJECTS, LOCAL_REJECTS, RESTRICTED)
KEY = "ip daddr . meta l4proto . th dport"
FrontendKey = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class NftChain:
    """A chain of the owned table, its rules as nft statements (as knftables keeps them), rendered into
    commands in one place; `hook` makes it a base chain."""

    name: str
    rules: tuple[str, ...] = ()
    hook: str = ""  # e.g. "type nat hook prerouting priority dstnat; policy accept;"

    def commands(self, table: str) -> list[str]:
        hook = f" {{ {self.hook} }}" if self.hook else ""
        head = f"add chain {FAMILY} {table} {self.name}{hook}"
        return [head, *(f"add rule {FAMILY} {table} {self.name} {rule}" for rule in self.rules)]

    def delete(self, table: str) -> str:
        return f"delete chain {FAMILY} {table} {self.name}"

    def block(self) -> list[str]:
        """As a `chain NAME { ... }` block inside `table ... { }`."""
        body = [self.hook, *self.rules] if self.hook else list(self.rules)
        return [f"  chain {self.name} {{", *(f"    {line}" for line in body), "  }"]


@dataclass(frozen=True, slots=True)
class NftSet:
    """A set or map of the owned table; `spec` is its body (`type ...; flags ...;`)."""

    name: str
    spec: str
    kind: str = "set"  # or "map"

    def commands(self, table: str) -> list[str]:
        return [f"add {self.kind} {FAMILY} {table} {self.name} {{ {self.spec} }}"]

    def delete(self, table: str) -> str:
        return f"delete {self.kind} {FAMILY} {table} {self.name}"

    def block(self) -> list[str]:
        return [f"  {self.kind} {self.name} {{ {self.spec} }}"]


NftObject = NftChain | NftSet


def shaping(opts: Options) -> tuple[object, ...]:
    """The options the nftables table depends on (the rest only shape the iptables layout)."""
    return (
        opts.prefix,
        opts.mark,
        opts.masquerade,
        opts.random_fully,
        opts.snat_pool,
        opts.reject_empty,
        opts.balance,
        opts.shared_address,
    )


def table_name(prefix: str) -> str:
    """`FLB-` -> `flb`: the table carries the same owner name as the iptables chains."""
    return prefix.rstrip("-_").lower() or "flb"


@dataclass(frozen=True, slots=True)
class Entries:
    """What one frontend contributes to the table.

    Endpoint-map elements are kept as the Backend objects the plan already holds and spelled out only
    when a sync needs them: at 100k endpoints their text would be the largest thing the agent keeps.
    """

    head: tuple[tuple[str, str, str], ...] = ()  # dispatch or reject: (map or set, key, value; "" for sets)
    # its own sets and chains (affinity), in creation order: deleted in the reverse one
    objects: tuple[NftObject, ...] = ()
    balance: tuple[int, str] | None = None  # the shared balance chain it jumps to: (k, proto)
    skipped: tuple[tuple[str, str], ...] = ()  # (what, why) the layout cannot express
    address: str = ""  # the frontend's address and port: the endpoint elements' key prefix
    port: int = 0
    backends: tuple[Backend, ...] = ()  # endpoint index i -> backends[i] in `endpoints-<proto>`
    # maglev: slot s -> backends[slots[s]] (the table, shared between frontends with the same backends)
    slots: tuple[int, ...] = ()

    @property
    def elements(self) -> tuple[tuple[str, str, str], ...]:
        """(map or set, key, value) for every element this frontend owns."""
        if not self.backends:
            return self.head
        assert self.balance is not None
        name, prefix = endpoint_map(self.balance[1]), f"{self.address} . {self.port} . "
        if self.slots:
            values = [f"{b.ip} . {b.port}" for b in self.backends]
            slots = ((name, f"{prefix}{s}", values[i]) for s, i in enumerate(self.slots))
            return (*self.head, *slots)
        endpoints = ((name, f"{prefix}{i}", f"{b.ip} . {b.port}") for i, b in enumerate(self.backends))
        return (*self.head, *endpoints)


@dataclass(slots=True)
class Layout:
    """The whole table's variable part: every frontend's entries, keyed by (address, port, protocol).

    `changed` names the keys whose entries differ from the previous layout the builder made (None:
    unknown, compare everything), so a sync's delta costs O(changed frontends).
    """

    frontends: dict[FrontendKey, Entries] = field(default_factory=dict)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    changed: set[FrontendKey] | None = None
    base: Layout | None = None  # the layout `changed` is relative to

    def balance_chains(self) -> set[tuple[int, str]]:
        return {e.balance for e in self.frontends.values() if e.balance is not None}

    def elements(self) -> set[tuple[str, str, str]]:
        return {el for e in self.frontends.values() for el in e.elements}

    def skipped(self) -> list[tuple[str, str]]:
        return [*self.duplicates, *(s for e in self.frontends.values() for s in e.skipped)]


def endpoint_map(proto: str) -> str:
    return f"endpoints-{proto}"


def balance_chain(k: int, proto: str, balance: str = "random") -> str:
    """`balance-<k>-<proto>` (random over k endpoints) or `maglev-<M>-<proto>` (a table of M slots)."""
    return f"{chain_kind(balance)}-{k}-{proto}"


def chain_kind(balance: str) -> str:
    return "maglev" if balance == "maglev" else "balance"


def flow_hash(proto: str, modulus: int) -> str:
    """The seeded hash of a flow's 5-tuple (its protocol is the chain's): the same on every box."""
    fields = f"ip saddr . {proto} sport . ip daddr . {proto} dport"
    return f"jhash {fields} mod {modulus} seed {maglev.SEED:#x}"


def frontend_key_text(address: str, proto: str, port: int) -> str:
    return f"{address} . {proto} . {port}"


class LayoutBuilder:
    """Builds a Layout from a Plan, reusing the entries of every Frontend object it has seen before.

    The planner keeps unchanged Frontend objects identical and in place, so when the new plan lines
    up with the last one key by key, only the positions holding new objects are rebuilt.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._last: tuple[tuple[Frontend, ...], Layout] | None = None

    def build(self, plan: Plan) -> Layout:
        layout = self._update(plan.frontends) if self._last is not None else None
        if layout is None:
            layout = self._full(plan.frontends)
        self._last = (plan.frontends, layout)
        return layout

    def _full(self, frontends: tuple[Frontend, ...]) -> Layout:
        known = {f.key: (f, e) for f, e in self._pairs()}
        layout = Layout()
        for f in frontends:
            if f.key in layout.frontends:
                why = "duplicate frontend (address, port, protocol); the first one is used"
                layout.duplicates.append((f.label, why))
                continue
            cached = known.get(f.key)
            layout.frontends[f.key] = (
                cached[1] if cached is not None and cached[0] is f else frontend_entries(f, self.options)
            )
        return layout

    def _update(self, frontends: tuple[Frontend, ...]) -> Layout | None:
        assert self._last is not None
        before, last = self._last
        if len(before) != len(frontends) or len(last.frontends) != len(before):
            return None  # services came or went (or duplicates): rebuild, reusing what it can
        entries = dict(last.frontends)
        changed: set[FrontendKey] = set()
        for old, new in zip(before, frontends, strict=True):
            if old is new:
                continue
            if old.key != new.key:
                return None
            entries[new.key] = frontend_entries(new, self.options)
            changed.add(new.key)
        last.base = None  # one step of history is all a delta needs: no chain of 10k-entry dicts
        return Layout(entries, [], changed, last)

    def _pairs(self) -> list[tuple[Frontend, Entries]]:
        if self._last is None:
            return []
        before, last = self._last
        return [(f, last.frontends[f.key]) for f in before if f.key in last.frontends]


def frontend_entries(f: Frontend, opts: Options) -> Entries:
    """One frontend's elements and objects: pure, depends only on `f` and `opts`."""
    problem = frontend_problem(f)
    if problem:
        return Entries(skipped=((f.label, problem),))
    entries = _frontend_entries(f, opts)
    if f.source_ranges is None:
        return entries
    key = frontend_key_text(f.address, PROTOCOLS[f.protocol], f.port)
    chain = _firewall_chain(key, f.source_ranges)
    head = (*entries.head, (FIREWALL, key, f"goto {chain.name}"), (RESTRICTED, key, ""))
    return dataclasses.replace(entries, head=head, objects=(*entries.objects, chain))


def _firewall_chain(key: str, ranges: tuple[str, ...]) -> NftChain:
    """A restricted frontend's own check: its clients go on (to DNAT), the others are counted and dropped.

    A chain per frontend, as kube-proxy's nftables mode has, keeps the ranges out of every other
    frontend's path: one concatenated interval set of all of them cost every new connection of
    every frontend a lookup that grew with the number of ranges (docs/benchmarks.md, source ranges).
    Named by its content: a change of ranges makes a new chain, and the old one goes.
    """
    name = "fw-" + hash16(f"{LAYOUT_VERSION}|{key}|{','.join(ranges)}")
    admit = (f"ip saddr {{ {', '.join(ranges)} }} return",) if ranges else ()
    return NftChain(name, (*admit, f"{KEY} @{RESTRICTED} drop"))


def _frontend_entries(f: Frontend, opts: Options) -> Entries:
    skipped: list[tuple[str, str]] = []
    proto = PROTOCOLS[f.protocol]
    local = f.kind == "cluster-ip"
    key = frontend_key_text(f.address, proto, f.port)
    backends = usable_backends(f, skipped)
    if not backends:
        if not opts.reject_empty:
            return Entries(skipped=tuple(skipped))
        return Entries(((LOCAL_REJECTS if local else REJECTS, key, ""),), skipped=tuple(skipped))
    dispatch_map = LOCAL_SERVICES if local else SERVICES
    if f.affinity is not None and f.affinity.mode == "ClientIP" and f.affinity.timeout > 0:
        chain, objects = _affinity_objects(f, backends, proto, opts)
        return Entries(((dispatch_map, key, f"goto {chain}"),), objects, skipped=tuple(skipped))
    if f.affinity is not None:
        skipped.append((f.label, f"affinity {f.affinity.mode!r}/{f.affinity.timeout}s ignored: not ClientIP"))
    k = len(backends)
    if opts.balance == "maglev" and k > maglev.SIZES[-1]:
        why = f"{k} backends: more than the largest Maglev table ({maglev.SIZES[-1]}); jhash mod {k} instead"
        skipped.append((f.label, why))
    elif opts.balance == "maglev":
        by_name = {f"{b.ip}:{b.port}": b for b in backends}
        names = maglev.canonical(list(by_name))
        size = maglev.table_size(k)
        dispatch = ((dispatch_map, key, f"goto {balance_chain(size, proto, opts.balance)}"),)
        table = maglev.populate(names, size)
        ordered = tuple(by_name[n] for n in names)
        return Entries(dispatch, (), (size, proto), tuple(skipped), f.address, f.port, ordered, table)
    dispatch = ((dispatch_map, key, f"goto {balance_chain(k, proto, opts.balance)}"),)
    kept = f.backends if k == len(f.backends) else tuple(backends)  # usually all of them: share the tuple
    return Entries(dispatch, (), (k, proto), tuple(skipped), f.address, f.port, kept)


def _affinity_objects(
    f: Frontend, backends: list[Backend], proto: str, opts: Options
) -> tuple[str, tuple[NftObject, ...]]:
    """ClientIP affinity the way kube-proxy's nftables mode does it: a per-endpoint set of recent
    clients (entries expire after the timeout), checked before the random choice. Sets are named by
    frontend and endpoint, so a client stays on its pod when other endpoints come and go."""
    seconds = f.affinity.timeout if f.affinity else 0
    objects: list[NftObject] = []
    endpoint_chains = []
    for b in backends:
        name = "aff-" + hash16(f"{LAYOUT_VERSION}|{f.key}|{b.ip}|{b.port}|{seconds}")
        endpoint_chains.append(name)
        remember = f"update @{name} {{ ip saddr }} meta l4proto {proto} dnat ip to {b.ip}:{b.port}"
        objects += [
            NftSet(name, f"type ipv4_addr; flags dynamic,timeout; timeout {seconds}s;"),
            NftChain(name, (remember,)),
        ]
    chain = "aff-" + hash16(f"{LAYOUT_VERSION}|{f.fingerprint()}|{opts.mark}|{opts.balance}")
    picks = ", ".join(f"{i} : goto {name}" for i, name in enumerate(endpoint_chains))
    rules = [_set_mark(opts), *(f"ip saddr @{name} goto {name}" for name in endpoint_chains)]
    # maglev: a new client's pod is a seeded hash of its address, so the standby (which has not seen
    # the affinity sets) picks the same one; plain `mod k`, not a Maglev table
    k, seed = len(backends), f"seed {maglev.SEED:#x}"
    pick = f"jhash ip saddr mod {k} {seed}" if opts.balance == "maglev" else f"numgen random mod {k}"
    rules.append(f"{pick} vmap {{ {picks} }}")
    objects.append(NftChain(chain, tuple(rules)))
    return chain, tuple(objects)


def _set_mark(opts: Options) -> str:
    return f"ct mark set ct mark | {opts.mark:#x}"


def balance_chain_object(k: int, proto: str, opts: Options) -> NftChain:
    name = balance_chain(k, proto, opts.balance)
    index = flow_hash(proto, k) if opts.balance == "maglev" else f"numgen random mod {k}"
    dnat = f"dnat ip to ip daddr . {proto} dport . {index} map @{endpoint_map(proto)}"
    return NftChain(name, (f"{_set_mark(opts)} {dnat}",))


def hooked_chains(opts: Options) -> tuple[NftChain, ...]:
    """The fixed chains (and `refuse`, which the refusals go to).

    The refusals hook in just before the iptables filter chains (`filter - 1`), as the iptables
    layout's jumps sit at the top of INPUT/OUTPUT: a firewall that silently drops closed ports must
    not turn "no backends" into a timeout.
    """
    mark = f"ct mark & {opts.mark:#x} == {opts.mark:#x}"
    return (
        NftChain(
            "prerouting",
            (f"{KEY} vmap @{SERVICES}",),
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        NftChain(
            "output",
            (f"{KEY} vmap @{LOCAL_SERVICES}", f"{KEY} vmap @{SERVICES}"),
            "type nat hook output priority -100; policy accept;",
        ),
        NftChain(
            "postrouting",
            tuple(f"{mark} {rule}" for rule in _snat_statements(opts)),
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
        NftChain("refuse", ("meta l4proto tcp reject with tcp reset", "reject")),
        NftChain(
            "refuse-input",
            (*_shared_address_drop(opts), f"ct state new {KEY} @{REJECTS} goto refuse"),
            "type filter hook input priority filter - 1; policy accept;",
        ),
        NftChain(
            "refuse-output",
            (
                f"ct state new {KEY} @{LOCAL_REJECTS} goto refuse",
                f"ct state new {KEY} @{REJECTS} goto refuse",
            ),
            "type filter hook output priority filter - 1; policy accept;",
        ),
        # A drop, not a reject: a client outside the ranges learns nothing, not even that the
        # address serves (kube-proxy drops too). `return` ends only this chain: DNAT still follows.
        NftChain("firewall-in", _FIREWALL, "type filter hook prerouting priority -110; policy accept;"),
        NftChain("firewall-out", _FIREWALL, "type filter hook output priority -110; policy accept;"),
    )


def _shared_address_drop(opts: Options) -> tuple[str, ...]:
    """[ha] shared identity: new connections to the pair's flannel address are dropped (docs/ha.md)."""
    return () if opts.shared_address is None else (f"ct state new ip daddr {opts.shared_address} drop",)


_FIREWALL = (f"ct state new {KEY} vmap @{FIREWALL}",)


def fixed_sets() -> tuple[NftSet, ...]:
    keyed = "type ipv4_addr . inet_proto . inet_service"
    return (
        NftSet(SERVICES, f"{keyed} : verdict;", "map"),
        NftSet(LOCAL_SERVICES, f"{keyed} : verdict;", "map"),
        # One endpoint map per protocol, keyed by `tcp dport` etc.: with a `th dport` key, nft 1.0.6
        # refuses later `add rule` commands that use the map ("conflicting protocols: tcp vs. th").
        *(
            NftSet(endpoint_map(p), f"typeof {_endpoint_key(p)} : ip daddr . {p} dport;", "map")
            for p in PROTOCOLS.values()
        ),
        NftSet(REJECTS, f"{keyed};"),
        NftSet(LOCAL_REJECTS, f"{keyed};"),
        NftSet(FIREWALL, f"{keyed} : verdict;", "map"),
        NftSet(RESTRICTED, f"{keyed}; counter;"),
    )


def _endpoint_key(proto: str) -> str:
    return f"ip daddr . {proto} dport . numgen random mod 1"


def skeleton(opts: Options) -> str:
    """The fixed part of the table (maps, sets, hooked chains) as an `nft -f` block."""
    lines = [f"table {FAMILY} {table_name(opts.prefix)} {{"]
    objects: tuple[NftObject, ...] = (*fixed_sets(), *hooked_chains(opts))
    for obj in objects:
        lines += obj.block()
    return "\n".join([*lines, "}"])


def _snat_statements(opts: Options) -> list[str]:
    if not opts.masquerade:
        return []
    fully = " fully-random" if opts.random_fully else ""
    if not opts.snat_pool:
        return [f"masquerade{fully}"]
    pool = sorted(ipaddress.IPv4Address(a) for a in opts.snat_pool)
    if int(pool[-1]) - int(pool[0]) == len(pool) - 1:
        to = str(pool[0]) if len(pool) == 1 else f"{pool[0]}-{pool[-1]}"
        return [f"snat ip to {to}{fully}"]
    choices = ", ".join(f"{i} : {a}" for i, a in enumerate(pool))
    return [f"snat ip to numgen random mod {len(pool)} map {{ {choices} }}{fully}"]


def element_commands(
    verb: str, table: str, elements: Iterable[tuple[str, str, str]], batch: int = 2000
) -> list[str]:
    """`add element`/`delete element` commands grouped per map or set (deletes need keys only)."""
    grouped: dict[str, list[str]] = {}
    for name, key, value in elements:
        item = f"{key} : {value}" if value and verb == "add" else key
        grouped.setdefault(name, []).append(item)
    out = []
    for name in (*MAPS, *SETS):
        items = grouped.get(name, [])
        for i in range(0, len(items), batch):
            out.append(f"{verb} element {FAMILY} {table} {name} {{ {', '.join(items[i : i + batch])} }}")
    return out
