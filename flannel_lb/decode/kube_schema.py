"""Field tables for the Kubernetes messages flannel-lb reads from etcd.

Written as a small text table (one line per field, like the upstream ``generated.proto``) so it can
be checked against the .proto files at a glance; :func:`parse_schema` turns it into :class:`Field`
records at import time and rejects typos there rather than at decode time.

Line format: ``<number> <jsonName> <type> [rep] [ptr] [keep]``

* type: ``string int32 int64 bool bytes`` scalars; ``time`` (meta/v1 Time, JSON RFC3339 seconds;
  MicroTime is left out: no field read here has it), ``intorstring``, ``quantity``, ``fieldsv1`` (raw
  JSON bytes), ``map<string,string>``, ``map<string,quantity>``, or another message's name.
* ``rep``: repeated (never packed: Kubernetes protos are proto2).
* ``ptr``: a Go pointer (``*string``, ``*Time``, ``*Struct``): gogo writes it only when set, and JSON
  shows it whenever set, even as ``false``/``0``/``""``.
* ``keep``: a non-pointer scalar whose Go JSON tag has no ``omitempty``, so ``-o json`` shows its
  zero value. Without ``ptr``/``keep`` a zero scalar is dropped (omitempty).

Non-pointer structs are always written by gogo, so message fields are emitted whenever present on
the wire. Field numbers from kubernetes/api and kubernetes/apimachinery ``generated.proto`` (master);
numbers that no longer exist (ObjectMeta 15 clusterName, ServiceSpec 15 ipFamily / 16
topologyKeys, ...) are deliberately absent so the decoder skips them, like the API server does.
"""

from __future__ import annotations

from dataclasses import dataclass

SCALAR_TYPES = frozenset({"string", "int32", "int64", "bool", "bytes"})
WRAPPED_TYPES = frozenset({"time", "intorstring", "quantity", "fieldsv1"})
MAP_TYPES = frozenset({"map<string,string>", "map<string,quantity>"})

