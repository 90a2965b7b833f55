"""From cluster records to the desired state: pure functions, no I/O.

`plan_service` decides one Service (is it exposed, which endpoints serve each port, which are
excluded and why); `assemble` joins the per-service results and settles address:port conflicts.
The split lets the agent re-plan only the services an etcd event touched.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flannel_lb.decode.model import Endpoint, EndpointGroup, Lease, Problem, Service, ServicePort
from flannel_lb.plan.ipv4 import ipv4_int
from flannel_lb.plan.model import (
    Affinity,
    Backend,
    Conflict,
    Denial,
    Excluded,
    Exclusion,
    Frontend,
    Plan,
    ServiceVerdict,
)
from flannel_lb.plan.policy import ExposurePolicy
from flannel_lb.state.cluster import ClusterState, ServiceRef, lease_overlaps


@dataclass(frozen=True, slots=True)
class PlanSettings:
    addresses: frozenset[str]  # the LB's own addresses ([lb] addresses)
    cluster_ips: bool = False  # also make clusterIP:port reachable from the LB itself
    policy: ExposurePolicy = field(default_factory=ExposurePolicy)  # who may claim those addresses


class LeaseIndex:
    """Finds the live lease covering a pod IP in O(number of distinct subnet lengths)."""

    def __init__(self, leases: Iterable[Lease], now: float) -> None:
        self.by_subnet: dict[ipaddress.IPv4Network, Lease] = {}
        self.expired: dict[ipaddress.IPv4Network, Lease] = {}
        live = []
        for lease in leases:
            if lease.expires is not None and lease.expires <= now:
                self.expired[lease.subnet] = lease
            else:
                self.by_subnet[lease.subnet] = lease
                live.append(lease)
        self._live = _by_prefix(self.by_subnet)
        self._gone = _by_prefix(self.expired)
        contested = lease_overlaps(live)
        self._contested = {id(lease) for lease in live if lease.key in contested}
        self._contested_leases = [lease for lease in live if lease.key in contested]

    def find(self, ip: int) -> Lease | None:
        """The live lease whose subnet holds `ip` (an IPv4 address as an integer)."""
        return _lookup(self._live, ip)

    def find_expired(self, ip: int) -> Lease | None:
        return _lookup(self._gone, ip)

    def covering(self, ip: int, lease: Lease) -> list[Lease]:
        """Every live lease holding `ip` when more than one does (`lease`, found by `find`, among
        them); [] when `lease` alone does, the usual case, answered without a search."""
        if id(lease) not in self._contested:
            return []
        found = [
            other
            for other in self._contested_leases
            if ip & int(other.subnet.netmask) == int(other.subnet.network_address)
        ]
        return found if len(found) > 1 else []


# Endpoint admission runs for every endpoint on every full re-plan (100k at 10k services): integers,
# not ipaddress objects, keep it cheap (see plan/ipv4.py).
_Prefixes = list[tuple[int, dict[int, Lease]]]  # (host bits, {network >> host bits: lease}), longest first


def _by_prefix(leases: Mapping[ipaddress.IPv4Network, Lease]) -> _Prefixes:
    out: dict[int, dict[int, Lease]] = {}
    for subnet, lease in leases.items():
        host_bits = 32 - subnet.prefixlen
        out.setdefault(host_bits, {})[int(subnet.network_address) >> host_bits] = lease
    return sorted(out.items())


def _lookup(table: _Prefixes, ip: int) -> Lease | None:
    for host_bits, subnets in table:
        lease = subnets.get(ip >> host_bits)
        if lease is not None:
            return lease
    return None


@dataclass(frozen=True, slots=True)
class Admission:
    """Everything endpoint admission needs besides the endpoint itself."""

    network: ipaddress.IPv4Network | None
    leases: LeaseIndex
    path_faults: Mapping[ipaddress.IPv4Network, str] = field(default_factory=dict)  # from netcheck
    lb_addresses: frozenset[int] = frozenset()  # the LB's own addresses: never a backend
    unhealthy: frozenset[tuple[str, int]] = frozenset()  # ip:port failing the LB's checks ([health])
    failing_paths: frozenset[ipaddress.IPv4Network] = frozenset()  # leases none of whose pods answers

    def check_failing(self, ip: str, port: int, lease: Lease | None) -> Exclusion | None:
        """Whether the LB's checks put this backend out: its node's path first (it covers every pod
        there, UDP too), then its own check."""
        if lease is not None and lease.subnet in self.failing_paths:
            return Exclusion.NODE_PATH
        if (ip, port) in self.unhealthy:
            return Exclusion.HEALTH
        return None

    def reason_to_exclude(self, ip: str) -> tuple[tuple[Exclusion, str] | None, Lease | None]:
        """Why the endpoint at `ip` may not serve (its kind and the text for humans), and its lease."""
        addr = ipv4_int(ip)
        if addr is None:
            return (Exclusion.ADDRESS, f"{ip!r} is not an IPv4 address"), None
        if addr in self.lb_addresses:
            return (Exclusion.LB_ADDRESS, "one of the LB's own addresses ([lb] addresses)"), None
        if self.network is None:
            return (Exclusion.NO_NETWORK, "the flannel network is unknown (no network config in etcd)"), None
        if addr & int(self.network.netmask) != int(self.network.network_address):
            return (Exclusion.OUTSIDE_NETWORK, f"outside the flannel network {self.network}"), None
        lease = self.leases.find(addr)
        if lease is None:
            gone = self.leases.find_expired(addr)
            if gone is not None:
                return (
                    (Exclusion.NO_LEASE, f"flannel lease {gone.subnet} (node {gone.public_ip}) has expired"),
                    None,
                )
            return (
                (
                    Exclusion.NO_LEASE,
                    "no live flannel lease covers this address (node gone or lease expired)",
                ),
                None,
            )
        contested = self.leases.covering(addr, lease)
        if contested:
            shown = ", ".join(f"{o.subnet} ({o.key})" for o in contested[:3])
            more = f" and {len(contested) - 3} more" if len(contested) > 3 else ""
            return (
                Exclusion.LEASE_OVERLAP,
                f"overlapping leases {shown}{more} cover it: none is trusted",
            ), None
        subnet = lease.subnet
        if subnet.prefixlen <= 30 and addr in (int(subnet.network_address), int(subnet.broadcast_address)):
            which = "network" if addr == int(subnet.network_address) else "broadcast"
            # (flannel puts a lease's network address on the node's flannel device: never a pod)
            return (Exclusion.LEASE_ADDRESS, f"the {which} address of lease {subnet}, not a pod's"), lease
        fault = self.path_faults.get(subnet) if self.path_faults else None
        if fault:
            return (Exclusion.NO_PATH, f"no kernel path to lease {subnet}: {fault}"), lease
        return None, lease


@dataclass(frozen=True, slots=True)
class ServicePlan:
    ref: ServiceRef
    verdict: ServiceVerdict
    frontends: tuple[Frontend, ...] = ()
    created: float = math.inf
    denied: tuple[Denial, ...] = ()


@dataclass(slots=True)
class _Candidate:
    ip: str
    port: int
    endpoint: Endpoint


def claimed_addresses(svc: Service) -> set[str]:
    """Every address the Service asks to be served on: externalIPs, loadBalancerIP, ingress IPs."""
    return {*svc.external_ips, *([svc.load_balancer_ip] if svc.load_balancer_ip else []), *svc.ingress_ips}


def exposed_addresses(svc: Service, lb_addresses: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(claimed_addresses(svc) & lb_addresses))


def _verdict(svc: Service, addresses: tuple[str, ...], lb_addresses: frozenset[str]) -> ServiceVerdict:
    if svc.type == "ExternalName":
        return ServiceVerdict(svc.ref, False, "type ExternalName has no endpoints to balance over")
    if not addresses:
        claimed = sorted(claimed_addresses(svc))
        mine = ", ".join(sorted(lb_addresses)) or "none configured"
        if not claimed:
            why = "it has no externalIPs, loadBalancerIP or load-balancer ingress IP"
        else:
            why = f"none of its addresses ({', '.join(claimed)}) is an LB address ({mine})"
        return ServiceVerdict(svc.ref, False, f"not exposed: {why}")
    if svc.headless:
        return ServiceVerdict(
            svc.ref, False, "headless (clusterIP None): kube-proxy does not serve it either"
        )
    if not svc.ports:
        return ServiceVerdict(svc.ref, False, "it has no usable ports", addresses)
    return ServiceVerdict(svc.ref, True, f"exposed on {', '.join(addresses)}", addresses)


def _port_for(group: EndpointGroup, sp: ServicePort) -> tuple[int | None, str]:
    """The endpoint port serving `sp` in this group (named ports resolve per group), or why none."""
    for p in group.ports:
        if p.name == sp.name and p.protocol == sp.protocol:
            if p.port is None:
                return None, f"{group.source} lists port {sp.name or '(unnamed)'} without a number"
            return p.port, ""
    if not group.ports and isinstance(sp.target_port, int):
        return sp.target_port, ""  # hand-written Endpoints without ports: targetPort is all we have
    if isinstance(sp.target_port, str):
        return None, f"named target port {sp.target_port!r} is not resolved in {group.source}"
    return None, f"{group.source} has no {sp.protocol} port named {sp.name or '(unnamed)'}"


def _backends(
    sp: ServicePort, groups: tuple[EndpointGroup, ...], admission: Admission
) -> tuple[tuple[Backend, ...], tuple[Excluded, ...]]:
    excluded: list[Excluded] = []
    candidates: dict[tuple[str, int], _Candidate] = {}
    for group in groups:
        if group.address_type != "IPv4":
            for ep in group.endpoints:
                for ip in ep.addresses[:1]:
                    excluded.append(
                        Excluded(
                            ip,
                            f"{group.address_type} endpoint: flannel-lb serves IPv4 only",
                            kind=Exclusion.ADDRESS,
                        )
                    )
            continue
        port, why = _port_for(group, sp)
        for ep in group.endpoints:
            if not ep.addresses:
                continue
            ip = ep.addresses[0]  # kube-proxy uses the first address of an endpoint, too
            if port is None:
                excluded.append(Excluded(ip, why, node=ep.node_name, kind=Exclusion.PORT))
                continue
            seen = candidates.get((ip, port))
            # the same endpoint in two slices (e.g. while a slice is being replaced): the readier one wins
            if seen is None or _rank(ep) > _rank(seen.endpoint):
                candidates[(ip, port)] = _Candidate(ip, port, ep)

    admitted: dict[tuple[str, int], tuple[_Candidate, Lease | None]] = {}
    for key, c in candidates.items():
        reason, lease = admission.reason_to_exclude(c.ip)
        if reason is not None:
            excluded.append(Excluded(c.ip, reason[1], c.port, c.endpoint.node_name, kind=reason[0]))
        else:
            admitted[key] = (c, lease)

    ready = {k: v for k, v in admitted.items() if v[0].endpoint.ready}
    # As kube-proxy: with no ready endpoint, serve from the ones still serving while terminating.
    chosen = ready or {
        k: v for k, v in admitted.items() if v[0].endpoint.serving and v[0].endpoint.terminating
    }
    failing: dict[tuple[str, int], Exclusion] = {}
    if admission.unhealthy or admission.failing_paths:
        for key, (c, lease) in chosen.items():
            kind = admission.check_failing(c.ip, c.port, lease)
            if kind is not None:
                failing[key] = kind
    if failing and len(failing) < len(chosen):  # all failing: serve them all (see `health_kept`)
        for key, kind in failing.items():
            c, lease = chosen.pop(key)
            why = (
                f"node path failing: none of the backends on lease {lease.subnet} answers the LB's checks"
                if kind is Exclusion.NODE_PATH and lease is not None
                else "health check failing: the LB's TCP connects to it fail"
            )
            excluded.append(Excluded(c.ip, why, c.port, c.endpoint.node_name, kind=kind))
    for key, (c, _lease) in admitted.items():
        if key not in chosen and key not in failing:
            ep = c.endpoint
            kind = Exclusion.TERMINATING if ep.terminating else Exclusion.NOT_READY
            if ep.terminating:
                why = (
                    "draining: terminating, so no new connections; its established ones go on"
                    if ep.serving
                    else "terminating and not serving"
                )
            else:
                why = "not ready"
            excluded.append(Excluded(c.ip, why, c.port, ep.node_name, kind=kind))
    backends = tuple(
        sorted(
            Backend(c.ip, c.port, c.endpoint.node_name or (lease.node if lease else ""))
            for c, lease in chosen.values()
        )
    )
    return backends, tuple(sorted(excluded, key=lambda e: (e.ip, e.port or 0, e.reason)))


def _rank(ep: Endpoint) -> int:
    return 2 if ep.ready else 1 if ep.serving else 0


def plan_service(
    svc: Service,
    groups: tuple[EndpointGroup, ...],
    admission: Admission,
    settings: PlanSettings,
) -> ServicePlan:
    addresses = exposed_addresses(svc, settings.addresses)
    verdict = _verdict(svc, addresses, settings.addresses)
    denied: list[Denial] = []
    refusal = settings.policy.service_denial(svc) if verdict.exposed else None
    if refusal is not None:
        denied = [Denial(svc.ref, a, p.port, p.protocol, refusal) for a in addresses for p in svc.ports]
        verdict = ServiceVerdict(svc.ref, False, f"denied: {refusal}", addresses)
    cluster_ips: tuple[str, ...] = ()
    if settings.cluster_ips and svc.type != "ExternalName" and not svc.headless:
        cluster_ips = tuple(ip for ip in svc.cluster_ips if "." in ip)
    if not (verdict.exposed or cluster_ips):
        return ServicePlan((svc.namespace, svc.name), verdict, created=_created(svc), denied=tuple(denied))
    affinity = Affinity("ClientIP", svc.affinity_timeout) if svc.session_affinity == "ClientIP" else None
    ranges = ipv4_source_ranges(svc.source_ranges)
    frontends = []
    for sp in svc.ports:
        backends, excluded = _backends(sp, groups, admission)
        targets = [(a, "external") for a in (addresses if verdict.exposed else ())]
        targets += [(ip, "cluster-ip") for ip in cluster_ips]
        for address, kind in targets:
            why = settings.policy.port_denial(address, sp.port) if kind == "external" else None
            if why is not None:
                denied.append(Denial(svc.ref, address, sp.port, sp.protocol, why))
                continue
            check = svc.health_check_path if sp.protocol == "TCP" else ""
            frontends.append(
                Frontend(
                    address,
                    sp.port,
                    sp.protocol,
                    svc.ref,
                    sp.name,
                    affinity,
                    backends,
                    excluded,
                    kind,
                    check,
                    ranges if kind == "external" else None,  # the LB's own connections are not filtered
                )
            )
    return ServicePlan((svc.namespace, svc.name), verdict, tuple(frontends), _created(svc), tuple(denied))


def ipv4_source_ranges(ranges: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The IPv4 part of a Service's source ranges, merged into disjoint networks (nft's interval sets
    refuse overlaps). A Service restricted to IPv6 ranges only admits no IPv4 client: kube-proxy would
    leave its IPv4 frontends open, which is the opposite of what the ranges ask for."""
    if ranges is None:
        return None
    networks = [ipaddress.IPv4Network(r) for r in ranges if ":" not in r]
    return tuple(str(n) for n in ipaddress.collapse_addresses(networks))


