"""The agent's configuration file (TOML), validated on load.

A broken config must stop the agent before it touches anything, with a message an operator can act on:
every error names the file, the key and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flannel_lb.plan.policy import PortRanges, parse_port_ranges
from flannel_lb.untrusted import ascii_decimal

DEFAULT_PATH = "/etc/flannel-lb/flannel-lb.toml"
ENV_VAR = "FLANNEL_LB_CONFIG"

T = TypeVar("T")


class ConfigError(Exception):
    """The config file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0  # seconds per request
    retry_budget: float = 5.0  # one-shot commands give up after this long (a person is waiting)


@dataclass(frozen=True, slots=True)
class FlannelConfig:
    prefix: str = "/coreos.com/network"
    etcd_api: str = "v3"  # "v2" for flannel < 0.18, whose leases live in etcd's v2 keyspace
    subnet_manager: str = "etcd"  # "kube": flanneld --kube-subnet-mgr, leases are Node annotations
    network: ipaddress.IPv4Network | None = None  # required with subnet_manager = "kube" (net-conf.json)
    annotation_prefix: str = "flannel.alpha.coreos.com"


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    prefix: str = "/registry"


@dataclass(frozen=True, slots=True)
class LBConfig:
    addresses: tuple[str, ...] = ()
    cluster_ips: bool = False
    state_file: str = ""  # each service's last good frontends, served across restarts ("" = off)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Who may claim the LB's addresses (see flannel_lb/plan/policy.py and README "Tenancy")."""

    namespaces: tuple[str, ...] = ("*",)
    annotation: str = ""
    ports: dict[str, PortRanges] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    writer: str = "restore"  # or "nft" (native nftables table), "libiptc" (legacy x_tables hosts only)
    iptables_backend: str = "auto"  # "auto" | "nft" | "legacy"
    chain_prefix: str = "FLB-"
    masquerade: bool = True
    random_fully: bool = True
    snat_addresses: tuple[str, ...] = ()
    min_sync_interval: float = 0.02  # seconds: coalesces bursts of etcd events into one sync
    full_resync_interval: float = 10.0  # seconds: repairs drift (someone flushed an owned chain)
    conntrack_cleanup: bool = True
    manage_ip_forward: bool = True  # turn on net.ipv4.ip_forward at start (DNATed packets are forwarded)
    forward_accept: str = "always"  # or "auto": the FORWARD accept only while FORWARD could drop (iptables)
    balance: str = "random"  # or "maglev" (writer = "nft" only): the same backend for a flow on every box


@dataclass(frozen=True, slots=True)
class ConntrackConfig:
    """Conntrack limits, as kube-proxy's `conntrack` settings (see flannel_lb/kernel/conntrack_limits.py)."""

    manage: bool = False  # opt-in: set the limits below once at start
    max_per_core: int = 32768  # nf_conntrack_max = max(min, max_per_core * CPUs); 0 leaves it alone
    min: int = 131072
    tcp_timeout_established: int = 86400  # seconds; 0 leaves it alone
    tcp_timeout_close_wait: int = 3600  # seconds; 0 leaves it alone
    warn_usage: float = 0.75  # warn when nf_conntrack_count / nf_conntrack_max reaches this


