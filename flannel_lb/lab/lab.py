"""The lab: the seed's cluster (client, load balancer, master with etcd, nodes, pods) on one machine.

`Lab` ties the pieces together and owns the state dir `/run/flannel-lb-lab/<name>/` (lab.json: prefix,
leases, etcd pid; cluster.json: the Kubernetes model; etcd/: etcd's data; logs/; flannel-lb.toml: the
agent's config for this lab, whose state file lies in that dir too). Every verb loads
that state, so `lab up` in one process and `lab scale` in another work on the same lab; a file lock
serialises them. `down()` needs nothing but the name: the namespace prefix is derived from it, and
every process the lab starts lives inside one of its namespaces, so it cleans up after any crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flannel_lb.kernel.netns import in_netns
from flannel_lb.lab import etcd_server, overlay, pods
from flannel_lb.lab.cluster import (
    APISERVER_PORT,
    DEFAULT_CONTAINER_PORTS,
    KUBERNETES_SERVICE_IP,
    Cluster,
    ClusterError,
    ContainerPort,
    Encoder,
    Pod,
    ServicePort,
    encoder,
    resolve_media,
)
from flannel_lb.lab.etcd_writer import EtcdWriter
from flannel_lb.lab.lbagent import agent_config
from flannel_lb.lab.netns import cleanup_prefix, list_namespaces
from flannel_lb.lab.objects import now_rfc3339
from flannel_lb.lab.overlay import Backend, SubnetLease
from flannel_lb.lab.progress import Progress
from flannel_lb.lab.topology import (
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    LB_INFRA_IP,
    MASTER_IP,
    MAX_NODES,
    SWITCH,
    LabNamespaces,
    Topology,
    build,
    plan,
)

STATE_ROOT = Path("/run/flannel-lb-lab")
DEFAULT_NAME = "lab"
_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")  # no '-': no lab's prefix can be a prefix of another's
DEFAULT_SERVICE_PORTS = (ServicePort("http", 80, "http", "TCP"), ServicePort("dns", 53, 53, "UDP"))


class LabError(RuntimeError):
    """An operator error (no such lab, pod, node ...) or a lab that failed to come up."""


@dataclass(slots=True)
class LabState:
    """lab.json: what every later process needs to find and drive the lab."""

    name: str
    prefix: str
    nodes: int
    backend: Backend
    media: str
    lb_overlay: bool
    created: str
    etcd_pid: int = 0
    leases: dict[str, SubnetLease] = field(default_factory=dict)  # host -> live lease
    drained: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabState:
        leases = {h: SubnetLease.from_json(v) for h, v in doc.get("leases", {}).items()}
        return cls(**{**doc, "leases": leases})


class _LabEtcd(etcd_server.EtcdServer):
    """EtcdServer that can be left running when this process exits (`lab up` from the CLI)."""

    def detach(self) -> subprocess.Popen[bytes] | None:
        """Hand over the process: no atexit reaping; the lab's namespace cleanup ends it instead."""
        proc = self._proc
        etcd_server._LIVE.discard(self)  # its atexit hook would stop etcd when `lab up` returns
        self._proc = None
        return proc


def prefix_for(name: str) -> str:
    return f"flb-lab-{name}-"


