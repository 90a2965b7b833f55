"""The iptables chains flannel-lb owns, as plain data, and the pure function that builds them from a Plan.

Both writers (iptables-restore and libiptc) render from the same `RuleSet`, and the kernel's current
state is parsed back into one (`savefile.parse_save`), so "what changed" is a comparison of values.

Layout (prefix `FLB-`):

    nat PREROUTING  -> FLB-SERVICES     dispatch: -d ADDR/32 -p P --dport N -> FLB-FE-<hash> (external)
    nat OUTPUT      -> FLB-LOCAL        dispatch of cluster-ip frontends, then -> FLB-SERVICES
    nat POSTROUTING -> FLB-POSTROUTING  MASQUERADE/SNAT of connections carrying flannel-lb's ctmark
    FLB-FE-<hash>   CONNMARK the connection, then DNAT (statistic) or, with affinity, -> FLB-SEP-<hash>
    filter INPUT    -> FLB-REJECT        REJECT new connections to frontends without backends
    filter OUTPUT   -> FLB-LOCAL-REJECT  same for cluster-ip frontends, then -> FLB-REJECT
    filter FORWARD  -> FLB-FORWARD       ACCEPT both directions of connections carrying the ctmark
                                         (forward_accept = "auto": only while FORWARD could drop them)

loadBalancerSourceRanges (kube-proxy's KUBE-FW-* scheme): the dispatch rule of a restricted frontend
jumps to FLB-FW-<hash>, one `-s RANGE -j FLB-FE-<hash>` per admitted range, so only those clients are
DNATed; FLB-REJECT then DROPs new connections still addressed to the frontend (nobody else's are: the
DNATed ones carry a pod address by then). The nat table may not drop; a rule per range costs only the
first packet of a connection to that frontend, whatever the number of Services.

Overlay guard: with `Options.overlay_udp_port` (flannel's vxlan, udp or wireguard port), FLB-SERVICES
and FLB-LOCAL start with `-p udp -m udp --dport PORT -j RETURN`. Every new connection through the LB
also starts two UDP flows of flannel's own encapsulation (out via nat OUTPUT, back via nat
PREROUTING), which can never match a frontend; without the guard each walks the whole dispatch. Left
out (with a `skipped` entry) when a UDP frontend uses that port.

Two-level dispatch: iptables evaluates a chain rule by rule, so a flat FLB-SERVICES costs a new
connection up to N rule evaluations. A dispatch chain (FLB-SERVICES, FLB-LOCAL, FLB-REJECT,
FLB-LOCAL-REJECT) with more than `Options.bucket_size` entries (128) holds instead one jump per bucket:

    FLB-SERVICES    -d 10.96.16.0/20 -> FLB-SVC-0A6010000000-20        (an address block), or
                    -d ADDR/32 -p tcp --dport 20480:20991 -> FLB-SVC-C0A879C95000-39   (one address,
                    an aligned port block; one rule per protocol present)
    FLB-SVC-...     the entries of that bucket, as in the flat chain

The buckets are the leaves of a binary trie over (address << 16 | port) that splits a node of more than
bucket_size entries at the highest bit its entries differ in (`bucket_leaves`): a few hundred root
rules plus at most 128 bucket rules at 10k frontends, whether they share one address or each have
their own. The boundaries depend only on the entries, and a leaf's prefix only on its parent's split, so
adding, changing or removing a frontend rewrites the one bucket it falls in (and the root only when a
bucket splits or merges). Bucket chains are named after the root (SVC, LCL, REJ, LRJ), the prefix in hex
and its length. Small setups (<= bucket_size entries) keep the flat chain.

FE/SEP chain names hash everything their content depends on: an unchanged frontend keeps its chain
(and its counters: a partial sync leaves it out), a changed one gets a new chain and the old is deleted.
`RuleBuilder` memoises each frontend's chains between syncs (`build_ruleset` is its pure reference).
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import hashlib
import ipaddress
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flannel_lb.dataplane.options import Options
from flannel_lb.plan.ipv4 import ipv4_int
from flannel_lb.plan.model import Backend, Frontend, Plan

NAT = "nat"
FILTER = "filter"
TABLES = (FILTER, NAT)  # order of the tables in a restore file
BUILTIN_CHAINS = {
    NAT: ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    FILTER: ("INPUT", "FORWARD", "OUTPUT"),
}
# Bump when the content of FE/SEP chains changes for the same frontend, so upgraded agents rename them.
LAYOUT_VERSION = "1"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
COMMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._:/=,+@-")
MAX_COMMENT = 255  # xt_comment keeps 256 bytes including the NUL
BUCKET_TAGS = ("SVC-", "LCL-", "REJ-", "LRJ-")  # bucket chains of SERVICES, LOCAL, REJECT, LOCAL-REJECT

DUPLICATE = "duplicate frontend (address, port, protocol); the first one is used"

Role = Literal["dispatch", "bucket", "frontend", "endpoint", "firewall"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as iptables tokens: matches (header options first), comment, then the target."""

    matches: tuple[str, ...] = ()
    target: tuple[str, ...] = ()  # target name and its options, without "-j"
    comment: str = ""
    goto: bool = False

    def args(self) -> tuple[str, ...]:
        """The tokens after `-A CHAIN`, in the order iptables-save prints them."""
        out = list(self.matches)
        if self.comment:
            at = out.index("-m") if "-m" in out else len(out)
            out[at:at] = ["-m", "comment", "--comment", self.comment]
        if self.target:
            out += ["-g" if self.goto else "-j", *self.target]
        return tuple(out)

    @property
    def jump(self) -> str:
        return self.target[0] if self.target else ""

    def key(self) -> tuple[str, ...]:
        """Identity for comparisons with the kernel (iptables-save reformats some values)."""
        return normalize_args(self.args())

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Rule:
        """Parse the tokens of an iptables-save `-A` line (after the chain name)."""
        tokens = list(args)
        target: tuple[str, ...] = ()
        goto = False
        for i, t in enumerate(tokens):
            if t in ("-j", "-g") and i + 1 < len(tokens):
                target, goto, tokens = tuple(tokens[i + 1 :]), t == "-g", tokens[:i]
                break
        comment = ""
        if "-m" in tokens:
            at = tokens.index("-m")
            if tokens[at : at + 3] == ["-m", "comment", "--comment"] and at + 3 < len(tokens):
                comment = tokens[at + 3]
                del tokens[at : at + 4]
        return cls(tuple(tokens), target, comment, goto)