SCHEMA = """
# --- k8s.io/apimachinery/pkg/runtime ---------------------------------------------------------
# The envelope after "k8s\x00". kube.py parses it by hand (raw is not base64 there); listed here
# for reference. TypeMeta is used as is.
message runtime.Unknown
  1 typeMeta          runtime.TypeMeta
  2 raw               bytes
  3 contentEncoding   string
  4 contentType       string

message runtime.TypeMeta
  1 apiVersion  string
  2 kind        string

# --- k8s.io/apimachinery/pkg/apis/meta/v1 ----------------------------------------------------
message meta.v1.ObjectMeta
  1  name                        string
  2  generateName                string
  3  namespace                   string
  4  selfLink                    string
  5  uid                         string
  6  resourceVersion             string
  7  generation                  int64
  8  creationTimestamp           time
  9  deletionTimestamp           time      ptr
  10 deletionGracePeriodSeconds  int64     ptr
  11 labels                      map<string,string>
  12 annotations                 map<string,string>
  13 ownerReferences             meta.v1.OwnerReference     rep
  14 finalizers                  string                     rep
  17 managedFields               meta.v1.ManagedFieldsEntry rep

message meta.v1.OwnerReference
  1 kind                string  keep
  3 name                string  keep
  4 uid                 string  keep
  5 apiVersion          string  keep
  6 controller          bool    ptr
  7 blockOwnerDeletion  bool    ptr

message meta.v1.ManagedFieldsEntry
  1 manager      string
  2 operation    string
  3 apiVersion   string
  4 time         time      ptr
  6 fieldsType   string
  7 fieldsV1     fieldsv1  ptr
  8 subresource  string

message meta.v1.Condition
  1 type                string  keep
  2 status              string  keep
  3 observedGeneration  int64
  4 lastTransitionTime  time
  5 reason              string  keep
  6 message             string  keep

# --- k8s.io/api/core/v1: shared ---------------------------------------------------------------
message core.v1.ObjectReference
  1 kind             string
  2 namespace        string
  3 name             string
  4 uid              string
  5 apiVersion       string
  6 resourceVersion  string
  7 fieldPath        string

# --- core/v1 Service --------------------------------------------------------------------------
message core.v1.Service
  1 metadata  meta.v1.ObjectMeta
  2 spec      core.v1.ServiceSpec
  3 status    core.v1.ServiceStatus

message core.v1.ServiceSpec
  1  ports                          core.v1.ServicePort  rep
  2  selector                       map<string,string>
  3  clusterIP                      string
  4  type                           string
  5  externalIPs                    string  rep
  7  sessionAffinity                string
  8  loadBalancerIP                 string
  9  loadBalancerSourceRanges       string  rep
  10 externalName                   string
  11 externalTrafficPolicy          string
  12 healthCheckNodePort            int32
  13 publishNotReadyAddresses       bool
  14 sessionAffinityConfig          core.v1.SessionAffinityConfig  ptr
  17 ipFamilyPolicy                 string  ptr
  18 clusterIPs                     string  rep
  19 ipFamilies                     string  rep
  20 allocateLoadBalancerNodePorts  bool    ptr
  21 loadBalancerClass              string  ptr
  22 internalTrafficPolicy          string  ptr
  23 trafficDistribution            string  ptr

message core.v1.ServicePort
  1 name         string
  2 protocol     string
  3 port         int32  keep
  4 targetPort   intorstring
  5 nodePort     int32
  6 appProtocol  string  ptr

message core.v1.SessionAffinityConfig
  1 clientIP  core.v1.ClientIPConfig  ptr

message core.v1.ClientIPConfig
  1 timeoutSeconds  int32  ptr

message core.v1.ServiceStatus
  1 loadBalancer  core.v1.LoadBalancerStatus
  2 conditions    meta.v1.Condition  rep

message core.v1.LoadBalancerStatus
  1 ingress  core.v1.LoadBalancerIngress  rep

message core.v1.LoadBalancerIngress
  1 ip        string
  2 hostname  string
  3 ipMode    string  ptr
  4 ports     core.v1.PortStatus  rep

message core.v1.PortStatus
  1 port      int32   keep
  2 protocol  string  keep
  3 error     string  ptr

# --- core/v1 Endpoints ------------------------------------------------------------------------
message core.v1.Endpoints
  1 metadata  meta.v1.ObjectMeta
  2 subsets   core.v1.EndpointSubset  rep

message core.v1.EndpointSubset
  1 addresses          core.v1.EndpointAddress  rep
  2 notReadyAddresses  core.v1.EndpointAddress  rep
  3 ports              core.v1.EndpointPort     rep

message core.v1.EndpointAddress
  1 ip         string  keep
  2 targetRef  core.v1.ObjectReference  ptr
  3 hostname   string
  4 nodeName   string  ptr

# Note the order: port=2, protocol=3 (discovery's EndpointPort has protocol=2, port=3).
message core.v1.EndpointPort
  1 name         string
  2 port         int32   keep
  3 protocol     string
  4 appProtocol  string  ptr

# --- core/v1 Node -----------------------------------------------------------------------------
message core.v1.Node
  1 metadata  meta.v1.ObjectMeta
  2 spec      core.v1.NodeSpec
  3 status    core.v1.NodeStatus

message core.v1.NodeSpec
  1 podCIDR              string
  2 externalID           string
  3 providerID           string
  4 unschedulable        bool
  5 taints               core.v1.Taint  rep
  6 configSource         core.v1.NodeConfigSource  ptr
  7 podCIDRs             string  rep
  8 podPreemptionPolicy  core.v1.NodePodPreemptionPolicy  ptr

message core.v1.Taint
  1 key        string  keep
  2 value      string
  3 effect     string  keep
  4 timeAdded  time    ptr

# Field 1 was the removed ObjectReference-based source.
message core.v1.NodeConfigSource
  2 configMap  core.v1.ConfigMapNodeConfigSource  ptr

message core.v1.ConfigMapNodeConfigSource
  1 namespace         string  keep
  2 name              string  keep
  3 uid               string
  4 resourceVersion   string
  5 kubeletConfigKey  string  keep

message core.v1.NodePodPreemptionPolicy
  1 disableResizePreemption  string  rep

message core.v1.NodeStatus
  1  capacity          map<string,quantity>
  2  allocatable       map<string,quantity>
  3  phase             string
  4  conditions        core.v1.NodeCondition  rep
  5  addresses         core.v1.NodeAddress    rep
  6  daemonEndpoints   core.v1.NodeDaemonEndpoints
  7  nodeInfo          core.v1.NodeSystemInfo
  8  images            core.v1.ContainerImage  rep
  9  volumesInUse      string  rep
  10 volumesAttached   core.v1.AttachedVolume  rep
  11 config            core.v1.NodeConfigStatus  ptr
  12 runtimeHandlers   core.v1.NodeRuntimeHandler  rep
  13 features          core.v1.NodeFeatures  ptr
  14 declaredFeatures  string  rep

message core.v1.NodeCondition
  1 type                string  keep
  2 status              string  keep
  3 lastHeartbeatTime   time
  4 lastTransitionTime  time
  5 reason              string
  6 message             string

message core.v1.NodeAddress
  1 type     string  keep
  2 address  string  keep

message core.v1.NodeDaemonEndpoints
  1 kubeletEndpoint  core.v1.DaemonEndpoint

# The JSON name really is capitalised.
message core.v1.DaemonEndpoint
  1 Port  int32  keep

message core.v1.NodeSystemInfo
  1  machineID                string  keep
  2  systemUUID               string  keep
  3  bootID                   string  keep
  4  kernelVersion            string  keep
  5  osImage                  string  keep
  6  containerRuntimeVersion  string  keep
  7  kubeletVersion           string  keep
  8  kubeProxyVersion         string  keep
  9  operatingSystem          string  keep
  10 architecture             string  keep
  11 swap                     core.v1.NodeSwapStatus  ptr

message core.v1.NodeSwapStatus
  1 capacity  int64  ptr

message core.v1.ContainerImage
  1 names      string  rep
  2 sizeBytes  int64

message core.v1.AttachedVolume
  1 name        string  keep
  2 devicePath  string  keep

message core.v1.NodeConfigStatus
  1 assigned       core.v1.NodeConfigSource  ptr
  2 active         core.v1.NodeConfigSource  ptr
  3 lastKnownGood  core.v1.NodeConfigSource  ptr
  4 error          string

message core.v1.NodeRuntimeHandler
  1 name      string  keep
  2 features  core.v1.NodeRuntimeHandlerFeatures  ptr

message core.v1.NodeRuntimeHandlerFeatures
  1 recursiveReadOnlyMounts  bool  ptr
  2 userNamespaces           bool  ptr

message core.v1.NodeFeatures
  1 supplementalGroupsPolicy  bool  ptr

# --- k8s.io/api/discovery/v1 ------------------------------------------------------------------
message discovery.v1.EndpointSlice
  1 metadata     meta.v1.ObjectMeta
  2 endpoints    discovery.v1.Endpoint  rep
  3 ports        discovery.v1.EndpointPort  rep
  4 addressType  string  keep

message discovery.v1.Endpoint
  1 addresses           string  rep
  2 conditions          discovery.v1.EndpointConditions
  3 hostname            string  ptr
  4 targetRef           core.v1.ObjectReference  ptr
  5 deprecatedTopology  map<string,string>
  6 nodeName            string  ptr
  7 zone                string  ptr
  8 hints               discovery.v1.EndpointHints  ptr

# A nil ready/serving must be read as true, nil terminating as false (discovery/v1 types.go).
message discovery.v1.EndpointConditions
  1 ready        bool  ptr
  2 serving      bool  ptr
  3 terminating  bool  ptr

message discovery.v1.EndpointHints
  1 forZones  discovery.v1.ForZone  rep
  2 forNodes  discovery.v1.ForNode  rep

message discovery.v1.ForZone
  1 name  string  keep

message discovery.v1.ForNode
  1 name  string  keep

message discovery.v1.EndpointPort
  1 name         string  ptr
  2 protocol     string  ptr
  3 port         int32   ptr
  4 appProtocol  string  ptr

# --- k8s.io/api/discovery/v1beta1 (also used for v1alpha1: same numbers, fewer fields) --------
message discovery.v1beta1.EndpointSlice
  1 metadata     meta.v1.ObjectMeta
  2 endpoints    discovery.v1beta1.Endpoint  rep
  3 ports        discovery.v1.EndpointPort  rep
  4 addressType  string  keep

# Unlike v1: 5 is "topology" and 7 is hints (v1 has zone=7, hints=8).
message discovery.v1beta1.Endpoint
  1 addresses   string  rep
  2 conditions  discovery.v1.EndpointConditions
  3 hostname    string  ptr
  4 targetRef   core.v1.ObjectReference  ptr
  5 topology    map<string,string>
  6 nodeName    string  ptr
  7 hints       discovery.v1.EndpointHints  ptr
"""