class Lab:
    """One lab, by name. Construction is cheap and touches nothing; `up()` builds, `down()` removes."""

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        *,
        nodes: int = 2,
        pods_per_node: int = 2,
        backend: Backend = "vxlan",
        media: str = "auto",
        deployment: str = "nginx",
        expose: bool = True,
        lb_overlay: bool = True,
        state_root: Path = STATE_ROOT,
    ) -> None:
        if not _NAME_RE.match(name):
            raise LabError(f"lab name must match {_NAME_RE.pattern}, got {name!r}")
        if backend not in overlay.BACKENDS:
            raise LabError(f"backend must be one of {overlay.BACKENDS}, got {backend!r}")
        if not 1 <= nodes <= MAX_NODES or pods_per_node < 0:
            raise LabError(
                f"need 1..{MAX_NODES} nodes and pods_per_node >= 0, got {nodes} and {pods_per_node}"
            )
        self.name = name
        self.prefix = prefix_for(name)
        self.state_dir = Path(state_root) / name
        self._nodes, self._pods_per_node = nodes, pods_per_node
        self._deployment, self._expose = deployment, expose
        self._backend: Backend = backend
        self._media = media
        self._lb_overlay = lb_overlay
        self._ns = LabNamespaces(self.prefix)
        self._writer: EtcdWriter | None = None
        self._encode: Encoder | None = None
        self._children: list[subprocess.Popen[bytes]] = []  # started here: reaped by down()/close()

    # -- paths and state --------------------------------------------------------------------------

    @property
    def _lab_file(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def _cluster_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def _log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def _etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def config_file(self) -> Path:
        """The agent's config for this lab (written by `up`); `lab exec` and `lab shell` use it."""
        return self.state_dir / "flannel-lb.toml"

    @property
    def etcd_url(self) -> str:
        """Where etcd listens; reachable only from inside the lab's kubernetes net (e.g. `master`)."""
        return f"http://{MASTER_IP}:{ETCD_CLIENT_PORT}"

    def is_up(self) -> bool:
        return any(n.startswith(self.prefix) for n in list_namespaces())

    def _write_json(self, path: Path, doc: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(path)

    def _load(self) -> tuple[LabState, Cluster]:
        try:
            state = LabState.from_json(json.loads(self._lab_file.read_text()))
            cluster = Cluster.from_json(json.loads(self._cluster_file.read_text()))
        except FileNotFoundError:
            raise LabError(f"lab {self.name!r} is not up (no state in {self.state_dir})") from None
        return state, cluster

    def _save(self, state: LabState, cluster: Cluster | None = None) -> None:
        self._write_json(self._lab_file, state.to_json())
        if cluster is not None:
            self._write_json(self._cluster_file, cluster.to_json())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise verbs across processes (two `lab scale` at once would race on cluster.json)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _topology(self, state: LabState) -> Topology:
        return plan(state.nodes)

    def _attach(self, state: LabState, cluster: Cluster) -> None:
        """Adopt the lab's namespaces created by another process (a CLI verb after `lab up`)."""
        for host in self._topology(state).hosts:
            self._ns.attach(host.name)
        self._ns.attach(SWITCH)
        for pod in cluster.pods.values():
            if pod.node:
                self._ns.attach(pods.pod_host(pod.name))

    # -- etcd -------------------------------------------------------------------------------------

    def etcd(self) -> EtcdWriter:
        """This process's writer (started on first use), running inside `master`."""
        if self._writer is None or self._writer.pid is None:
            self._ns.attach("master")
            self._writer = EtcdWriter(self._ns, "master", self.etcd_url, self._log_dir / "etcd-writer.log")
            self._writer.start()
        return self._writer

    def _sync(self, state: LabState, cluster: Cluster) -> int:
        """Write what the controllers would have written since the last sync; return the count."""
        if self._encode is None:
            self._encode = encoder(state.media)
        puts, deletes = cluster.pending_writes()
        writer = self.etcd()
        with Progress(f"lab {self.name}: etcd writes", len(puts) + len(deletes)) as progress:
            for key, obj in puts:
                writer.put(key, self._encode(obj))
                cluster.mark_written(key, obj)
                progress.advance()
            for key in deletes:
                writer.delete(key)
                cluster.mark_written(key, None)
                progress.advance()
        self._save(state, cluster)
        return len(puts) + len(deletes)

    # -- pods -------------------------------------------------------------------------------------

    def _converge(self, state: LabState, cluster: Cluster) -> None:
        """Run the controllers to a fixed point: new pods up and ready, terminating pods gone.

        Revisions land as they would in a cluster: terminating/new (unready) endpoints first, then the
        new pods turning ready, then the old ones disappearing.
        """
        started, _ = cluster.reconcile_replicas()
        self._sync(state, cluster)
        if started:
            procs: dict[str, subprocess.Popen[bytes]] = {}
            with Progress(f"lab {self.name}: pods started", len(started)) as progress:
                for pod in started:
                    procs[pod.name] = self._start_pod(state, cluster, pod)
                    progress.advance()
            pods.wait_ready(procs)
            for pod in started:
                pod.ready = True
            self._sync(state, cluster)
        gone = [p for p in cluster.pods.values() if p.terminating]
        for pod in gone:
            if pod.node:
                pods.delete_sandbox(self._ns, pod.name)
            cluster.remove_pod(pod.name)
        if gone:
            self._children = [c for c in self._children if c.poll() is None]  # reap killed pod servers
            self._sync(state, cluster)

    def _start_pod(self, state: LabState, cluster: Cluster, pod: Pod) -> subprocess.Popen[bytes]:
        subnet = cluster.node(pod.node).pod_cidr
        pods.create_sandbox(self._ns, pod.node, pod.name, pod.ip, subnet, overlay.mtu(state.backend))
        proc = pods.start_server(self._ns, pod.name, pod.ports, self._log_dir)
        self._children.append(proc)
        return proc

    # -- lifecycle --------------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Build everything; on any failure tear down what was built and re-raise."""
        if self.is_up():
            raise LabError(f"lab {self.name!r} is already up (namespaces {self.prefix}*); run down first")
        shutil.rmtree(self.state_dir, ignore_errors=True)  # stale state of a lab whose namespaces are gone
        self._log_dir.mkdir(parents=True)
        state = LabState(
            name=self.name,
            prefix=self.prefix,
            nodes=self._nodes,
            backend=self._backend,
            media=resolve_media(self._media),
            lb_overlay=self._lb_overlay,
            created=now_rfc3339(),
        )
        self._save(state)  # first of all: down() can always find the lab, even if up() dies below
        # the lab's own agent config: its state file lives and dies with the lab, never in /var/lib
        state_file = str(self.state_dir / "last-good.jsonl")
        self.config_file.write_text(agent_config(self.etcd_url, state_file=state_file))
        try:
            with self._locked():
                self._build(state, self._pods_per_node, self._deployment, self._expose)
        except BaseException:
            self.down()
            raise
        return self.status()

    def _build(self, state: LabState, pods_per_node: int, deployment: str, expose: bool) -> None:
        topo = self._topology(state)
        build(self._ns, topo)
        etcd = _LabEtcd(
            self._etcd_dir,
            host=MASTER_IP,
            client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT,
            netns=self._ns.name("master"),
            name="master",
        )
        etcd.start(timeout=30)
        state.etcd_pid = etcd.pid or 0
        proc = etcd.detach()
        if proc is not None:
            self._children.append(proc)
        self._save(state)

        writer = self.etcd()
        writer.put(overlay.CONFIG_KEY, overlay.network_config(state.backend))
        flannel_hosts = ([topo.host("loadbalancer")] if state.lb_overlay else []) + list(topo.nodes)
        subnets = overlay.allocate_subnets([h.name for h in flannel_hosts])
        for host in flannel_hosts:
            nic = host.kube_nic
            assert nic is not None
            lease = SubnetLease(
                host=host.name,
                subnet=subnets[host.name],
                public_ip=nic.ip,
                ext_dev=nic.name,
                backend=state.backend,
                vtep_mac=overlay.vtep_mac(nic.ip) if state.backend == "vxlan" else "",
            )
            _, lease_id = writer.put(lease.key, lease.value(), ttl=overlay.LEASE_TTL)
            state.leases[host.name] = replace(lease, lease_id=lease_id)
        leases = list(state.leases.values())
        for lease in leases:
            overlay.setup(self._ns, lease, leases)
        for node in topo.nodes:
            pods.setup_node_bridge(
                self._ns, node.name, state.leases[node.name].subnet, overlay.mtu(state.backend)
            )

        cluster = Cluster()
        for node in topo.nodes:
            lease = state.leases[node.name]
            data = {"VNI": lease.vni, "VtepMAC": lease.vtep_mac} if state.backend == "vxlan" else None
            cluster.add_node(node.name, lease.public_ip, lease.subnet, state.backend, data)
        cluster.add_service(
            "kubernetes",
            [ServicePort("https", 443, APISERVER_PORT)],
            None,
            labels={"component": "apiserver", "provider": "kubernetes"},
            cluster_ip=KUBERNETES_SERVICE_IP,
            static_endpoints=[MASTER_IP],
        )
        self._sync(state, cluster)
        if deployment:
            cluster.add_deployment(deployment, pods_per_node * state.nodes)
            self._converge(state, cluster)
            if expose:
                dep = cluster.deployment(deployment)
                cluster.add_service(
                    deployment, DEFAULT_SERVICE_PORTS, dep.selector, external_ips=[LB_INFRA_IP]
                )
                self._sync(state, cluster)
        self._save(state, cluster)

    def down(self) -> list[str]:
        """Remove every namespace with the lab's prefix (and so every process), then the state dir.

        Idempotent, and works from any process: after a crash, with etcd or the writer SIGKILLed, or
        with no state dir at all. Returns the namespaces it removed.
        """
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        etcd_pid = 0
        with contextlib.suppress(Exception):
            etcd_pid = int(json.loads(self._lab_file.read_text()).get("etcd_pid", 0))
        removed = cleanup_prefix(self.prefix)
        if etcd_pid:
            # Belt and braces: an etcd whose namespace was deleted by hand is in no listed namespace.
            _kill_if_ours(etcd_pid, str(self._etcd_dir))
        for proc in self._children:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._children.clear()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the root too, once the last lab is gone (not if others live)
            self.state_dir.parent.rmdir()
        self._ns = LabNamespaces(self.prefix)
        return removed

    def close(self) -> None:
        """Stop this process's writer; the lab keeps running."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- observing --------------------------------------------------------------------------------

    def namespace(self, host: str) -> str:
        """The full namespace name of a host (client, loadbalancer, master, node-N, switch) or a pod."""
        if host == SWITCH or host in {"client", "loadbalancer", "master"} or re.fullmatch(r"node-\d+", host):
            return self.prefix + host
        return self.prefix + (host if host.startswith("pod-") else pods.pod_host(host))

    def exec_in(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a lab host or pod namespace."""
        proc = subprocess.run(
            in_netns(argv, self.namespace(host)),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(f"{host}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def cluster(self) -> Cluster:
        """A snapshot of the Kubernetes model (pods, services, nodes) as last saved."""
        return self._load()[1]

    def status(self, query_etcd: bool = True) -> dict[str, Any]:
        """Everything an operator (or a test) wants to know, as JSON-able data."""
        base: dict[str, Any] = {"name": self.name, "prefix": self.prefix, "state_dir": str(self.state_dir)}
        if not self.is_up() or not self._lab_file.exists():
            return {
                **base,
                "up": False,
                "namespaces": [n for n in list_namespaces() if n.startswith(self.prefix)],
            }
        state, cluster = self._load()
        present = set(list_namespaces())
        revision: int | None = None
        if query_etcd:
            with contextlib.suppress(Exception):
                revision = self.etcd().revision()
        return {
            **base,
            "up": True,
            "backend": state.backend,
            "media": state.media,
            "created": state.created,
            "etcd": {
                "url": self.etcd_url,
                "pid": state.etcd_pid,
                "alive": _alive(state.etcd_pid),
                "revision": revision,
            },
            "writer_pid": self._writer.pid if self._writer else None,
            "hosts": [
                {
                    "name": h.name,
                    "role": h.role,
                    "namespace": self.prefix + h.name,
                    "addresses": [n.address for n in h.nics],
                    "default_via": h.default_via,
                }
                for h in self._topology(state).hosts
            ],
            "leases": [
                {
                    "host": lease.host,
                    "key": lease.key,
                    "subnet": lease.subnet,
                    "public_ip": lease.public_ip,
                    "backend": lease.backend,
                    "vtep_mac": lease.vtep_mac,
                    "lease_id": lease.lease_id,
                }
                for lease in state.leases.values()
            ],
            "drained": list(state.drained),
            "nodes": [
                {
                    "name": n.name,
                    "ip": n.internal_ip,
                    "pod_cidr": n.pod_cidr,
                    "schedulable": not n.unschedulable,
                }
                for n in cluster.nodes.values()
            ],
            "deployments": [
                {"name": d.name, "namespace": d.namespace, "replicas": d.replicas}
                for d in cluster.deployments.values()
            ],
            "pods": [
                {
                    "name": p.name,
                    "deployment": p.deployment,
                    "node": p.node,
                    "ip": p.ip,
                    "ready": p.ready,
                    "terminating": p.terminating,
                    "sandbox": self.namespace(p.name) in present,
                }
                for p in sorted(cluster.pods.values(), key=lambda p: (p.deployment, p.node, p.name))
            ],
            "services": [
                {
                    "ref": s.ref,
                    "cluster_ip": s.cluster_ip,
                    "external_ips": list(s.external_ips),
                    "ports": [f"{sp.name}:{sp.port}->{sp.target_port}/{sp.protocol}" for sp in s.ports],
                }
                for s in cluster.services.values()
            ],
        }

    # -- operator verbs ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _verb(self) -> Iterator[tuple[LabState, Cluster]]:
        """Lock, load, attach; save on the way out (also after a failure: what was written stays written)."""
        if not self.is_up():
            raise LabError(f"lab {self.name!r} is not up")
        with self._locked():
            state, cluster = self._load()
            self._attach(state, cluster)
            try:
                yield state, cluster
            except ClusterError as e:
                raise LabError(str(e)) from None
            finally:
                self._save(state, cluster)

    def create_deployment(
        self, name: str, replicas: int, ports: Sequence[ContainerPort] = DEFAULT_CONTAINER_PORTS
    ) -> None:
        with self._verb() as (state, cluster):
            cluster.add_deployment(name, replicas, ports)
            self._converge(state, cluster)

    def scale(self, deployment: str, replicas: int) -> list[str]:
        """`kubectl scale`: returns the deployment's pods afterwards."""
        if replicas < 0:
            raise LabError("replicas must be >= 0")
        with self._verb() as (state, cluster):
            dep = cluster.deployment(deployment)
            dep.replicas = replicas
            self._converge(state, cluster)
            return sorted(p.name for p in cluster.pods_of(dep))

    def kill_pod(self, name: str, *, graceful: bool = True) -> list[str]:
        """`kubectl delete pod` (graceful: a revision with the endpoint terminating first) or a crash-like
        removal; the ReplicaSet replaces it. Returns the deployment's pods afterwards."""
        with self._verb() as (state, cluster):
            pod = cluster.pod(name)
            if graceful:
                pod.terminating, pod.ready = True, False
            else:
                if pod.node:
                    pods.delete_sandbox(self._ns, pod.name)
                cluster.remove_pod(pod.name)
            self._converge(state, cluster)
            return sorted(
                p.name for p in cluster.pods_of(cluster.deployment(f"{pod.namespace}/{pod.deployment}"))
            )

    def rollout(self, deployment: str, *, grace: float = 1.0) -> dict[str, Any]:
        """`kubectl rollout restart` with maxSurge 1, maxUnavailable 0: for each old pod in turn, a pod of
        the new revision starts and turns ready, then the old one is terminating (not ready, still
        serving) for `grace` seconds (its terminationGracePeriodSeconds) before it goes."""
        started_at = time.monotonic()
        with self._verb() as (state, cluster):
            dep = cluster.deployment(deployment)
            old = sorted(p.name for p in cluster.pods_of(dep) if not p.terminating)
            cluster.new_revision(deployment)
            new: list[str] = []
            steps: list[dict[str, Any]] = []
            for name in old:
                dep.replicas += 1  # the surge: one pod of the new revision
                started, _ = cluster.reconcile_replicas()
                procs = {p.name: self._start_pod(state, cluster, p) for p in started}
                self._sync(state, cluster)
                pods.wait_ready(procs)
                for p in started:
                    p.ready = True
                    new.append(p.name)
                pod = cluster.pod(name)
                pod.terminating, pod.ready = True, False
                dep.replicas -= 1
                self._sync(state, cluster)  # the old endpoint: terminating, still serving its flows
                draining = time.time()
                time.sleep(grace)
                if pod.node:
                    pods.delete_sandbox(self._ns, pod.name)
                cluster.remove_pod(pod.name)
                self._sync(state, cluster)
                steps.append({"pod": name, "ip": pod.ip, "terminating": draining, "deleted": time.time()})
            self._children = [c for c in self._children if c.poll() is None]
        return {
            "deployment": f"{dep.namespace}/{dep.name}",
            "old": old,
            "new": new,
            "steps": steps,
            "seconds": round(time.monotonic() - started_at, 2),
        }

    def rollout_under_load(self, deployment: str, target: str, *, grace: float = 1.0) -> dict[str, Any]:
        """`rollout` while the client sends one request after another through `target` (host:port):
        what a rolling update costs the clients of the Service (the requests that failed)."""
        with self._verb() as (_, cluster):
            replicas = sum(1 for p in cluster.pods_of(cluster.deployment(deployment)) if not p.terminating)
        duration = 2.0 + replicas * (grace + 3.0)  # more than the rollout takes: it ends inside the loop
        argv = [sys.executable, "-m", "flannel_lb.lab.traffic", "http", target, "--duration", f"{duration:g}"]
        # 3 s, not the tool's 1 s: a request whose first SYN is lost is answered after the retransmission
        # (1 s later) and counts as answered; with 1 s, 1 of ~17,000 failed in 1 of 4 runs that way
        argv += ["--timeout", "3"]
        load = subprocess.Popen(
            in_netns(argv, self.namespace("client")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # the loop runs before the first pod changes
            rolled = self.rollout(deployment, grace=grace)
            out, err = load.communicate(timeout=duration + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        if load.returncode != 0:
            raise LabError(f"the load ({' '.join(argv)}) failed: {err.strip()[-500:]}")
        traffic = json.loads(out)
        return {
            **rolled,
            "grace": grace,
            "load": {k: traffic.get(k) for k in ("ok", "failed", "by_pod", "errors", "first_failure")},
        }

    def set_ready(self, pod: str, ready: bool) -> None:
        """Flip a pod's readiness (its readiness probe starts or stops passing); the server keeps running."""
        with self._verb() as (state, cluster):
            p = cluster.pod(pod)
            if p.terminating:
                raise LabError(f"pod {pod} is terminating")
            p.ready = ready
            self._sync(state, cluster)

    def drain_node(self, node: str, *, lease_ttl: int | None = None) -> None:
        """`kubectl drain` then the node goes away: cordon, evict (pods rescheduled elsewhere), and its
        flannel lease is revoked (key deleted now) or, with `lease_ttl`, left to expire after that many
        seconds. The other hosts drop their routes to its subnet, as flanneld would on the delete event."""
        with self._verb() as (state, cluster):
            cluster.node(node)
            cluster.cordon(node)
            self._sync(state, cluster)
            for pod in cluster.pods.values():
                if pod.node == node and not pod.terminating:
                    pod.terminating, pod.ready = True, False
            self._converge(state, cluster)
            lease = state.leases.pop(node, None)
            if lease is None:
                return
            writer = self.etcd()
            if lease_ttl:
                writer.put(lease.key, lease.value(), ttl=lease_ttl)
            elif lease.lease_id:
                writer.revoke(lease.lease_id)
            else:
                writer.delete(lease.key)
            for other in state.leases.values():
                overlay.forget(self._ns, other, lease)
            state.drained.append(node)

    def expose(
        self,
        deployment: str,
        external_ip: str | Sequence[str] | None,
        ports: Sequence[ServicePort | str] = DEFAULT_SERVICE_PORTS,
        *,
        name: str | None = None,
        session_affinity: str = "None",
        source_ranges: Sequence[str] = (),
    ) -> str:
        """`kubectl expose deployment D --external-ip=IP --port=...`; returns the Service's `ns/name`.

        Ports are ServicePort or `[name:]port[:targetPort][/PROTO]` strings (e.g. `http:80:http`).
        """
        specs = [
            p if isinstance(p, ServicePort) else ServicePort.parse(p, i, len(ports))
            for i, p in enumerate(ports)
        ]
        ips = [external_ip] if isinstance(external_ip, str) else list(external_ip or [])
        with self._verb() as (state, cluster):
            dep = cluster.deployment(deployment)
            svc = cluster.add_service(
                name or dep.name,
                specs,
                dep.selector,
                namespace=dep.namespace,
                external_ips=ips,
                session_affinity=session_affinity,
                source_ranges=source_ranges,
            )
            self._sync(state, cluster)
            return svc.ref

    def set_source_ranges(self, service: str, ranges: Sequence[str]) -> None:
        """`kubectl patch service`: replace its loadBalancerSourceRanges (none: open to every client)."""
        ref = service if "/" in service else f"default/{service}"
        with self._verb() as (state, cluster):
            svc = cluster.services.get(ref)
            if svc is None:
                raise LabError(f"no service {ref}")
            svc.source_ranges = list(ranges)
            self._sync(state, cluster)

    def unexpose(self, service: str) -> None:
        """`kubectl delete service`: the Service goes, then its Endpoints and slices (garbage collector)."""
        ref = service if "/" in service else f"default/{service}"
        with self._verb() as (state, cluster):
            if cluster.services.pop(ref, None) is None:
                raise LabError(f"no service {ref}")
            self._sync(state, cluster)

    def compact(self, revision: int | None = None) -> int:
        """Compact etcd's history (at the current revision by default), as kube-apiserver does every 5 min."""
        if not self.is_up():
            raise LabError(f"lab {self.name!r} is not up")
        self._ns.attach("master")
        return self.etcd().compact(revision)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _kill_if_ours(pid: int, marker: str) -> None:
    """SIGKILL `pid` only if its command line still mentions `marker` (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if marker in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
