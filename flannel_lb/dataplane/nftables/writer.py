"""Programming the nftables layout (`nft_layout`) with `nft -f`: one atomic transaction per sync.

Same bookkeeping as the iptables writers: the first sync adopts the table when the kernel already holds
exactly the desired one (a restarted agent rewrites nothing, affinity sets survive), otherwise it
replaces the table in one transaction (`delete table` and its re-creation commit together: packets
see the old table or the new one, never none). Later syncs send only element adds and deletes for the
frontends that changed. `verify=True` reads the table back and replaces it if it drifted.

Reading a table of 100k elements back costs seconds, so a verify first asks the kernel for its
nftables generation (bumped by every commit in the namespace, by anyone): unchanged since this
writer's own last commit means nobody else changed anything, and the read-back is skipped.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flannel_lb.dataplane.generation import after_own_commits, read_generation
from flannel_lb.dataplane.iptables.rules import PROTOCOLS
from flannel_lb.dataplane.modes import Mode, choose_mode
from flannel_lb.dataplane.nftables import layout as nl
from flannel_lb.dataplane.nftables.layout import FrontendKey
from flannel_lb.dataplane.options import Options
from flannel_lb.kernel.netns import run
from flannel_lb.plan.model import Plan
from flannel_lb.untrusted import ascii_decimal

_ERROR_LINE = re.compile(r"^/dev/stdin:(\d+):", re.MULTILINE)


class NftError(RuntimeError):
    """nft rejected a transaction (nothing of it was applied), or could not be run."""


@dataclass(frozen=True, slots=True)
class NftSyncResult:
    mode: Mode
    counts: dict[str, int]
    text: str  # the `nft -f` text of the transaction ("" when nothing had to change)
    seconds: float

    @property
    def applied(self) -> bool:
        return bool(self.text)

    def summary(self) -> dict[str, int]:
        return self.counts


@dataclass(slots=True)
class KernelTable:
    """What `nft -j list table` shows of the owned table, in the layout's own terms."""

    elements: set[tuple[str, str, str]] = field(default_factory=set)
    chains: dict[str, int] = field(default_factory=dict)  # name -> number of rules
    sets: set[str] = field(default_factory=set)  # every set and map name