@dataclass(frozen=True, slots=True)
class HAConfig:
    """An active/standby pair (keepalived + conntrackd, rendered by flannel_lb/ha; see docs/ha.md)."""

    enabled: bool = False
    peer: str = ""  # the other box's address on `interface`: keepalived's unicast peer
    priority: int = 100  # VRRP priority of this box (the higher one is master)
    interface: str = ""  # where VRRP runs and the floating addresses live
    sync_interface: str = ""  # conntrackd's link ("" = `interface`; a dedicated link is better)
    sync_peer: str = ""  # the other box's address on `sync_interface` ("" = `peer`)
    virtual_router_id: int = 51
    advert_interval: float = 0.1  # seconds; VRRPv3 sends centiseconds (rendered rounded to 0.01)
    addresses: tuple[str, ...] = ()  # the floating addresses; empty in the file = [lb] addresses
    state_dir: str = "/run/flannel-lb/ha"  # rendered files, pid files, lock, socket, health file
    # The shared overlay identity (docs/ha.md): both boxes are one flannel host, the holder of a
    # reservation whose PublicIP floats with the VIPs; "" = each box has its own (flows reset at failover)
    overlay_subnet: str = ""  # the reservation's subnet, e.g. "10.246.90.0/24"
    overlay_public_ip: str = ""  # its PublicIP: a second floating address, on overlay_interface
    overlay_interface: str = ""  # the underlay interface ("" = interface)
    vtep_mac: str = ""  # the reservation's VtepMAC, the same flannel.<VNI> MAC on both boxes ("" = derived)

    @property
    def shared_overlay(self) -> bool:
        return bool(self.overlay_subnet)

    @property
    def overlay_address(self) -> str:
        """The pair's flannel address (the subnet's first address, as flannel gives its hosts), the
        source address of every connection to a pod."""
        return str(ipaddress.IPv4Network(self.overlay_subnet).network_address) if self.overlay_subnet else ""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active checks of the backends from this LB: TCP connects through the overlay (kernel/health.py).

    Off by default: kubelet's readiness is the cluster's own word on a pod, and checks from every LB
    add their load to every pod; an operator turns them on where overlay faults are a risk.
    """

    enabled: bool = False
    interval: float = 2.0  # seconds between two checks of a target (spread over it, not in one burst)
    timeout: float = 1.0  # seconds a check may take
    rise: int = 2  # successes in a row that bring a failed backend back
    fall: int = 3  # failures in a row that take a backend out
    concurrency: int = 256  # checks in flight at once
    max_rate: int = 1000  # checks started per second at most: more targets stretch the interval


@dataclass(frozen=True, slots=True)
class BGPNeighbor:
    address: str  # the upstream router's address on a link this box shares with it
    asn: int


@dataclass(frozen=True, slots=True)
class BGPConfig:
    """Announce the VIPs to upstream routers over BGP (BIRD 2, rendered by flannel_lb/bgp; docs/bgp.md)."""

    enabled: bool = False
    asn: int = 0  # this box's AS number (required with enabled = true)
    router_id: str = ""  # "" in the file = the first [lb] address
    neighbors: tuple[BGPNeighbor, ...] = ()
    bfd: bool = True
    bfd_interval_ms: int = 100  # BFD tx/rx; a dead box is routed around after ~ interval x multiplier
    bfd_multiplier: int = 3
    hold_time: int = 9  # seconds: the BGP fallback when BFD is off or not answered by the router
    communities: tuple[str, ...] = ()  # "ASN:VALUE" (standard) or "ASN:V1:V2" (large) on every announcement
    interface: str = "lo"  # where the VIPs are put while this box is fit (BIRD's `protocol direct` reads it)
    addresses: tuple[str, ...] = ()  # the announced addresses; empty in the file = [lb] addresses
    state_dir: str = "/run/flannel-lb/bgp"  # bird.conf, BIRD's pid file and control socket; the agent's
    peers: tuple[
        str, ...
    ] = ()  # the group's other boxes (on the routers' link): second chance (bgp/redirect.py)
    drain_on_sigterm: bool = False  # SIGTERM drains (withdraw, serve open flows, exit) instead of stopping
    drain_timeout: float = 60.0  # seconds a drain waits for the open flows to the VIPs to finish


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9842"  # "" disables the HTTP endpoint


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # or "console"


@dataclass(frozen=True, slots=True)
class Config:
    path: str = "<defaults>"
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    flannel: FlannelConfig = field(default_factory=FlannelConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    lb: LBConfig = field(default_factory=LBConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    conntrack: ConntrackConfig = field(default_factory=ConntrackConfig)
    ha: HAConfig = field(default_factory=HAConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    bgp: BGPConfig = field(default_factory=BGPConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)


def default_path() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError naming the file, key and problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (set --config or {ENV_VAR})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse(doc, str(p))


def parse(doc: Mapping[str, Any], path: str = "<config>") -> Config:
    _check_names(doc, path)
    r = _Reader(path, doc)
    etcd = r.section("etcd")
    flannel = r.section("flannel")
    kube = r.section("kubernetes")
    lb = r.section("lb")
    policy = r.section("policy")
    dp = r.section("dataplane")
    ct = r.section("conntrack")
    ha = r.section("ha")
    health = r.section("health")
    bgp = r.section("bgp")
    metrics = r.section("metrics")
    log = r.section("log")

    cfg = Config(
        path=path,
        etcd=EtcdConfig(
            endpoints=tuple(
                etcd.get("endpoints", list, EtcdConfig().endpoints, _each(_etcd_url), nonempty=True)
            ),
            ca_file=etcd.get("ca_file", str, None, _readable_file),
            cert_file=etcd.get("cert_file", str, None, _readable_file),
            key_file=etcd.get("key_file", str, None, _readable_file),
            username=etcd.get("username", str, None),
            password=etcd.get("password", str, None),
            timeout=etcd.number("timeout", EtcdConfig().timeout),
            retry_budget=etcd.number("retry_budget", EtcdConfig().retry_budget),
        ),
        flannel=FlannelConfig(
            prefix=flannel.get("prefix", str, FlannelConfig().prefix, _key_prefix),
            etcd_api=flannel.get("etcd_api", str, FlannelConfig().etcd_api, _one_of("v3", "v2")),
            subnet_manager=flannel.get(
                "subnet_manager", str, FlannelConfig().subnet_manager, _one_of("etcd", "kube")
            ),
            network=flannel.get("network", str, None, _ipv4_network),
            annotation_prefix=flannel.get("annotation_prefix", str, FlannelConfig().annotation_prefix),
        ),
        kubernetes=KubernetesConfig(prefix=kube.get("prefix", str, KubernetesConfig().prefix, _key_prefix)),
        lb=(
            lb_config := LBConfig(
                addresses=tuple(
                    lb.get("addresses", list, [], _each(_ipv4_address), nonempty=True, required=True)
                ),
                cluster_ips=lb.get("cluster_ips", bool, False),
                state_file=lb.get("state_file", str, "", _state_file),
            )
        ),
        policy=PolicyConfig(
            namespaces=tuple(policy.get("namespaces", list, ["*"], _each(_namespace_pattern))),
            annotation=policy.get("annotation", str, ""),
            ports=policy.get("ports", dict, {}, _port_table),
        ),
        dataplane=DataplaneConfig(
            writer=dp.get("writer", str, "restore", _one_of("restore", "nft", "libiptc")),
            iptables_backend=dp.get("iptables_backend", str, "auto", _one_of("auto", "nft", "legacy")),
            chain_prefix=dp.get("chain_prefix", str, "FLB-", _chain_prefix),
            masquerade=dp.get("masquerade", bool, True),
            random_fully=dp.get("random_fully", bool, True),
            snat_addresses=tuple(dp.get("snat_addresses", list, [], _each(_ipv4_address))),
            min_sync_interval=dp.number("min_sync_interval", DataplaneConfig().min_sync_interval),
            full_resync_interval=dp.number("full_resync_interval", DataplaneConfig().full_resync_interval),
            conntrack_cleanup=dp.get("conntrack_cleanup", bool, True),
            manage_ip_forward=dp.get("manage_ip_forward", bool, True),
            forward_accept=dp.get("forward_accept", str, "always", _one_of("always", "auto")),
            balance=dp.get("balance", str, "random", _one_of("random", "maglev")),
        ),
        conntrack=ConntrackConfig(
            manage=ct.get("manage", bool, False),
            max_per_core=ct.number("max_per_core", ConntrackConfig().max_per_core),
            min=ct.number("min", ConntrackConfig().min),
            tcp_timeout_established=ct.number(
                "tcp_timeout_established", ConntrackConfig().tcp_timeout_established
            ),
            tcp_timeout_close_wait=ct.number(
                "tcp_timeout_close_wait", ConntrackConfig().tcp_timeout_close_wait
            ),
            warn_usage=ct.number("warn_usage", ConntrackConfig().warn_usage),
        ),
        ha=_ha(ha, lb_config.addresses),  # [lb] is read first (keyword order): its addresses are the default
        health=HealthConfig(
            enabled=health.get("enabled", bool, False),
            interval=health.number("interval", HealthConfig().interval),
            timeout=health.number("timeout", HealthConfig().timeout),
            rise=health.number("rise", HealthConfig().rise),
            fall=health.number("fall", HealthConfig().fall),
            concurrency=health.number("concurrency", HealthConfig().concurrency),
            max_rate=health.number("max_rate", HealthConfig().max_rate),
        ),
        bgp=_bgp(bgp, lb_config.addresses),
        metrics=MetricsConfig(listen=metrics.get("listen", str, MetricsConfig().listen, _listen_address)),
        log=LogConfig(
            level=log.get("level", str, "info", _one_of("debug", "info", "warning", "error")),
            format=log.get("format", str, "json", _one_of("json", "console")),
        ),
    )
    if bool(cfg.etcd.cert_file) != bool(cfg.etcd.key_file):
        raise ConfigError(f"{path}: [etcd] cert_file and key_file: set both or neither")
    if cfg.dataplane.balance == "maglev" and cfg.dataplane.writer != "nft":
        raise ConfigError(
            f'{path}: [dataplane] balance: "maglev" needs writer = "nft" (the iptables layouts pick a backend'
            f" at random with `statistic`; writer is {cfg.dataplane.writer!r})"
        )
    if cfg.flannel.subnet_manager == "kube" and cfg.flannel.network is None:
        raise ConfigError(
            f'{path}: [flannel] network: required with subnet_manager = "kube" '
            '(copy Network from flannel\'s net-conf.json, e.g. "10.244.0.0/16")'
        )
    if cfg.flannel.subnet_manager == "kube" and cfg.flannel.etcd_api == "v2":
        raise ConfigError(f'{path}: [flannel] etcd_api: "v2" makes no sense with subnet_manager = "kube"')
    return cfg


def _ha(ha: Section, lb_addresses: tuple[str, ...]) -> HAConfig:
    """[ha]: every key is checked, enabled or not; what a pair cannot do without, only when enabled."""
    d = HAConfig()
    addresses = tuple(ha.get("addresses", list, [], _each(_ipv4_address), nonempty=True)) or lb_addresses
    out = HAConfig(
        enabled=ha.get("enabled", bool, d.enabled),
        peer=ha.get("peer", str, d.peer, _ipv4_address),
        priority=ha.number("priority", d.priority),
        interface=ha.get("interface", str, d.interface, _ifname),
        sync_interface=ha.get("sync_interface", str, d.sync_interface, _ifname),
        sync_peer=ha.get("sync_peer", str, d.sync_peer, _ipv4_address),
        virtual_router_id=ha.number("virtual_router_id", d.virtual_router_id),
        advert_interval=ha.number("advert_interval", d.advert_interval),
        addresses=addresses,
        state_dir=ha.get("state_dir", str, d.state_dir, _state_dir),
        overlay_subnet=ha.get("overlay_subnet", str, d.overlay_subnet, _overlay_subnet),
        overlay_public_ip=ha.get("overlay_public_ip", str, d.overlay_public_ip, _ipv4_address),
        overlay_interface=ha.get("overlay_interface", str, d.overlay_interface, _ifname),
        vtep_mac=ha.get("vtep_mac", str, d.vtep_mac, _unicast_mac),
    )
    where = f"{ha.path}: [ha]"
    if len(set(out.addresses)) != len(out.addresses):
        dup = next(a for a in out.addresses if out.addresses.count(a) > 1)
        raise ConfigError(f"{where} addresses: {dup} is listed twice")
    if not out.enabled:
        return out
    for key in ("peer", "interface"):
        if not getattr(out, key):
            raise ConfigError(f"{where} {key}: required with enabled = true")
    for key in ("peer", "sync_peer"):
        if getattr(out, key) in out.addresses:
            raise ConfigError(
                f"{where} {key}: {getattr(out, key)} is a floating address; give the other box's own address"
            )
    if bool(out.overlay_subnet) != bool(out.overlay_public_ip):
        raise ConfigError(
            f"{where} overlay_subnet and overlay_public_ip: give both (the reservation) or neither"
        )
    if out.overlay_public_ip and out.overlay_public_ip in (*out.addresses, out.peer, out.sync_peer):
        raise ConfigError(
            f"{where} overlay_public_ip: {out.overlay_public_ip} is already a VIP or the other box's address;"
            " the reservation's PublicIP is a floating address of its own"
        )
    return dataclasses.replace(
        out,
        sync_interface=out.sync_interface or out.interface,
        sync_peer=out.sync_peer or out.peer,
        overlay_interface=(out.overlay_interface or out.interface) if out.overlay_subnet else "",
        vtep_mac=(out.vtep_mac or derived_vtep_mac(out.overlay_public_ip)) if out.overlay_subnet else "",
    )


def derived_vtep_mac(public_ip: str) -> str:
    """A locally administered unicast MAC from the reservation's PublicIP: the same on both boxes."""
    return ":".join(f"{b:02x}" for b in (0x0E, 0xF1, *ipaddress.IPv4Address(public_ip).packed))