def endpoint_report(
    svc: Service, groups: tuple[EndpointGroup, ...], admission: Admission
) -> list[tuple[ServicePort, tuple[Backend, ...], tuple[Excluded, ...]]]:
    """Per port, which endpoints would serve and which are out, whether or not the service is exposed."""
    return [(sp, *_backends(sp, groups, admission)) for sp in svc.ports]


def _created(svc: Service) -> float:
    return svc.created if svc.created is not None else math.inf


def assemble(revision: int, services: Iterable[ServicePlan], problems: Iterable[Problem] = ()) -> Plan:
    """Join per-service plans; where two services claim one address:port/protocol, the oldest wins."""
    owners: dict[tuple[str, int, str], tuple[ServicePlan, Frontend]] = {}
    conflicts: list[Conflict] = []
    verdicts = {}
    denied: list[Denial] = []
    ordered = sorted(services, key=lambda s: (s.created, s.ref))
    for sp in ordered:
        verdicts[sp.verdict.service] = sp.verdict
        denied.extend(sp.denied)
        for f in sp.frontends:
            owner = owners.get(f.key)
            if owner is None:
                owners[f.key] = (sp, f)
                continue
            winner = owner[0]
            if winner.ref == sp.ref:
                continue  # one service listing the same port twice: the first listing stands
            why = (
                f"created earlier ({_iso(winner.created)} vs {_iso(sp.created)})"
                if winner.created < sp.created
                else "same creation time; namespace/name sorts first"
            )
            conflicts.append(
                Conflict(f.address, f.port, f.protocol, winner.verdict.service, sp.verdict.service, why)
            )
    frontends = tuple(
        sorted((f for _, f in owners.values()), key=lambda f: (f.kind, f.address, f.port, f.protocol))
    )
    return Plan(revision, frontends, tuple(conflicts), tuple(problems), verdicts, tuple(denied))