class NftWriter:
    """Keeps the owned table equal to the plan's layout; remembers what it applied."""

    def __init__(self, options: Options | None = None, *, netns: str | None = None) -> None:
        self._options = options or Options()
        self.netns = netns
        self.builder = nl.LayoutBuilder(self._options)
        self._current: nl.Layout | None = None  # what the kernel holds, as far as this writer knows
        self._need_full = False
        self.last_drift: list[str] = []  # why the last adopt/verify replaced the table
        self._balance: set[tuple[int, str]] = set()  # balance chains in the kernel (unused ones stay)
        self._staged_balance: set[tuple[int, str]] = set()
        self._genid: int | None = None  # the ruleset generation right after our last commit or read
        self.verify_reads = 0  # read-backs done by adopt/verify (the generation check avoids most)

    @property
    def prefix(self) -> str:
        return self._options.prefix

    @property
    def table(self) -> str:
        return nl.table_name(self._options.prefix)

    @property
    def options(self) -> Options:
        return self._options

    @options.setter
    def options(self, options: Options) -> None:
        if nl.shaping(options) != nl.shaping(self._options):  # another skeleton or balance rule
            self._options, self.builder = options, nl.LayoutBuilder(options)
            self._need_full = True  # rebuild and replace the table
        else:
            self._options = options  # iptables-only knobs (buckets, overlay guard, FORWARD accept)

    # --- syncing ------------------------------------------------------------------------------------

    def next_sync(
        self, plan: Plan, *, full: bool = False, verify: bool = False
    ) -> tuple[Mode, str, dict[str, int], nl.Layout]:
        """What the next sync would do: its mode, the `nft -f` text ("" = nothing), counts, the layout."""
        desired = self.builder.build(plan)
        mode, read = choose_mode(
            full=full or self._need_full,
            verify=verify,
            remembers=self._current is not None,
            unchanged=lambda: self._genid is not None and self._genid == self.generation(),
        )
        if mode == "full":
            return (mode, *self._full_text(desired), desired)
        if not read:
            assert self._current is not None
            return (mode, *self._delta_text(self._current, desired), desired)
        self._genid = self.generation()  # before the read: a commit during it shows up next time
        self.verify_reads += 1
        kernel = self.read_kernel()
        drift = self.drift(kernel, desired)
        if not drift:
            assert kernel is not None
            self._staged_balance = _balance_chains(kernel, self._options)  # used ones and leftovers alike
            return mode, "", {}, desired
        self.last_drift = drift
        return (mode, *self._full_text(desired), desired)

    def sync(self, plan: Plan, *, full: bool = False, verify: bool = False) -> NftSyncResult:
        """One atomic transaction (none if nothing changed); a failure makes the next sync a full one."""
        start = time.perf_counter()
        self._staged_balance = set()
        mode, text, counts, desired = self.next_sync(plan, full=full, verify=verify)
        if text:
            before = self.generation()
            try:
                self._apply(text)
            except BaseException:
                self._current, self._need_full, self._genid = None, True, None
                raise
            self._genid = after_own_commits(before, self.generation())  # `nft -f`: one commit
        if "tables_replaced" in counts:
            self._balance = desired.balance_chains()
        elif mode == "partial" or self._current is not None:
            self._balance |= self._staged_balance
        else:
            self._balance = self._staged_balance  # adopted as it is: what the listing showed
        self._current, self._need_full = desired, False
        return NftSyncResult(mode, counts, text, time.perf_counter() - start)

    def render(self, plan: Plan, *, full: bool = False, verify: bool = False) -> str:
        return self.next_sync(plan, full=full, verify=verify)[1]

    def forget(self) -> None:
        self._current, self._need_full, self._genid = None, True, None

    def generation(self) -> int:
        """The namespace's nftables ruleset generation (NFT_MSG_GETGEN): one netlink round trip."""
        return read_generation(self.netns)

    def _full_text(self, desired: nl.Layout) -> tuple[str, dict[str, int]]:
        opts, table = self._options, self.table
        lines = [f"table {nl.FAMILY} {table}", f"delete table {nl.FAMILY} {table}", nl.skeleton(opts)]
        for k, proto in sorted(desired.balance_chains()):
            lines += nl.balance_chain_object(k, proto, opts).commands(table)
        for entries in desired.frontends.values():
            for obj in entries.objects:
                lines += obj.commands(table)
        # Frontends own disjoint keys, so their elements need no de-duplication (nor sorting: 100k here).
        elements = [el for entries in desired.frontends.values() for el in entries.elements]
        lines += nl.element_commands("add", table, elements)
        counts = {"tables_replaced": 1, "elements_added": len(elements)}
        return "\n".join(lines) + "\n", counts

    def _delta_text(self, old: nl.Layout, new: nl.Layout) -> tuple[str, dict[str, int]]:
        add: list[tuple[str, str, str]] = []
        delete: list[tuple[str, str, str]] = []
        new_objects: list[nl.NftObject] = []
        gone_objects: list[nl.NftObject] = []
        if new.changed is not None and new.base is old:
            keys: Iterable[FrontendKey] = new.changed  # the builder knows what changed since `old`
        else:
            keys = new.frontends.keys() | old.frontends.keys()
        needed: set[tuple[int, str]] = set()
        for key in keys:
            before, after = old.frontends.get(key), new.frontends.get(key)
            if before is after:
                continue
            _diff(before, after, add, delete, new_objects, gone_objects)
            if after is not None and after.balance is not None and after.balance not in self._balance:
                needed.add(after.balance)
        if not (add or delete or new_objects or gone_objects):
            return "", {}
        table, lines = self.table, list[str]()
        self._staged_balance = needed  # present in the kernel once this text is applied
        for k, proto in sorted(needed):
            lines += nl.balance_chain_object(k, proto, self._options).commands(table)
        for obj in new_objects:
            lines += obj.commands(table)
        lines += nl.element_commands("delete", table, delete)
        lines += nl.element_commands("add", table, add)
        # Objects go after the elements that jump to them, in the reverse of their creation order: a
        # frontend chain before the endpoint chains it jumps to, a chain before the set it updates.
        lines += [obj.delete(table) for obj in reversed(gone_objects)]
        # Balance chains no longer used are left in place (one rule each) until the next full sync.
        counts = {
            "elements_added": len(add),
            "elements_deleted": len(delete),
            "objects_added": len(new_objects),
            "objects_deleted": len(gone_objects),
        }
        return "\n".join(lines) + "\n", counts

    # --- the kernel -----------------------------------------------------------------------------

    def _nft(self, args: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["nft", *args], self.netns, input=input)

    def _apply(self, text: str) -> None:
        proc = self._nft(["-f", "-"], input=text)
        if proc.returncode == 0:
            return
        stderr = proc.stderr.strip()
        m = _ERROR_LINE.search(stderr)
        where = ""
        if m:
            n = int(m.group(1))
            lines = text.splitlines()
            if 0 < n <= len(lines):
                where = f" at line {n}: {lines[n - 1][:200]}"
        raise NftError(f"nft -f failed (exit {proc.returncode}){where}: {stderr[:2000]}")

    def read_kernel(self) -> KernelTable | None:
        """The owned table as the kernel holds it; None when it does not exist."""
        proc = self._nft(["-j", "list", "table", nl.FAMILY, self.table])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(f"nft list table {nl.FAMILY} {self.table} failed: {proc.stderr.strip()}")
        return parse_listing(json.loads(proc.stdout))

    def drift(self, kernel: KernelTable | None, desired: nl.Layout) -> list[str]:
        """How the kernel's table differs from `desired` ([] = identical as far as a listing shows)."""
        if kernel is None:
            return ["the table does not exist"]
        out: list[str] = []
        want_chains = expected_chains(desired, self._options)
        for name, rules in want_chains.items():
            have = kernel.chains.get(name)
            if have != rules:
                out.append(f"chain {name}: {have if have is not None else 'missing'} rules, want {rules}")
        # Balance chains a partial sync stopped using stay until the next full sync: not drift.
        extra = kernel.chains.keys() - want_chains.keys()
        kind = nl.chain_kind(self._options.balance) + "-"
        out += [f"unexpected chain {name}" for name in sorted(extra) if not name.startswith(kind)]
        want_sets = {*nl.MAPS, *nl.SETS, *_set_names(desired)}
        if kernel.sets != want_sets:
            out.append(f"sets/maps differ: {sorted(kernel.sets ^ want_sets)}")
        want_elements = desired.elements()
        if kernel.elements != want_elements:
            missing, unexpected = len(want_elements - kernel.elements), len(kernel.elements - want_elements)
            out.append(f"elements differ: {missing} missing, {unexpected} unexpected")
        return out

    def diff(self, plan: Plan) -> str:
        return "".join(f"{line}\n" for line in self.drift(self.read_kernel(), self.builder.build(plan)))

    def cleanup(self) -> str:
        """Delete the owned table (nothing else); the next sync starts over."""
        self._current, self._need_full = None, True
        existed = self.read_kernel() is not None
        table = f"{nl.FAMILY} {self.table}"
        proc = self._nft(["-f", "-"], input=f"table {table}\ndelete table {table}\n")
        if proc.returncode != 0:
            raise NftError(f"nft delete table {table} failed: {proc.stderr.strip()}")
        return f"removed nftables table {table}" if existed else f"no nftables table {table} to remove"

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        """The per-element counters of the `restricted` set: only the drop rule's lookup hits them."""
        proc = self._nft(["-j", "list", "set", nl.FAMILY, self.table, nl.RESTRICTED])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return {}
            raise NftError(f"nft list set {nl.RESTRICTED} failed: {proc.stderr.strip()}")
        return restricted_counters(json.loads(proc.stdout))

    def close(self) -> None:
        self._current = None