KINDS: dict[tuple[str, str], str] = {
    ("v1", "Service"): "core.v1.Service",
    ("v1", "Endpoints"): "core.v1.Endpoints",
    ("v1", "Node"): "core.v1.Node",
    ("discovery.k8s.io/v1", "EndpointSlice"): "discovery.v1.EndpointSlice",
    ("discovery.k8s.io/v1beta1", "EndpointSlice"): "discovery.v1beta1.EndpointSlice",
    # v1alpha1 (1.16-1.20) shares v1beta1's field numbers; unknown extras are skipped.
    ("discovery.k8s.io/v1alpha1", "EndpointSlice"): "discovery.v1beta1.EndpointSlice",
}
"""(apiVersion, kind) -> top-level message. Adding a kind is one entry here plus its messages."""


@dataclass(frozen=True, slots=True)
class Field:
    """One protobuf field and how its Go struct field shows in JSON (see the module docstring)."""

    number: int
    name: str
    type: str
    repeated: bool = False
    pointer: bool = False
    keep_zero: bool = False

    @property
    def is_message(self) -> bool:
        return self.type not in SCALAR_TYPES and self.type not in WRAPPED_TYPES and self.type not in MAP_TYPES


_FLAGS = {"rep": "repeated", "ptr": "pointer", "keep": "keep_zero"}


