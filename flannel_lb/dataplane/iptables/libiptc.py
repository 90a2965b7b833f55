"""The python-iptables (libiptc) writer: legacy x_tables only, for hosts without iptables-restore.

Gotchas handled here (reference/python-libraries.md §2):
- libiptc programs legacy x_tables. On a host whose iptables is nf_tables, or where nft tables exist,
  these rules can be silently ignored (the first NAT binding wins), so the writer refuses to start.
- python-iptables crashes when used from several threads, and its Table objects are per-process
  singletons: every call runs on one dedicated thread per writer, under a process-wide lock.
- `Table.refresh()` commits pending changes when autocommit is on: autocommit stays off, refresh()
  discards, and each table is committed once per sync (nat and filter are two kernel tables, so a
  failure between the two commits leaves nat applied; the next sync is then a full one).
- libiptc does not take the xtables lock: we take /run/xtables.lock like `iptables -w` does.
- The dedicated thread enters the writer's network namespace with setns(2), which affects only that
  thread; libiptc's socket is created by `refresh()` on that thread, so it talks to that namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from flannel_lb.dataplane.iptables.changes import Changes
from flannel_lb.dataplane.iptables.restore import read_owned, read_source_range_drops
from flannel_lb.dataplane.iptables.rules import Rule, RuleSet
from flannel_lb.dataplane.iptables.sync_state import SyncState
from flannel_lb.dataplane.tools import Tools, make_tools

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
HEADER = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}
VERDICTS = ("ACCEPT", "DROP", "RETURN", "QUEUE")
_IPTC_LOCK = threading.Lock()  # python-iptables' Table objects are shared by the whole process
T = TypeVar("T")


class UnsupportedHost(RuntimeError):
    """libiptc cannot (or must not) program this host's firewall."""


class LibiptcError(RuntimeError):
    """A libiptc transaction failed; like a failed restore, the next sync is a full one."""


def check_host(tools: Tools) -> None:
    """Refuse hosts where legacy x_tables rules would be ignored or could not be written."""
    if tools.backend != "legacy":
        raise UnsupportedHost(
            "the host's iptables uses nf_tables: libiptc writes legacy x_tables rules, which nft users "
            "on this host would not see and whose NAT could be silently overridden; use the restore writer "
            "(set iptables_backend = legacy only if this host really runs iptables-legacy)"
        )
    try:
        proc = tools.run(["nft", "list", "tables"], timeout=30)
    except Exception:  # no nft binary: nothing can have created nft tables through it
        return
    tables = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith(("table ip ", "table inet "))]
    if proc.returncode == 0 and tables:
        raise UnsupportedHost(
            f"nftables tables exist in this network namespace ({', '.join(tables)}): rules written through "
            "libiptc (legacy x_tables) could be silently ignored; use the restore writer"
        )