def _diff(
    old: nl.Entries | None,
    new: nl.Entries | None,
    add: list[tuple[str, str, str]],
    delete: list[tuple[str, str, str]],
    new_objects: list[nl.NftObject],
    gone_objects: list[nl.NftObject],
) -> None:
    before = set(old.elements) if old else set()
    after = set(new.elements) if new else set()
    # A changed value (same key) is a delete plus an add; both happen in the same transaction.
    delete += sorted(before - after)
    add += sorted(after - before)
    had = set(old.objects) if old else set()
    has = set(new.objects) if new else set()
    new_objects += [obj for obj in (new.objects if new else ()) if obj not in had]
    gone_objects += [obj for obj in (old.objects if old else ()) if obj not in has]


def _balance_chains(kernel: KernelTable, opts: Options) -> set[tuple[int, str]]:
    """The balance chains of the configured kind (`balance-k-proto` or `maglev-M-proto`) present."""
    out, kind = set(), nl.chain_kind(opts.balance)
    for name in kernel.chains:
        parts = name.split("-")
        k = ascii_decimal(parts[1]) if len(parts) == 3 and parts[0] == kind else None
        if k is not None:
            out.add((k, parts[2]))
    return out


def _set_names(layout: nl.Layout) -> set[str]:
    """The frontends' own sets (affinity: one per endpoint)."""
    return {obj.name for e in layout.frontends.values() for obj in e.objects if isinstance(obj, nl.NftSet)}


