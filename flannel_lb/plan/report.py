"""Human-readable views of a plan: the `plan` table and the `explain` story for one Service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flannel_lb.plan.compute import (
    Admission,
    PlanSettings,
    endpoint_report,
    exposed_addresses,
    health_kept,
    ipv4_source_ranges,
)
from flannel_lb.plan.model import Backend, Excluded, Plan
from flannel_lb.state.cluster import ClusterState, ServiceRef
from flannel_lb.text import printable


def counted(n: int, noun: str) -> str:
    """`1 frontend`, `2 frontends`: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def plan_table(plan: Plan) -> str:
    lines = [
        f"revision {plan.revision}: {counted(len(plan.frontends), 'frontend')}, "
        f"{counted(len(plan.conflicts), 'conflict')}, {counted(len(plan.problems), 'problem')}"
    ]
    for f in plan.frontends:
        affinity = f", affinity ClientIP {f.affinity.timeout}s" if f.affinity else ""
        port = f" ({f.port_name})" if f.port_name else ""
        kind = " [cluster IP, from the LB only]" if f.kind == "cluster-ip" else ""
        lines.append("")
        lines.append(f"{f.label}  {f.service}{port}{affinity}{kind}")
        if f.source_ranges is not None:
            lines.append(f"  {source_ranges_text(f.source_ranges)}")
        if not f.backends:
            lines.append("  (no backends: connections are refused)")
        lines.extend(f"  -> {b.ip}:{b.port:<6} {b.node}" for b in f.backends)
        lines.extend(f"  excluded {e.ip}{_port(e)}: {e.reason}" for e in f.excluded)
    if plan.conflicts:
        lines.append("")
        lines.append("conflicts:")
        lines.extend(
            f"  {c.address}:{c.port}/{c.protocol}: {c.winner} wins over {c.loser} ({c.reason})"
            for c in plan.conflicts
        )
    if plan.denied:
        lines.append("")
        lines.append("denied by [policy] (not served):")
        lines.extend(
            f"  {d.address}:{d.port}/{d.protocol} claimed by {d.service}: {d.reason}" for d in plan.denied
        )
    if plan.problems:
        lines.append("")
        lines.append("problems (skipped; everything else is served):")
        lines.extend(f"  {p.key}: {p.reason}" for p in plan.problems)
    return _joined(lines)


def source_ranges_text(ranges: Sequence[str]) -> str:
    if not ranges:
        return "clients: none admitted (loadBalancerSourceRanges has no usable IPv4 range); all dropped"
    return f"clients: only from {', '.join(ranges)} (loadBalancerSourceRanges); others dropped"


def _joined(lines: list[str]) -> str:
    """One line per entry: names from etcd are escaped here, at output, so none can break a line."""
    return "\n".join(printable(line) for line in lines)


def _port(e: Excluded) -> str:
    return f":{e.port}" if e.port else ""


@dataclass(frozen=True, slots=True)
class PortStory:
    port: str
    backends: tuple[Backend, ...]
    excluded: tuple[Excluded, ...]


def _listed(ranges: tuple[str, ...] | None) -> list[str] | None:
    return None if ranges is None else list(ranges)


def explain(
    state: ClusterState, plan: Plan, ref: ServiceRef, settings: PlanSettings, admission: Admission
) -> dict[str, Any] | None:
    """Why the service is (not) exposed and why each endpoint is in or out; None if it does not exist."""
    svc = state.services.get(ref)
    if svc is None:
        return None
    name = f"{ref[0]}/{ref[1]}"
    verdict = plan.verdicts.get(name)
    groups, source = state.endpoint_groups(ref)
    ports = []
    for sp, backends, excluded in endpoint_report(svc, groups, admission):
        ports.append(
            {
                "port": sp.port,
                "protocol": sp.protocol,
                "name": sp.name,
                "target_port": sp.target_port,
                "backends": [{"ip": b.ip, "port": b.port, "node": b.node} for b in backends],
                "health_kept": health_kept(backends, admission),
                "excluded": [
                    {"ip": e.ip, "port": e.port, "node": e.node, "reason": e.reason, "kind": e.kind.value}
                    for e in excluded
                ],
            }
        )
    keys = set(state.problem_keys_for(ref))
    return {
        "service": name,
        "revision": plan.revision,
        "exposed": bool(verdict and verdict.exposed),
        "reason": verdict.reason if verdict else "not planned",
        "addresses": list(exposed_addresses(svc, settings.addresses)),
        "endpoints_from": source,
        "endpoint_sources": sorted({g.source for g in groups}),
        "affinity": svc.session_affinity,
        "source_ranges": None if svc.source_ranges is None else list(svc.source_ranges),
        "ipv4_source_ranges": _listed(ipv4_source_ranges(svc.source_ranges)),
        "ports": ports,
        "frontends": [f.label for f in plan.frontends if f.service == name],
        "conflicts": [
            {
                "frontend": f"{c.address}:{c.port}/{c.protocol}",
                "winner": c.winner,
                "loser": c.loser,
                "reason": c.reason,
            }
            for c in plan.conflicts
            if name in (c.winner, c.loser)
        ],
        "problems": [{"key": p.key, "reason": p.reason} for p in plan.problems if p.key in keys],
        "denied": [
            {"frontend": f"{d.address}:{d.port}/{d.protocol}", "reason": d.reason}
            for d in plan.denied
            if d.service == name
        ],
    }


def explain_text(story: dict[str, Any]) -> str:
    lines = [f"Service {story['service']} (revision {story['revision']}): {story['reason']}"]
    lines.append(
        f"  endpoints from {story['endpoints_from']}: {', '.join(story['endpoint_sources']) or 'none found'}"
    )
    if story["affinity"] == "ClientIP":
        lines.append("  session affinity: ClientIP")
    if story["ipv4_source_ranges"] is not None:
        lines.append(f"  {source_ranges_text(story['ipv4_source_ranges'])}")
        ignored = [r for r in story["source_ranges"] if ":" in r]
        if ignored:
            lines.append(f"  IPv6 source ranges not used on IPv4 frontends: {', '.join(ignored)}")
    for p in story["ports"]:
        label = f"{p['port']}/{p['protocol']}" + (f" ({p['name']})" if p["name"] else "")
        lines.append(f"  port {label} -> targetPort {p['target_port']}:")
        if not p["backends"] and not p["excluded"]:
            lines.append("    no endpoints")
        lines.extend(f"    in   {b['ip']}:{b['port']}  node {b['node'] or '?'}" for b in p["backends"])
        if p.get("health_kept"):
            lines.append("    every backend fails its health check: all are served (less certain than none)")
        lines.extend(
            f"    out  {e['ip']}{':' + str(e['port']) if e['port'] else ''}  {e['reason']}"
            for e in p["excluded"]
        )
    for c in story["conflicts"]:
        lines.append(f"  conflict on {c['frontend']}: {c['winner']} wins over {c['loser']} ({c['reason']})")
    for d in story["denied"]:
        lines.append(f"  denied {d['frontend']}: {d['reason']}")
    for pr in story["problems"]:
        lines.append(f"  problem {pr['key']}: {pr['reason']}")
    return _joined(lines)
