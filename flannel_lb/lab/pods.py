"""Pod sandboxes: what the bridge CNI plugin plus the container runtime would do on a flannel node.

Each pod is its own namespace `<prefix>pod-<name>` with `eth0` veth'd into the node's `cni0`
(10.246.X.1/24, the first host address of the node's flannel subnet), its IP from that subnet, a
default route via cni0, and one `podserver` process as its workload.
"""

from __future__ import annotations

import hashlib
import ipaddress
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flannel_lb.lab.cluster import ContainerPort
from flannel_lb.lab.netns import Namespaces
from flannel_lb.lab.topology import LabNamespaces, batch

CNI_BRIDGE = "cni0"


def pod_host(pod_name: str) -> str:
    """The short namespace name of a pod."""
    return f"pod-{pod_name}"


def host_veth(pod_name: str) -> str:
    """The node-side veth name (15 chars max, stable per pod, like the bridge plugin's `veth<hash>`)."""
    return "veth" + hashlib.sha1(pod_name.encode()).hexdigest()[:8]


def setup_node_bridge(ns: Namespaces, node: str, subnet: str, mtu: int) -> None:
    """`cni0` with the subnet's first host address, as the bridge plugin creates it for flannel.

    Its MAC is set once (0a:58 and the gateway's address, the bridge plugin's scheme for addresses it
    assigns): a bridge left to pick its own takes the lowest MAC among its ports, so deleting a pod
    could change it under every other pod's ARP entry for the gateway, and their replies went
    nowhere for seconds (seen as the odd lost request during a rolling update)."""
    net = ipaddress.IPv4Network(subnet)
    gateway = (net.network_address + 1).packed
    mac = ":".join(f"{b:02x}" for b in (0x0A, 0x58, *gateway))
    batch(
        ns,
        node,
        [
            f"link add {CNI_BRIDGE} address {mac} mtu {mtu} type bridge",
            f"addr add {net.network_address + 1}/{net.prefixlen} dev {CNI_BRIDGE}",
            f"link set {CNI_BRIDGE} up",
        ],
    )


def create_sandbox(ns: Namespaces, node: str, pod_name: str, ip: str, subnet: str, mtu: int) -> str:
    """The pod's namespace and network; returns the namespace's short name."""
    short = pod_host(pod_name)
    net = ipaddress.IPv4Network(subnet)
    ns.add(short)
    ns.run(short, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
    veth = host_veth(pod_name)
    ns.veth(node, veth, short, "eth0")
    batch(ns, node, [f"link set {veth} mtu {mtu} master {CNI_BRIDGE}"])
    batch(
        ns,
        short,
        [
            f"link set eth0 mtu {mtu}",
            f"addr add {ip}/{net.prefixlen} dev eth0",
            f"route add default via {net.network_address + 1}",
        ],
    )
    return short


def start_server(
    ns: Namespaces, pod_name: str, ports: Sequence[ContainerPort], log_dir: Path
) -> subprocess.Popen[bytes]:
    """Start the pod's workload, detached so it outlives a CLI verb; wait for it with `wait_ready`."""
    argv = [sys.executable, "-m", "flannel_lb.lab.podserver", "--name", pod_name]
    for cp in ports:
        argv += ["--tcp" if cp.protocol == "TCP" else "--udp", str(cp.port)]
    with open(log_dir / f"pod-{pod_name}.log", "ab") as log:
        proc: subprocess.Popen[bytes] = ns.popen(
            pod_host(pod_name),
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    return proc


def wait_ready(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Block until every server printed `ready` (all sockets bound); raise naming the laggards."""
    waiting = {p.stdout: name for name, p in procs.items() if p.stdout is not None}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"pod servers not ready after {timeout:.0f}s: {', '.join(sorted(waiting.values()))}"
            )
        readable, _, _ = select.select(list(waiting), [], [], left)
        for stream in readable:
            line = stream.readline()
            name = waiting.pop(stream)
            stream.close()
            if line.strip() != b"ready":
                code = procs[name].poll()
                raise RuntimeError(
                    f"pod server {name} failed to start (exit {code}); see its log in the state dir"
                )


def delete_sandbox(ns: LabNamespaces, pod_name: str) -> None:
    """Kill the workload and remove the namespace; the node-side veth goes with it."""
    ns.remove(pod_host(pod_name))
