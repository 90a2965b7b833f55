"""Tables on stdout and sections of docs/benchmarks.md.

Each benchmark owns one section of docs/benchmarks.md, delimited by `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`; a run replaces its own section (or appends it) and leaves the others alone.
"""

from __future__ import annotations

import datetime
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import ROOT, machine

DOC = ROOT / "docs" / "benchmarks.md"
HEADER = """\
# Benchmarks

Figures measured by the scripts in [`bench/`](../bench/README.md), in the network-namespace lab
(`flannel_lb/lab`): client -> load balancer (iptables NAT programmed by flannel-lb) -> flannel vxlan ->
pods. Each section below is rewritten by its script; it names the command, the date and the machine.
Ratios are measured side by side in one run; absolute numbers depend on the machine and on whatever
else was using its CPU (noted per section).

"""
SECTION_ORDER = ("first_connection", "throughput", "convergence", "cold_start", "sync_breakdown")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def command_line() -> str:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    module = Path(sys.argv[0]).stem
    return f".venv/bin/python -m bench.{module}" + (f" {args}" if args else "")


def preamble(title: str, started: datetime.datetime, scale_note: str = "") -> str:
    m = machine()
    lines = [
        f"## {title}",
        "",
        f"- command: `{command_line()}`",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {m['cpu']}, {m['memory']}, kernel {m['kernel']}, {m['iptables']}, "
        f"{m['nft']}, Python {m['python']}; load average at the end {m['load']}",
    ]
    if scale_note:
        lines.append(f"- scale: {scale_note}")
    return "\n".join(lines) + "\n"


def update_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace (or insert, in SECTION_ORDER) the section `name` of docs/benchmarks.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    found = pattern.search(text)
    text = pattern.sub(lambda _: block, text) if found else _insert_in_order(text, name, block)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def _rank(name: str) -> int:
    """Position of a section (`first_connection_nft` sorts with `first_connection`)."""
    return next((i for i, p in enumerate(SECTION_ORDER) if name.startswith(p)), len(SECTION_ORDER))


def _insert_in_order(text: str, name: str, block: str) -> str:
    """Before the first section that sorts after `name`, else at the end."""
    for m in re.finditer(r"<!-- bench:([a-z_]+) -->", text):
        if (_rank(m.group(1)), m.group(1)) > (_rank(name), name):
            return text[: m.start()] + block + "\n" + text[m.start() :]
    return text.rstrip("\n") + "\n\n" + block


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
