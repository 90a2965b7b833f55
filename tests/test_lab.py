"""The network-namespace lab: topology, overlay, etcd contents, the seed's DNAT/MASQUERADE finding, verbs.

The pure parts (port specs, the controllers' rendering, lease JSON) run everywhere; the lab itself
needs root (it creates network namespaces), the `etcd` binary and iproute2, and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from flannel_lb.lab import overlay
from flannel_lb.lab.cluster import Cluster, ContainerPort, ServicePort
from flannel_lb.lab.lab import Lab, LabError
from flannel_lb.lab.netns import list_namespaces

# --- helpers ---------------------------------------------------------------------------------------

_FETCH = """
import socket, sys, urllib.request
timeout = float(sys.argv[1])
for target in sys.argv[2:]:
    try:
        if target.startswith("udp://"):
            host, port = target[6:].rsplit(":", 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.sendto(b"?", (host, int(port)))
            print("OK " + s.recvfrom(512)[0].decode())
        else:
            with urllib.request.urlopen(target, timeout=timeout) as r:
                print("OK " + r.read().decode().strip() + " " + r.headers.get("X-Remote-Addr", ""))
    except Exception as e:
        print("ERR " + type(e).__name__)
"""


def fetch(lab: Lab, host: str, targets: Sequence[str], timeout: float = 2.0) -> list[str | None]:
    """HTTP GET (or `udp://ip:port`) each target from inside `host`; the body (+ source seen), or None."""
    out = lab.exec_in(host, [sys.executable, "-c", _FETCH, str(timeout), *targets], timeout=60, check=True)
    return [line[3:] if line.startswith("OK ") else None for line in out.stdout.splitlines()]


def decode(value: bytes) -> dict[str, Any]:
    if value.startswith(b"k8s\x00"):
        from flannel_lb.decode.kube import decode_value

        return decode_value(value)
    doc: dict[str, Any] = json.loads(value)
    return doc


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root: it creates network namespaces"
    for tool in ("ip", "bridge", "etcd", "iptables"):
        if shutil.which(tool) is None:
            return f"the lab needs `{tool}` on PATH"
    return None


def module_lab(tag: str) -> Iterator[Lab]:
    """A 2-node lab shared by one test module's tests, removed again even when they fail."""
    missing = missing_tools()
    if missing:
        pytest.skip(missing)
    the_lab = Lab(tag + secrets.token_hex(3), nodes=2, pods_per_node=2)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


_F = TypeVar("_F", bound=Callable[..., Any])


def needs_lab(test: _F) -> _F:
    """Marked `netns` and `etcd` (see pyproject), and skipped with the reason when the lab cannot run."""
    skip = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")
    marked: _F = pytest.mark.netns(pytest.mark.etcd(skip(test)))
    return marked


def _name() -> str:
    return "t" + secrets.token_hex(3)


# --- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", ServicePort("", 80, 80, "TCP")),
        ("http:80:http", ServicePort("http", 80, "http", "TCP")),
        ("dns:53/udp", ServicePort("dns", 53, 53, "UDP")),
        ("8080:80", ServicePort("", 8080, 80, "TCP")),
    ],
)
def test_port_spec(spec: str, expected: ServicePort) -> None:
    assert ServicePort.parse(spec) == expected


def test_port_spec_names_multi_port_services_and_rejects_garbage() -> None:
    assert ServicePort.parse("53/UDP", 1, 2).name == "port-2"
    with pytest.raises(ValueError):
        ServicePort.parse("http")
    with pytest.raises(ValueError):
        ServicePort.parse("80/ICMP")


def _toy_cluster() -> Cluster:
    c = Cluster()
    c.add_node("node-1", "10.245.1.3", "10.246.92.0/24", "vxlan", {"VNI": 1, "VtepMAC": "0e:f1:0a:f5:01:03"})
    c.add_node("node-2", "10.245.1.4", "10.246.55.0/24", "vxlan", {"VNI": 1, "VtepMAC": "0e:f1:0a:f5:01:04"})
    c.add_deployment("web", 3)
    started, doomed = c.reconcile_replicas()
    assert len(started) == 3 and not doomed
    for p in started:
        p.ready = True
    dep = c.deployment("web")
    c.add_service("web", [ServicePort("http", 80, "http"), ServicePort("dns", 53, 53, "UDP")], dep.selector)
    return c


def _objects(c: Cluster, kind: str) -> list[dict[str, Any]]:
    return [o for o in c.render().values() if o["kind"] == kind and o["metadata"]["name"].startswith("web")]