def _overlay_subnet(v: str) -> str:
    net = _ipv4_network(v)
    if not 8 <= net.prefixlen <= 30:
        raise ValueError("a flannel subnet from /8 to /30 (flannel's SubnetLen)")
    return str(net)


def _unicast_mac(v: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", v.lower()) or int(v[:2], 16) & 1:
        raise ValueError("a unicast MAC address, e.g. 0e:f1:0a:f5:01:96")
    return v.lower()


def _bgp(bgp: Section, lb_addresses: tuple[str, ...]) -> BGPConfig:
    """[bgp]: every key is checked, enabled or not; the AS number and a neighbour only when enabled."""
    d = BGPConfig()
    addresses = tuple(bgp.get("addresses", list, [], _each(_ipv4_address), nonempty=True)) or lb_addresses
    out = BGPConfig(
        enabled=bgp.get("enabled", bool, d.enabled),
        asn=bgp.number("asn", d.asn),
        router_id=bgp.get("router_id", str, d.router_id, _ipv4_address) or (lb_addresses or ("",))[0],
        neighbors=tuple(bgp.get("neighbors", list, [], _each(_bgp_neighbor), nonempty=True)),
        bfd=bgp.get("bfd", bool, d.bfd),
        bfd_interval_ms=bgp.number("bfd_interval_ms", d.bfd_interval_ms),
        bfd_multiplier=bgp.number("bfd_multiplier", d.bfd_multiplier),
        hold_time=bgp.number("hold_time", d.hold_time),
        communities=tuple(bgp.get("communities", list, [], _each(_community))),
        interface=bgp.get("interface", str, d.interface, _label_ifname),
        addresses=addresses,
        state_dir=bgp.get("state_dir", str, d.state_dir, _state_dir),
        peers=tuple(bgp.get("peers", list, [], _each(_ipv4_address))),
        drain_on_sigterm=bgp.get("drain_on_sigterm", bool, d.drain_on_sigterm),
        drain_timeout=bgp.number("drain_timeout", d.drain_timeout),
    )
    where = f"{bgp.path}: [bgp]"
    routers = [n.address for n in out.neighbors]
    for key, values in (("addresses", out.addresses), ("neighbors", routers), ("peers", out.peers)):
        if len(set(values)) != len(values):
            dup = next(a for a in values if values.count(a) > 1)
            raise ConfigError(f"{where} {key}: {dup} is listed twice")
    for n in out.neighbors:
        if n.address in out.addresses:
            raise ConfigError(f"{where} neighbors: {n.address} is an announced address, not a router's")
    for peer in out.peers:
        if peer in out.addresses or peer in routers:
            what = "an announced address" if peer in out.addresses else "a neighbour (a router)"
            raise ConfigError(f"{where} peers: {peer} is {what}; give another box's own address")
    if not out.enabled:
        return out
    if not out.asn:
        raise ConfigError(f"{where} asn: required with enabled = true")
    if not out.neighbors:
        raise ConfigError(f"{where} neighbors: required with enabled = true (at least one router)")
    if not out.router_id:
        raise ConfigError(f"{where} router_id: required with enabled = true when [lb] has no address")
    return out


_NEIGHBOR_KEYS = ("address", "asn")
_ASN = (1, 4294967295)


def _asn(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not _ASN[0] <= v <= _ASN[1]:
        raise ValueError(f"asn: must be an AS number from {_ASN[0]} to {_ASN[1]}, got {v!r}")
    return v


def _bgp_neighbor(v: Any) -> BGPNeighbor:
    """One upstream router: a table {address = "10.0.0.1", asn = 64512}."""
    if not isinstance(v, Mapping):
        raise ValueError('expected a table such as { address = "10.245.1.1", asn = 64512 }')
    for key in v:
        if key not in _NEIGHBOR_KEYS:
            hint = _did_you_mean(key, _NEIGHBOR_KEYS, lambda k: f'"{k}"')
            raise ValueError(
                f"{key}: unknown key" + (f"; did you mean {hint}?" if hint else "") + " (known: address, asn)"
            )
    for key in _NEIGHBOR_KEYS:
        if key not in v:
            raise ValueError(f"{key}: required, but missing")
    try:
        address = _ipv4_address(v["address"])
    except ValueError as e:
        raise ValueError(f"address: {e}") from None
    return BGPNeighbor(address=address, asn=_asn(v["asn"]))


def _community(v: Any) -> str:
    """A BGP community: "ASN:VALUE" (RFC 1997, 16-bit parts) or "GLOBAL:LOCAL1:LOCAL2" (RFC 8092, 32-bit)."""
    parts = v.split(":") if isinstance(v, str) else []
    numbers = [ascii_decimal(p) for p in parts]
    limit = {2: 65535, 3: 4294967295}.get(len(parts))
    if limit is None or any(n is None or n > limit for n in numbers):
        raise ValueError('expected "ASN:VALUE" (each 0-65535) or a large community "A:B:C" (0-4294967295)')
    return ":".join(str(n) for n in numbers)


def _label_ifname(v: str) -> str:
    """An interface name short enough that `NAME:flb` (the label marking flannel-lb's addresses) fits."""
    _ifname(v)
    if len(v) > 11:
        raise ValueError("an interface name of at most 11 characters (the addresses get the label NAME:flb)")
    return v


@dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric key may take: finite, inside bounds that make operational sense."""

    typ: type[int] | type[float]
    lo: float
    hi: float
    unit: str = ""
    lo_open: bool = False  # lo itself is not allowed
    noun: str = ""  # what the value is, when the bounds alone do not say it ("a fraction ")

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.lo_open:
            return f"greater than {_number(self.lo)} and at most {_number(self.hi)}{unit}"
        return f"from {_number(self.lo)} to {_number(self.hi)}{unit}"

    def check(self, value: int | float) -> int | float:
        """The value as the key's type; ValueError when out of range (nan is never in range)."""
        above_lo = value > self.lo if self.lo_open else value >= self.lo
        if not (above_lo and value <= self.hi):  # nan compares false: refused too
            raise ValueError(f"must be {self.noun}{self.describe()}, got {value!r}")
        return self.typ(value)


_INT32_MAX = 2**31 - 1

# Every numeric key and its range, in one place: TOML allows nan, inf and 64-bit integers, none of which
# a timeout or an interval can be (nan makes a retry loop spin with no sleep).
NUMBERS: dict[tuple[str, str], Range] = {
    ("etcd", "timeout"): Range(float, 0.1, 3600, "seconds"),
    ("etcd", "retry_budget"): Range(float, 0.1, 86400, "seconds"),
    ("dataplane", "min_sync_interval"): Range(float, 0, 60, "seconds"),
    ("dataplane", "full_resync_interval"): Range(float, 0.1, 86400, "seconds"),
    ("conntrack", "max_per_core"): Range(int, 0, _INT32_MAX),
    ("conntrack", "min"): Range(int, 0, _INT32_MAX),
    ("conntrack", "tcp_timeout_established"): Range(int, 0, _INT32_MAX, "seconds"),
    ("conntrack", "tcp_timeout_close_wait"): Range(int, 0, _INT32_MAX, "seconds"),
    ("conntrack", "warn_usage"): Range(float, 0, 1, lo_open=True, noun="a fraction "),
    ("health", "interval"): Range(float, 0.1, 3600, "seconds"),
    ("health", "timeout"): Range(float, 0.01, 60, "seconds"),
    ("health", "rise"): Range(int, 1, 100),
    ("health", "fall"): Range(int, 1, 100),
    ("health", "concurrency"): Range(int, 1, 65535),
    ("health", "max_rate"): Range(int, 1, 1_000_000, "checks per second"),
    ("ha", "priority"): Range(int, 1, 254),  # 255 is VRRP's "address owner": neither box owns the VIPs
    ("ha", "virtual_router_id"): Range(int, 1, 255),
    ("ha", "advert_interval"): Range(float, 0.01, 40.95, "seconds"),  # VRRPv3: 12 bits of centiseconds
    ("bgp", "asn"): Range(int, 1, 4294967295),  # 4-byte AS numbers (RFC 6793); 0 is reserved
    ("bgp", "bfd_interval_ms"): Range(int, 10, 10000, "ms"),  # BIRD takes 1 ms steps; < 10 ms is noise here
    ("bgp", "bfd_multiplier"): Range(int, 2, 255),  # 8 bits on the wire; 1: a lost packet drops it
    ("bgp", "hold_time"): Range(int, 3, 65535, "seconds"),  # RFC 4271: 0 or at least 3 (0 = never: refused)
    ("bgp", "drain_timeout"): Range(float, 0, 86400, "seconds"),  # 0: withdraw and exit at once
}


def _number(v: float) -> str:
    return str(int(v)) if v == int(v) else str(v)


# --- validators: each returns the cleaned value or raises ValueError with the reason --------------


def _each(check: Callable[[Any], T]) -> Callable[[list[Any]], list[T]]:
    def run(items: list[Any]) -> list[T]:
        out = []
        for i, item in enumerate(items):
            try:
                out.append(check(item))
            except ValueError as e:
                raise ValueError(f"item {i + 1} ({item!r}): {e}") from None
        return out

    return run


def _etcd_url(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a URL string")
    u = urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError('expected a URL like "http://10.245.1.2:4379" or "https://etcd.example:2379"')
    try:
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    return v


def _ipv4_address(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected an IPv4 address string")
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError:
        raise ValueError("not an IPv4 address") from None


def _ipv4_network(v: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(v)
    except ValueError as e:
        raise ValueError(f"not an IPv4 network in CIDR form: {e}") from None


def _namespace_pattern(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError('expected a namespace name or glob pattern such as "web-*"')
    return v


def _port_table(v: dict[str, Any]) -> dict[str, PortRanges]:
    out = {}
    for address, ranges in v.items():
        if address != "*":
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f'{address!r}: keys are LB addresses or "*"') from None
        if not isinstance(ranges, list):
            raise ValueError(f'{address}: expected a list such as ["80", "443", "8000-8100"]')
        try:
            out[address] = parse_port_ranges(ranges)
        except ValueError as e:
            raise ValueError(f"{address}: {e}") from None
    return out


def _state_file(v: str) -> str:
    if v and not os.path.isabs(v):
        raise ValueError('an absolute path (or "" to turn it off)')
    return v


# Longest state_dir: the conntrackd socket inside it must fit sockaddr_un's 108 bytes.
_STATE_DIR_MAX = 107 - len("/conntrackd.ctl")


def _state_dir(v: str) -> str:
    """An absolute path of plain characters: it is written into keepalived's and conntrackd's configs."""
    if not v.startswith("/") or not all(c.isascii() and (c.isalnum() or c in "/._-") for c in v):
        raise ValueError("an absolute path of letters, digits, '/', '.', '_' and '-'")
    if ".." in v.split("/"):
        raise ValueError("must not contain '..'")
    if not v.strip("/"):
        raise ValueError("a directory of its own, not / itself")
    if len(v) > _STATE_DIR_MAX:
        raise ValueError(f"at most {_STATE_DIR_MAX} characters (conntrackd's socket lives in it)")
    return v.rstrip("/")


def _ifname(v: str) -> str:
    """A Linux interface name: 1 to 15 characters, no space, '/' or ':' (written into daemon configs)."""
    if (
        not (1 <= len(v) <= 15)
        or v in (".", "..")
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in v)
    ):
        raise ValueError("an interface name: 1 to 15 letters, digits, '.', '_' or '-'")
    return v


def _key_prefix(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError('an etcd key prefix starts with "/"')
    return v.rstrip("/") or "/"


def _chain_prefix(v: str) -> str:
    if not (1 <= len(v) <= 8) or not all(c.isalnum() or c in "-_" for c in v):
        raise ValueError("1 to 8 letters, digits, '-' or '_' (chain names are limited to 28 characters)")
    return v


def _readable_file(v: str) -> str:
    if not os.path.isfile(v):
        raise ValueError("no such file")
    if not os.access(v, os.R_OK):
        raise ValueError("file is not readable")
    return v


def _listen_address(v: str) -> str:
    if v == "":
        return v
    host, sep, port = v.rpartition(":")
    number = ascii_decimal(port)
    if not sep or number is None or not 0 < number < 65536:
        raise ValueError('expected "host:port", e.g. "127.0.0.1:9842", or "" to disable')
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return v


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError("expected one of " + ", ".join(f'"{c}"' for c in choices))
        return v

    return check


_TYPE_NAMES = {
    str: "a string",
    list: "a list",
    bool: "true or false",
    float: "a number",
    int: "an integer",
    dict: "a table",
}


class Section:
    """One table of the file, read key by key with a type and a check (numbers only through number())."""

    def __init__(self, path: str, name: str, table: Mapping[str, Any]) -> None:
        self.path, self.name, self.table = path, name, table

    def get(
        self,
        key: str,
        typ: type,
        default: Any,
        check: Callable[[Any], Any] | None = None,
        *,
        nonempty: bool = False,
        required: bool = False,
    ) -> Any:
        if typ in (int, float):
            raise TypeError(f"[{self.name}] {key}: numeric keys are read with number(), ranged in NUMBERS")
        where = f"{self.path}: [{self.name}] {key}"
        if key not in self.table:
            if required:
                raise ConfigError(f"{where}: required, but missing")
            return default
        value = self.table[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {_TYPE_NAMES[typ]}, got {value!r}")
        if nonempty and not value:
            raise ConfigError(f"{where}: must not be empty")
        if check is None:
            return value
        try:
            return check(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None

    def number(self, key: str, default: T) -> T:
        """A numeric key, checked against its range in NUMBERS (bool is not a number here)."""
        if key not in self.table:
            return default
        spec = NUMBERS[(self.name, key)]
        value = self.table[key]
        ok = (int, float) if spec.typ is float else (int,)
        if not isinstance(value, ok) or isinstance(value, bool):
            raise ConfigError(
                f"{self.path}: [{self.name}] {key}: expected {_TYPE_NAMES[spec.typ]} "
                f"{spec.describe()}, got {value!r}"
            )
        try:
            return spec.check(value)  # type: ignore[return-value]  # the default's type is the key's
        except ValueError as e:
            raise ConfigError(f"{self.path}: [{self.name}] {key}: {e}") from None


class _Reader:
    def __init__(self, path: str, doc: Mapping[str, Any]) -> None:
        self.path, self.doc = path, doc

    def section(self, name: str) -> Section:
        table = self.doc.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{self.path}: [{name}]: expected a table, got {table!r}")
        return Section(self.path, name, table)


def known_keys() -> dict[str, tuple[str, ...]]:
    """Each section's keys, as the fields of its dataclass (one place, so the two cannot drift)."""
    defaults = Config()
    return {
        f.name: tuple(g.name for g in dataclasses.fields(getattr(defaults, f.name)))
        for f in dataclasses.fields(Config)
        if f.name != "path"
    }


def _did_you_mean(word: str, choices: tuple[str, ...], render: Callable[[str], str] = str) -> str:
    by_lower = {c.lower(): c for c in choices}
    # 0.5: one edit of a two-letter name ("lb" -> "ab") still counts as close.
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.5)
    return " or ".join(render(by_lower[c]) for c in close)


def _check_names(doc: Mapping[str, Any], path: str) -> None:
    """Unknown sections and keys first: a misspelt key must not be reported as a missing one."""
    known = known_keys()
    for name, table in doc.items():
        if name not in known and not isinstance(table, Mapping):
            owners = tuple(f"[{s}] {k}" for s, keys in known.items() for k in keys if k == name)
            hint = owners[0] if owners else _did_you_mean(name, tuple(known), lambda s: f"[{s}]")
            raise ConfigError(
                f"{path}: {name}: unknown top-level key, settings belong in a section"
                + (f"; did you mean {hint}?" if hint else f" ({', '.join(f'[{s}]' for s in known)})")
            )
        if name not in known:
            hint = _did_you_mean(name, tuple(known), lambda s: f"[{s}]")
            raise ConfigError(
                f"{path}: [{name}]: unknown section"
                + (f"; did you mean {hint}?" if hint else f" (known: {', '.join(known)})")
            )
        if not isinstance(table, Mapping):
            continue  # reported by the reader as "expected a table"
        for key in table:
            if key not in known[name]:
                hint = _did_you_mean(key, known[name], lambda k: f'"{k}"')
                raise ConfigError(
                    f"{path}: [{name}] {key}: unknown key"
                    + (f"; did you mean {hint}?" if hint else "")
                    + f" (known: {', '.join(known[name])})"
                )
