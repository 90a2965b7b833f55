"""The cluster state: every etcd key flannel-lb cares about, decoded into typed records and indexed.

It is fed a full snapshot (`replace`) and then watch events (`put`/`delete`). A value that cannot be
decoded never evicts anything else: it is recorded as a `Problem` under its key, and the key keeps
its last good record (a broken update never takes down what worked).
Each change reports which services it touches, so the planner can re-plan only those.

Legacy Endpoints objects are decoded lazily. kube-apiserver stores one next to the EndpointSlices
of nearly every Service, but they are only read for a Service without slices (`endpoint_groups`).
So an Endpoints value is kept as raw bytes, undecoded and unchecked, while its Service has slices,
and decoded as soon as it has none (when the value arrives, or when the Service's last slice goes).
Once a key holds a decoded record, its later values are decoded as they arrive, even while the
Service has slices, so a bad update keeps the last good value exactly as for every other kind.
By design:
  - an Endpoints value that is never needed costs no decoding and no decoded memory, and if it is
    bad it is not reported (nothing reads it); it is reported once its Service needs it;
  - a bad value that arrived while unneeded, for a key without a decoded record, has no last good
    value to fall back on when its Service loses its slices (the values before it were never
    decoded): the Service then has no endpoints and the problem is reported, rather than serving
    endpoints from an arbitrarily old value.
`ClusterState(lazy_endpoints=False)` decodes every value as it arrives instead.
"""

from __future__ import annotations

import gc
import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flannel_lb.decode import flannel, objects
from flannel_lb.decode.kube import DecodeError, EncryptedValueError, UnsupportedKindError, decode_used
from flannel_lb.decode.model import EndpointGroup, Lease, NetworkConfig, Node, Problem, Service
from flannel_lb.state.packed import PackedValues

ServiceRef = tuple[str, str]  # (namespace, name)

MAX_REASON = 300  # characters: a problem quotes values, and a value can be megabytes


def _bounded(reason: str) -> str:
    """A problem's reason, cut short enough for a log line, a metric scrape and the `plan` table."""
    if len(reason) <= MAX_REASON:
        return reason
    return f"{reason[: MAX_REASON - 40]}... ({len(reason)} characters)"


MAX_KEY_PROBLEMS = 10  # per key: a value with 100k bad addresses would otherwise be 100k problems


