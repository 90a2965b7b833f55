"""Reading iptables-save output: the owned part as a RuleSet, the rest as lines to leave alone."""

from __future__ import annotations

import re
from collections.abc import Iterator

from flannel_lb.dataplane.rules import BUILTIN_CHAINS, TABLES, Chain, Jump, Role, Rule, RuleSet

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def split_line(line: str) -> list[str]:
    """Tokens of one iptables-save line (double-quoted strings with backslash escapes; fast without)."""
    if '"' not in line:
        return line.split()
    out: list[str] = []
    for m in _TOKEN.finditer(line):
        out.append(m.group(2) if m.lastindex == 2 else re.sub(r"\\(.)", r"\1", m.group(1)))
    return out


def quote(token: str) -> str:
    """A token as iptables-restore reads it back."""
    if token and all(c.isalnum() or c in "-_./:,=+@!" for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def role_of(name: str, prefix: str) -> Role:
    if name.startswith(prefix + "FE-"):
        return "frontend"
    if name.startswith(prefix + "SEP-"):
        return "endpoint"
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
    """The chains named `prefix*` in nat and filter, and builtin-chain rules jumping to them."""
    chains: dict[tuple[str, str], list[Rule]] = {}
    jumps: list[Jump] = []
    for table, line in _lines(text):
        if table not in TABLES:
            continue
        if line.startswith(":"):
            name = line[1:].split(None, 1)[0]
            if name.startswith(prefix):
                chains.setdefault((table, name), [])
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
    return RuleSet(
        prefix=prefix,
        chains=tuple(Chain(t, n, tuple(rules), role_of(n, prefix)) for (t, n), rules in chains.items()),
        jumps=tuple(jumps),
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
