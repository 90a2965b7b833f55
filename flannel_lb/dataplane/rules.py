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

FE/SEP chain names hash everything their content depends on: an unchanged frontend keeps its chain
(and its counters: a partial sync leaves it out), a changed one gets a new chain and the old is deleted.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flannel_lb.dataplane.options import Options
from flannel_lb.desired import Backend, Frontend, Plan

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

Role = Literal["dispatch", "frontend", "endpoint"]


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
    _index: dict[tuple[str, str], Chain] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for c in self.chains:
            self._index[(c.table, c.name)] = c

    def get(self, table: str, name: str) -> Chain | None:
        return self._index.get((table, name))

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


def hash16(text: str) -> str:
    """16 characters of base32(sha256): valid in chain names, 80 bits (kube-proxy's scheme)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@functools.lru_cache(maxsize=1024)
def probability(n: int, i: int) -> str:
    """kube-proxy's `1/(n-i)` for rule i of n, so that every backend gets 1/n of new connections."""
    return f"{1.0 / (n - i):0.10f}"


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


def build_ruleset(plan: Plan, options: Options | None = None) -> RuleSet:
    """All chains and jumps for `plan`: pure, deterministic (frontends sorted by address/protocol/port)."""
    opts = options or Options()
    names = Names(opts.prefix)
    dispatch: dict[str, list[Rule]] = {names.services: [], names.local: []}
    rejects: dict[str, list[Rule]] = {names.reject: [], names.local_reject: []}
    per_frontend: list[Chain] = []
    frontend_chains: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[str, int, str]] = set()

    for f in _usable_frontends(plan.frontends, skipped):
        if f.key in seen:
            skipped.append((f.label, "duplicate frontend (address, port, protocol); the first one is used"))
            continue
        seen.add(f.key)
        local = f.kind == "cluster-ip"
        proto = PROTOCOLS[f.protocol]
        dst = ("-d", f"{f.address}/32", "-p", proto, "-m", proto, "--dport", str(f.port))
        comment = _service_comment(f) if opts.comments else ""
        backends = usable_backends(f, skipped)
        if backends:
            chains = _frontend_chains(f, backends, opts, names)
            per_frontend += chains
            frontend_chains.append((f.label, chains[0].name))
            dispatch[names.local if local else names.services].append(Rule(dst, (chains[0].name,), comment))
        elif opts.reject_empty:
            how = "tcp-reset" if proto == "tcp" else "icmp-port-unreachable"
            reject = Rule(dst, ("REJECT", "--reject-with", how), comment)
            rejects[names.local_reject if local else names.reject].append(reject)

    mark = ("-m", "connmark", "--mark", opts.mark_match)
    fixed = (
        Chain(FILTER, names.forward, (Rule(mark, ("ACCEPT",), "flannel-lb DNATed connections"),)),
        Chain(FILTER, names.reject, tuple(rejects[names.reject])),
        Chain(FILTER, names.local_reject, (*rejects[names.local_reject], Rule((), (names.reject,)))),
        Chain(NAT, names.services, tuple(dispatch[names.services])),
        Chain(NAT, names.local, (*dispatch[names.local], Rule((), (names.services,)))),
        Chain(NAT, names.postrouting, _snat_rules(mark, opts)),
    )
    return RuleSet(
        prefix=opts.prefix,
        chains=(*fixed, *per_frontend),
        jumps=_jumps(names),
        frontend_chains=tuple(frontend_chains),
        skipped=tuple(skipped),
    )


def _jumps(names: Names) -> tuple[Jump, ...]:
    new = ("-m", "conntrack", "--ctstate", "NEW")
    return (
        Jump(FILTER, "INPUT", Rule(new, (names.reject,), "flannel-lb frontends without backends")),
        Jump(FILTER, "FORWARD", Rule((), (names.forward,), "flannel-lb DNATed connections")),
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
        for i, b in enumerate(backends):
            rules.append(
                Rule(("-p", proto, *statistic(n, i)), ("DNAT", "--to-destination", f"{b.ip}:{b.port}"))
            )
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


def _usable_frontends(frontends: Iterable[Frontend], skipped: list[tuple[str, str]]) -> list[Frontend]:
    usable: list[tuple[tuple[int, str, int], Frontend]] = []
    for f in frontends:
        reason = frontend_problem(f)
        if reason:
            skipped.append((f.label, reason))
            continue
        if f.affinity is not None and (f.affinity.mode != "ClientIP" or f.affinity.timeout <= 0):
            skipped.append(
                (f.label, f"affinity {f.affinity.mode!r}/{f.affinity.timeout}s ignored: not ClientIP")
            )
            f = dataclasses.replace(f, affinity=None)
        usable.append(((int(ipaddress.IPv4Address(f.address)), f.protocol, f.port), f))
    return [f for _, f in sorted(usable, key=lambda t: t[0])]


def frontend_problem(f: Frontend) -> str:
    try:
        addr = ipaddress.ip_address(f.address)
    except ValueError:
        return "not an IP address"
    if addr.version != 4:
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
        try:
            ok = ipaddress.ip_address(b.ip).version == 4 and 0 < b.port < 65536
        except ValueError:
            ok = False
        if not ok:
            skipped.append((f"{f.label} -> {b.ip}:{b.port}", "backend is not an IPv4 address:port"))
        elif (b.ip, b.port) not in seen:
            seen.add((b.ip, b.port))
            out.append(b)
    return out
