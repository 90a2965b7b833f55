"""Conntrack table limits: read them, size them the way kube-proxy does, and (opt-in) set them.

Every connection the LB DNATs holds a conntrack entry until the kernel forgets it. A full table
makes the kernel refuse or evict new connections (`drop`, `early_drop` in /proc/net/stat/nf_conntrack),
and two new connections that NAT to the same tuple fail their insert (`insert_failed`): from the
outside, both look like an LB that stalls under a burst of new connections. `flannel-lb check`
reports these, the agent samples them into metrics, and with `[conntrack] manage = true` the agent
sets the limits at start (and on a reload that changes them), as kube-proxy's `conntrack` settings do:

- nf_conntrack_max is raised (never lowered) to max(min, max_per_core * CPUs). It is host-wide, so
  the kernel makes it read-only outside the host's network namespace: there we say so and go on.
- the hash table (/sys/module/nf_conntrack/parameters/hashsize) is raised to max/4, only from the
  host's network namespace (`in_host_netns`): it is global, and the kernel refuses the write from
  anywhere else.
- the TCP established and close_wait timeouts are set: they belong to the agent's namespace.

The decisions (`parse_stat`, `wanted_max`, `plan`, `assess_*`) are pure; the /proc and /sys I/O
lives in `read_stats`, `in_host_netns` and `apply`, whose paths tests point elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from flannel_lb.config import ConntrackConfig

log = structlog.get_logger("flannel_lb.conntrack")

SYSCTL_DIR = "/proc/sys/net/netfilter"
STAT_PATH = "/proc/net/stat/nf_conntrack"
HASHSIZE_PATH = "/sys/module/nf_conntrack/parameters/hashsize"
MAX_SCALED = 1048576  # kube-proxy caps max_per_core * CPUs here: each entry costs ~320 bytes of kernel memory
FAR_ABOVE = 2  # a timeout more than twice the configured one is "far above" it
MAX = "nf_conntrack_max"
HASHSIZE = "hashsize"
ESTABLISHED = "nf_conntrack_tcp_timeout_established"
CLOSE_WAIT = "nf_conntrack_tcp_timeout_close_wait"

Status = Literal["ok", "warn"]
Reader = Callable[[str], str]  # absolute path -> its text, as the right namespace sees it


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


# --- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counters:
    """The kernel's per-CPU failure counters, summed (they count from boot or the netns's creation)."""

    insert_failed: int = 0
    drop: int = 0
    early_drop: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    count: int  # entries in this network namespace
    max: int  # host-wide table size
    buckets: int  # host-wide hash buckets
    tcp_timeout_established: int  # seconds, this namespace
    tcp_timeout_close_wait: int  # seconds, this namespace
    counters: Counters = field(default_factory=Counters)

    @property
    def usage(self) -> float:
        return self.count / self.max if self.max > 0 else 0.0


def parse_stat(text: str) -> Counters:
    """Sum insert_failed, drop and early_drop over the CPU rows of /proc/net/stat/nf_conntrack.

    The file is a header of column names, then one row per CPU of hexadecimal numbers. Columns are
    found by name, since kernels have added and removed some over the years.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty /proc/net/stat/nf_conntrack")
    header, rows = lines[0], lines[1:]
    sums = {}
    for name in ("insert_failed", "drop", "early_drop"):
        if name not in header:
            raise ValueError(f"no {name} column in /proc/net/stat/nf_conntrack (header: {' '.join(header)})")
        col = header.index(name)
        try:
            sums[name] = sum(int(row[col], 16) for row in rows)
        except (IndexError, ValueError):
            raise ValueError(f"a CPU row of /proc/net/stat/nf_conntrack has no hex {name} value") from None
    return Counters(**sums)


def read_stats(read: Reader = read_text, sysctl_dir: str = SYSCTL_DIR, stat_path: str = STAT_PATH) -> Stats:
    """The table as the reader's namespace sees it; FileNotFoundError when nf_conntrack is not loaded."""

    def number(name: str) -> int:
        return int(read(f"{sysctl_dir}/{name}").strip())

    return Stats(
        count=number("nf_conntrack_count"),
        max=number(MAX),
        buckets=number("nf_conntrack_buckets"),
        tcp_timeout_established=number(ESTABLISHED),
        tcp_timeout_close_wait=number(CLOSE_WAIT),
        counters=parse_stat(read(stat_path)),
    )


def cpu_count() -> int:
    """The host's CPUs (not this process's affinity): nf_conntrack_max is sized for the whole host."""
    return os.cpu_count() or 1


# --- deciding ------------------------------------------------------------------------------------------


def wanted_max(settings: ConntrackConfig, ncpu: int) -> int:
    """kube-proxy's sizing, max(min, max_per_core * CPUs) with the scaled part capped; 0: leave it alone."""
    if settings.max_per_core <= 0:
        return 0
    return max(settings.min, min(settings.max_per_core * ncpu, MAX_SCALED))