def enter_netns(name: str | None) -> None:
    """setns(2) the calling thread into a named namespace (never created: a typo must fail)."""
    if name is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def xtables_lock(wait: float) -> Iterator[None]:
    """The lock `iptables -w` takes, so that libiptc's read-modify-commit cannot lose others' updates."""
    fd = os.open(os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LibiptcError(
                        f"the xtables lock is still held by another program after {wait} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _iptc() -> Any:
    try:
        import iptc
    except Exception as e:  # ImportError, or OSError when libip4tc/libxtables are missing
        raise UnsupportedHost(f"python-iptables is not usable here ({e}); install the libiptc extra") from e
    # A target outside python-iptables' builtin list (CONNMARK) makes it probe every table to see whether
    # the name is a chain; that would create empty legacy mangle/raw/security tables in the namespace.
    for name in ("mangle", "raw", "security"):
        iptc.Table.existing_table_names[name] = False
    return iptc


def to_iptc(iptc: Any, table: Any, rule: Rule) -> Any:
    """An iptc.Rule from the same tokens iptables-restore would read (jump targets must exist in `table`)."""
    r = iptc.Rule()
    module: Any = None
    tokens = list(rule.args())
    i = 0
    while i < len(tokens):
        neg = tokens[i] == "!"
        tok = tokens[i + 1] if neg else tokens[i]
        i += 2 if neg else 1
        if tok in HEADER:
            setattr(r, HEADER[tok], ("!" if neg else "") + tokens[i])
            i += 1
        elif tok == "-m":
            module = r.create_match(tokens[i])
            i += 1
        elif tok in ("-j", "-g"):
            name = tokens[i]
            i += 1
            if name in VERDICTS or table.is_chain(name):
                module = r.create_target("", goto=tok == "-g")
                module.standard_target = name
            else:
                module = r.create_target(name)
        elif tok.startswith("--") and module is not None:
            values: list[str] = []
            while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                values.append(tokens[i])
                i += 1
            value: str | list[str] = values[0] if len(values) == 1 else values if values else ""
            if neg:
                value = "!" + value if isinstance(value, str) else ["!", *value]
            module.parse(tok[2:], value)
        else:
            raise LibiptcError(f"cannot translate {tok!r} in {' '.join(tokens)}")
    return r


def _apply(changes: Changes, wait: float) -> None:
    """One commit per table, all on the calling (dedicated) thread."""
    iptc = _iptc()
    with _IPTC_LOCK, xtables_lock(wait):
        tables: dict[str, Any] = {}
        for name in changes.tables():
            t = iptc.Table(name, autocommit=False)
            t.autocommit = False
            t.refresh()  # discards anything pending and opens the handle in this thread's namespace
            tables[name] = t
        try:
            for name, t in tables.items():
                _apply_table(iptc, t, name, changes)
            for t in tables.values():
                t.commit()
        except Exception as e:
            for t in tables.values():
                t.refresh()  # autocommit is off: this discards the batch
            raise LibiptcError(f"libiptc transaction failed: {e}") from e


def _apply_table(iptc: Any, t: Any, table: str, changes: Changes) -> None:
    write = [c for c in changes.write if c.table == table]
    delete = [n for tt, n in changes.delete if tt == table]
    for name in [c.name for c in write] + delete:
        if t.is_chain(name):
            t.flush_entries(name)
        else:
            t.create_chain(name)
    for c in write:
        chain = iptc.Chain(t, c.name)
        for rule in c.rules:
            chain.append_rule(to_iptc(iptc, t, rule))
    for j in changes.del_jumps:
        if j.table == table:
            iptc.Chain(t, j.chain).delete_rule(to_iptc(iptc, t, j.rule))
    for j in changes.add_jumps:
        if j.table == table:
            iptc.Chain(t, j.chain).insert_rule(to_iptc(iptc, t, j.rule), 0)
    for name in delete:
        t.delete_chain(name)


class LibiptcWriter(SyncState):
    """Programs the same RuleSet as RestoreWriter through python-iptables (legacy x_tables hosts only)."""

    def __init__(self, *, prefix: str = "FLB-", backend: str = "auto", netns: str | None = None) -> None:
        super().__init__(prefix)
        if netns is not None and not os.path.exists(os.path.join(NETNS_DIR, netns)):
            raise ValueError(f"network namespace {netns!r} does not exist")
        self.tools = make_tools(backend, netns)
        check_host(self.tools)
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix="flb-iptc", initializer=enter_netns, initargs=(netns,)
        )
        self._call(_probe)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        return read_source_range_drops(self.tools, self.prefix)

    def read_owned(self) -> RuleSet:
        return read_owned(self.tools, self._prefix)  # iptables-legacy-save: the same kernel tables

    def _commit(self, changes: Changes, text: str) -> None:
        self._call(_apply, changes, self.tools.wait)

    def cleanup(self) -> Changes:
        current = self.read_owned()
        changes = Changes(delete=tuple((c.table, c.name) for c in current.chains), del_jumps=current.jumps)
        try:
            if not changes.empty:
                self._commit(changes, "")
            return changes
        finally:
            self.forget()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        super().close()


def _probe() -> None:
    iptc = _iptc()
    with _IPTC_LOCK:
        try:
            for name in ("filter", "nat"):
                t = iptc.Table(name, autocommit=False)
                t.autocommit = False
                t.refresh()
        except iptc.IPTCError as e:
            raise UnsupportedHost(f"legacy x_tables are not available (nft-only kernel?): {e}") from e
