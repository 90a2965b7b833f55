"""Reading iptables-save output: the owned part as a RuleSet, the rest as lines to leave alone."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from flannel_lb.dataplane.iptables.rules import (
    BUCKET_TAGS,
    BUILTIN_CHAINS,
    FILTER,
    PROTOCOLS,
    TABLES,
    Chain,
    Jump,
    Role,
    Rule,
    RuleSet,
)

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_PLAIN = re.compile(r"[A-Za-z0-9_./:,=+@!-]+")  # tokens iptables-restore reads back without quotes
_SAVED_BARE = re.compile(r"[A-Za-z0-9_-]+")  # strings iptables-save prints without quotes


def split_line(line: str) -> list[str]:
    """Tokens of one iptables-save line (double-quoted strings with backslash escapes; fast without)."""
    if '"' not in line:
        return line.split()
    out: list[str] = []
    for m in _TOKEN.finditer(line):
        out.append(m.group(2) if m.lastindex == 2 else re.sub(r"\\(.)", r"\1", m.group(1)))
    return out


@functools.lru_cache(maxsize=16384)
def quote(token: str) -> str:
    """A token as iptables-restore reads it back (memoised: a 10k-service restore quotes 1M tokens,
    mostly the same few hundred)."""
    return token if _PLAIN.fullmatch(token) else _quoted(token)


def _quoted(token: str) -> str:
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spell(tokens: tuple[str, ...]) -> str:
    """A rule's tokens as iptables-save prints them: a comment is quoted unless it is all `[A-Za-z0-9_-]`
    (libxtables' xtables_save_string), so `render`, `diff` and the kernel's listing agree."""
    out = [quote(t) for t in tokens]
    if "--comment" in tokens:
        at = tokens.index("--comment") + 1
        if at < len(tokens) and not _SAVED_BARE.fullmatch(tokens[at]):
            out[at] = _quoted(tokens[at])
    return " ".join(out)


_PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}


def source_range_drops(text: str, prefix: str) -> dict[tuple[str, int, str], int]:
    """Packets each restricted frontend dropped (clients outside its loadBalancerSourceRanges), by
    (address, port, protocol), from `iptables-save -c -t filter`: the counters of its DROP rule in
    FLB-REJECT or a REJ- bucket. The kernel zeroes them when that chain is rewritten."""
    out: dict[tuple[str, int, str], int] = {}
    for table, line in _lines(text):
        if table != FILTER or not line.startswith("["):
            continue
        tokens = split_line(line)
        if len(tokens) < 4 or tokens[1] != "-A":
            continue
        if tokens[2] != prefix + "REJECT" and not tokens[2].startswith(prefix + "REJ-"):
            continue
        rule = Rule.from_args(tokens[3:])
        key = _destination(rule.matches) if rule.target == ("DROP",) else None
        packets = tokens[0][1:].partition(":")[0]
        if key is not None and packets.isdigit():
            out[key] = out.get(key, 0) + int(packets)
    return out


def _destination(matches: tuple[str, ...]) -> tuple[str, int, str] | None:
    """(address, port, protocol) of `-d ADDR/32 -p P ... --dport N` (None for any other shape)."""
    found: dict[str, str] = {}
    for flag, value in itertools.pairwise(matches):
        if flag in ("-d", "-p", "--dport", "-s"):
            found[flag] = value
    address, _, length = found.get("-d", "").partition("/")
    protocol = _PROTOCOL_NAMES.get(found.get("-p", ""))
    port = found.get("--dport", "")
    if "-s" in found or length != "32" or protocol is None or not port.isdigit():
        return None
    return (address, int(port), protocol)


def role_of(name: str, prefix: str) -> Role:
    if name.startswith(prefix + "FE-"):
        return "frontend"
    if name.startswith(prefix + "SEP-"):
        return "endpoint"
    if name.startswith(prefix + "FW-"):
        return "firewall"
    if name[len(prefix) :].startswith(BUCKET_TAGS):
        return "bucket"
    return "dispatch"


def _lines(text: str) -> Iterator[tuple[str, str]]:
    """(table, line) for every chain and rule line, comments and COMMIT dropped."""
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
        elif line == "COMMIT":
            table = ""
        elif table:
            yield table, line


def parse_save(text: str, prefix: str) -> RuleSet:
    """The chains named `prefix*` in nat and filter, and builtin-chain rules jumping to them.

    Also whether filter FORWARD could drop flannel-lb's flows (`RuleSet.forward_filtered`): its policy is
    DROP, or it holds rules other than flannel-lb's jumps (no filter table: it cannot).
    """
    chains: dict[tuple[str, str], list[Rule]] = {}
    jumps: list[Jump] = []
    forward_filtered = False
    for table, line in _lines(text):
        if table not in TABLES:
            continue
        if line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            if name.startswith(prefix):
                chains.setdefault((table, name), [])
            elif table == FILTER and name == "FORWARD" and rest.split()[:1] != ["ACCEPT"]:
                forward_filtered = True
            continue
        tokens = split_line(line)
        if tokens and tokens[0].startswith("["):  # iptables-save -c
            tokens = tokens[1:]
        if len(tokens) < 2 or tokens[0] != "-A":
            continue
        chain = tokens[1]
        if (table, chain) in chains:
            chains[(table, chain)].append(Rule.from_args(tokens[2:]))
        elif chain in BUILTIN_CHAINS[table]:
            rule = Rule.from_args(tokens[2:])
            if rule.jump.startswith(prefix):
                jumps.append(Jump(table, chain, rule))
            elif table == FILTER and chain == "FORWARD":
                forward_filtered = True
    return RuleSet(
        prefix=prefix,
        chains=tuple(Chain(t, n, tuple(rules), role_of(n, prefix)) for (t, n), rules in chains.items()),
        jumps=tuple(jumps),
        forward_filtered=forward_filtered,
    )


def foreign_lines(text: str, prefix: str) -> list[str]:
    """Everything flannel-lb does not own, counters removed: must not change across syncs and cleanup."""
    out: list[str] = []
    for table, line in _lines(text):
        if line.startswith(":"):
            name = line[1:].split(None, 1)[0]
            if not name.startswith(prefix):
                out.append(f"{table} {_COUNTERS.sub('', line).rstrip()}")
            continue
        tokens = split_line(_COUNTERS.sub("", line, count=1).strip())
        if len(tokens) >= 2 and tokens[0] == "-A" and tokens[1].startswith(prefix):
            continue
        if len(tokens) >= 2 and Rule.from_args(tokens[2:]).jump.startswith(prefix):
            continue
        out.append(f"{table} {' '.join(tokens)}")
    return out


@dataclass(frozen=True, slots=True)
class SavedRule:
    """A rule of any chain, owned or not: parsed, and its line as iptables-save printed it."""

    rule: Rule
    line: str  # "-A CHAIN ...", counters removed


def table_chains(text: str, table: str) -> dict[str, list[SavedRule]]:
    """Every chain of `table` in iptables-save output (flannel-lb's and everyone else's), its rules
    in order: what `check` walks to find foreign rules that act before flannel-lb's jumps."""
    chains: dict[str, list[SavedRule]] = {}
    for in_table, line in _lines(text):
        if in_table != table:
            continue
        if line.startswith(":"):
            chains.setdefault(line[1:].split(None, 1)[0], [])
            continue
        if line.startswith("["):  # iptables-save -c
            line = _COUNTERS.sub("", line, count=1).strip()
        tokens = split_line(line)
        if len(tokens) >= 2 and tokens[0] == "-A":
            chains.setdefault(tokens[1], []).append(SavedRule(Rule.from_args(tokens[2:]), line))
    return chains