def _iso(ts: float) -> str:
    if math.isinf(ts):
        return "unknown"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def admission_for(
    state: ClusterState,
    now: float,
    path_faults: Mapping[ipaddress.IPv4Network, str] | None = None,
    lb_addresses: Iterable[str] = (),
    unhealthy: Iterable[tuple[str, int]] = (),
    failing_paths: Iterable[ipaddress.IPv4Network] = (),
) -> Admission:
    mine = frozenset(a for a in map(ipv4_int, lb_addresses) if a is not None)
    leases = LeaseIndex(state.leases(), now)
    return Admission(
        state.network(), leases, path_faults or {}, mine, frozenset(unhealthy), frozenset(failing_paths)
    )


def health_kept(backends: tuple[Backend, ...], admission: Admission) -> bool:
    """Whether every backend serves although it fails its check (or its node's path does): a failing
    check is less certain than an empty frontend is, so a frontend whose backends all fail keeps them."""
    if not backends or not (admission.unhealthy or admission.failing_paths):
        return False
    for b in backends:
        addr = ipv4_int(b.ip)
        lease = admission.leases.find(addr) if addr is not None else None
        if admission.check_failing(b.ip, b.port, lease) is None:
            return False
    return True


def compute_plan(
    state: ClusterState,
    settings: PlanSettings,
    *,
    now: float,
    path_faults: Mapping[ipaddress.IPv4Network, str] | None = None,
    unhealthy: Iterable[tuple[str, int]] = (),
    failing_paths: Iterable[ipaddress.IPv4Network] = (),
) -> Plan:
    """The whole plan from scratch (the agent's incremental planner gives the same result)."""
    admission = admission_for(state, now, path_faults, settings.addresses, unhealthy, failing_paths)
    plans = [
        plan_service(svc, state.endpoint_groups(ref)[0], admission, settings)
        for ref, svc in state.services.items()
    ]
    return assemble(state.revision, plans, state.all_problems())