def parse_schema(text: str) -> dict[str, dict[int, Field]]:
    """Parse the table format above; raise ValueError on any inconsistency."""
    messages: dict[str, dict[int, Field]] = {}
    current: dict[int, Field] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "message":
            if len(words) != 2 or words[1] in messages:
                raise ValueError(f"schema line {lineno}: bad or duplicate message header {line!r}")
            current = messages[words[1]] = {}
            continue
        if current is None or len(words) < 3 or not words[0].isdigit():
            raise ValueError(f"schema line {lineno}: expected '<number> <name> <type> [flags]'")
        flags = {}
        for word in words[3:]:
            if word not in _FLAGS:
                raise ValueError(f"schema line {lineno}: unknown flag {word!r}")
            flags[_FLAGS[word]] = True
        field = Field(int(words[0]), words[1], words[2], **flags)
        if not 0 < field.number < 1 << 29:
            raise ValueError(f"schema line {lineno}: field number {field.number} out of range")
        if field.number in current or any(f.name == field.name for f in current.values()):
            raise ValueError(f"schema line {lineno}: duplicate field {field.number} {field.name}")
        if field.keep_zero and (field.pointer or field.type not in SCALAR_TYPES):
            raise ValueError(f"schema line {lineno}: 'keep' only applies to non-pointer scalars")
        if field.type in MAP_TYPES and (field.repeated or field.pointer):
            raise ValueError(f"schema line {lineno}: maps take no flags")
        current[field.number] = field
    for name, fields in messages.items():
        for field in fields.values():
            if field.is_message and field.type not in messages:
                raise ValueError(f"schema: {name}.{field.name} refers to unknown message {field.type}")
    for api_kind, top in KINDS.items():
        if top not in messages:
            raise ValueError(f"schema: kind {api_kind} refers to unknown message {top}")
    return messages


MESSAGES: dict[str, dict[int, Field]] = parse_schema(SCHEMA)
"""Message name -> field number -> Field."""


