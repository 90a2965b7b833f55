"""Fail static across a reboot: the last good plan, programmed when etcd cannot be reached at start.

An LB that boots while etcd is down would otherwise serve nothing until etcd returns. The state
file (`[lb] state_file`, written by `holdover.Saver`) holds every service's last planned frontends;
the agent turns them back into a plan here, checked again against the current config (a frontend on
an address that is no longer the LB's, or that [policy] now refuses, is dropped: the file is input
like any other), and serves it, reported stale, until the first etcd snapshot replaces it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from flannel_lb.plan.compute import PlanSettings, ServicePlan, assemble
from flannel_lb.plan.holdover import Saved
from flannel_lb.plan.model import Plan, ServiceVerdict

log = structlog.get_logger("flannel_lb.bootplan")


@dataclass(frozen=True, slots=True)
class Header:
    """The state file's first line: when and at which etcd revision its plan was saved."""

    saved: float | None = None  # unix time
    revision: int = 0
    overlay_udp_port: int | None = None  # flannel's overlay port then: the rules' guard must match


def read_header(path: Path) -> Header:
    """The header of the state file; a missing, unreadable or damaged one gives the empty Header."""
    try:
        with path.open("rb") as fh:
            first = fh.readline(4096)
        doc = json.loads(first)
    except (OSError, ValueError):
        return Header()
    if not isinstance(doc, dict):
        return Header()
    saved = doc.get("saved")
    revision = doc.get("revision")
    port = doc.get("overlay_udp_port")
    return Header(
        saved=float(saved)
        if isinstance(saved, int | float) and not isinstance(saved, bool) and math.isfinite(saved)
        else None,
        revision=revision if type(revision) is int and revision >= 0 else 0,
        overlay_udp_port=port if type(port) is int and 0 < port < 65536 else None,
    )


def describe(header: Header, now: float | None = None) -> str:
    """'saved 42 s ago at etcd revision 17', for logs, /healthz and systemd's status line."""
    if header.saved is None:
        return f"saved at etcd revision {header.revision}"
    age = max(0.0, (time.time() if now is None else now) - header.saved)
    return f"saved {age:.0f} s ago at etcd revision {header.revision}"


def boot_plan(saved: Saved, header: Header, settings: PlanSettings) -> Plan:
    """The saved frontends as one plan, keeping only what the current config would still allow."""
    reason = f"served from the last good plan ({describe(header)}): etcd unreachable since the start"
    plans: list[ServicePlan] = []
    dropped: list[str] = []
    for service, frontends in sorted(saved.items()):
        ns, _, name = service.partition("/")
        kept = []
        for f in frontends:
            why = _refusal(f.address, f.port, f.kind, ns, settings)
            if why is None and f.service == service:
                kept.append(f)
            else:
                dropped.append(f"{f.label} ({service}): {why or 'listed under another service'}")
        if kept:
            addresses = tuple(sorted({f.address for f in kept}))
            plans.append(
                ServicePlan((ns, name), ServiceVerdict(service, True, reason, addresses), tuple(kept))
            )
    if dropped:
        log.warning("boot_plan_frontends_dropped", count=len(dropped), frontends=dropped[:20])
    return assemble(header.revision, plans)


def _refusal(address: str, port: int, kind: str, namespace: str, settings: PlanSettings) -> str | None:
    if kind == "cluster-ip":
        return None if settings.cluster_ips else "[lb] cluster_ips is off"
    if kind != "external":
        return f"unknown kind {kind!r}"
    if address not in settings.addresses:
        return f"{address} is not one of [lb] addresses"
    policy = settings.policy
    if not any(fnmatch.fnmatchcase(namespace, p) for p in policy.namespaces):
        return f"namespace {namespace!r} may not claim LB addresses ([policy] namespaces)"
    return policy.port_denial(address, port)
