"""`flannel-lb check`: an operator's doctor for the host the load balancer runs on.

The agent's failure modes are mostly outside flannel-lb itself: etcd out of reach, flanneld not
running or not finished programming the overlay, forwarding off, an rp_filter that drops pod replies
or clients, rules in the other iptables backend, or another NAT rule grabbing the LB's addresses
first. Each check names what it found and what to do about it, and none of them changes anything.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flannel_lb import parts
from flannel_lb.bgp import bird
from flannel_lb.bgp import status as bgp_status
from flannel_lb.bgp.announce import Announcer
from flannel_lb.config import Config
from flannel_lb.dataplane.iptables.rules import NAT, Rule
from flannel_lb.dataplane.iptables.savefile import SavedRule, table_chains
from flannel_lb.dataplane.options import DEFAULT_MARK
from flannel_lb.dataplane.tools import choose_backend, host_iptables, make_tools
from flannel_lb.decode.model import Lease
from flannel_lb.ha import conntrackd
from flannel_lb.ha.paths import Paths
from flannel_lb.kernel import conntrack_limits
from flannel_lb.kernel.netcheck import (
    KernelView,
    NetChecker,
    device_for,
    local_addresses,
    own_lease,
    own_lease_candidates,
)
from flannel_lb.kernel.netns import RunError, output, run
from flannel_lb.state.cluster import ClusterState
from flannel_lb.text import printable
from flannel_lb.verbs import CommandError, load_config

Status = Literal["ok", "warn", "fail"]
MAX_LISTED = 20  # longer lists are cut, with a count of the rest
TIMEOUT = 30.0  # seconds any one read-only command may take


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


class Skipped(Exception):
    """A check cannot run because an earlier one failed; reported as a failure naming that one."""


@dataclass
class _Context:
    """What the checks share: the config, one etcd snapshot and one kernel dump (each taken once)."""

    cfg: Config
    netns: str | None
    state: ClusterState | None = None
    etcd_error: str = "the etcd check failed"
    _view: KernelView | None = None
    _view_error: Exception | None = None
    _checker: NetChecker | None = field(default=None, repr=False)
    _conntrack: conntrack_limits.Stats | Exception | None = field(default=None, repr=False)

    @property
    def checker(self) -> NetChecker:
        if self._checker is None:
            self._checker = NetChecker(self.netns)
        return self._checker

    @property
    def view(self) -> KernelView:
        if self._view_error is not None:
            raise self._view_error
        if self._view is None:
            try:
                self._view = self.checker.dump()
            except Exception as e:
                self._view_error = e
                raise
        return self._view

    def cluster(self) -> ClusterState:
        if self.state is None:
            raise Skipped(f"needs etcd ({self.etcd_error})")
        return self.state

    def close(self) -> None:
        if self._checker is not None:
            self._checker.close()


# --- running ----------------------------------------------------------------------------------------


def run_checks(cfg: Config, netns: str | None = None) -> list[CheckResult]:
    """Every check, in order; a check that raises becomes a `fail` carrying the exception's message."""
    ctx = _Context(cfg, netns)
    checks = CHECKS + (HA_CHECKS if cfg.ha.enabled else ()) + (BGP_CHECKS if cfg.bgp.enabled else ())
    try:
        return [_guarded(name, fn, ctx) for name, fn in checks]
    finally:
        ctx.close()


def _guarded(name: str, fn: Callable[[_Context], tuple[Status, str]], ctx: _Context) -> CheckResult:
    try:
        status, detail = fn(ctx)
    except Skipped as e:
        return CheckResult(name, "fail", f"not checked: {e}")
    except Exception as e:
        return CheckResult(name, "fail", f"check crashed: {type(e).__name__}: {e}")
    return CheckResult(name, status, detail)


# --- etcd and flannel's records -----------------------------------------------------------------------


def check_etcd(ctx: _Context) -> tuple[Status, str]:
    from flannel_lb.source.records import EtcdUnavailable

    cfg = ctx.cfg
    try:
        snap = parts.source(cfg).snapshot(retry_budget=cfg.etcd.retry_budget)
    except EtcdUnavailable as e:
        ctx.etcd_error = "etcd unreachable"
        return "fail", str(e)
    ctx.state = parts.new_state(cfg)
    parts.apply_update(ctx.state, snap)
    endpoints = [_probe_endpoint(cfg, url) for url in cfg.etcd.endpoints]
    detail = f"revision {snap.revision} ({len(snap.items)} keys); " + "; ".join(text for _, text in endpoints)
    return ("ok" if all(ok for ok, _ in endpoints) else "warn"), detail


def _probe_endpoint(cfg: Config, url: str) -> tuple[bool, str]:
    """Ask one endpoint for its status, so a dead member of a multi-endpoint list shows up."""
    from flannel_lb.source import etcd_v3
    from flannel_lb.source.settings import parse_endpoint

    settings = parts.etcd_settings(cfg)
    try:
        client = etcd_v3.connect(parse_endpoint(url), settings)
        try:
            version = client.status().version
        finally:
            etcd_v3.close(client)
    except Exception as e:
        return False, f"{url} unreachable: {etcd_v3.describe(e)}"
    return True, f"{url} answers (etcd {version})"


