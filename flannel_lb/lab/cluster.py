"""The Kubernetes side of the lab: what kube-apiserver and its controllers would keep in etcd.

There is no apiserver in the lab. This module keeps a small model (deployments, pods, services,
nodes), plays the controllers that matter to a load balancer (ReplicaSet + scheduler + host-local
IPAM, the Endpoints controller, the EndpointSlice controller) and renders every object as its JSON
form. `pending_writes` diffs that against what was last written, so a sync writes only the objects
that changed, one key per revision, in the order the real components would. The model is plain JSON
(`to_json`/`from_json`) so CLI verbs in separate processes can load, change and save it.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import random
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from flannel_lb.lab import objects
from flannel_lb.lab.objects import PortTuple, now_rfc3339

REGISTRY = "/registry"
SERVICE_NET = ipaddress.IPv4Network("10.247.0.0/16")
KUBERNETES_SERVICE_IP = "10.247.0.1"
APISERVER_PORT = 6443
MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager's --max-endpoints-per-slice default
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
# k8s.io/apimachinery/pkg/util/rand: the alphabet of generated name suffixes and pod-template-hashes.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class ClusterError(Exception):
    """No such object, or it exists already: an operator mistake, reported as is."""


def _now_nano() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(n))


def _stable_suffix(seed: str, n: int = 10) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_NAME_ALPHABET[b % len(_NAME_ALPHABET)] for b in digest[:n])


# --- the model -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


DEFAULT_CONTAINER_PORTS = (
    ContainerPort("http", 80),
    ContainerPort("http-alt", 8080),
    ContainerPort("dns", 53, "UDP"),
    ContainerPort("mdns", 5353, "UDP"),
)


@dataclass(slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: str = "TCP"

    @classmethod
    def parse(cls, spec: str, index: int = 0, total: int = 1) -> ServicePort:
        """`[name:]port[:targetPort][/PROTO]`, e.g. `80`, `http:80:http`, `dns:53/UDP`, `8080:80`.

        Like `kubectl expose`, an unnamed port of a multi-port service is named `port-<n>`.
        """
        body, _, proto = spec.partition("/")
        parts = body.split(":")
        name = parts.pop(0) if parts and not parts[0].isdigit() else ""
        if not parts or not parts[0].isdigit() or len(parts) > 2:
            raise ValueError(f"bad port spec {spec!r}: expected [name:]port[:targetPort][/PROTO]")
        port = int(parts[0])
        target: int | str = port
        if len(parts) == 2:
            target = int(parts[1]) if parts[1].isdigit() else parts[1]
        if not name and total > 1:
            name = f"port-{index + 1}"
        protocol = (proto or "TCP").upper()
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"bad protocol in port spec {spec!r}")
        return cls(name, port, target, protocol)


@dataclass(slots=True)
class Deployment:
    name: str
    namespace: str
    replicas: int
    template_hash: str
    ports: list[ContainerPort]

    @property
    def selector(self) -> dict[str, str]:
        return {"app": self.name}


@dataclass(slots=True)
class Pod:
    name: str
    namespace: str
    deployment: str
    template_hash: str
    uid: str
    created: str
    ports: list[ContainerPort]
    node: str = ""  # "" while Pending (no schedulable node)
    ip: str = ""
    ready: bool = False
    terminating: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.deployment, "pod-template-hash": self.template_hash}


@dataclass(slots=True)
class Service:
    name: str
    namespace: str
    uid: str
    created: str
    ports: list[ServicePort]
    cluster_ip: str
    selector: dict[str, str] | None  # None: endpoints are written by someone else (`static_endpoints`)
    external_ips: list[str] = field(default_factory=list)
    session_affinity: str = "None"
    labels: dict[str, str] = field(default_factory=dict)
    static_endpoints: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)  # loadBalancerSourceRanges, as written

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class Node:
    name: str
    uid: str
    created: str
    internal_ip: str
    pod_cidr: str
    backend_type: str
    backend_data: dict[str, Any] | None
    unschedulable: bool = False
    cordoned_at: str = ""


@dataclass(slots=True)
class Cluster:
    deployments: dict[str, Deployment] = field(default_factory=dict)  # "<ns>/<name>"
    pods: dict[str, Pod] = field(default_factory=dict)  # pod name (unique: random suffixes)
    services: dict[str, Service] = field(default_factory=dict)  # "<ns>/<name>"
    nodes: dict[str, Node] = field(default_factory=dict)
    slice_names: dict[str, dict[str, str]] = field(default_factory=dict)  # service ref -> group -> name
    meta: dict[str, dict[str, str]] = field(default_factory=dict)  # etcd key -> uid, creationTimestamp
    written: dict[str, str] = field(default_factory=dict)  # etcd key -> digest of what was last written
    ipam_last: dict[str, int] = field(default_factory=dict)  # node -> last allocated host index

    # -- persistence ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Cluster:
        def cports(items: list[dict[str, Any]]) -> list[ContainerPort]:
            return [ContainerPort(**p) for p in items]

        deployments = {
            k: Deployment(**{**d, "ports": cports(d["ports"])}) for k, d in doc["deployments"].items()
        }
        pods = {k: Pod(**{**p, "ports": cports(p["ports"])}) for k, p in doc["pods"].items()}
        services = {
            k: Service(**{**s, "ports": [ServicePort(**p) for p in s["ports"]]})
            for k, s in doc["services"].items()
        }
        return cls(
            deployments=deployments,
            pods=pods,
            services=services,
            nodes={k: Node(**n) for k, n in doc["nodes"].items()},
            slice_names={k: dict(v) for k, v in doc["slice_names"].items()},
            meta={k: dict(v) for k, v in doc["meta"].items()},
            written=dict(doc["written"]),
            ipam_last={k: int(v) for k, v in doc["ipam_last"].items()},
        )

    # -- lookups ----------------------------------------------------------------------------------

    def deployment(self, name: str) -> Deployment:
        ref = name if "/" in name else f"default/{name}"
        if ref not in self.deployments:
            raise ClusterError(f"no deployment {ref} (have: {', '.join(self.deployments) or 'none'})")
        return self.deployments[ref]

    def pod(self, name: str) -> Pod:
        if name not in self.pods:
            raise ClusterError(f"no pod {name!r}")
        return self.pods[name]

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise ClusterError(f"no node {name!r} (have: {', '.join(self.nodes)})")
        return self.nodes[name]

    def pods_of(self, dep: Deployment) -> list[Pod]:
        return [p for p in self.pods.values() if p.namespace == dep.namespace and p.deployment == dep.name]

    # -- what the operator does -------------------------------------------------------------------

    def add_node(
        self, name: str, internal_ip: str, pod_cidr: str, backend_type: str, backend_data: Any
    ) -> Node:
        node = Node(name, str(uuid.uuid4()), now_rfc3339(), internal_ip, pod_cidr, backend_type, backend_data)
        self.nodes[name] = node
        return node

    def add_deployment(
        self,
        name: str,
        replicas: int,
        ports: Sequence[ContainerPort] = DEFAULT_CONTAINER_PORTS,
        namespace: str = "default",
    ) -> Deployment:
        ref = f"{namespace}/{name}"
        if ref in self.deployments:
            raise ClusterError(f"deployment {ref} exists")
        dep = Deployment(
            name, namespace, replicas, _stable_suffix(ref), [ContainerPort(**asdict(p)) for p in ports]
        )
        self.deployments[ref] = dep
        return dep

    def add_service(
        self,
        name: str,
        ports: Sequence[ServicePort],
        selector: dict[str, str] | None,
        *,
        namespace: str = "default",
        external_ips: Sequence[str] = (),
        session_affinity: str = "None",
        labels: Mapping[str, str] | None = None,
        cluster_ip: str | None = None,
        static_endpoints: Sequence[str] = (),
        source_ranges: Sequence[str] = (),
    ) -> Service:
        ref = f"{namespace}/{name}"
        if ref in self.services:
            raise ClusterError(f"service {ref} exists")
        svc = Service(
            name=name,
            namespace=namespace,
            uid=str(uuid.uuid4()),
            created=now_rfc3339(),
            ports=list(ports),
            cluster_ip=cluster_ip or self._free_cluster_ip(),
            selector=selector,
            external_ips=list(external_ips),
            session_affinity=session_affinity,
            labels=dict(labels if labels is not None else (selector or {})),
            static_endpoints=list(static_endpoints),
            source_ranges=list(source_ranges),
        )
        self.services[ref] = svc
        return svc

    def _free_cluster_ip(self) -> str:
        used = {s.cluster_ip for s in self.services.values()} | {KUBERNETES_SERVICE_IP}
        while True:  # the apiserver's allocator is random too
            ip = str(SERVICE_NET.network_address + random.randint(2, SERVICE_NET.num_addresses - 2))
            if ip not in used:
                return ip

    def cordon(self, name: str) -> None:
        node = self.node(name)
        if not node.unschedulable:
            node.unschedulable, node.cordoned_at = True, now_rfc3339()

    def new_revision(self, deployment: str) -> str:
        """A changed pod template (`kubectl rollout restart`): new pods get a new pod-template-hash."""
        dep = self.deployment(deployment)
        dep.template_hash = _suffix(10)
        return dep.template_hash

    # -- the ReplicaSet controller, scheduler and IPAM ----------------------------------------------

    def reconcile_replicas(self) -> tuple[list[Pod], list[Pod]]:
        """Create or pick pods so every deployment has `replicas` live pods.

        Returns (pods that got a node and need a sandbox now, pods newly marked terminating).
        Terminating pods do not count as replicas, so killing a pod creates its replacement at once.
        """
        started: list[Pod] = []
        doomed: list[Pod] = []
        for dep in self.deployments.values():
            live = [p for p in self.pods_of(dep) if not p.terminating]
            for pod in live:
                if not pod.node and self._schedule(dep, pod):
                    started.append(pod)
            for _ in range(dep.replicas - len(live)):
                pod = self._new_pod(dep)
                if self._schedule(dep, pod):
                    started.append(pod)
            if len(live) > dep.replicas:
                # ReplicaSet's victim order: unscheduled, then not ready, then the youngest.
                unscheduled = [p for p in live if not p.node]
                rest = sorted(
                    (p for p in live if p.node), key=lambda p: (p.ready, _neg_time(p.created), p.name)
                )
                for pod in (unscheduled + rest)[: len(live) - dep.replicas]:
                    pod.terminating, pod.ready = True, False
                    doomed.append(pod)
        return started, doomed

    def _new_pod(self, dep: Deployment) -> Pod:
        while True:
            name = f"{dep.name}-{dep.template_hash}-{_suffix()}"
            if name not in self.pods:
                break
        pod = Pod(
            name=name,
            namespace=dep.namespace,
            deployment=dep.name,
            template_hash=dep.template_hash,
            uid=str(uuid.uuid4()),
            created=_now_nano(),
            ports=[ContainerPort(**asdict(p)) for p in dep.ports],
        )
        self.pods[name] = pod
        return pod

    def _schedule(self, dep: Deployment, pod: Pod) -> bool:
        """Spread like the default scheduler would for a plain deployment; False if nowhere fits."""
        candidates = [n for n in self.nodes.values() if not n.unschedulable]
        if not candidates:
            return False

        def load(n: Node) -> tuple[int, int, str]:
            on_node = [p for p in self.pods.values() if p.node == n.name and not p.terminating]
            mine = sum(1 for p in on_node if p.deployment == dep.name and p.namespace == dep.namespace)
            return mine, len(on_node), n.name

        node = min(candidates, key=load)
        pod.node, pod.ip = node.name, self._allocate_ip(node)
        return True

    def _allocate_ip(self, node: Node) -> str:
        """host-local IPAM: round robin from the last reservation, skipping the gateway (.1)."""
        net = ipaddress.IPv4Network(node.pod_cidr)
        used = {p.ip for p in self.pods.values() if p.node == node.name}
        first, last = 2, net.num_addresses - 2
        start = self.ipam_last.get(node.name, first - 1)
        for step in range(1, last - first + 2):
            idx = first + (start - first + step) % (last - first + 1)
            ip = str(net.network_address + idx)
            if ip not in used:
                self.ipam_last[node.name] = idx
                return ip
        raise RuntimeError(f"node {node.name}: pod CIDR {node.pod_cidr} is full")

    def remove_pod(self, name: str) -> Pod:
        return self.pods.pop(name)

    # -- rendering: the objects as the apiserver stores them ----------------------------------------

    def _meta(self, key: str) -> dict[str, str]:
        """uid and creationTimestamp of a controller-made object: fixed at first render."""
        return self.meta.setdefault(key, {"uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339()})

    def render(self) -> dict[str, dict[str, Any]]:
        """Every object the lab's cluster keeps in etcd, by key (JSON form, with apiVersion/kind)."""
        out: dict[str, dict[str, Any]] = {}
        for node in self.nodes.values():
            out[f"{REGISTRY}/minions/{node.name}"] = _node_object(node)
        for svc in self.services.values():
            out[f"{REGISTRY}/services/specs/{svc.ref}"] = _service_object(svc)
            ep_key = f"{REGISTRY}/services/endpoints/{svc.ref}"
            out[ep_key] = self._endpoints_object(svc, self._meta(ep_key))
            out.update(self._slices(svc))
        live_slices = {k for k in out if k.startswith(f"{REGISTRY}/endpointslices/")}
        for key in [k for k in self.meta if k not in out]:
            self.meta.pop(key)
        for ref, groups in list(self.slice_names.items()):
            if ref not in self.services:
                self.slice_names.pop(ref)
                continue
            ns = ref.split("/")[0]
            for group, name in list(groups.items()):
                if f"{REGISTRY}/endpointslices/{ns}/{name}" not in live_slices:
                    groups.pop(group)
        return out

    def _selected(self, svc: Service) -> list[Pod]:
        sel = svc.selector or {}
        pods = [
            p
            for p in self.pods.values()
            if p.namespace == svc.namespace and p.ip and all(p.labels.get(k) == v for k, v in sel.items())
        ]
        return sorted(pods, key=lambda p: p.name)

    def _endpoints_object(self, svc: Service, meta: Mapping[str, str]) -> dict[str, Any]:
        """The Endpoints controller: ready pods in `addresses`, unready in `notReadyAddresses`,
        terminating pods left out, addresses grouped into subsets by their resolved ports."""
        subsets = []
        if svc.selector is None:
            ports = [(sp.name, _int_target(sp), sp.protocol) for sp in svc.ports]
            if svc.static_endpoints:
                subsets.append(objects.endpoints_subset([(ip, "") for ip in svc.static_endpoints], ports))
        else:
            by_ports: dict[str, tuple[list[PortTuple], list[dict[str, Any]], list[dict[str, Any]]]] = {}
            for pod in self._selected(svc):
                if pod.terminating:
                    continue
                ports = [(sp.name, n, sp.protocol) for sp, n in _resolved(svc, pod)]
                if not ports:
                    continue
                group = by_ports.setdefault(json.dumps(objects.endpoints_ports(ports)), (ports, [], []))
                addr = objects.endpoints_address(
                    pod.ip, pod.node, pod=pod.name, pod_namespace=pod.namespace, pod_uid=pod.uid
                )
                (group[1] if pod.ready else group[2]).append(addr)
            for _, (ports, ready, unready) in sorted(by_ports.items()):
                by_ip = sorted(ready, key=lambda a: a["ip"]), sorted(unready, key=lambda a: a["ip"])
                subsets.append(objects.endpoints_subset(by_ip[0], ports, not_ready=by_ip[1]))
        labels = dict(svc.labels)
        if svc.selector is None:
            labels["endpointslice.kubernetes.io/skip-mirror"] = "true"  # the apiserver writes its own slice
        return objects.endpoints(
            svc.name,
            subsets,
            svc.namespace,
            labels=labels,
            uid=meta["uid"],
            created=meta["creationTimestamp"],
        )

    def _slices(self, svc: Service) -> dict[str, dict[str, Any]]:
        """The EndpointSlice controller: one slice per distinct port mapping (chunks of 100), stable names,
        a placeholder slice when nothing is selected. Terminating pods stay, with their conditions."""
        prefix = f"{REGISTRY}/endpointslices/{svc.namespace}/"
        if svc.selector is None:
            return self._apiserver_slice(svc, prefix)
        groups: dict[str, tuple[list[PortTuple], list[dict[str, Any]]]] = {}
        for pod in self._selected(svc):
            ports = [(sp.name, n, sp.protocol) for sp, n in _resolved(svc, pod)]
            if svc.ports and not ports:
                continue
            endpoint = objects.endpoint(
                pod.ip,
                pod.node,
                ready=pod.ready and not pod.terminating,
                serving=pod.ready,
                terminating=pod.terminating,
                pod=pod.name,
                pod_namespace=pod.namespace,
                pod_uid=pod.uid,
            )
            # the group's name in `slice_names` (saved with the model) is the ports' JSON form
            groups.setdefault(json.dumps(objects.slice_ports(ports)), (ports, []))[1].append(endpoint)
        chunks: dict[str, tuple[list[PortTuple], list[dict[str, Any]]]] = {}
        for sig, (ports, endpoints) in sorted(groups.items()):
            for i in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
                chunks[f"{sig}#{i // MAX_ENDPOINTS_PER_SLICE}"] = (
                    ports,
                    endpoints[i : i + MAX_ENDPOINTS_PER_SLICE],
                )
        if not chunks:
            chunks["placeholder"] = ([], [])
        names = self.slice_names.setdefault(svc.ref, {})
        out: dict[str, dict[str, Any]] = {}
        for group, (ports, endpoints) in chunks.items():
            if group not in names:
                taken = set(names.values())
                while (fresh := f"{svc.name}-{_suffix()}") in taken:
                    pass
                names[group] = fresh
            name = names[group]
            key = prefix + name
            meta = self._meta(key)
            out[key] = objects.endpoint_slice(
                name,
                svc.name,
                endpoints,
                ports,
                svc.namespace,
                labels=svc.labels,
                uid=meta["uid"],
                created=meta["creationTimestamp"],
                generate_name=f"{svc.name}-",
                owners=[objects.controller_ref("Service", svc.name, svc.uid)],
            )
        return out

    def _apiserver_slice(self, svc: Service, prefix: str) -> dict[str, dict[str, Any]]:
        """The `kubernetes` Service's slice, written by the apiserver's endpoint reconciler."""
        key = prefix + svc.name
        meta = self._meta(key)
        ports = [(sp.name, _int_target(sp), sp.protocol) for sp in svc.ports]
        endpoints = [objects.endpoint(ip, conditions={"ready": True}) for ip in svc.static_endpoints]
        obj = objects.endpoint_slice(
            svc.name,
            svc.name,
            endpoints,
            ports,
            svc.namespace,
            managed_by="",
            uid=meta["uid"],
            created=meta["creationTimestamp"],
        )
        return {key: obj}

    # -- diffing against etcd ---------------------------------------------------------------------

    def pending_writes(self) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
        """(puts, deletes) that bring etcd to `render()`, in the order the real writers would act.

        Objects come back ready to write: Endpoints and slices get a fresh last-change-trigger-time.
        Call `mark_written` after each successful write.
        """
        rendered = self.render()
        puts = [(k, o) for k, o in rendered.items() if self.written.get(k) != _digest(o)]
        puts.sort(key=lambda kv: (_kind_rank(kv[0]), kv[0]))
        deletes = sorted((k for k in self.written if k not in rendered), key=lambda k: (_kind_rank(k), k))
        stamp = _now_nano()
        for key, obj in puts:
            if obj["kind"] in ("Endpoints", "EndpointSlice") and _kind_rank(key) >= 2:
                obj["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = stamp
        return puts, deletes

    def mark_written(self, key: str, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self.written.pop(key, None)
        else:
            self.written[key] = _digest(obj)


# --- helpers -----------------------------------------------------------------------------------------


def _neg_time(created: str) -> str:
    """Sort key putting the youngest first (RFC 3339 UTC strings compare chronologically)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in created)


def _kind_rank(key: str) -> int:
    for rank, part in enumerate(
        ("/minions/", "/services/specs/", "/services/endpoints/", "/endpointslices/")
    ):
        if key.startswith(REGISTRY + part):
            return rank
    return 9


def _digest(obj: Mapping[str, Any]) -> str:
    """Content digest ignoring the trigger-time annotation (it changes on every write by design)."""
    meta = dict(obj.get("metadata", {}))
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != TRIGGER_TIME}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    body = {**obj, "metadata": meta}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _int_target(sp: ServicePort) -> int:
    return sp.target_port if isinstance(sp.target_port, int) else sp.port


def _resolved(svc: Service, pod: Pod) -> list[tuple[ServicePort, int]]:
    """Each service port with the pod's port number; a named port the pod lacks is skipped (FindPort)."""
    out = []
    for sp in svc.ports:
        if isinstance(sp.target_port, int):
            out.append((sp, sp.target_port))
            continue
        for cp in pod.ports:
            if cp.name == sp.target_port and cp.protocol == sp.protocol:
                out.append((sp, cp.port))
                break
    return out


def _service_object(svc: Service) -> dict[str, Any]:
    return objects.service(
        svc.name,
        svc.namespace,
        ports=[objects.port(sp.port, sp.target_port, name=sp.name, protocol=sp.protocol) for sp in svc.ports],
        selector=svc.selector,
        cluster_ip=svc.cluster_ip,
        external_ips=svc.external_ips,
        session_affinity=svc.session_affinity,
        uid=svc.uid,
        created=svc.created,
        labels=svc.labels,
        apiserver_defaults=True,
        source_ranges=svc.source_ranges,
    )


def _node_object(node: Node) -> dict[str, Any]:
    return objects.node(
        node.name,
        node.pod_cidr,
        node.internal_ip,
        flannel=objects.flannel_annotations(node.internal_ip, node.backend_type, node.backend_data),
        uid=node.uid,
        created=node.created,
        labels={
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        },
        unschedulable_since=node.cordoned_at if node.unschedulable else "",
        ready_since=node.created,
    )


# --- encoding --------------------------------------------------------------------------------------

Encoder = Callable[[dict[str, Any]], bytes]


def encode_json(obj: dict[str, Any]) -> bytes:
    """What kube-apiserver stores with --storage-media-type=application/json (json.Encoder adds the \\n)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def protobuf_encoder() -> Encoder | None:
    """`flannel_lb.decode.kube.encode_protobuf` once it exists (it is written alongside the lab)."""
    try:
        module = importlib.import_module("flannel_lb.decode.kube")
    except ModuleNotFoundError:
        return None
    fn = getattr(module, "encode_protobuf", None)
    return cast(Encoder, fn) if fn is not None else None


def resolve_media(media: str) -> str:
    """`auto` means what kube-apiserver does by default (protobuf) when the encoder is available."""
    if media == "auto":
        return "protobuf" if protobuf_encoder() else "json"
    if media not in ("protobuf", "json"):
        raise ValueError(f"unknown storage media {media!r} (auto|protobuf|json)")
    if media == "protobuf" and protobuf_encoder() is None:
        raise ValueError(
            "protobuf storage needs flannel_lb.decode.kube.encode_protobuf, which is not available"
        )
    return media


def encoder(media: str) -> Encoder:
    """The one function every value goes through: `k8s\\0` protobuf (kube-apiserver's default) or JSON."""
    fn = protobuf_encoder() if resolve_media(media) == "protobuf" else None
    return fn or encode_json