def test_controllers_spread_pods_and_render_endpoints() -> None:
    c = _toy_cluster()
    assert sorted(p.node for p in c.pods.values()) == ["node-1", "node-1", "node-2"]
    assert {p.ip for p in c.pods.values()} == {"10.246.92.2", "10.246.92.3", "10.246.55.2"}
    (ep,) = _objects(c, "Endpoints")
    (subset,) = ep["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.246.55.2", "10.246.92.2", "10.246.92.3"]
    assert subset["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ]
    (sl,) = _objects(c, "EndpointSlice")
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert (
        sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
        == "endpointslice-controller.k8s.io"
    )
    assert all(
        e["conditions"] == {"ready": True, "serving": True, "terminating": False} for e in sl["endpoints"]
    )


def test_terminating_and_unready_pods() -> None:
    c = _toy_cluster()
    a, b, _ = sorted(c.pods.values(), key=lambda p: p.ip)
    a.terminating, a.ready = True, False
    b.ready = False
    (ep,) = _objects(c, "Endpoints")
    (subset,) = ep["subsets"]
    assert [x["ip"] for x in subset["notReadyAddresses"]] == [b.ip]
    assert a.ip not in json.dumps(ep)  # the Endpoints controller drops terminating pods
    (sl,) = _objects(c, "EndpointSlice")
    conds = {e["addresses"][0]: e["conditions"] for e in sl["endpoints"]}
    assert conds[a.ip] == {"ready": False, "serving": False, "terminating": True}
    assert conds[b.ip] == {"ready": False, "serving": False, "terminating": False}
    # Terminating pods do not count as replicas: a replacement is created at once.
    started, _ = c.reconcile_replicas()
    assert len(started) == 1


def test_named_target_port_splits_slices_and_placeholder() -> None:
    c = _toy_cluster()
    odd = next(iter(c.pods.values()))
    odd.ports = [ContainerPort("http", 8080), ContainerPort("dns", 53, "UDP")]
    slices = _objects(c, "EndpointSlice")
    assert sorted(s["ports"][0]["port"] for s in slices) == [80, 8080]
    names_before = {s["metadata"]["name"] for s in slices}
    assert {s["metadata"]["name"] for s in _objects(c, "EndpointSlice")} == names_before  # stable names
    c.pods.clear()
    (placeholder,) = _objects(c, "EndpointSlice")
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    (ep,) = _objects(c, "Endpoints")
    assert "subsets" not in ep


def test_pending_writes_only_what_changed() -> None:
    c = _toy_cluster()
    puts, deletes = c.pending_writes()
    assert not deletes and [k.split("/")[2] for k, _ in puts][:2] == ["minions", "minions"]
    for key, obj in puts:
        c.mark_written(key, obj)
    assert c.pending_writes() == ([], [])
    next(iter(c.pods.values())).ready = False
    puts, _ = c.pending_writes()
    assert sorted(k.split("/")[2] for k, _ in puts) == ["endpointslices", "services"]  # Endpoints + slice
    roundtrip = Cluster.from_json(json.loads(json.dumps(c.to_json())))
    assert roundtrip.to_json() == c.to_json()


def test_lease_json_and_subnets() -> None:
    subnets = overlay.allocate_subnets(["loadbalancer", "node-1", "node-2", "node-3"])
    assert subnets == {
        "loadbalancer": "10.246.90.0/24",
        "node-1": "10.246.92.0/24",
        "node-2": "10.246.55.0/24",
        "node-3": "10.246.1.0/24",
    }
    lease = overlay.SubnetLease(
        "node-1", "10.246.92.0/24", "10.245.1.3", "eth0", "vxlan", 1, "0e:f1:0a:f5:01:03"
    )
    assert lease.key == "/coreos.com/network/subnets/10.246.92.0-24"
    assert lease.value() == (
        b'{"PublicIP":"10.245.1.3","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"0e:f1:0a:f5:01:03"}}'
    )
    assert overlay.network_config("vxlan") == (
        b'{"Network":"10.246.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
    )


def test_cli_registers_verbs() -> None:
    import argparse

    from flannel_lb.lab.cli import register_lab_commands

    parser = argparse.ArgumentParser()
    register_lab_commands(parser.add_subparsers(dest="command"))
    for argv in (
        ["lab", "up", "--nodes", "3", "--backend", "host-gw"],
        ["lab", "--lab", "x1", "status", "--json"],
        ["lab", "down"],
        ["lab", "scale", "nginx", "3"],
        ["lab", "kill-pod", "p"],
        ["lab", "set-ready", "p", "false"],
        ["lab", "drain", "node-1", "--lease-ttl", "5"],
        ["lab", "expose", "nginx", "--external-ip", "192.168.121.201", "--port", "http:80:http"],
    ):
        assert callable(parser.parse_args(argv).func)


def test_bad_lab_names_are_refused() -> None:
    for bad in ("", "a-b", "A", "x" * 17):
        with pytest.raises(LabError):
            Lab(bad)


# --- the lab ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if missing_tools():
        pytest.skip(missing_tools() or "")
    the_lab = Lab(_name(), nodes=2, pods_per_node=2)
    t0 = time.monotonic()
    try:
        the_lab.up()
        print(f"\nlab up in {time.monotonic() - t0:.1f}s")
        yield the_lab
    finally:
        the_lab.down()


def _pod_ips(lab: Lab) -> dict[str, str]:
    return {p.name: p.ip for p in lab.cluster().pods.values() if not p.terminating}


@needs_lab
def test_pods_answer_the_lb_over_vxlan_but_not_the_client(lab: Lab) -> None:
    pods = _pod_ips(lab)
    assert len(pods) == 4 and len({lab.cluster().pods[p].node for p in pods}) == 2
    urls = [f"http://{ip}/" for ip in pods.values()]
    answers = fetch(lab, "loadbalancer", urls + [f"udp://{ip}:53" for ip in pods.values()])
    # HTTP: the pod's name, and the source it saw is the LB's flannel.1 address (seed: 10.246.90.0).
    seen = [tuple(a.split()) if a else None for a in answers[:4]]
    assert [s[0] if s else None for s in seen] == list(pods)
    assert all(s and s[1].startswith("10.246.90.0:") for s in seen)
    assert answers[4:] == list(pods)
    assert fetch(lab, "client", urls[:1], timeout=1) == [None]
    routes = lab.exec_in("loadbalancer", ["ip", "route"], check=True).stdout
    assert "10.246.92.0/24 via 10.246.92.0 dev flannel.1 onlink" in routes
    fdb = lab.exec_in("loadbalancer", ["bridge", "fdb", "show", "dev", "flannel.1"], check=True).stdout
    assert "0e:f1:0a:f5:01:03 dst 10.245.1.3 self permanent" in fdb


@needs_lab
def test_etcd_holds_flannel_and_kubernetes_keys(lab: Lab) -> None:
    etcd = lab.etcd()
    config = etcd.get(overlay.CONFIG_KEY)
    assert config is not None and json.loads(config.value)["Backend"] == {"Type": "vxlan", "VNI": 1}
    leases = etcd.keys(overlay.SUBNETS_PREFIX)
    assert sorted(leases) == [
        "/coreos.com/network/subnets/10.246.55.0-24",
        "/coreos.com/network/subnets/10.246.90.0-24",
        "/coreos.com/network/subnets/10.246.92.0-24",
    ]
    for key in leases:
        kv = etcd.get(key)
        assert kv is not None and kv.lease != 0  # attached to a 24 h lease, like flanneld's
        assert json.loads(kv.value)["BackendType"] == "vxlan"
    keys = etcd.keys("/registry/")
    svc = etcd.get("/registry/services/specs/default/nginx")
    ep = etcd.get("/registry/services/endpoints/default/nginx")
    assert svc is not None and ep is not None
    service = decode(svc.value)
    assert service["spec"]["externalIPs"] == ["192.168.121.201"]
    assert service["spec"]["clusterIP"].startswith("10.247.")
    endpoints = decode(ep.value)
    assert sorted(a["ip"] for a in endpoints["subsets"][0]["addresses"]) == sorted(_pod_ips(lab).values())
    (slice_key,) = [k for k in keys if k.startswith("/registry/endpointslices/default/nginx-")]
    kv = etcd.get(slice_key)
    assert kv is not None
    eps = decode(kv.value)
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "nginx"
    assert len(eps["endpoints"]) == 4
    for node in ("node-1", "node-2"):
        kv = etcd.get(f"/registry/minions/{node}")
        assert kv is not None
        assert decode(kv.value)["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"] == "vxlan"


@needs_lab
def test_seed_rules_need_masquerade(lab: Lab) -> None:
    """The seed's finding: DNAT alone times out (the reply bypasses the LB); with MASQUERADE it works."""
    name, ip = sorted(_pod_ips(lab).items())[0]
    ipt = ["iptables", "-w", "-t", "nat"]
    dnat = [
        "-p",
        "tcp",
        "-d",
        "192.168.121.201",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        f"{ip}:80",
    ]
    masq = ["-o", "flannel.1", "-j", "MASQUERADE"]
    lab.exec_in("loadbalancer", [*ipt, "-A", "PREROUTING", *dnat], check=True)
    try:
        assert fetch(lab, "client", ["http://192.168.121.201/"], timeout=1.5) == [None]
        lab.exec_in("loadbalancer", [*ipt, "-A", "POSTROUTING", *masq], check=True)
        (answer,) = fetch(lab, "client", ["http://192.168.121.201/"], timeout=3)
        assert answer is not None and answer.startswith(f"{name} 10.246.90.0:")
    finally:  # remove exactly the two rules added above, nothing else
        lab.exec_in("loadbalancer", [*ipt, "-D", "PREROUTING", *dnat], check=False)
        lab.exec_in("loadbalancer", [*ipt, "-D", "POSTROUTING", *masq], check=False)


@needs_lab
def test_verbs_change_pods_and_etcd(lab: Lab) -> None:
    etcd = lab.etcd()
    before = etcd.revision()
    pods = lab.scale("nginx", 5)
    assert len(pods) == 5
    victim = pods[0]
    after_kill = lab.kill_pod(victim)
    assert victim not in after_kill and len(after_kill) == 5
    assert victim not in {n.removeprefix(lab.prefix + "pod-") for n in list_namespaces()}
    lab.set_ready(after_kill[0], False)
    kv = etcd.get("/registry/services/endpoints/default/nginx")
    assert kv is not None and kv.mod_revision > before
    subset = decode(kv.value)["subsets"][0]
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == [after_kill[0]]
    assert len(subset["addresses"]) == 4
    ref = lab.expose("nginx", "192.168.121.201", ["web:8080:http-alt", "5353/UDP"], name="alt")
    assert ref == "default/alt"
    answers = fetch(lab, "loadbalancer", [f"http://{ip}:8080/" for ip in _pod_ips(lab).values()])
    assert all(answers)
    with pytest.raises(LabError):
        lab.scale("nope", 1)


@needs_lab
def test_drain_deletes_the_lease_and_moves_pods(lab: Lab) -> None:
    lab.drain_node("node-2")
    etcd = lab.etcd()
    assert etcd.get("/coreos.com/network/subnets/10.246.55.0-24") is None
    assert etcd.get("/coreos.com/network/subnets/10.246.92.0-24") is not None
    assert {p.node for p in lab.cluster().pods.values()} == {"node-1"}
    assert "10.246.55.0/24" not in lab.exec_in("loadbalancer", ["ip", "route"], check=True).stdout
    node = decode(etcd.get("/registry/minions/node-2").value)  # type: ignore[union-attr]
    assert node["spec"]["unschedulable"] is True
    assert all(fetch(lab, "loadbalancer", [f"http://{ip}/" for ip in _pod_ips(lab).values()]))


@needs_lab
def test_down_after_etcd_and_writer_were_killed(lab: Lab) -> None:
    etcd_pid = lab.status(query_etcd=False)["etcd"]["pid"]
    writer_pid = lab.etcd().pid
    assert etcd_pid and writer_pid
    os.kill(etcd_pid, signal.SIGKILL)
    os.kill(writer_pid, signal.SIGKILL)
    podserver_pids = [
        int(p) for n in list_namespaces() if n.startswith(lab.prefix + "pod-") for p in _pids(n)
    ]
    assert podserver_pids
    t0 = time.monotonic()
    lab.down()
    print(f"\nlab down in {time.monotonic() - t0:.1f}s")
    assert not [n for n in list_namespaces() if n.startswith(lab.prefix)]
    assert not lab.state_dir.exists()
    for pid in [etcd_pid, writer_pid, *podserver_pids]:
        assert not _running(pid), pid
    lab.down()  # idempotent
    assert lab.status()["up"] is False


def _pids(netns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@needs_lab
def test_host_gw_lab_from_the_cli() -> None:
    """host-gw; `lab up` and `lab down` as separate processes (the up process is gone, as after a crash)."""
    name = _name()
    cli = [
        sys.executable,
        "-c",
        "import sys; from flannel_lb.cli import main; sys.exit(main())",
        "lab",
        "--lab",
        name,
    ]
    try:
        up = subprocess.run(
            [*cli, "up", "--backend", "host-gw", "--pods-per-node", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        status = json.loads(up.stdout)
        assert status["backend"] == "host-gw" and len(status["pods"]) == 2
        lab = Lab(name)
        routes = lab.exec_in("loadbalancer", ["ip", "route"], check=True).stdout
        assert "10.246.92.0/24 via 10.245.1.3 dev eth1" in routes
        assert "flannel.1" not in lab.exec_in("loadbalancer", ["ip", "link"], check=True).stdout
        pods = {p["name"]: p["ip"] for p in status["pods"]}
        answers = fetch(lab, "loadbalancer", [f"http://{ip}/" for ip in pods.values()])
        assert [a.split()[0] if a else None for a in answers] == list(pods)
        assert fetch(lab, "client", [f"http://{next(iter(pods.values()))}/"], timeout=1) == [None]
        lab.close()
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [n for n in list_namespaces() if n.startswith(f"flb-lab-{name}-")]