def check_network_config(ctx: _Context) -> tuple[Status, str]:
    cfg, state = ctx.cfg, ctx.cluster()
    if cfg.flannel.subnet_manager == "kube":
        return "ok", (
            f"kube subnet manager: network {cfg.flannel.network} from [flannel] network; "
            f"{len(state.leases())} leases from Node annotations"
        )
    key = f"{cfg.flannel.prefix.rstrip('/')}/config"
    problem = state.problems.get(key)
    if problem is not None:
        return "fail", f"{key} is unusable: {problem.reason}"
    nc = state.network_config
    if nc is None:
        other = "v2" if cfg.flannel.etcd_api == "v3" else "v3"
        return "fail", (
            f"no {key} in etcd's {cfg.flannel.etcd_api} keyspace (flannel < 0.18 writes the v2 keyspace,"
            f" >= 0.18 the v3 one: if flanneld's config lives in {other}, set [flannel] etcd_api"
            f' = "{other}")'
        )
    backend = nc.backend_type + (
        f" (VNI {nc.vni}, port {nc.port or 8472})" if nc.backend_type == "vxlan" else ""
    )
    return "ok", (
        f"Network {nc.network}, SubnetLen {nc.subnet_len}, backend {backend}; {len(state.leases())} leases"
    )


def _backend(ctx: _Context) -> tuple[str, int]:
    """The backend this host's flanneld runs, and its VNI: the network config's, else the own lease's."""
    state = ctx.cluster()
    nc = state.network_config
    if nc is not None and ctx.cfg.flannel.subnet_manager == "etcd":
        return nc.backend_type, nc.vni
    own = _own_lease(ctx)
    if own is not None:
        return own.backend_type, own.vni or 1
    backends = sorted({lease.backend_type for lease in state.leases()})
    return (backends[0] if len(backends) == 1 else "unknown"), 1


def _local_addresses(view: KernelView) -> dict[ipaddress.IPv4Address, str]:
    return {iface.ip: view.name_of(index) for index, ifaces in view.addresses.items() for iface in ifaces}


def _own_lease(ctx: _Context) -> Lease | None:
    """This host's own lease exactly as the agent's netcheck decides it (and skips it)."""
    state = ctx.cluster()
    return own_lease(state.leases(), parts.lease_hint(ctx.cfg, state), local_addresses(ctx.view))


def _own_subnet(ctx: _Context) -> ipaddress.IPv4Network | None:
    own = _own_lease(ctx)
    return own.subnet if own is not None else None


def _lease_text(lease: Lease) -> str:
    return f"{lease.subnet} (PublicIP {lease.public_ip}, {lease.backend_type})"


def check_own_lease(ctx: _Context) -> tuple[Status, str]:
    state, view = ctx.cluster(), ctx.view
    hint = parts.lease_hint(ctx.cfg, state)
    own = _own_lease(ctx)
    if own is None:
        if hint is not None:
            return "fail", (
                f"lease {hint} names an [lb] address as its PublicIP, but no address of this host is"
                " inside it (flanneld gives its device an address in its own lease), so it is path-checked"
                " like any node's. Is flanneld running here, against this etcd and prefix?"
            )
        local = ", ".join(sorted(map(str, _local_addresses(view)))) or "none"
        return "fail", (
            "no lease belongs to this host: none has a local PublicIP (local: "
            f"{local}) and a local address inside its subnet (flanneld gives its device one; host-gw"
            " needs the PublicIP only). Is flanneld running here, against this etcd and prefix?"
        )
    candidates = own_lease_candidates(state.leases(), hint, local_addresses(view))
    if len(candidates) > 1:
        others = "; ".join(_lease_text(lease) for lease in candidates if lease.subnet != own.subnet)
        return "warn", (
            f"{len(candidates)} leases look like this host's (a stale or a forged one?): the most specific,"
            f" {_lease_text(own)}, is taken as its own; the lease paths check treats the others like any"
            f" node's: {others}"
        )
    return "ok", _lease_text(own)


# --- the kernel side ----------------------------------------------------------------------------------


def check_flannel_interface(ctx: _Context) -> tuple[Status, str]:
    backend, vni = _backend(ctx)
    view = ctx.view
    dev = device_for(backend, vni)
    if backend == "host-gw":
        return _host_gw_interface(ctx)
    if dev is None:
        return "warn", f"backend {backend}: its device is not checked"
    fault = view.device_fault(dev, backend)
    if fault:
        return "fail", fault
    link = view.by_name[dev]
    addrs = view.addresses.get(link.index, [])
    shown = ", ".join(map(str, addrs)) or "no IPv4 address"
    own = _own_subnet(ctx)
    if own is not None and not any(a.ip in own for a in addrs):
        return (
            "warn",
            f"{dev} ({link.kind or 'device'}) is up, but {shown} is not inside this host's lease {own}",
        )
    return "ok", f"{dev} ({link.kind or 'device'}) is up with {shown}"


