"""The cluster state: every etcd key flannel-lb cares about, decoded into typed records and indexed.

It is fed a full snapshot (`replace`) and then watch events (`put`/`delete`). A value that cannot be
decoded never evicts anything else: it is recorded as a `Problem` under its key, and the key's
previous good record is dropped (the object as stored is not what we last understood).
Each change reports which services it touches, so the planner can re-plan only those.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from flannel_lb.decode import flannel, objects
from flannel_lb.decode.kube import DecodeError, EncryptedValueError, UnsupportedKindError, decode_value
from flannel_lb.desired import Problem
from flannel_lb.model import EndpointGroup, Lease, NetworkConfig, Node, Service

ServiceRef = tuple[str, str]  # (namespace, name)

MAX_REASON = 300  # characters: a problem quotes values, and a value can be megabytes


def _bounded(reason: str) -> str:
    """A problem's reason, cut short enough for a log line, a metric scrape and the `plan` table."""
    if len(reason) <= MAX_REASON:
        return reason
    return f"{reason[: MAX_REASON - 40]}... ({len(reason)} characters)"


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
        match parts:
            case ["services", "specs", ns, name]:
                return ("service", ns, name)
            case ["services", "endpoints", ns, name]:
                return ("endpoints", ns, name)
            case ["endpointslices", ns, name]:
                return ("slice", ns, name)
            case ["minions", name]:
                return ("node", "", name)
        return None


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
    ) -> None:
        self.layout = layout or KeyLayout()
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
        self._endpoints: dict[str, tuple[EndpointGroup, ...]] = {}
        self._slices_by_service: dict[ServiceRef, set[str]] = defaultdict(set)
        self._slice_owner: dict[str, ServiceRef] = {}
        self._key_problems: dict[str, list[Problem]] = {}  # warnings about otherwise usable objects
        self._seen: dict[str, tuple[int, float | None]] = {}  # key -> digest of the value last put

    # --- feeding ---------------------------------------------------------------------------------

    def replace(self, items: Iterable[tuple[str, bytes, float | None]], revision: int) -> Change:
        """Make the state equal a full snapshot taken at `revision` (a re-list after a broken watch).

        Applied as a diff: unchanged values are not decoded again, and a key whose new value is bad
        keeps its last good record exactly as a watch event would, so a re-list never drops
        working frontends because of undecodable values.
        """
        change = Change(set())
        present = set()
        for key, value, expires in items:
            present.add(key)
            if self._seen.get(key) != (hash(value), expires):
                change.merge(self.put(key, value, expires=expires))
        for key in [k for k in self._seen if k not in present]:
            change.merge(self.delete(key))
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
        self._seen[key] = (hash(value), expires)
        try:
            record, warnings = self._parse(kind, name, value, expires, key)
        except EncryptedValueError as e:
            return self._reject(key, e.reason, "encrypted")
        except UnsupportedKindError as e:
            return self._reject(key, e.reason, "kind")
        except DecodeError as e:
            return self._reject(key, e.reason, "decode")
        except objects.ObjectError as e:
            return self._reject(key, str(e), "invalid")
        except flannel.FlannelError as e:
            return self._reject(key, str(e), "lease" if kind == "lease" else "network")
        self.problems.pop(key, None)
        self._key_problems.pop(key, None)
        if warnings:
            self._key_problems[key] = [Problem(key, _bounded(w), "invalid") for w in warnings]
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
        return self._forget(key, *where)

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
        self, kind: str, name: str, value: bytes, expires: float | None, key: str
    ) -> tuple[object, list[str]]:
        if kind == "network":
            return flannel.parse_network_config(value), []
        if kind == "lease":
            return flannel.parse_lease(name, value, expires=expires, key=key), []
        obj = decode_value(value, managed_fields=False)  # managedFields are most of a real object
        expected = _EXPECTED_KIND[kind]
        if obj.get("kind") != expected:
            raise DecodeError(
                f"expected a {expected} under this key, found {obj.get('apiVersion')} {obj.get('kind')}"
            )
        converted = _CONVERTERS[kind](obj)
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
        self._slices_by_service[owner].add(key)
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
            return Change({(ns, name)})
        self._slices.pop(key, None)
        owner = self._slice_owner.pop(key, None)
        if owner is None:
            return Change(set())
        self._slices_by_service[owner].discard(key)
        if not self._slices_by_service[owner]:
            del self._slices_by_service[owner]
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
            return tuple(g for k in sorted(keys) for g in self._slices[k]), "EndpointSlices"
        ns, name = ref
        key = f"{self.layout.kube_prefix.rstrip('/')}/services/endpoints/{ns}/{name}"
        return self._endpoints.get(key, ()), "Endpoints"

    def all_problems(self) -> list[Problem]:
        out = list(self.problems.values())
        for warnings in self._key_problems.values():
            out.extend(warnings)
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
        keys += sorted(self._slices_by_service.get(ref, ()))
        return keys
