"""Fail static across restarts: each service's last good frontends, kept in a file.

Within one run, `ClusterState` keeps a key's last good value when a new value does not decode. A
restarted agent has no such memory: a Service whose etcd value is garbage at start-up (a lost
encryption key, a corrupt write) would vanish from the plan, and its working rules with it. So the
agent saves the planned frontends of every service (`Saver`, in the background, at most every
`interval` seconds, replacing the file atomically), and the planner serves the saved frontends of a
Service whose spec does not decode and that has no good value in this run (`held_plans`), until the
spec decodes again or is deleted.

File: JSON lines, a header `{"version": 1, "saved": <unix time>, "revision": <etcd revision>}` (plus
`Saver.header_extra`: the agent's flannel overlay port, for `bootplan`), then
one `{"service": "ns/name", "frontends": [...]}` per service (the `plan --json` frontend format).
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from flannel_lb.decode.model import PROTOCOLS
from flannel_lb.decode.objects import MAX_SOURCE_RANGES
from flannel_lb.plan.compute import ServicePlan
from flannel_lb.plan.model import (
    Affinity,
    Backend,
    Excluded,
    Exclusion,
    Frontend,
    Plan,
    ServiceVerdict,
    frontend_json,
)
from flannel_lb.state.cluster import ClusterState
from flannel_lb.untrusted import load_json

log = structlog.get_logger("flannel_lb.holdover")

VERSION = 1
Saved = Mapping[str, tuple[Frontend, ...]]


def frontend_from_json(d: Mapping[str, Any]) -> Frontend:
    """The inverse of `desired.frontend_json`."""
    aff = d.get("affinity")
    return Frontend(
        address=str(d["address"]),
        port=int(d["port"]),
        protocol=str(d["protocol"]),
        service=str(d["service"]),
        port_name=str(d.get("port_name", "")),
        affinity=Affinity(str(aff["mode"]), int(aff["timeout"])) if aff else None,
        backends=tuple(Backend(str(b["ip"]), int(b["port"]), str(b.get("node", ""))) for b in d["backends"]),
        excluded=tuple(
            Excluded(
                str(e["ip"]),
                str(e["reason"]),
                e.get("port"),
                str(e.get("node", "")),
                kind=_kind(e.get("kind")),
            )
            for e in d.get("excluded", ())
        ),
        kind=str(d.get("kind", "external")),
        source_ranges=_ranges(d.get("source_ranges")),
    )


def _ranges(value: object) -> tuple[str, ...] | None:
    """Saved loadBalancerSourceRanges: None (open) only when the file says so or predates them."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise ValueError(f"source_ranges {str(value)[:80]!r} is not a list of networks")
    return tuple(value)


def _kind(label: object) -> Exclusion:
    """A saved exclusion's kind; OTHER for a file from before kinds were saved, or a damaged one."""
    try:
        return Exclusion(label)
    except ValueError:
        return Exclusion.OTHER


@dataclass(frozen=True)
class StateFile:
    """What `load` read: the saved frontends by service, and the numbers of the lines it skipped."""

    saved: dict[str, tuple[Frontend, ...]]
    skipped: tuple[int, ...] = ()


def load(path: Path) -> StateFile:
    """The state file's saved frontends; none when there is no file. A damaged line is skipped, not fatal."""
    try:
        lines = path.read_bytes().splitlines()  # decoded per line: one bad byte damages one line
    except FileNotFoundError:
        return StateFile({})
    except OSError as e:
        log.warning("holdover_unreadable", path=str(path), error=str(e), effect="nothing held over")
        return StateFile({})
    out: dict[str, tuple[Frontend, ...]] = {}
    skipped: list[int] = []
    for n, line in enumerate(lines[1:], 2):
        try:
            doc = load_json(line.decode("utf-8"))
            frontends = tuple(_checked(frontend_from_json(f)) for f in doc["frontends"])
            out[str(doc["service"])] = frontends
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
            log.warning("holdover_line_skipped", path=str(path), line=n, error=repr(e))
            skipped.append(n)
    return StateFile(out, tuple(skipped))