def _host_gw_interface(ctx: _Context) -> tuple[Status, str]:
    """host-gw has no device: the interface holding this host's PublicIP carries the traffic."""
    own, view = _own_lease(ctx), ctx.view
    local = _local_addresses(view)
    if own is None or own.public_ip not in local:
        return "fail", "host-gw: no lease's PublicIP is a local address, so no interface to check"
    name = local[own.public_ip]
    fault = view.device_fault(name, "host-gw")
    if fault:
        return "fail", f"host-gw routes leave through {name}: {fault}"
    return "ok", f"host-gw uses no flannel device; {name} (holding PublicIP {own.public_ip}) is up"


def check_lease_paths(ctx: _Context) -> tuple[Status, str]:
    state = ctx.cluster()
    # The agent's own call (daemon/agent.py `_netcheck`): it skips the lease `_own_lease` names.
    faults = ctx.checker.check(state.leases(), state.network_config, parts.lease_hint(ctx.cfg, state))
    own = _own_subnet(ctx)
    others = [lease for lease in state.leases() if lease.subnet != own]
    notes = "".join(f"\n{note}" for note in ctx.checker.notes)
    if not others:
        return "warn", "no other leases: there is no node to reach yet" + notes
    if not faults:
        return "ok", f"the kernel path to all {len(others)} other leases is in place" + notes
    by_subnet = {lease.subnet: lease for lease in others}
    lines = [f"{subnet} ({by_subnet[subnet].public_ip}): {why}" for subnet, why in sorted(faults.items())]
    status: Status = "fail" if len(faults) >= len(others) else "warn"
    head = f"{len(faults)} of {len(others)} leases have no usable path (their endpoints are not admitted):"
    return status, "\n".join([head, *_cut(lines)]) + notes


def check_ip_forward(ctx: _Context) -> tuple[Status, str]:
    value = read_sysctl("net/ipv4/ip_forward", ctx.netns)
    if value == "1":
        return "ok", "net.ipv4.ip_forward = 1"
    return "fail", (
        f"net.ipv4.ip_forward = {value}: DNATed packets would not be forwarded to the pods. "
        "Fix: sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/"
    )


# --- rp_filter: the reverse path of the packets the LB must accept ------------------------------------
#
# With rp_filter strict (1), the kernel drops a packet from S arriving on interface I when its route
# back to S leaves by another interface; loose (2) only when there is no route back at all; 0 never.
# The kernel applies max(all, I). Whether that bites depends on the routes, so check asks the kernel
# (an input route lookup applies rp_filter) about the packets that matter: pod replies from each other
# lease (one address stands for the lease) to the address the LB's SNAT gave the flow, and client
# packets to each [lb] address on the interface holding it, from its on-link subnet and from behind
# each gateway routed via that interface (REMOTE_CLIENT stands for those only a default route covers).
# Limits: the probes are addressed to the LB's own address, where real packets are addressed to the
# pod (client side) or, after de-NAT, to the client (reply side); only policy rules that select by
# that source address judge the two differently. Marks (src_valid_mark) are not modelled.

REMOTE_CLIENT = ipaddress.IPv4Address("198.51.100.1")  # TEST-NET-2 (RFC 5737): "any remote client"


@dataclass(frozen=True, slots=True)
class Arrival:
    """A packet the LB must accept: from `source` (standing for `what`), on `dev`, to local `to`."""

    kind: Literal["pod", "client"]
    what: str
    source: ipaddress.IPv4Address
    dev: str
    to: ipaddress.IPv4Address

    def input_lookup(self) -> str:
        """The kernel's verdict on it: an input route lookup applies rp_filter (fails when it drops)."""
        return f"route get {self.to} from {self.source} iif {self.dev}"

    def reverse_lookup(self) -> str:
        """The route back to its source, as rp_filter looks it up."""
        return f"route get {self.source} from {self.to}"


def check_rp_filter(ctx: _Context) -> tuple[Status, str]:
    arrivals, notes = _rp_arrivals(ctx)
    values = {
        name: int(read_sysctl(f"net/ipv4/conf/{name}/rp_filter", ctx.netns))
        for name in ["all", *sorted({a.dev for a in arrivals})]
    }
    shown = ", ".join(f"{n}={v}" for n, v in values.items())
    verdicts = ip_batch([a.input_lookup() for a in arrivals], ctx.netns)
    dropped = [a for a, verdict in zip(arrivals, verdicts, strict=True) if verdict is None]
    tail = "".join(f"; {note}" for note in notes)
    if not dropped:
        pods = sum(1 for a in arrivals if a.kind == "pod")
        return "ok", (
            f"the kernel accepts replies from {pods} pod addresses (one per other lease) and"
            f" {len(arrivals) - pods} client addresses of the [lb] addresses on the interfaces they"
            f" arrive on (rp_filter {shown}; the kernel applies max(all, interface)){tail}"
        )
    backs = ip_batch([a.reverse_lookup() for a in dropped], ctx.netns)
    lines = [
        rp_drop_line(a, values, route_field(back, "dev")) for a, back in zip(dropped, backs, strict=True)
    ]
    head = f"the kernel drops {len(dropped)} of {len(arrivals)} tested sources (rp_filter {shown}):"
    return "warn", "\n".join([head, *_cut(lines), *rp_fixes(dropped, values, backs)]) + tail


