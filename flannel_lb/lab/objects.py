"""Kubernetes objects and flannel leases as they are stored in etcd: the one factory for the lab's
controllers (`lab/cluster.py`), the benchmarks and the tests.

Objects are in their JSON form, keys in the Go structs' field order (what kube-apiserver's JSON
serializer writes; the protobuf encoding sorts by field number anyway). A keyword left at its default
leaves its field out, as the writer that did not set it would. There is no `resourceVersion`: the
apiserver clears it before it writes to etcd, where the key's revision is the version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

SLICE_MANAGER = "endpointslice-controller.k8s.io"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
FLANNEL_ANNOTATION = "flannel.alpha.coreos.com"
DEFAULT_CREATED = "2026-01-01T00:00:00Z"  # a fixed creationTimestamp keeps a Service's bytes stable
DEFAULT_AFFINITY_TIMEOUT = 10800  # the apiserver's default for sessionAffinity ClientIP

# (name, port, protocol) of an Endpoints or EndpointSlice port
PortTuple = tuple[str, int, str]
# an Endpoints address: (ip, nodeName), or one built by `endpoints_address`
Address = tuple[str, str] | Mapping[str, Any]


def now_rfc3339() -> str:
    """A creationTimestamp for now (metav1.Time has whole seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- metadata --------------------------------------------------------------------------------------


def metadata(
    name: str,
    namespace: str | None = None,
    *,
    uid: str = "",
    created: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    generate_name: str = "",
    owners: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """ObjectMeta: empty labels are left out; annotations are written when given, even empty."""
    meta: dict[str, Any] = {"name": name}
    if generate_name:
        meta["generateName"] = generate_name
    if namespace is not None:
        meta["namespace"] = namespace
    if uid:
        meta["uid"] = uid
    if created:
        meta["creationTimestamp"] = created
    if labels:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    return meta


def controller_ref(kind: str, name: str, uid: str, api_version: str = "v1") -> dict[str, Any]:
    """The ownerReference a controller sets on what it makes (an EndpointSlice -> its Service)."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def target_ref(pod: str, namespace: str = "default", uid: str = "") -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Pod", "namespace": namespace, "name": pod}
    if uid:
        ref["uid"] = uid
    return ref


# --- Service ---------------------------------------------------------------------------------------


def port(
    port: int, target: int | str | None = None, *, name: str = "", protocol: str = "TCP"
) -> dict[str, Any]:
    """A Service port; `target` is a number or the name of a container port (default: `port`)."""
    p: dict[str, Any] = {"name": name} if name else {}
    p.update(protocol=protocol, port=port, targetPort=port if target is None else target)
    return p


def service(
    name: str,
    namespace: str = "default",
    *,
    ports: Sequence[Mapping[str, Any]] | None = None,
    selector: Mapping[str, str] | None = None,
    cluster_ip: str = "10.247.0.10",
    type: str = "ClusterIP",
    external_ips: Sequence[str] = (),
    session_affinity: str = "None",
    load_balancer_ip: str = "",
    affinity_timeout: int | None = None,
    ingress: Sequence[str] = (),
    uid: str | None = None,
    created: str = DEFAULT_CREATED,
    labels: Mapping[str, str] | None = None,
    apiserver_defaults: bool = False,
    source_ranges: Sequence[str] = (),
) -> dict[str, Any]:
    """A v1 Service. `ports` default to one TCP port 80; `uid` to one derived from the name.

    `affinity_timeout` means sessionAffinity ClientIP with that timeout (ClientIP without one gets the
    apiserver's default). `apiserver_defaults` adds what kube-apiserver >= 1.22 fills in on create
    (ipFamilies, ipFamilyPolicy, internalTrafficPolicy, an empty status); without it the Service is as
    an older apiserver stored it.
    """
    affinity = "ClientIP" if affinity_timeout else session_affinity
    spec: dict[str, Any] = {"ports": [dict(p) for p in ports] if ports is not None else [port(80)]}
    if selector is not None:
        spec["selector"] = dict(selector)
    spec.update(clusterIP=cluster_ip, clusterIPs=[cluster_ip], type=type)
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    spec["sessionAffinity"] = affinity
    if load_balancer_ip:
        spec["loadBalancerIP"] = load_balancer_ip
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if affinity == "ClientIP":
        timeout = affinity_timeout or DEFAULT_AFFINITY_TIMEOUT
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    if apiserver_defaults:
        spec.update(ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack", internalTrafficPolicy="Cluster")
    meta = metadata(
        name,
        namespace,
        uid=f"uid-{namespace}-{name}" if uid is None else uid,
        created=created,
        labels=labels,
    )
    obj: dict[str, Any] = {"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": spec}
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    elif apiserver_defaults:
        obj["status"] = {"loadBalancer": {}}
    return obj


# --- Endpoints (v1) --------------------------------------------------------------------------------


def endpoints_address(
    ip: str, node: str = "", *, pod: str = "", pod_namespace: str = "default", pod_uid: str = ""
) -> dict[str, Any]:
    address: dict[str, Any] = {"ip": ip}
    if node:
        address["nodeName"] = node
    if pod:
        address["targetRef"] = target_ref(pod, pod_namespace, pod_uid)
    return address


def _address(a: Address) -> dict[str, Any]:
    return endpoints_address(*a) if isinstance(a, tuple) else dict(a)


def endpoints_subset(
    ready: Sequence[Address], ports: Sequence[PortTuple], *, not_ready: Sequence[Address] = ()
) -> dict[str, Any]:
    """One subset: ready `addresses`, `notReadyAddresses`, and the ports they serve."""
    subset: dict[str, Any] = {}
    if ready:
        subset["addresses"] = [_address(a) for a in ready]
    if not_ready:
        subset["notReadyAddresses"] = [_address(a) for a in not_ready]
    subset["ports"] = endpoints_ports(ports)
    return subset


def endpoints_ports(ports: Sequence[PortTuple]) -> list[dict[str, Any]]:
    """A subset's ports; an empty name is left out."""
    return [
        {"name": n, "port": p, "protocol": proto} if n else {"port": p, "protocol": proto}
        for n, p, proto in ports
    ]


def endpoints(
    name: str,
    subsets: Sequence[Mapping[str, Any]] = (),
    namespace: str = "default",
    *,
    uid: str = "",
    created: str = "",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A v1 Endpoints object (no subsets: none written, as the Endpoints controller does)."""
    obj: dict[str, Any] = {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": metadata(name, namespace, uid=uid, created=created, labels=labels),
    }
    if subsets:
        obj["subsets"] = [dict(s) for s in subsets]
    return obj


# --- EndpointSlice ---------------------------------------------------------------------------------


def endpoint(
    ip: str,
    node: str = "",
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    conditions: Mapping[str, bool] | None = None,
    pod: str = "",
    pod_namespace: str = "default",
    pod_uid: str = "",
) -> dict[str, Any]:
    """One EndpointSlice endpoint. `serving` defaults to `ready`; `terminating` is written when given.

    `conditions` replaces all three, for writers that set others (the apiserver's own reconciler sets
    only `ready`).
    """
    if conditions is None:
        conditions = {"ready": ready, "serving": ready if serving is None else serving}
        if terminating is not None:
            conditions = {**conditions, "terminating": terminating}
    ep: dict[str, Any] = {"addresses": [ip], "conditions": dict(conditions)}
    if pod:
        ep["targetRef"] = target_ref(pod, pod_namespace, pod_uid)
    if node:
        ep["nodeName"] = node
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: Sequence[Mapping[str, Any]],
    ports: Sequence[PortTuple],
    namespace: str = "default",
    *,
    api_version: str = "discovery.k8s.io/v1",
    address_type: str = "IPv4",
    labels: Mapping[str, str] | None = None,
    managed_by: str = SLICE_MANAGER,
    uid: str = "",
    created: str = "",
    generate_name: str = "",
    owners: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An EndpointSlice of `service_name`: `labels` plus the service-name label and, unless `managed_by`
    is empty, the managed-by label."""
    all_labels = {**(labels or {}), LABEL_SERVICE_NAME: service_name}
    if managed_by:
        all_labels[LABEL_MANAGED_BY] = managed_by
    meta = metadata(
        name,
        namespace,
        uid=uid,
        created=created,
        labels=all_labels,
        generate_name=generate_name,
        owners=owners,
    )
    return {
        "kind": "EndpointSlice",
        "apiVersion": api_version,
        "metadata": meta,
        "addressType": address_type,
        "endpoints": [dict(e) for e in endpoints],
        "ports": slice_ports(ports),
    }


def slice_ports(ports: Sequence[PortTuple]) -> list[dict[str, Any]]:
    """An EndpointSlice's ports; names are always written, even empty (they are pointers)."""
    return [{"name": n, "protocol": proto, "port": p} for n, p, proto in ports]


# --- Node and flannel --------------------------------------------------------------------------------


def flannel_annotations(public_ip: str, backend_type: str, backend_data: Any = None) -> dict[str, str]:
    """What flannel's kube subnet manager annotates a Node with (keys without the annotation prefix)."""
    out = {"public-ip": public_ip, "backend-type": backend_type}
    if backend_data is not None:
        out["backend-data"] = json.dumps(backend_data, separators=(",", ":"))
    return out


def node(
    name: str,
    pod_cidr: str,
    internal_ip: str,
    *,
    flannel: Mapping[str, str] | None = None,
    uid: str = "",
    created: str = "",
    labels: Mapping[str, str] | None = None,
    unschedulable_since: str = "",
    ready_since: str = "",
) -> dict[str, Any]:
    """A v1 Node. `flannel`: annotations by name without the prefix (`flannel_annotations`);
    `unschedulable_since`: cordoned then (the taint's timeAdded); `ready_since`: the kubelet's Ready
    condition from then."""
    annotations = {f"{FLANNEL_ANNOTATION}/{k}": v for k, v in (flannel or {}).items()}
    spec: dict[str, Any] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    if unschedulable_since:
        spec["unschedulable"] = True
        spec["taints"] = [
            {
                "key": "node.kubernetes.io/unschedulable",
                "effect": "NoSchedule",
                "timeAdded": unschedulable_since,
            }
        ]
    status: dict[str, Any] = {}
    if ready_since:
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "True",
                "lastHeartbeatTime": ready_since,
                "lastTransitionTime": ready_since,
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
            }
        ]
    status["addresses"] = [
        {"type": "InternalIP", "address": internal_ip},
        {"type": "Hostname", "address": name},
    ]
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": metadata(name, uid=uid, created=created, labels=labels, annotations=annotations),
        "spec": spec,
        "status": status,
    }


def lease(public_ip: str, vtep_mac: str = "", *, backend: str = "vxlan", vni: int = 1) -> bytes:
    """A flannel subnet lease value exactly as flannel >= v0.15 marshals LeaseAttrs (field order, compact)."""
    attrs: dict[str, Any] = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": backend}
    if backend == "vxlan":
        attrs["BackendData"] = {"VNI": vni, "VtepMAC": vtep_mac}
    return json.dumps(attrs, separators=(",", ":")).encode()