def key_problems(key: str, reasons: list[str], kind: str) -> list[Problem]:
    """The first MAX_KEY_PROBLEMS of one value's problems and one "and N more" line, so a hostile
    value cannot blow up the plan, its JSON, the log or a scrape."""
    out = [Problem(key, _bounded(r), kind) for r in reasons[:MAX_KEY_PROBLEMS]]
    if len(reasons) > MAX_KEY_PROBLEMS:
        out.append(Problem(key, f"and {len(reasons) - MAX_KEY_PROBLEMS} more problems in this value", kind))
    return out


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Where things live in etcd (flannel's `--etcd-prefix`, kube-apiserver's `--etcd-prefix`)."""

    flannel_prefix: str = "/coreos.com/network"
    kube_prefix: str = "/registry"

    def kube_prefixes(self) -> tuple[str, ...]:
        k = self.kube_prefix.rstrip("/")
        # /services/ holds both specs/ and endpoints/; nothing else under /registry is read.
        return (f"{k}/services/", f"{k}/endpointslices/", f"{k}/minions/")

    def flannel_prefixes(self) -> tuple[str, ...]:
        return (self.flannel_prefix.rstrip("/") + "/",)

    def classify(self, key: str) -> tuple[str, str, str] | None:
        """key -> (kind, namespace, name), kind one of service/endpoints/slice/node/network/lease."""
        f = self.flannel_prefix.rstrip("/") + "/"
        if key.startswith(f):
            rest = key[len(f) :]
            if rest == "config":
                return ("network", "", "")
            if rest.startswith("subnets/") and "/" not in rest[8:]:
                return ("lease", "", rest[8:])
            return None
        k = self.kube_prefix.rstrip("/") + "/"
        if not key.startswith(k):
            return None
        parts = key[len(k) :].split("/")
        match parts:  # (namespaces repeat in every key of the namespace: one copy of each is kept)
            case ["services", "specs", ns, name]:
                return ("service", sys.intern(ns), name)
            case ["services", "endpoints", ns, name]:
                return ("endpoints", sys.intern(ns), name)
            case ["endpointslices", ns, name]:
                return ("slice", sys.intern(ns), name)
            case ["minions", name]:
                return ("node", "", name)
        return None


class IdentityError(ValueError):
    """A registry value whose metadata names another object than its key does."""


def _shown(text: object) -> str:
    return text if isinstance(text, str) and text and text.isprintable() else repr(text)


def _check_identity(kind: str, ns: str, name: str, obj: Mapping[str, Any]) -> None:
    """The key is an object's identity, not its metadata: etcd RBAC and kube-apiserver's storage
    guard the key, and kube-apiserver always stores the namespace and name of the key in metadata.
    A value that disagrees (`default/evil` calling itself `default/good`, or one that leaves them
    out) could take over another Service's frontend or slip past `[policy] namespaces`: it is bad
    input, skipped like an undecodable value (the key's last good value stays)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    got_ns, got_name = meta.get("namespace", ""), meta.get("name", "")
    if (got_ns or "") == ns and got_name == name:
        return
    if kind == "node":
        said = f"{_shown(got_ns)}/{_shown(got_name)}" if got_ns else _shown(got_name)
        raise IdentityError(f"metadata names {said} but the key is {name} (a cluster-scoped Node)")
    raise IdentityError(f"metadata names {_shown(got_ns)}/{_shown(got_name)} but the key is {ns}/{name}")


def lease_overlaps(leases: Iterable[Lease]) -> dict[str, list[Lease]]:
    """Lease key -> the other leases whose subnets share addresses with it (leases without overlap
    are absent). flannel never hands out overlapping leases, so each of these is forged or stale.

    IPv4 subnets are nested or disjoint, so one sweep in address order finds every pair: a subnet
    overlaps exactly the subnets still open when it starts (at most 32 distinct ones) and the
    leases of the same subnet.
    """
    by_subnet: dict[ipaddress.IPv4Network, list[Lease]] = {}
    for lease in leases:
        by_subnet.setdefault(lease.subnet, []).append(lease)
    out: dict[str, list[Lease]] = {}
    open_: list[ipaddress.IPv4Network] = []  # the enclosing subnets of the current one, outermost first
    for subnet in sorted(by_subnet, key=lambda n: (int(n.network_address), n.prefixlen)):
        while open_ and int(open_[-1].broadcast_address) < int(subnet.network_address):
            open_.pop()
        same = by_subnet[subnet]
        around = [lease for outer in open_ for lease in by_subnet[outer]]
        for lease in same:
            others = [o for o in same if o is not lease] + around
            if others:
                out.setdefault(lease.key, []).extend(others)
        for outer_lease in around:
            out.setdefault(outer_lease.key, []).extend(same)
        open_.append(subnet)
    return out


def _digest(value: bytes, expires: float | None) -> int:
    """What `replace` compares to skip unchanged values (one int per key, not a tuple)."""
    return hash(value) if expires is None else hash((value, expires))


@dataclass(slots=True)
class Change:
    """What a put/delete touched: some services, or everything (leases, network, nodes)."""

    services: set[ServiceRef]
    everything: bool = False

    def merge(self, other: Change) -> None:
        self.services |= other.services
        self.everything = self.everything or other.everything


_EXPECTED_KIND = {"service": "Service", "endpoints": "Endpoints", "slice": "EndpointSlice", "node": "Node"}
_CONVERTERS = {
    "service": objects.service,
    "endpoints": objects.endpoints,
    "slice": objects.endpoint_slice,
    "node": objects.node,
}


class ClusterState:
    def __init__(
        self,
        layout: KeyLayout | None = None,
        *,
        subnet_manager: str = "etcd",
        annotation_prefix: str = "flannel.alpha.coreos.com",
        configured_network: ipaddress.IPv4Network | None = None,
        lazy_endpoints: bool = True,
    ) -> None:
        """`lazy_endpoints=False` decodes (and reports) every Endpoints value as it arrives."""
        self.layout = layout or KeyLayout()
        self.lazy_endpoints = lazy_endpoints
        self.subnet_manager = subnet_manager
        self.annotation_prefix = annotation_prefix
        self.configured_network = configured_network
        self.revision = 0
        self.services: dict[ServiceRef, Service] = {}
        self.nodes: dict[str, Node] = {}
        self.etcd_leases: dict[str, Lease] = {}
        self.node_leases: dict[str, Lease] = {}
        self.network_config: NetworkConfig | None = None
        self.problems: dict[str, Problem] = {}
        self._slices: dict[str, tuple[EndpointGroup, ...]] = {}  # key -> groups
        self._endpoints: dict[str, tuple[EndpointGroup, ...]] = {}  # decoded Endpoints: key -> groups
        self._endpoints_raw = PackedValues()  # Endpoints not decoded yet (their Service has slices)
        self._slices_by_service: dict[ServiceRef, tuple[str, ...]] = {}  # sorted slice keys, never empty
        self._slice_owner: dict[str, ServiceRef] = {}
        self._key_problems: dict[str, list[Problem]] = {}  # warnings about otherwise usable objects
        self._seen: dict[str, int] = {}  # key -> digest of the value (and expiry) last put
        self._unsettled: set[ServiceRef] = set()  # Services whose raw Endpoints may be needed now
        self._batch = False  # inside `replace`: settle once at the end, when every slice is in

    # --- feeding ---------------------------------------------------------------------------------

    def replace(self, items: Iterable[tuple[str, bytes, float | None]], revision: int) -> Change:
        """Make the state equal a full snapshot taken at `revision` (a re-list after a broken watch).

        Applied as a diff: unchanged values are not decoded again, and a key whose new value is bad
        keeps its last good record exactly as a watch event would, so a re-list never drops
        working frontends because of undecodable values.
        """
        change = Change(set())
        present = set()
        self._batch = True
        gc_was_enabled = gc.isenabled()
        # A snapshot builds ~10 objects per endpoint, all long-lived, and no reference cycles: the
        # cyclic collector would walk the growing heap again and again for nothing (a large share of
        # the load at 10k Services). It runs again, as before, once the snapshot is in.
        gc.disable()
        try:
            for key, value, expires in items:
                present.add(key)
                if self._seen.get(key) != _digest(value, expires):
                    change.merge(self.put(key, value, expires=expires))
            for key in [k for k in self._seen if k not in present]:
                change.merge(self.delete(key))
            self._batch = False
            change = self._settle(change)
        finally:
            self._batch = False
            if gc_was_enabled:
                gc.enable()
        self.revision = revision
        return change

    def put(
        self, key: str, value: bytes, *, expires: float | None = None, revision: int | None = None
    ) -> Change:
        """Store one value. An unusable value is reported; the key's last good record (if any) stays."""
        if revision is not None:
            self.revision = max(self.revision, revision)
        where = self.layout.classify(key)
        if where is None:
            return Change(set())
        kind, ns, name = where
        self._seen[key] = _digest(value, expires)
        if kind == "endpoints" and self.lazy_endpoints and key not in self._endpoints:
            # Not decoded until its Service needs it (see the module docstring); what was said
            # about the key's previous value no longer applies.
            self.problems.pop(key, None)
            self._key_problems.pop(key, None)
            self._endpoints_raw.put(key, value)
            self._unsettled.add((ns, name))
            return self._settle(Change(set()))
        return self._settle(self._store(key, kind, ns, name, value, expires))

    def _store(self, key: str, kind: str, ns: str, name: str, value: bytes, expires: float | None) -> Change:
        """Decode and install one value, or report it (keeping the key's last good record)."""
        try:
            record, warnings = self._parse(kind, ns, name, value, expires, key)
        except EncryptedValueError as e:
            return self._reject(key, e.reason, "encrypted")
        except UnsupportedKindError as e:
            return self._reject(key, e.reason, "kind")
        except DecodeError as e:
            return self._reject(key, e.reason, "decode")
        except objects.ObjectError as e:
            return self._reject(key, str(e), "invalid")
        except IdentityError as e:
            return self._reject(key, str(e), "identity")
        except flannel.FlannelError as e:
            return self._reject(key, str(e), "lease" if kind == "lease" else "network")
        self.problems.pop(key, None)
        self._key_problems.pop(key, None)
        if warnings:
            self._key_problems[key] = key_problems(key, warnings, "invalid")
        change = self._forget(key, kind, ns, name)
        change.merge(self._install(key, kind, ns, name, record))
        return change

    def delete(self, key: str, *, revision: int | None = None) -> Change:
        if revision is not None:
            self.revision = max(self.revision, revision)
        where = self.layout.classify(key)
        self.problems.pop(key, None)
        self._key_problems.pop(key, None)
        self._seen.pop(key, None)
        if where is None:
            return Change(set())
        return self._settle(self._forget(key, *where))

    def _settle(self, change: Change) -> Change:
        """Decode the raw Endpoints of every Service that `change` (or a deferred put) left without
        slices; inside `replace` this waits for the end of the snapshot."""
        if self._batch:
            return change
        refs = self._unsettled | change.services if self._unsettled else change.services
        self._unsettled = set()
        for ref in [r for r in refs if r not in self._slices_by_service]:
            key = self._endpoints_key(ref)
            value = self._endpoints_raw.pop(key)
            if value is not None:
                change.merge(self._store(key, "endpoints", *ref, value, None))
        return change

    def _endpoints_key(self, ref: ServiceRef) -> str:
        return f"{self.layout.kube_prefix.rstrip('/')}/services/endpoints/{ref[0]}/{ref[1]}"

    def _reject(self, key: str, reason: str, kind: str) -> Change:
        reason = _bounded(reason)
        if self._has_record(key):
            reason += "; keeping the last good value"
        self.problems[key] = Problem(key, reason, kind)
        return Change(set())

    def _has_record(self, key: str) -> bool:
        where = self.layout.classify(key)
        assert where is not None
        kind, ns, name = where
        return {
            "network": lambda: self.network_config is not None,
            "lease": lambda: key in self.etcd_leases,
            "node": lambda: name in self.nodes,
            "service": lambda: (ns, name) in self.services,
            "endpoints": lambda: key in self._endpoints,
            "slice": lambda: key in self._slices,
        }[kind]()

    def _parse(
        self, kind: str, ns: str, name: str, value: bytes, expires: float | None, key: str
    ) -> tuple[object, list[str]]:
        if kind == "network":
            return flannel.parse_network_config(value), []
        if kind == "lease":
            return flannel.parse_lease(name, value, expires=expires, key=key), []
        obj = decode_used(value)  # only what the converters read: managedFields are most of a real object
        expected = _EXPECTED_KIND[kind]
        if obj.get("kind") != expected:
            raise DecodeError(
                f"expected a {expected} under this key, found {obj.get('apiVersion')} {obj.get('kind')}"
            )
        converted = _CONVERTERS[kind](obj)  # (checks metadata's shape first, so its faults come first)
        _check_identity(kind, ns, name, obj)
        return converted.obj, converted.warnings

    def _install(self, key: str, kind: str, ns: str, name: str, record: object) -> Change:
        if kind == "network":
            assert isinstance(record, NetworkConfig)
            self.network_config = record
            return Change(set(), everything=True)
        if kind == "lease":
            assert isinstance(record, Lease)
            self.etcd_leases[key] = record
            return Change(set(), everything=True)
        if kind == "service":
            assert isinstance(record, Service)
            if record.name == name:
                name = record.name  # the record's copy of the name, rather than a second one
            self.services[(ns, name)] = record
            return Change({(ns, name)})
        if kind == "node":
            assert isinstance(record, Node)
            self.nodes[name] = record
            if self.subnet_manager == "kube":
                try:
                    lease = flannel.lease_from_node(record, self.annotation_prefix)
                except flannel.FlannelError as e:
                    self._key_problems.setdefault(key, []).append(Problem(key, str(e), "lease"))
                    lease = None
                if lease is not None:
                    self.node_leases[name] = lease
            return Change(set(), everything=True)
        assert isinstance(record, tuple)
        if kind == "endpoints":
            self._endpoints[key] = record
            return Change({(ns, name)})
        self._slices[key] = record
        service = record[0].service if record else ""
        if not service:
            self._key_problems.setdefault(key, []).append(
                Problem(key, "EndpointSlice has no kubernetes.io/service-name label; ignored", "invalid")
            )
            return Change(set())
        owner = (ns, service)
        self._slice_owner[key] = owner
        keys = self._slices_by_service.get(owner, ())
        self._slices_by_service[owner] = tuple(sorted((*keys, key)))  # (it was forgotten first)
        return Change({owner})

    def _forget(self, key: str, kind: str, ns: str, name: str) -> Change:
        if kind == "network":
            had = self.network_config is not None
            self.network_config = None
            return Change(set(), everything=had)
        if kind == "lease":
            return Change(set(), everything=self.etcd_leases.pop(key, None) is not None)
        if kind == "node":
            gone = self.nodes.pop(name, None) is not None
            self.node_leases.pop(name, None)
            return Change(set(), everything=gone)
        if kind == "service":
            self.services.pop((ns, name), None)
            return Change({(ns, name)})
        if kind == "endpoints":
            self._endpoints.pop(key, None)
            self._endpoints_raw.pop(key)
            return Change({(ns, name)})
        self._slices.pop(key, None)
        owner = self._slice_owner.pop(key, None)
        if owner is None:
            return Change(set())
        rest = tuple(k for k in self._slices_by_service.get(owner, ()) if k != key)
        if rest:
            self._slices_by_service[owner] = rest
        else:
            self._slices_by_service.pop(owner, None)
        return Change({owner})

    # --- reading ---------------------------------------------------------------------------------

    def network(self) -> ipaddress.IPv4Network | None:
        """The flannel network: from etcd's config, or from flannel-lb's config in kube mode."""
        if self.subnet_manager == "kube" or self.network_config is None:
            return self.configured_network
        return self.network_config.network

    def leases(self) -> list[Lease]:
        """The usable leases: inside the flannel network (a lease covering more than the network, such
        as a stray `0.0.0.0-0` key, would otherwise vouch for every endpoint). The rest are problems."""
        network = self.network()
        return [lease for lease in self._all_leases() if network is None or lease.subnet.subnet_of(network)]

    def _all_leases(self) -> list[Lease]:
        if self.subnet_manager == "kube":
            return list(self.node_leases.values())
        return list(self.etcd_leases.values())

    def endpoint_groups(self, ref: ServiceRef) -> tuple[tuple[EndpointGroup, ...], str]:
        """The service's endpoints: from its EndpointSlices when it has any, else from Endpoints."""
        keys = self._slices_by_service.get(ref)
        if keys:
            return tuple(g for k in keys for g in self._slices[k]), "EndpointSlices"
        # a Service without slices never has raw Endpoints left (`_settle`): they are decoded
        return self._endpoints.get(self._endpoints_key(ref), ()), "Endpoints"

    def endpoints_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """The Endpoints keys held decoded, and those held undecoded because their Service has slices."""
        return frozenset(self._endpoints), frozenset(self._endpoints_raw)

    def all_problems(self) -> list[Problem]:
        out = list(self.problems.values())
        for warnings in self._key_problems.values():
            out.extend(warnings)
        leases = {lease.key: lease for lease in self.leases()}
        for key, others in lease_overlaps(leases.values()).items():
            mine = leases[key]
            shown = ", ".join(f"{o.key} ({o.subnet})" for o in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            out.append(
                Problem(
                    key,
                    f"lease {mine.subnet} overlaps {shown}{more}: no endpoint in the overlap is admitted",
                    "lease",
                )
            )
        network = self.network()
        if network is not None:
            out.extend(
                Problem(
                    lease.key,
                    f"lease {lease.subnet} lies outside the flannel network {network}; ignored",
                    "lease",
                )
                for lease in self._all_leases()
                if not lease.subnet.subnet_of(network)
            )
        return sorted(out, key=lambda p: (p.key, p.reason))

    def problem_keys_for(self, ref: ServiceRef) -> list[str]:
        """Keys whose problems concern this service (its spec, Endpoints and EndpointSlices)."""
        ns, name = ref
        k = self.layout.kube_prefix.rstrip("/")
        keys = [f"{k}/services/specs/{ns}/{name}", f"{k}/services/endpoints/{ns}/{name}"]
        keys += self._slices_by_service.get(ref, ())
        return keys