def _rp_arrivals(ctx: _Context) -> tuple[list[Arrival], list[str]]:
    """The packets to ask the kernel about (each source and interface once), and what was not asked."""
    notes: list[str] = []
    try:
        pods, notes = _pod_arrivals(ctx)
    except Skipped as e:
        pods = []
        notes.append(f"pod replies not checked: {e}")
    seen: set[tuple[ipaddress.IPv4Address, str]] = set()
    unique = []
    for a in [*pods, *_client_arrivals(ctx)]:
        if (a.source, a.dev) not in seen:
            seen.add((a.source, a.dev))
            unique.append(a)
    return unique, notes


def _pod_arrivals(ctx: _Context) -> tuple[list[Arrival], list[str]]:
    """Replies from one pod address of each other lease, to the address SNAT gives the LB's flows.

    MASQUERADE takes the source address of the route to the pod (`ip route get`), [dataplane]
    snat_addresses are used as they are. A reply arrives on the interface holding its destination:
    to the flannel device's address over the overlay, to an address on eth1 on eth1.
    """
    view, own = ctx.view, _own_subnet(ctx)
    local = _local_addresses(view)
    sources = [
        (lease.subnet, source)
        for lease in ctx.cluster().leases()
        if lease.subnet != own and (source := host_in(lease.subnet, set(local))) is not None
    ]
    routes = ip_batch([f"route get {source}" for _, source in sources], ctx.netns)
    pool = [ipaddress.IPv4Address(a) for a in ctx.cfg.dataplane.snat_addresses]
    notes = [f"SNAT address {a} is not local: replies to it not checked" for a in pool if a not in local]
    out = []
    for (subnet, source), route in zip(sources, routes, strict=True):
        src = route_field(route, "src")
        for to in pool or ([ipaddress.IPv4Address(src)] if src else []):
            if to in local:  # (no route to the lease: no src; the lease paths check reports that)
                out.append(Arrival("pod", f"replies from lease {subnet}", source, local[to], to))
    return out, notes


def _client_arrivals(ctx: _Context) -> list[Arrival]:
    """Clients of each local [lb] address, arriving on the interface that holds it."""
    view = ctx.view
    held = {i.ip: (view.name_of(index), i) for index, ifaces in view.addresses.items() for i in ifaces}
    out = []
    for address in (ipaddress.IPv4Address(a) for a in ctx.cfg.lb.addresses):
        dev, iface = held.get(address, ("", None))
        if iface is None or dev == "lo":
            continue  # not here (the lb addresses check says so), or on lo: arrives wherever it is routed
        text = output(["ip", "-j", "route", "show", "table", "main", "dev", dev], ctx.netns, timeout=TIMEOUT)
        for what, source in client_sources(iface, json.loads(text or "[]"), set(held)):
            out.append(Arrival("client", what, source, dev, address))
    return out


def _first_address(view: KernelView, dev: str) -> ipaddress.IPv4Address | None:
    link = view.by_name.get(dev)
    addrs = view.addresses.get(link.index, []) if link else []
    return addrs[0].ip if addrs else None