@dataclass(frozen=True, slots=True)
class Change:
    name: str  # MAX, HASHSIZE, ESTABLISHED or CLOSE_WAIT
    current: int
    target: int


def plan(settings: ConntrackConfig, stats: Stats, hashsize: int | None, ncpu: int) -> list[Change]:
    """What to write: the max and hashsize only upwards, the timeouts whenever they differ (as kube-proxy)."""
    changes = []
    want = wanted_max(settings, ncpu)
    if want > stats.max:
        changes.append(Change(MAX, stats.max, want))
    if want and hashsize is not None and hashsize < want // 4:
        changes.append(Change(HASHSIZE, hashsize, want // 4))
    for name, target, current in (
        (ESTABLISHED, settings.tcp_timeout_established, stats.tcp_timeout_established),
        (CLOSE_WAIT, settings.tcp_timeout_close_wait, stats.tcp_timeout_close_wait),
    ):
        if target > 0 and current != target:
            changes.append(Change(name, current, target))
    return changes


_ON_THE_HOST = (
    "set it on the host: sysctl -w net.netfilter.nf_conntrack_max={n} and persist it in /etc/sysctl.d/"
    " ([conntrack] manage = true raises it only when the agent runs in the host's network namespace)"
)


def assess_table(stats: Stats, settings: ConntrackConfig, ncpu: int) -> tuple[Status, str]:
    """Is the table big enough: usage against warn_usage, and the max against kube-proxy's sizing."""
    want = wanted_max(settings, ncpu)
    usage = f"{stats.count} of {stats.max} entries in use ({stats.usage:.1%}); {stats.buckets} hash buckets"
    problems = []
    if stats.usage >= settings.warn_usage:
        bigger = max(want, 2 * stats.max)
        problems.append(
            f"the table is {stats.usage:.0%} full ([conntrack] warn_usage = {settings.warn_usage:g}):"
            " when it is full the kernel drops new connections. Raise nf_conntrack_max:"
            f" {_ON_THE_HOST.format(n=bigger)}; or shorten [conntrack] tcp_timeout_established"
            " (with manage = true)"
        )
    if want and stats.max < want:
        problems.append(
            f"nf_conntrack_max = {stats.max} is below {want}, kube-proxy's sizing for {ncpu} CPUs"
            f" (max([conntrack] min = {settings.min}, max_per_core = {settings.max_per_core} x {ncpu}));"
            f" {_ON_THE_HOST.format(n=want)}"
        )
    if problems:
        return "warn", "\n".join([usage, *problems])
    sizing = (
        f"nf_conntrack_max >= {want} (kube-proxy's sizing for {ncpu} CPUs)"
        if want
        else "nf_conntrack_max not compared ([conntrack] max_per_core = 0)"
    )
    return "ok", f"{usage}; {sizing}"


def assess_counters(counters: Counters) -> tuple[Status, str]:
    """Did the kernel fail to track new connections (counted since the namespace was created)?"""
    c = counters
    text = (
        f"insert_failed {c.insert_failed}, drop {c.drop}, early_drop {c.early_drop}"
        " (summed over CPUs, since boot or the network namespace's creation)"
    )
    hints = []
    if c.insert_failed:
        hints.append(
            "insert_failed: new connections NATed to a tuple already in use and were dropped; keep"
            " [dataplane] random_fully = true and spread SNAT over [dataplane] snat_addresses"
        )
    if c.drop or c.early_drop:
        hints.append(
            "drop/early_drop: new connections were refused or old ones evicted because the table was"
            " full; raise net.netfilter.nf_conntrack_max on the host (sysctl -w, persist in /etc/sysctl.d/)"
        )
    if hints:
        return "warn", "\n".join([text, *hints])
    return "ok", text


_SET_TIMEOUT = (
    "Set [conntrack] manage = true (the agent sets it at start in its network namespace), or sysctl -w"
    " net.netfilter.{name}={target} in the LB's network namespace and persist it in /etc/sysctl.d/"
)


def assess_timeouts(stats: Stats, settings: ConntrackConfig) -> tuple[Status, str]:
    """Do the TCP timeouts put connections at risk?

    Two real risks, and only these warn: an established timeout shorter than the configured one (a
    connection idle for longer loses its NAT state and breaks), and a timeout far above the configured
    one while the table is filling (dead connections then hold the entries new ones need). A long
    timeout in a table with room costs nothing yet: the kernel's own default (5 days) is one.
    """
    rows = (
        ("established", ESTABLISHED, stats.tcp_timeout_established, settings.tcp_timeout_established),
        ("close_wait", CLOSE_WAIT, stats.tcp_timeout_close_wait, settings.tcp_timeout_close_wait),
    )
    text = ", ".join(
        f"{label} {current} s ({f'configured {target} s' if target else 'not configured'})"
        for label, _, current, target in rows
    )
    filling = stats.usage >= settings.warn_usage
    problems: list[str] = []
    notes: list[str] = []
    for label, name, current, target in rows:
        fix = _SET_TIMEOUT.format(name=name, target=target)
        if label == "established" and 0 < current < target:
            problems.append(
                f"{name} = {current} s is shorter than [conntrack] tcp_timeout_established = {target} s:"
                f" a connection through the LB that idles longer than {current} s loses its NAT state, and"
                f" its next packet is reset or lost. {fix}"
            )
        elif target and current > FAR_ABOVE * target and filling:
            problems.append(
                f"{name} = {current} s is far above [conntrack] tcp_timeout_{label} = {target} s while the"
                f" table is {stats.usage:.0%} full: idle and dead connections keep their entries that long"
                f" and new connections find no room. {fix}"
            )
        elif target and current > FAR_ABOVE * target:
            notes.append(f"{label} is far above the configured value")
    if problems:
        return "warn", "\n".join([f"tcp timeouts: {text}", *problems])
    if notes:
        text += (
            f"; {' and '.join(notes)}: harmless while the table has room ({stats.usage:.1%} in use,"
            f" [conntrack] warn_usage = {settings.warn_usage:g})"
        )
    return "ok", f"tcp timeouts: {text}"


# --- applying ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the kernel's knobs are; tests point these at files of their own."""

    sysctl_dir: str = SYSCTL_DIR
    stat: str = STAT_PATH
    hashsize: str = HASHSIZE_PATH
    self_netns: str = "/proc/self/ns/net"
    host_netns: str = "/proc/1/ns/net"


def in_host_netns(paths: Paths) -> bool | None:
    """Whether we run in the host's (init) network namespace: ours compared with PID 1's.

    Where /proc/1/ns/net cannot be read (the shipped unit has no CAP_SYS_PTRACE), the kernel says it
    another way: it makes nf_conntrack_max read-only (0444) in every namespace but the init one. None
    when neither can be read (no conntrack module either).
    """
    try:
        mine, init = os.stat(paths.self_netns), os.stat(paths.host_netns)
    except OSError:
        try:
            return bool(os.stat(f"{paths.sysctl_dir}/{MAX}").st_mode & stat.S_IWUSR)
        except OSError:
            return None
    return (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino)


@dataclass(slots=True)
class Outcome:
    changed: list[Change] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was left as it is
    failed: dict[str, str] = field(default_factory=dict)  # name -> the error


_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_HASH_ON_THE_HOST = (
    "sysctl -w net.netfilter.nf_conntrack_buckets={n},"
    " or `options nf_conntrack hashsize={n}` in /etc/modprobe.d/"
)


def apply(settings: ConntrackConfig, paths: Paths | None = None, ncpu: int | None = None) -> Outcome:
    """Write the planned limits; what cannot be written here is skipped with the reason, never raised."""
    paths = paths or Paths()
    stats = read_stats(read_text, paths.sysctl_dir, paths.stat)
    try:
        hashsize: int | None = int(read_text(paths.hashsize).strip())
    except (OSError, ValueError):
        hashsize = None
    out = Outcome()
    host = in_host_netns(paths)
    for change in plan(settings, stats, hashsize, ncpu or cpu_count()):
        if change.name == HASHSIZE and host is not True:
            why = (
                "not the host's network namespace (the hash table is global)"
                if host is False
                else "cannot tell whether this is the host's network namespace (/proc/1/ns/net and"
                f" {paths.sysctl_dir}/{MAX} unreadable)"
            )
            out.skipped[HASHSIZE] = (
                f"{why}; to set it on the host: {_HASH_ON_THE_HOST.format(n=change.target)}"
            )
            continue
        path = paths.hashsize if change.name == HASHSIZE else f"{paths.sysctl_dir}/{change.name}"
        try:
            with open(path, "w") as f:
                f.write(f"{change.target}\n")
        except OSError as e:
            if change.name == MAX and e.errno in _READ_ONLY:
                where = {
                    True: "no privilege?",
                    False: "not the host's network namespace",
                    None: "not the host's network namespace, or no privilege",
                }[host]
                out.skipped[MAX] = f"read-only here ({where}); {_ON_THE_HOST.format(n=change.target)}"
            else:
                out.failed[change.name] = f"{path}: {e.strerror or e}"
            continue
        out.changed.append(change)
    return out


def apply_at_start(settings: ConntrackConfig, paths: Paths | None = None) -> Outcome | None:
    """The agent's step at start and on a reload that changed `[conntrack]`: with `manage` on, apply
    and log; never raises (serving comes first)."""
    if not settings.manage:
        return None
    try:
        out = apply(settings, paths)
    except Exception as e:
        log.error("conntrack_limits_failed", error=repr(e), hint="limits left as they are")
        return None
    for c in out.changed:
        log.info("conntrack_limit_set", name=c.name, was=c.current, now=c.target)
    if MAX in out.skipped:
        log.warning("conntrack_max_not_settable", detail=out.skipped[MAX])
    if HASHSIZE in out.skipped:
        log.info("conntrack_hashsize_skipped", reason=out.skipped[HASHSIZE])
    for name, error in out.failed.items():
        log.error("conntrack_limit_unchangeable", name=name, error=error)
    return out