# What flannel_lb.decode.objects reads, per top-level message (a kind): `<message> <jsonName>...`.
# `kube.decode_used` decodes only these fields and skips every other one by its length, without
# building anything for it or looking inside (managedFields, ownerReferences, targetRef, selector,
# status.conditions, a Node's images, ...). Every message a kept field leads to must be listed.
# Keep in step with objects.py: a field read there but missing here would silently read as absent.
USED = """
kind core.v1.Service
  meta.v1.ObjectMeta             name namespace uid creationTimestamp labels annotations
  core.v1.Service                metadata spec status
  core.v1.ServiceSpec            ports clusterIP type externalIPs sessionAffinity loadBalancerIP
                                 externalTrafficPolicy sessionAffinityConfig clusterIPs
                                 loadBalancerSourceRanges
  core.v1.ServicePort            name protocol port targetPort nodePort
  core.v1.SessionAffinityConfig  clientIP
  core.v1.ClientIPConfig         timeoutSeconds
  core.v1.ServiceStatus          loadBalancer
  core.v1.LoadBalancerStatus     ingress
  core.v1.LoadBalancerIngress    ip

kind core.v1.Endpoints
  meta.v1.ObjectMeta             name namespace
  core.v1.Endpoints              metadata subsets
  core.v1.EndpointSubset         addresses notReadyAddresses ports
  core.v1.EndpointAddress        ip hostname nodeName
  core.v1.EndpointPort           name port protocol

kind core.v1.Node
  meta.v1.ObjectMeta             name namespace annotations
  core.v1.Node                   metadata spec status
  core.v1.NodeSpec               podCIDR unschedulable podCIDRs
  core.v1.NodeStatus             addresses
  core.v1.NodeAddress            type address

kind discovery.v1.EndpointSlice
  meta.v1.ObjectMeta             name namespace labels
  discovery.v1.EndpointSlice     metadata endpoints ports addressType
  discovery.v1.Endpoint          addresses conditions hostname nodeName
  discovery.v1.EndpointConditions  ready serving terminating
  discovery.v1.EndpointPort      name protocol port

kind discovery.v1beta1.EndpointSlice
  meta.v1.ObjectMeta             name namespace labels
  discovery.v1beta1.EndpointSlice  metadata endpoints ports addressType
  discovery.v1beta1.Endpoint     addresses conditions hostname topology nodeName
  discovery.v1.EndpointConditions  ready serving terminating
  discovery.v1.EndpointPort      name protocol port
"""


def parse_used(text: str, messages: dict[str, dict[int, Field]]) -> dict[str, dict[str, frozenset[str]]]:
    """Parse USED: top-level message -> message -> json names kept; raise ValueError on any mistake."""
    out: dict[str, dict[str, frozenset[str]]] = {}
    current: dict[str, frozenset[str]] | None = None
    last = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        words = line.split()
        if not words:
            continue
        if words[0] == "kind":
            if len(words) != 2 or words[1] in out or words[1] not in messages:
                raise ValueError(f"used fields line {lineno}: bad or duplicate kind {line.strip()!r}")
            current = out[words[1]] = {}
            last = ""
            continue
        if current is None:
            raise ValueError(f"used fields line {lineno}: fields before the first kind")
        if "." not in words[0] and last:
            current[last] = current[last] | frozenset(words)  # field names only: a continuation line
        elif words[0] in current or words[0] not in messages:
            raise ValueError(f"used fields line {lineno}: unknown or repeated message {words[0]!r}")
        else:
            last = words[0]
            current[last] = frozenset(words[1:])
        names = {f.name for f in messages[last].values()}
        if not current[last] <= names:
            unknown = sorted(current[last] - names)
            raise ValueError(f"used fields line {lineno}: {last} has no field(s) {', '.join(unknown)}")
    for top, kept in out.items():
        if top not in kept:
            raise ValueError(f"used fields: kind {top} does not list its own message")
        for message, fields in kept.items():
            for field in messages[message].values():
                if field.name in fields and field.is_message and field.type not in kept:
                    raise ValueError(f"used fields: {top} keeps {message}.{field.name} but not {field.type}")
    for top in KINDS.values():
        if top not in out:
            raise ValueError(f"used fields: no entry for kind {top}")
    return out


USED_FIELDS: dict[str, dict[str, frozenset[str]]] = parse_used(USED, MESSAGES)
"""Top-level message -> message -> json names of the fields flannel-lb's converters read."""