def host_in(net: ipaddress.IPv4Network, avoid: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Address | None:
    """An address of `net` to stand for it: its first hosts, skipping `avoid` (local addresses)."""
    for i, host in enumerate(net.hosts() if net.prefixlen < 32 else [net.network_address]):
        if i >= 8:
            return None
        if host not in avoid:
            return host
    return None


def client_sources(
    address: ipaddress.IPv4Interface, routes: list[dict[str, Any]], local: set[ipaddress.IPv4Address]
) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Client addresses for an [lb] address: one on-link, one behind each gateway on its interface.

    `routes` is `ip -j route show table main dev <its interface>`.
    """
    out = []
    peer = host_in(address.network, local) if address.network.prefixlen < 31 else None
    if peer is not None:
        out.append((f"clients of {address.ip} on-link in {address.network}", peer))
    for route in routes:
        gateway, dst = route.get("gateway"), route.get("dst", "")
        if not gateway or ":" in dst:
            continue
        if dst == "default":
            out.append((f"clients of {address.ip} beyond the default route via {gateway}", REMOTE_CLIENT))
            continue
        net = ipaddress.IPv4Network(dst, strict=False)
        source = host_in(net, local)
        if source is not None:
            out.append((f"clients of {address.ip} in {net} via {gateway}", source))
    return out


def route_field(line: str | None, name: str) -> str | None:
    """A field (`dev`, `src`, `via`) of one line of `ip -o route get` output (None: no route, or none)."""
    words = (line or "").split()
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == name), None)


def effective_rp_filter(values: dict[str, int], dev: str) -> int:
    return max(values.get("all", 0), values.get(dev, 0))


def rp_drop_line(a: Arrival, values: dict[str, int], back: str | None) -> str:
    """Why the kernel drops `a`, from the route back and the rp_filter that applies."""
    mode = effective_rp_filter(values, a.dev)
    where = f"{a.what} ({a.source} -> {a.to}) arriving on {a.dev}"
    if back is None:
        return f"{where}: there is no route back to {a.source} (rp_filter {mode} drops that)"
    if back != a.dev and mode == 1:
        return f"{where}: the route back leaves via {back}, and rp_filter is strict on {a.dev}"
    return (
        f"{where}: rejected although the route back leaves via {back} (rp_filter {mode}: a martian source?)"
    )


def rp_fixes(dropped: list[Arrival], values: dict[str, int], backs: list[str | None]) -> list[str]:
    """The sysctls to set: loose where strict drops a source that has a route back elsewhere."""
    strict = {
        a.dev
        for a, back in zip(dropped, backs, strict=True)
        if route_field(back, "dev") not in (None, a.dev) and effective_rp_filter(values, a.dev) == 1
    }
    names = [n for n in ["all", *sorted(strict)] if strict and values.get(n) == 1]
    out = []
    if names:
        keys = " ".join(f"net.ipv4.conf.{n.replace('.', '/')}.rp_filter=2" for n in names)
        out.append(f"Fix: sysctl -w {keys} (loose: any route back will do), and persist it in /etc/sysctl.d/")
    if any(back is None for back in backs):
        out.append(
            "No route back: add one (for a lease, see the lease paths check), or set rp_filter 0 on that"
            " interface"
        )
    return out


def check_lb_addresses(ctx: _Context) -> tuple[Status, str]:
    local = _local_addresses(ctx.view)
    wanted = [ipaddress.IPv4Address(a) for a in ctx.cfg.lb.addresses]
    missing = [a for a in wanted if a not in local]
    found = ", ".join(f"{a} on {local[a]}" for a in wanted if a in local)
    if missing:
        names = ", ".join(map(str, missing))
        return "warn", (
            f"[lb] addresses not configured on this host: {names} (traffic for them arrives only if "
            "something routes it here; add them with `ip addr add`)"
            + (f"; present: {found}" if found else "")
        )
    return "ok", f"all configured: {found}"


# --- conntrack ------------------------------------------------------------------------------------------


def _conntrack(
    ctx: _Context, assess: Callable[[conntrack_limits.Stats], tuple[Status, str]]
) -> tuple[Status, str]:
    """Assess the namespace's conntrack numbers (read once for the three checks)."""
    if ctx._conntrack is None:
        try:
            ctx._conntrack = conntrack_limits.read_stats(lambda path: read_file(path, ctx.netns))
        except Exception as e:
            ctx._conntrack = e
    if isinstance(ctx._conntrack, FileNotFoundError):
        return "warn", (
            "nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count): the kernel loads it"
            " with the first NAT rule, so run check again once the agent has synced"
        )
    if isinstance(ctx._conntrack, Exception):
        raise ctx._conntrack
    return assess(ctx._conntrack)


def check_conntrack_table(ctx: _Context) -> tuple[Status, str]:
    ncpu = conntrack_limits.cpu_count()
    return _conntrack(ctx, lambda stats: conntrack_limits.assess_table(stats, ctx.cfg.conntrack, ncpu))


def check_conntrack_drops(ctx: _Context) -> tuple[Status, str]:
    return _conntrack(ctx, lambda stats: conntrack_limits.assess_counters(stats.counters))


def check_conntrack_timeouts(ctx: _Context) -> tuple[Status, str]:
    return _conntrack(ctx, lambda stats: conntrack_limits.assess_timeouts(stats, ctx.cfg.conntrack))


# --- iptables -------------------------------------------------------------------------------------------


def check_iptables_backend(ctx: _Context) -> tuple[Status, str]:
    dp = ctx.cfg.dataplane
    try:
        host = host_iptables(ctx.netns)
        chosen = choose_backend(dp.iptables_backend, ctx.netns)  # what the agent's writers program
    except RunError as e:
        return (
            "fail",
            f"{e}: the agent's iptables writers cannot choose a backend here"
            " (set [dataplane] iptables_backend)",
        )
    warnings: list[str] = []
    if dp.writer == "libiptc" and host.backend == "nft":
        warnings.append(
            "[dataplane] writer = libiptc programs legacy x_tables, but this host's iptables is nf_tables:"
            " the first NAT hook to bind a connection wins, so those rules can be silently ineffective"
        )
    if dp.iptables_backend not in ("auto", host.backend):
        warnings.append(
            f"[dataplane] iptables_backend = {dp.iptables_backend}, but `iptables` here is {host.backend}"
        )
    other = "legacy" if chosen == "nft" else "nft"
    count = _nat_rule_count(other, ctx.netns)
    if count:
        warnings.append(
            f"iptables-{other} also holds {count} nat rules: two NAT backends on one host compete for"
            f" the same connections (list them with iptables-{other}-save -t nat)"
        )
    why = "[dataplane] iptables_backend" if dp.iptables_backend != "auto" else "the host's iptables"
    uses = f"flannel-lb's iptables writers use iptables-{chosen} ({why})"
    if warnings:
        return "warn", f"{host.version}; {uses}; " + "; ".join(warnings)
    return "ok", f"{host.version}; {uses}; no nat rules in iptables-{other}"


def check_forward_path(ctx: _Context) -> tuple[Status, str]:
    """Forwarded (DNATed) flows must get through every filter FORWARD chain on the host.

    The iptables writers put an ACCEPT for flannel-lb's ctmark at the top of FORWARD. An nftables
    table cannot do that for others: a drop in any table (iptables-nft's FORWARD policy, Docker's)
    is final, so with `writer = "nft"` a DROP policy must be opened by whoever owns it.
    """
    dp = ctx.cfg.dataplane
    if dp.writer != "nft":
        return "ok", f"writer = {dp.writer}: FLB-FORWARD accepts flannel-lb's flows in iptables' FORWARD"
    if shutil.which("nft") is None:
        return "fail", "writer = nft, but the `nft` command is missing (apt install nftables)"
    policy = ""
    for line in run(["iptables-save", "-t", "filter"], ctx.netns, timeout=TIMEOUT).stdout.splitlines():
        if line.startswith(":FORWARD "):
            policy = line.split()[1]
    if policy == "DROP":
        mark = f"{DEFAULT_MARK:#x}/{DEFAULT_MARK:#x}"
        return "warn", (
            "writer = nft, and iptables' FORWARD policy is DROP here (Docker sets it): flannel-lb's table"
            " cannot overrule another table's drop, so DNATed connections would be dropped. Fix:"
            f" iptables -I FORWARD -m connmark --mark {mark} -j ACCEPT (persist it with your firewall),"
            " or use writer = restore"
        )
    return "ok", f"writer = nft; iptables' FORWARD policy is {policy or 'not set (no filter table)'}"


def _nat_rule_count(backend: str, netns: str | None) -> int:
    if backend == "legacy":
        # Without a legacy nat table there is nothing to list, and listing would load the module.
        names = run(["cat", "/proc/net/ip_tables_names"], netns, timeout=TIMEOUT).stdout
        if "nat" not in names.split():
            return 0
    binary = f"iptables-{backend}-save"
    if shutil.which(binary) is None:
        return 0
    saved = output([binary, "-t", "nat"], netns, timeout=TIMEOUT)
    return sum(len(rules) for rules in table_chains(saved, NAT).values())


def check_nat_conflicts(ctx: _Context) -> tuple[Status, str]:
    tools = make_tools(ctx.cfg.dataplane.iptables_backend, ctx.netns)  # the agent's backend and binary
    rules = table_chains(tools.output(tools.save_argv(NAT), timeout=TIMEOUT), NAT)
    addrs = {ipaddress.IPv4Address(a) for a in ctx.cfg.lb.addresses}
    prefix = ctx.cfg.dataplane.chain_prefix
    found: list[str] = []
    jumps: list[str] = []
    for chain in ("PREROUTING", "OUTPUT"):
        hits, jumped = find_conflicts(rules, chain, addrs, prefix)
        found += hits
        if jumped:
            jumps.append(chain)
    where = f"nat PREROUTING/OUTPUT (iptables-{tools.backend})"
    if found:
        head = f"{len(found)} foreign DNAT/REDIRECT rules in {where} catch [lb] addresses before flannel-lb:"
        return "warn", "\n".join([head, *_cut(found)])
    installed = (
        f"flannel-lb's jump is in {', '.join(jumps)}" if jumps else "flannel-lb's jump is not installed yet"
    )
    return "ok", f"no foreign DNAT/REDIRECT for [lb] addresses in {where}; {installed}"


Rules = dict[str, list[SavedRule]]  # chain -> its rules, in order (`savefile.table_chains`)
_NAT_TARGETS = {"DNAT", "REDIRECT"}


def find_conflicts(
    rules: Rules, chain: str, addrs: set[ipaddress.IPv4Address], prefix: str
) -> tuple[list[str], bool]:
    """Foreign DNAT/REDIRECT rules reachable from `chain` before flannel-lb's jump, and whether it jumps.

    The destination filters along the path (-d, ! -d) narrow which LB addresses could get there.
    """
    found: list[str] = []
    for saved in rules.get(chain, []):
        if saved.rule.jump.startswith(prefix):
            return found, True
        hit = _dest_filter(saved.rule, addrs)
        if hit:
            found += _walk(rules, saved, hit, prefix, (chain,))
    return found, False


def _walk(
    rules: Rules, saved: SavedRule, addrs: set[ipaddress.IPv4Address], prefix: str, path: tuple[str, ...]
) -> list[str]:
    target = saved.rule.jump
    if target in _NAT_TARGETS:
        return [f"{' -> '.join(path)}: {saved.line} (catches {', '.join(sorted(map(str, addrs)))})"]
    if target not in rules or target in path or target.startswith(prefix) or len(path) > 16:
        return []
    out: list[str] = []
    for sub in rules[target]:
        hit = _dest_filter(sub.rule, addrs)
        if hit:
            out += _walk(rules, sub, hit, prefix, (*path, target))
    return out


def _dest_filter(rule: Rule, addrs: set[ipaddress.IPv4Address]) -> set[ipaddress.IPv4Address]:
    """The LB addresses a rule's `-d`/`! -d` lets through (all of them without a -d)."""
    args = rule.matches
    for i, arg in enumerate(args[:-1]):
        if arg in ("-d", "--destination"):
            nets = [ipaddress.IPv4Network(n, strict=False) for n in args[i + 1].split(",")]
            negated = i > 0 and args[i - 1] == "!"
            return {a for a in addrs if any(a in n for n in nets) != negated}
    return set(addrs)


# --- helpers ----------------------------------------------------------------------------------------------


def ip_batch(commands: Sequence[str], netns: str | None) -> list[str | None]:
    """Run read-only `ip` commands in one process (`ip -o -force -batch`): each one's output line,
    or None where the kernel refused it."""
    if not commands:
        return []
    stdin = "".join(f"{c}\n" for c in commands)
    proc = run(["ip", "-o", "-force", "-batch", "-"], netns, input=stdin, timeout=TIMEOUT)
    return batch_results(len(commands), proc.stdout, proc.stderr)


def batch_results(count: int, stdout: str, stderr: str) -> list[str | None]:
    """Match `ip -o -force -batch` output to its commands: "Command failed -:N" marks line N failed,
    and the others printed one line each, in order."""
    failed = {int(m) for m in re.findall(r"^Command failed -:(\d+)$", stderr, re.MULTILINE)}
    lines = iter(stdout.splitlines())
    out: list[str | None] = [None if i in failed else next(lines, None) for i in range(1, count + 1)]
    if any(line is None for i, line in enumerate(out, 1) if i not in failed):
        raise RuntimeError(f"`ip -batch` printed fewer lines than it ran commands: {stderr.strip()}")
    return out


def read_sysctl(path: str, netns: str | None) -> str:
    """/proc/sys/<path> as the namespace sees it (/proc/sys/net follows the reader's namespace)."""
    if netns is None:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    return output(["cat", f"/proc/sys/{path}"], netns, timeout=TIMEOUT).strip()


def read_file(path: str, netns: str | None) -> str:
    """A /proc file as the namespace sees it; FileNotFoundError when it does not exist there."""
    if netns is None:
        with open(path) as f:
            return f.read()
    try:
        return output(["cat", path], netns, timeout=TIMEOUT)
    except RunError as e:
        if f"{path}: No such file or directory" in str(e):  # cat's words, not `ip netns exec`'s
            raise FileNotFoundError(path) from None
        raise


def _cut(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return lines
    return [*lines[:MAX_LISTED], f"... and {len(lines) - MAX_LISTED} more"]


def check_bgp_sessions(ctx: _Context) -> tuple[Status, str]:
    """Each neighbour's BGP session and BFD state, as this box's BIRD reports them."""
    bgp = ctx.cfg.bgp
    try:
        found = bgp_status.query(bgp, ctx.netns)
    except RunError as e:
        return "fail", (
            f"BIRD does not answer on its control socket: {e}\n"
            f"start it with: {' '.join(bird.command(bgp))} (after `flannel-lb bgp write`)"
        )
    lines = [bgp_status.describe(s, bgp.bfd) for s in found]
    up = sum(1 for s in found if bgp_status.healthy(s, bgp.bfd))
    what = "established" + (" with BFD up" if bgp.bfd else "")
    head = f"{up} of {len(found)} sessions {what}"
    status: Status = "ok" if up == len(found) else "fail" if up == 0 else "warn"
    if status != "ok":
        head += " (a router without a session sends this box nothing; see BIRD's log)"
    return status, "\n".join([head, *_cut(lines)])


def check_bgp_announced(ctx: _Context) -> tuple[Status, str]:
    """Which VIPs this box announces: the ones on `[bgp] interface` (BIRD's protocol direct reads them)."""
    bgp = ctx.cfg.bgp
    a = Announcer.of(bgp, ctx.netns)
    ours, foreign = a.announced(), a.foreign()
    on = set(ours) | set(foreign)
    missing = [x for x in bgp.addresses if x not in on]
    lines = [f"announced on {bgp.interface}: {', '.join(ours) or 'none'}"]
    if foreign:
        lines.append(f"also announced, put there by someone else (left alone): {', '.join(foreign)}")
    if not missing:
        return "ok", "\n".join(lines)
    lines.append(f"not announced: {', '.join(missing)}")
    lines.append(
        "the agent announces once its first sync from etcd is live; it withdraws when a sync fails, "
        "when it stops and when it drains (then until it is restarted)"
    )
    return "warn", "\n".join(lines)


def check_ha_daemons(ctx: _Context) -> tuple[Status, str]:
    """keepalived (its pid file in state_dir, a live keepalived there) and conntrackd (its socket answers)."""
    ha = ctx.cfg.ha
    paths = Paths.of(ha)
    problems, lines = [], []
    pid = _live_pid(paths.keepalived_pid, "keepalived")
    if pid is None:
        problems.append(f"keepalived is not running (no live pid in {paths.keepalived_pid})")
    else:
        lines.append(f"keepalived running (pid {pid})")
    stats = run(conntrackd.client(ha, "-s"), ctx.netns, timeout=TIMEOUT)
    if stats.returncode != 0:
        problems.append(
            f"conntrackd does not answer on {paths.conntrackd_socket}: {stats.stderr.strip()[:200]}"
        )
    else:
        lines.append("conntrackd answers")
    if problems:
        hint = "start them with: systemctl start flannel-lb-conntrackd flannel-lb-keepalived"
        return "fail", "\n".join([*problems, *lines, hint])
    return "ok", "\n".join(lines)


def _live_pid(path: str, name: str) -> int | None:
    try:
        pid = int(Path(path).read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name else None


def check_ha_state(ctx: _Context) -> tuple[Status, str]:
    """Which of the pair's floating addresses this box holds: all (master), none (backup), or some
    (a broken takeover), and what its agent tells keepalived."""
    ha = ctx.cfg.ha
    floating = [*ha.addresses, *([ha.overlay_public_ip] if ha.shared_overlay else [])]
    local = {a for a in floating if _holds(ctx, a)}
    try:
        health = Path(Paths.of(ha).health_file).read_text().strip()
    except OSError:
        health = "missing"
    verdict = {"0": "healthy (the agent holds its plan)", "1": "unhealthy: a healthy peer takes over"}
    told = f"the agent's health file: {verdict.get(health, repr(health[:20]))}"
    if len(local) == len(floating):
        return "ok", f"master: holds {', '.join(floating)}\n{told}"
    if not local:
        return "ok", f"backup: holds none of {', '.join(floating)}\n{told}"
    missing = [a for a in floating if a not in local]
    return "fail", (
        f"holds {', '.join(sorted(local))} but not {', '.join(missing)}: the addresses float together"
        f" (one VRRP instance); see keepalived's log\n{told}"
    )


def _holds(ctx: _Context, address: str) -> bool:
    out = run(["ip", "-4", "-o", "addr", "show", "to", f"{address}/32"], ctx.netns, timeout=TIMEOUT).stdout
    return f" {address}/" in out


def check_ha_peer(ctx: _Context) -> tuple[Status, str]:
    """The peer answers on the VRRP path (a ping). A peer that is up but cut off becomes master too."""
    ha = ctx.cfg.ha
    proc = run(["ping", "-c", "1", "-W", "1", ha.peer], ctx.netns, timeout=TIMEOUT)
    if proc.returncode == 0:
        return "ok", f"the peer {ha.peer} answers on {ha.interface}"
    return "warn", (
        f"the peer {ha.peer} does not answer on {ha.interface}: if it is down, this box serves alone; if it"
        " is up, both may hold the addresses (split brain): check the VRRP path (and the peer's firewall)"
    )


HA_CHECKS: tuple[tuple[str, Callable[[_Context], tuple[Status, str]]], ...] = (
    ("ha daemons", check_ha_daemons),
    ("ha state", check_ha_state),
    ("ha peer", check_ha_peer),
)


BGP_CHECKS: tuple[tuple[str, Callable[[_Context], tuple[Status, str]]], ...] = (
    ("bgp sessions", check_bgp_sessions),
    ("bgp announced", check_bgp_announced),
)


CHECKS: tuple[tuple[str, Callable[[_Context], tuple[Status, str]]], ...] = (
    ("etcd", check_etcd),
    ("flannel config", check_network_config),
    ("own lease", check_own_lease),
    ("flannel interface", check_flannel_interface),
    ("lease paths", check_lease_paths),
    ("ip_forward", check_ip_forward),
    ("rp_filter", check_rp_filter),
    ("iptables backend", check_iptables_backend),
    ("forward path", check_forward_path),
    ("nat conflicts", check_nat_conflicts),
    ("lb addresses", check_lb_addresses),
    ("conntrack table", check_conntrack_table),
    ("conntrack drops", check_conntrack_drops),
    ("conntrack timeouts", check_conntrack_timeouts),
)


# --- the command ----------------------------------------------------------------------------------------


def format_report(results: Iterable[CheckResult], cfg_path: str) -> str:
    results = list(results)
    marks = {"ok": "  ok", "warn": "WARN", "fail": "FAIL"}
    lines = [f"flannel-lb check ({cfg_path})"]
    for r in results:
        first, *rest = r.detail.split("\n")  # only "\n" breaks a detail; \r, \x85, \u2028 are escaped
        lines.append(f"[{marks[r.status]}] {r.name:<18} {first}")
        lines += [f"{'':26}{line}" for line in rest]
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "warn", "fail")}
    lines.append(
        f"{len(results)} checks: {counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed"
    )
    return "\n".join(printable(line) for line in lines)  # details echo names from etcd and the kernel


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args)
    except CommandError as e:  # said here too: `check` also runs without the CLI's main (tests, tools)
        print(f"flannel-lb check: {e}", file=sys.stderr)
        return e.code
    results = run_checks(cfg, netns=args.netns)
    if args.json:
        doc: dict[str, Any] = {
            "config": cfg.path,
            "netns": args.netns,
            "ok": all(r.status != "fail" for r in results),
            "checks": [r.to_json() for r in results],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(format_report(results, cfg.path))
    return 1 if any(r.status == "fail" for r in results) else 0


def register_commands(subparsers: Any) -> None:
    """Add `check` to the CLI's subcommands."""
    p = subparsers.add_parser("check", help="doctor: is this host ready to be the load balancer?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--netns",
        metavar="NAME",
        help="inspect the kernel side of network namespace NAME instead of our own (lab use)",
    )
    p.set_defaults(func=cmd_check)