@dataclass(frozen=True, slots=True)
class Chain:
    table: str
    name: str
    rules: tuple[Rule, ...] = ()
    role: Role = "dispatch"  # dispatch chains have fixed names and are rewritten whenever their table changes

    def key(self) -> tuple[tuple[str, ...], ...]:
        return tuple(r.key() for r in self.rules)


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule flannel-lb puts into a builtin chain: the only place it touches chains it does not own."""

    table: str
    chain: str
    rule: Rule

    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.table, self.chain, self.rule.key())


@dataclass(frozen=True, slots=True)
class RuleSet:
    prefix: str
    chains: tuple[Chain, ...] = ()
    jumps: tuple[Jump, ...] = ()
    frontend_chains: tuple[tuple[str, str], ...] = ()  # (frontend label, its nat FE chain)
    skipped: tuple[tuple[str, str], ...] = ()  # (what, why): plan entries the iptables layout cannot express
    # Read back from a kernel only: whether filter FORWARD could drop flannel-lb's flows (policy DROP, or
    # rules other than flannel-lb's jump); None when not known.
    forward_filtered: bool | None = field(default=None, compare=False)
    # Built with forward_accept = "auto": the FORWARD jump follows the kernel (`settle_forward`).
    forward_auto: bool = field(default=False, compare=False)
    _index: dict[tuple[str, str], Chain] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for c in self.chains:
            self._index[(c.table, c.name)] = c

    def get(self, table: str, name: str) -> Chain | None:
        return self._index.get((table, name))

    @property
    def index(self) -> Mapping[tuple[str, str], Chain]:
        """(table, name) -> chain, in the order of `chains`."""
        return self._index

    def table(self, table: str) -> tuple[Chain, ...]:
        return tuple(c for c in self.chains if c.table == table)

    def jumps_in(self, table: str) -> tuple[Jump, ...]:
        return tuple(j for j in self.jumps if j.table == table)


@dataclass(frozen=True, slots=True)
class Names:
    """The fixed chain names for a prefix."""

    prefix: str

    @property
    def services(self) -> str:
        return self.prefix + "SERVICES"

    @property
    def local(self) -> str:
        return self.prefix + "LOCAL"

    @property
    def postrouting(self) -> str:
        return self.prefix + "POSTROUTING"

    @property
    def forward(self) -> str:
        return self.prefix + "FORWARD"

    @property
    def reject(self) -> str:
        return self.prefix + "REJECT"

    @property
    def local_reject(self) -> str:
        return self.prefix + "LOCAL-REJECT"

    def frontend(self, digest: str) -> str:
        return f"{self.prefix}FE-{digest}"

    def endpoint(self, digest: str) -> str:
        return f"{self.prefix}SEP-{digest}"

    def firewall(self, digest: str) -> str:
        return f"{self.prefix}FW-{digest}"


def hash16(text: str) -> str:
    """16 characters of base32(sha256): valid in chain names, 80 bits (kube-proxy's scheme)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@functools.lru_cache(maxsize=1024)
def probability(n: int, i: int) -> str:
    """kube-proxy's `1/(n-i)` for rule i of n, so that every backend gets 1/n of new connections.

    Spelt as iptables-save prints it back, so `render`, `diff` and the kernel show the same text.
    """
    return canonical_probability(f"{1.0 / (n - i):0.10f}")


def normalize_args(args: Sequence[str]) -> tuple[str, ...]:
    """Map values to the form iptables-save prints them in, so rendered and kernel rules compare equal."""
    out = list(args)
    for i in range(len(out) - 1):
        if out[i] == "--probability":
            out[i + 1] = canonical_probability(out[i + 1])
    return tuple(out)


def canonical_probability(value: str) -> str:
    # libxt_statistic (and iptables-nft) store lround(p * 2^31) and print it back with %.11f.
    try:
        p = float(value)
    except ValueError:
        return value
    return f"{math.floor(p * 2**31 + 0.5) / 2**31:.11f}"


def clean_comment(text: str) -> str:
    """Comments are limited to a quoting-safe character set and xt_comment's length."""
    return "".join(c if c in COMMENT_CHARS else "_" for c in text)[:MAX_COMMENT]


def statistic(n: int, i: int) -> tuple[str, ...]:
    """Matches for choice i of n equally likely choices: rule i catches 1/(n-i) of what reaches it."""
    if i == n - 1:
        return ()
    return ("-m", "statistic", "--mode", "random", "--probability", probability(n, i))


@functools.lru_cache(maxsize=4096)
def _dnat_matches(proto: str, n: int, i: int) -> tuple[str, ...]:
    """Shared by every DNAT rule with the same protocol and position: 100k rules, a few hundred tuples."""
    return ("-p", proto, *statistic(n, i))


SERVICES_SLOT, LOCAL_SLOT, REJECT_SLOT, LOCAL_REJECT_SLOT = range(4)  # the dispatch chains, in _assemble
_ORDER = operator.attrgetter("order")  # sorts usable parts (whose order is never None)


@dataclass(frozen=True, slots=True)
class _Part:
    """What one Frontend contributes: pure in the frontend and the options (RuleBuilder memoises it)."""

    frontend: Frontend  # as given in the plan (the memo's identity check)
    problems: tuple[tuple[str, str], ...] = ()  # unusable frontend, or ignored affinity (plan order)
    order: tuple[int, str, int] | None = None  # (address as int, protocol, port); None: unusable
    key: tuple[str, int, str] = ("", 0, "")
    label: str = ""
    udp_port: int = 0  # its port if it is a UDP frontend (the overlay guard must not shadow it)
    # (the dispatch chain, a *_SLOT; (address << 16 | port, protocol, rule)), in order: its dispatch
    # rule, or its REJECT, and a restricted frontend's DROP
    entries: tuple[tuple[int, tuple[int, str, Rule]], ...] = ()
    chains: tuple[Chain, ...] = ()  # FE chain first, then SEP chains, then the FW chain
    fe: tuple[str, str] | None = None  # (label, FE chain name) for RuleSet.frontend_chains
    backend_problems: tuple[tuple[str, str], ...] = ()


def _frontend_part(f: Frontend, opts: Options, names: Names) -> _Part:
    problem = frontend_problem(f)
    if problem:
        return _Part(f, problems=((f.label, problem),))
    problems: tuple[tuple[str, str], ...] = ()
    given = f
    if f.affinity is not None and (f.affinity.mode != "ClientIP" or f.affinity.timeout <= 0):
        problems = ((f.label, f"affinity {f.affinity.mode!r}/{f.affinity.timeout}s ignored: not ClientIP"),)
        f = dataclasses.replace(f, affinity=None)
    local = f.kind == "cluster-ip"
    proto = PROTOCOLS[f.protocol]
    address = ipv4_int(f.address) or 0  # valid: `frontend_problem` checked it
    dst = ("-d", f"{f.address}/32", "-p", proto, "-m", proto, "--dport", str(f.port))
    comment = _service_comment(f) if opts.comments else ""
    skipped: list[tuple[str, str]] = []
    backends = usable_backends(f, skipped)
    ranges = f.source_ranges
    chains: tuple[Chain, ...] = ()
    rules: list[tuple[int, Rule]] = []
    if backends and ranges != ():
        chains = tuple(_frontend_chains(f, backends, opts, names))
        target = chains[0].name
        if ranges is not None:
            chains += (_firewall_chain(f, ranges, target, opts, names),)
            target = chains[-1].name
        rules.append((LOCAL_SLOT if local else SERVICES_SLOT, Rule(dst, (target,), comment)))
    elif opts.reject_empty and not backends:
        how = "tcp-reset" if proto == "tcp" else "icmp-port-unreachable"
        reject = ("REJECT", "--reject-with", how)
        slot = LOCAL_REJECT_SLOT if local else REJECT_SLOT
        if ranges is None:
            rules.append((slot, Rule(dst, reject, comment)))
        else:  # admitted clients learn there is no backend; the others are dropped below
            rules += [(slot, Rule((*_source(r), *dst), reject, comment)) for r in ranges]
    if ranges is not None:
        drop = f"{comment} clients outside loadBalancerSourceRanges" if comment else ""
        rules.append((REJECT_SLOT, Rule(dst, ("DROP",), clean_comment(drop))))
    key = address << 16 | f.port
    return _Part(
        given,
        problems,
        (address, f.protocol, f.port),
        f.key,
        f.label,
        f.port if proto == "udp" else 0,
        tuple((slot, (key, f.protocol, rule)) for slot, rule in rules),
        chains,
        (f.label, chains[0].name) if chains else None,
        tuple(skipped),
    )


def _source(network: str) -> tuple[str, ...]:
    # iptables-save prints no -s for 0.0.0.0/0: neither does the rule, so the two compare equal
    return () if network == "0.0.0.0/0" else ("-s", network)


def _firewall_chain(f: Frontend, ranges: tuple[str, ...], fe: str, opts: Options, names: Names) -> Chain:
    """FLB-FW-<hash>: admitted clients go on to the frontend's chain; the rest fall through undone.

    Named by its content, apart from the FE chain's, so a change of ranges rewrites this chain and the
    dispatch rule, and the frontend's DNAT chain (with its counters) stays."""
    name = names.firewall(hash16(f"{LAYOUT_VERSION}|{opts.prefix}|{fe}|{','.join(ranges)}"))
    comment = clean_comment(f"{f.label} loadBalancerSourceRanges") if opts.comments else ""
    rules = tuple(Rule(_source(r), (fe,), comment if i == 0 else "") for i, r in enumerate(ranges))
    return Chain(NAT, name, rules, "firewall")


def build_ruleset(plan: Plan, options: Options | None = None, *, forward_filtered: bool = True) -> RuleSet:
    """All chains and jumps for `plan`: pure, deterministic (frontends sorted by address/protocol/port).

    `forward_filtered`: whether the kernel's filter FORWARD could drop flannel-lb's flows; with
    `forward_accept = "auto"` the FORWARD -> FLB-FORWARD jump is installed only then. The reference for
    `RuleBuilder`, which returns the same RuleSet while reusing unchanged frontends' work.
    """
    opts = _iptables_options(options)
    names = Names(opts.prefix)
    parts = [_frontend_part(f, opts, names) for f in plan.frontends]
    unique = len({f.key for f in plan.frontends}) == len(parts)
    return _assemble(parts, opts, names, unique=unique, forward=_forward_jump(opts, forward_filtered))


def _iptables_options(options: Options | None) -> Options:
    opts = options or Options()
    if opts.balance != "random":  # config.py refuses the combination; this guards other callers
        raise ValueError(
            f"balance {opts.balance!r}: the iptables layouts only balance at random (use the nft writer)"
        )
    return opts


class RuleBuilder:
    """`build_ruleset` that remembers each Frontend's chains between calls.

    The planner hands over the very same (immutable) Frontend object for every service an update did not
    touch, so a sync at 10k frontends rebuilds only the changed ones: the memo is keyed by the frontend's
    (address, port, protocol) and reused when it holds the same object (or an equal one). It keeps only the
    frontends of the last plan, and starts over when an option that shapes frontend chains changes (not
    for SNAT, buckets, the overlay port or the FORWARD jump). The result always equals
    `build_ruleset(plan, options)`; only the work differs.
    """

    def __init__(self) -> None:
        self._shape: tuple[object, ...] = ()
        self._names = Names(Options().prefix)
        self._memo: dict[tuple[str, int, str], _Part] = {}
        self.reused = 0  # frontends taken from the memo by the last build (for tests and metrics)
        self.rebuilt: tuple[str, ...] = ()  # labels of the frontends the last build made chains for

    def build(self, plan: Plan, options: Options | None = None, *, forward_filtered: bool = True) -> RuleSet:
        opts = _iptables_options(options)
        shape = _part_options(opts)
        if shape != self._shape:
            self._shape, self._names, self._memo = shape, Names(opts.prefix), {}
        names, old = self._names, self._memo
        memo: dict[tuple[str, int, str], _Part] = {}
        parts: list[_Part] = []
        reused = 0
        rebuilt: list[str] = []
        for f in plan.frontends:
            key = f.key
            part = old.get(key)
            if part is not None and (part.frontend is f or part.frontend == f):
                reused += 1
            else:
                part = _frontend_part(f, opts, names)
                rebuilt.append(f.label)
            memo[key] = part
            parts.append(part)
        self._memo, self.reused, self.rebuilt = memo, reused, tuple(rebuilt)
        forward = _forward_jump(opts, forward_filtered)
        return _assemble(parts, opts, names, unique=len(memo) == len(parts), forward=forward)

    def clear(self) -> None:
        self._shape, self._memo = (), {}


def _part_options(opts: Options) -> tuple[object, ...]:
    """The options `_frontend_part` depends on (keep in step with it and `_frontend_chains`)."""
    return (opts.prefix, opts.mark, opts.comments, opts.reject_empty)


def _forward_jump(opts: Options, forward_filtered: bool) -> bool:
    return opts.forward_accept == "always" or forward_filtered


def _assemble(parts: list[_Part], opts: Options, names: Names, *, unique: bool, forward: bool) -> RuleSet:
    """The RuleSet from every frontend's part, in plan order (`unique`: no two share a key; `forward`:
    install the FORWARD -> FLB-FORWARD jump)."""
    skipped: list[tuple[str, str]] = []
    usable: list[_Part] = []
    for part in parts:
        if part.problems:
            skipped += part.problems
        if part.order is not None:
            usable.append(part)
    usable.sort(key=_ORDER)
    entries: tuple[list[tuple[int, str, Rule]], ...] = ([], [], [], [])  # per *_SLOT
    per_frontend: list[Chain] = []
    frontend_chains: list[tuple[str, str]] = []
    seen: set[tuple[str, int, str]] = set()
    overlay_conflict = ""
    overlay = opts.overlay_udp_port
    for part in usable:
        if not unique:
            if part.key in seen:
                skipped.append((part.label, DUPLICATE))
                continue
            seen.add(part.key)
        if part.backend_problems:
            skipped += part.backend_problems
        if part.udp_port and part.udp_port == overlay and not overlay_conflict:
            overlay_conflict = part.label
        for slot, entry in part.entries:
            entries[slot].append(entry)
        if part.fe is not None:
            per_frontend += part.chains
            frontend_chains.append(part.fe)

    guard: tuple[Rule, ...] = ()
    if opts.overlay_udp_port is not None:
        if overlay_conflict:
            skipped.append(
                (
                    f"overlay guard udp/{opts.overlay_udp_port}",
                    f"not installed: UDP frontend {overlay_conflict} uses flannel's overlay port, so "
                    "flannel's own packets walk the dispatch chains",
                )
            )
        else:
            guard = (_overlay_guard(opts),)

    mark = ("-m", "connmark", "--mark", opts.mark_match)
    services, services_buckets = _dispatch(NAT, "SVC", entries[SERVICES_SLOT], opts)
    local, local_buckets = _dispatch(NAT, "LCL", entries[LOCAL_SLOT], opts)
    reject, reject_buckets = _dispatch(FILTER, "REJ", entries[REJECT_SLOT], opts)
    local_reject, local_reject_buckets = _dispatch(FILTER, "LRJ", entries[LOCAL_REJECT_SLOT], opts)
    shared: tuple[Rule, ...] = ()
    if opts.shared_address is not None:  # FLB-REJECT sees only new connections
        comment = "flannel-lb: the pair's flannel address takes no new connection" if opts.comments else ""
        shared = (Rule(("-d", f"{opts.shared_address}/32"), ("DROP",), comment),)
    fixed = (
        Chain(FILTER, names.forward, (Rule(mark, ("ACCEPT",), "flannel-lb DNATed connections"),)),
        Chain(FILTER, names.reject, (*shared, *reject)),
        Chain(FILTER, names.local_reject, (*local_reject, Rule((), (names.reject,)))),
        Chain(NAT, names.services, (*guard, *services)),
        Chain(NAT, names.local, (*guard, *local, Rule((), (names.services,)))),
        Chain(NAT, names.postrouting, _snat_rules(mark, opts)),
    )
    return RuleSet(
        prefix=opts.prefix,
        chains=(
            *fixed,
            *reject_buckets,
            *local_reject_buckets,
            *services_buckets,
            *local_buckets,
            *per_frontend,
        ),
        jumps=_jumps(names, forward=forward),
        frontend_chains=tuple(frontend_chains),
        skipped=tuple(skipped),
        forward_auto=opts.forward_accept == "auto",
    )


def _overlay_guard(opts: Options) -> Rule:
    port = str(opts.overlay_udp_port)
    comment = "flannel-lb: skip flannel overlay packets" if opts.comments else ""
    return Rule(("-p", "udp", "-m", "udp", "--dport", port), ("RETURN",), comment)


def _dispatch(
    table: str, tag: str, entries: list[tuple[int, str, Rule]], opts: Options
) -> tuple[tuple[Rule, ...], tuple[Chain, ...]]:
    """A dispatch chain's rules: the entries themselves (flat), or with more than `opts.bucket_size`
    entries one jump per bucket chain (two-level dispatch; see the module docstring), and those chains."""
    if not opts.bucket_size or len(entries) <= opts.bucket_size:
        return tuple(rule for _, _, rule in entries), ()
    entries = sorted(entries, key=lambda e: e[0])  # stable: protocols stay in order per address:port
    keys = [k for k, _, _ in entries]
    rules: list[Rule] = []
    chains: list[Chain] = []
    for lo, hi, prefix, length in bucket_leaves(keys, opts.bucket_size):
        name = f"{opts.prefix}{tag}-{prefix:012X}-{length}"
        chains.append(Chain(table, name, tuple(rule for _, _, rule in entries[lo:hi]), "bucket"))
        address = str(ipaddress.IPv4Address(prefix >> 16))
        if length <= 32:
            comment = f"bucket {address}/{length}" if opts.comments else ""
            rules.append(Rule(("-d", f"{address}/{length}"), (name,), comment))
            continue
        first = prefix & 0xFFFF
        last = first | ((1 << (48 - length)) - 1)
        comment = f"bucket {address} ports {first}-{last}" if opts.comments else ""
        for protocol in sorted({p for _, p, _ in entries[lo:hi]}):
            p = PROTOCOLS[protocol]
            dst = ("-d", f"{address}/32", "-p", p, "-m", p, "--dport", f"{first}:{last}")
            rules.append(Rule(dst, (name,), comment))
    return tuple(rules), tuple(chains)


def bucket_leaves(keys: Sequence[int], size: int) -> list[tuple[int, int, int, int]]:
    """The buckets of sorted 48-bit keys (address << 16 | port): (start, stop, prefix, prefix length).

    A binary trie over the key bits, path-compressed, where a node with more than `size` keys splits at
    the highest bit its keys differ in: the leaves are disjoint prefixes (an address block, or one address
    and an aligned port block), in key order, each with at most `size` keys (unless they all share one
    address:port). A leaf's prefix length is fixed by its parent's split bit, not by its own keys, so
    adding or removing a key changes only the leaf it falls in (or splits/merges that one subtree).
    """
    out: list[tuple[int, int, int, int]] = []

    def visit(lo: int, hi: int, length: int) -> None:
        if hi - lo <= size or keys[lo] == keys[hi - 1]:
            shift = 48 - length
            out.append((lo, hi, keys[lo] >> shift << shift, length))
            return
        bit = (keys[lo] ^ keys[hi - 1]).bit_length() - 1  # the highest differing bit (from the right)
        mid = bisect.bisect_left(keys, keys[hi - 1] >> bit << bit, lo, hi)
        visit(lo, mid, 48 - bit)
        visit(mid, hi, 48 - bit)

    if keys:
        visit(0, len(keys), 0)
    return out


def settle_forward(desired: RuleSet, kernel: RuleSet) -> RuleSet:
    """`desired` with the FORWARD -> FLB-FORWARD jump as `forward_accept = "auto"` wants it, given a
    read-back of the kernel: the one rule, for syncs and for `diff` alike.

    The jump is left out only while the kernel's FORWARD accepts everything and holds no jump of
    flannel-lb's: one already there was installed while FORWARD could drop, and it stays, so a
    firewall that comes and goes is never raced. With "always" the jump is never left out.
    """
    if not desired.forward_auto:
        return desired
    want = kernel.forward_filtered is not False or has_forward_jump(kernel)
    return desired if want == has_forward_jump(desired) else with_forward_jump(desired, want)


def has_forward_jump(rs: RuleSet) -> bool:
    return any(j.table == FILTER and j.chain == "FORWARD" for j in rs.jumps)


def with_forward_jump(rs: RuleSet, forward: bool) -> RuleSet:
    """`rs` with (or without) the filter FORWARD -> FLB-FORWARD jump."""
    return _with_jumps(rs, _jumps(Names(rs.prefix), forward=forward))


def _with_jumps(rs: RuleSet, jumps: tuple[Jump, ...]) -> RuleSet:
    return RuleSet(
        rs.prefix, rs.chains, jumps, rs.frontend_chains, rs.skipped, rs.forward_filtered, rs.forward_auto
    )


def _jumps(names: Names, *, forward: bool = True) -> tuple[Jump, ...]:
    new = ("-m", "conntrack", "--ctstate", "NEW")
    accept = Jump(FILTER, "FORWARD", Rule((), (names.forward,), "flannel-lb DNATed connections"))
    return (
        Jump(FILTER, "INPUT", Rule(new, (names.reject,), "flannel-lb frontends without backends")),
        *((accept,) if forward else ()),
        Jump(FILTER, "OUTPUT", Rule(new, (names.local_reject,), "flannel-lb frontends without backends")),
        Jump(NAT, "PREROUTING", Rule((), (names.services,), "flannel-lb frontends")),
        Jump(NAT, "OUTPUT", Rule((), (names.local,), "flannel-lb frontends")),
        Jump(NAT, "POSTROUTING", Rule((), (names.postrouting,), "flannel-lb SNAT")),
    )


def _frontend_chains(f: Frontend, backends: Sequence[Backend], opts: Options, names: Names) -> list[Chain]:
    """The FE chain (first) and, for ClientIP affinity, one SEP chain per backend."""
    proto = PROTOCOLS[f.protocol]
    ident = f"{LAYOUT_VERSION}|{opts.prefix}|{opts.mark}|{opts.comments}|{f.fingerprint()}"
    fe = names.frontend(hash16(ident))
    label = f"{f.label} {_service_comment(f)}" if opts.comments else ""
    rules = [Rule((), ("CONNMARK", "--set-xmark", opts.mark_match), clean_comment(label))]
    n = len(backends)
    chains: list[Chain] = []
    if f.affinity is not None:
        seps = [
            names.endpoint(hash16(f"{LAYOUT_VERSION}|{opts.prefix}|{f.key}|{b.ip}|{b.port}"))
            for b in backends
        ]
        recent = ("--mask", "255.255.255.255", "--rsource")
        seconds = str(f.affinity.timeout)
        for sep in seps:
            check = ("-m", "recent", "--rcheck", "--seconds", seconds, "--reap", "--name", sep, *recent)
            rules.append(Rule(check, (sep,)))
        rules += [Rule(statistic(n, i), (sep,)) for i, sep in enumerate(seps)]
        for sep, b in zip(seps, backends, strict=True):
            remember = ("-p", proto, "-m", "recent", "--set", "--name", sep, *recent)
            dnat = Rule(remember, ("DNAT", "--to-destination", f"{b.ip}:{b.port}"))
            chains.append(Chain(NAT, sep, (dnat,), "endpoint"))
    else:
        rules += [
            Rule(_dnat_matches(proto, n, i), ("DNAT", "--to-destination", f"{b.ip}:{b.port}"))
            for i, b in enumerate(backends)
        ]
    return [Chain(NAT, fe, tuple(rules), "frontend"), *chains]


def _snat_rules(mark: tuple[str, ...], opts: Options) -> tuple[Rule, ...]:
    if not opts.masquerade:
        return ()
    fully = ("--random-fully",) if opts.random_fully else ()
    if not opts.snat_pool:
        return (Rule(mark, ("MASQUERADE", *fully)),)
    pool = sorted(ipaddress.IPv4Address(a) for a in opts.snat_pool)
    if int(pool[-1]) - int(pool[0]) == len(pool) - 1:  # contiguous: one SNAT range
        to = str(pool[0]) if len(pool) == 1 else f"{pool[0]}-{pool[-1]}"
        return (Rule(mark, ("SNAT", "--to-source", to, *fully)),)
    # The kernel takes a single range per SNAT rule: spread over scattered addresses like over backends.
    n = len(pool)
    return tuple(
        Rule((*mark, *statistic(n, i)), ("SNAT", "--to-source", str(a), *fully)) for i, a in enumerate(pool)
    )


def _service_comment(f: Frontend) -> str:
    return clean_comment(f"{f.service}:{f.port_name}" if f.port_name else f.service)


def frontend_problem(f: Frontend) -> str:
    if ipv4_int(f.address) is None:  # the common case, without an `ipaddress` object per frontend
        try:
            ipaddress.ip_address(f.address)
        except ValueError:
            return "not an IP address"
        return "IPv6 frontends are not supported (flannel-lb programs IPv4 only)"
    if f.protocol not in PROTOCOLS:
        return f"protocol {f.protocol!r} is not TCP, UDP or SCTP"
    if not 0 < f.port < 65536:
        return f"port {f.port} out of range"
    if f.kind not in ("external", "cluster-ip"):
        return f"unknown frontend kind {f.kind!r}"
    return ""


def usable_backends(f: Frontend, skipped: list[tuple[str, str]]) -> list[Backend]:
    out: list[Backend] = []
    seen: set[tuple[str, int]] = set()
    for b in f.backends:
        if ipv4_int(b.ip) is None or not 0 < b.port < 65536:
            skipped.append((f"{f.label} -> {b.ip}:{b.port}", "backend is not an IPv4 address:port"))
        elif (b.ip, b.port) not in seen:
            seen.add((b.ip, b.port))
            out.append(b)
    return out