def _checked(f: Frontend) -> Frontend:
    """A frontend from the file passes what one from etcd would: it cannot inject arbitrary rules."""
    if f.protocol not in PROTOCOLS:
        raise ValueError(f"protocol {f.protocol!r} is not TCP, UDP or SCTP")
    ipaddress.IPv4Address(f.address)  # ValueError names the bad address
    ports = [f.port, *(b.port for b in f.backends)]
    if not all(1 <= p <= 65535 for p in ports):
        raise ValueError(f"a port is not from 1 to 65535: {ports}")
    for b in f.backends:
        ipaddress.IPv4Address(b.ip)
    if f.affinity is not None and not 0 < f.affinity.timeout <= 86400:
        raise ValueError(f"affinity timeout {f.affinity.timeout} is not from 1 to 86400 seconds")
    if f.source_ranges is not None:
        if len(f.source_ranges) > MAX_SOURCE_RANGES:
            raise ValueError(f"{len(f.source_ranges)} source ranges: more than {MAX_SOURCE_RANGES}")
        networks = [ipaddress.IPv4Network(r) for r in f.source_ranges]  # strict: as the planner writes them
        if [str(n) for n in ipaddress.collapse_addresses(networks)] != list(f.source_ranges):
            raise ValueError(f"source ranges {list(f.source_ranges)[:5]} are not disjoint and sorted")
    return f


def held_plans(state: ClusterState, saved: Saved) -> list[ServicePlan]:
    """Saved frontends of the Services whose spec key does not decode and has no good value now."""
    if not saved:
        return []
    out: list[ServicePlan] = []
    for key, problem in state.problems.items():
        where = state.layout.classify(key)
        if where is None or where[0] != "service" or (where[1], where[2]) in state.services:
            continue
        service = f"{where[1]}/{where[2]}"
        frontends = saved.get(service)
        if not frontends:
            continue
        reason = (
            f"held over: its etcd value does not decode ({problem.kind}); serving the frontends saved"
            " before the restart until it decodes again or is deleted"
        )
        addresses = tuple(sorted({f.address for f in frontends}))
        verdict = ServiceVerdict(service, True, reason, addresses)
        out.append(ServicePlan((where[1], where[2]), verdict, frontends))  # created=inf: loses conflicts
    return out


class Saver:
    """Writes plans to `path` from a background thread: at most once per `interval`, the latest wins.

    Serialising 10k services takes a while, so each service's JSON line is cached and rebuilt only
    when its frontends change (the planner keeps unchanged Frontend objects identical).
    """

    def __init__(self, path: Path, interval: float = 30.0) -> None:
        self.path = path
        self.interval = interval
        self.writes = 0
        self.lines_built = 0  # service lines serialised: unchanged services reuse theirs
        self.header_extra: dict[str, object] = {}  # more header fields (bootplan: the overlay port)
        self._latest: Plan | None = None
        self._cache: dict[str, tuple[tuple[Frontend, ...], str]] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="holdover-saver", daemon=True)
        self._thread.start()

    def offer(self, plan: Plan) -> None:
        with self._cond:
            self._latest = plan
            self._cond.notify()

    def close(self) -> None:
        """Write what is pending now, then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        last = -self.interval
        while True:
            with self._cond:
                while self._latest is None and not self._stop:
                    self._cond.wait()
                if self._latest is None:
                    return
                if not self._stop:
                    wait = last + self.interval - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue  # re-check: stopped meanwhile, or a newer plan
                plan, self._latest = self._latest, None
            try:
                self.write(plan)
            except Exception as e:  # a full disk must not stop the agent; the next plan retries
                log.warning("holdover_write_failed", path=str(self.path), error=repr(e))
            last = time.monotonic()

    def write(self, plan: Plan) -> None:
        by_service: dict[str, list[Frontend]] = {}
        for f in plan.frontends:
            by_service.setdefault(f.service, []).append(f)
        header = {"version": VERSION, "saved": time.time(), "revision": plan.revision, **self.header_extra}
        lines = [json.dumps(header)]
        cache: dict[str, tuple[tuple[Frontend, ...], str]] = {}
        for service, group in by_service.items():
            frontends = tuple(group)
            cached = self._cache.get(service)
            if cached is None or not _same(cached[0], frontends):
                line = json.dumps({"service": service, "frontends": [frontend_json(f) for f in frontends]})
                cached = (frontends, line)
                self.lines_built += 1
            cache[service] = cached
            lines.append(cached[1])
        self._cache = cache
        _replace(self.path, "\n".join(lines) + "\n")
        self.writes += 1


def _same(a: Iterable[Frontend], b: tuple[Frontend, ...]) -> bool:
    a = tuple(a)
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _replace(path: Path, text: str) -> None:
    """Write-then-rename in the same directory, so a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