def expected_chains(layout: nl.Layout, opts: Options) -> dict[str, int]:
    """Chain name -> number of rules, for the whole desired table."""
    out = {chain.name: len(chain.rules) for chain in nl.hooked_chains(opts)}
    out.update({nl.balance_chain(k, proto, opts.balance): 1 for k, proto in layout.balance_chains()})
    for e in layout.frontends.values():
        out.update({obj.name: len(obj.rules) for obj in e.objects if isinstance(obj, nl.NftChain)})
    return out


def parse_listing(doc: dict[str, Any]) -> KernelTable:
    """`nft -j list table` -> KernelTable, with keys and values written the way the layout writes them."""
    out = KernelTable()
    for item in doc.get("nftables", []):
        if "chain" in item:
            out.chains.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            chain = item["rule"]["chain"]
            out.chains[chain] = out.chains.get(chain, 0) + 1
        elif "map" in item or "set" in item:
            obj = item.get("map") or item.get("set")
            name = obj["name"]
            out.sets.add(name)
            if name not in (*nl.MAPS, *nl.SETS):
                continue  # affinity sets: their elements are the kernel's to add and expire
            for elem in obj.get("elem", []):
                if isinstance(elem, list):
                    out.elements.add((name, _text(elem[0]), _text(elem[1])))
                else:
                    out.elements.add((name, _text(elem), ""))
    return out


def restricted_counters(doc: dict[str, Any]) -> dict[tuple[str, int, str], int]:
    """(address, port, protocol) -> packets, from `nft -j list set ... restricted`."""
    names = {v: k for k, v in PROTOCOLS.items()}
    out: dict[tuple[str, int, str], int] = {}
    items = doc.get("nftables") if isinstance(doc, dict) else None
    for item in items if isinstance(items, list) else []:
        match item:
            case {"set": {"elem": list(elements)}}:
                pass
            case _:
                continue
        for elem in elements:
            match elem:
                case {
                    "elem": {
                        "val": {"concat": [str(address), str(proto), int(port)]},
                        "counter": {"packets": int(packets)},
                    }
                } if proto in names:
                    out[(address, port, names[proto])] = packets
    return out


def _text(value: Any) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_text(v) for v in value["concat"])
        if "elem" in value:
            return _text(value["elem"]["val"])
        if "prefix" in value:
            return f"{_text(value['prefix'].get('addr'))}/{_text(value['prefix'].get('len'))}"
        for verdict in ("goto", "jump"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
        return json.dumps(value, sort_keys=True)
    return str(value)
