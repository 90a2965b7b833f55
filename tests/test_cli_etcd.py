"""`flannel-lb plan/explain/decode` as an operator runs them, against a real etcd on loopback."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcd3
import pytest

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

LB = "192.168.121.201"
FLANNEL = "/coreos.com/network"
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}'
SVC = "/registry/services/specs/"
SLICES = "/registry/endpointslices/"


def client_of(server: EtcdServer) -> Any:
    u = urllib.parse.urlsplit(server.client_url)
    return etcd3.client(host=u.hostname, port=u.port)


def write_config(tmp_path: Path, server: EtcdServer, extra: str = "") -> Path:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(
        f'[etcd]\nendpoints = ["{server.client_url}"]\nretry_budget = 3.0\n'
        f'[lb]\naddresses = ["{LB}", "10.245.1.142"]\n{extra}'
    )
    return path


def run_cli(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    if args[0] in ("plan", "explain"):
        args = (*args, "--no-netcheck")  # no flannel overlay on this host: only etcd is under test
    return subprocess.run(
        [sys.executable, "-m", "flannel_lb", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def plan_json(config: Path) -> dict[str, Any]:
    proc = run_cli(config, "plan", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def backends(plan: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    return {
        f"{f['address']}:{f['port']}/{f['protocol']}": [(b["ip"], b["port"]) for b in f["backends"]]
        for f in plan["frontends"]
    }


def put_leases(c: Any, subnets: dict[str, str]) -> None:
    c.put(f"{FLANNEL}/config", NETWORK)
    for i, (subnet, public_ip) in enumerate(subnets.items()):
        c.put(f"{FLANNEL}/subnets/{subnet}", k.lease(public_ip, f"aa:00:00:00:00:{i:02x}"))


def seed_cluster(c: Any, encode: Callable[[dict[str, Any]], bytes]) -> None:
    """A cluster with every case the plan must get right, written the way kube-apiserver stores it."""
    put_leases(
        c, {"10.246.92.0-24": "10.245.1.3", "10.246.55.0-24": "10.245.1.4", "10.246.90.0-24": "10.245.1.142"}
    )
    ports = [k.port(80, "http", name="http"), k.port(53, name="dns", protocol="UDP")]
    c.put(SVC + "default/web", encode(k.service("web", ports=ports, external_ips=[LB], affinity_timeout=300)))
    slice_ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")]
    c.put(
        SLICES + "default/web-a",
        encode(
            k.endpoint_slice(
                "web-a",
                "web",
                [
                    k.endpoint("10.246.92.2", "node-1", pod="web-1"),
                    k.endpoint("10.246.92.3", "node-1", ready=False, pod="web-2"),
                    k.endpoint("10.246.7.2", "node-3", pod="web-3"),  # node-3's lease has expired
                ],
                slice_ports,
            )
        ),
    )
    c.put(
        SLICES + "default/web-b",
        encode(
            k.endpoint_slice(
                "web-b",
                "web",
                [
                    k.endpoint("10.246.55.2", "node-2", pod="web-4"),
                    k.endpoint(
                        "10.246.55.3", "node-2", ready=False, serving=True, terminating=True, pod="web-5"
                    ),
                ],
                [("http", 9090, "TCP"), ("dns", 5353, "UDP")],  # the named port resolves per slice
            )
        ),
    )
    for name, created in (("older", "2025-01-01T00:00:00Z"), ("newer", "2026-06-01T00:00:00Z")):
        svc = k.service(name, ports=[k.port(443)], external_ips=[LB], created=created)
        c.put(SVC + f"default/{name}", encode(svc))
    c.put(SVC + "default/secret", b"k8s:enc:kms:v2:vault:\x0a\x0bciphertext")


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_plan_and_explain_from_a_real_etcd(etcd: EtcdServer, tmp_path: Path, encoding: str) -> None:
    encode: Callable[[dict[str, Any]], bytes] = (
        encode_protobuf if encoding == "protobuf" else lambda o: json.dumps(o).encode()
    )
    c = client_of(etcd)
    seed_cluster(c, encode)
    config = write_config(tmp_path, etcd)

    plan = plan_json(config)
    assert plan["revision"] == c.get_prefix_response("/", keys_only=True).header.revision
    assert backends(plan) == {
        f"{LB}:53/UDP": [("10.246.55.2", 5353), ("10.246.92.2", 5353)],
        f"{LB}:80/TCP": [("10.246.55.2", 9090), ("10.246.92.2", 8080)],
        f"{LB}:443/TCP": [],
    }
    web = next(f for f in plan["frontends"] if f["port"] == 80)
    assert web["service"] == "default/web" and web["port_name"] == "http"
    assert web["affinity"] == {"mode": "ClientIP", "timeout": 300}
    assert {b["node"] for b in web["backends"]} == {"node-1", "node-2"}
    assert {e["ip"]: e["reason"] for e in web["excluded"]} == {
        "10.246.7.2": "no live flannel lease covers this address (node gone or lease expired)",
        "10.246.92.3": "not ready",
        "10.246.55.3": "draining: terminating, so no new connections; its established ones go on",
    }
    assert [(x["winner"], x["loser"]) for x in plan["conflicts"]] == [("default/older", "default/newer")]
    assert next(f for f in plan["frontends"] if f["port"] == 443)["service"] == "default/older"
    assert [p["key"] for p in plan["problems"]] == [SVC + "default/secret"]
    assert "kms" in plan["problems"][0]["reason"] and "vault" in plan["problems"][0]["reason"]

    proc = run_cli(config, "explain", "default/web")
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    assert "exposed on 192.168.121.201" in text
    assert "out  10.246.92.3:8080  not ready" in text
    assert "in   10.246.55.2:9090  node node-2" in text
    newer = run_cli(config, "explain", "default/newer").stdout.decode()
    assert (
        "conflict on 192.168.121.201:443/TCP: default/older wins over default/newer (created earlier" in newer
    )

    story = json.loads(run_cli(config, "explain", "default/secret", "--json").stdout or b"null")
    assert story is None  # an undecodable Service does not exist as far as the plan is concerned
    missing = run_cli(config, "explain", "default/nope")
    assert missing.returncode == 1 and b"no Service default/nope" in missing.stderr


def test_human_plan_table(etcd: EtcdServer, tmp_path: Path) -> None:
    seed_cluster(client_of(etcd), encode_protobuf)
    proc = run_cli(write_config(tmp_path, etcd), "plan")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "192.168.121.201:53/UDP  default/web (dns), affinity ClientIP 300s" in out
    assert "-> 10.246.55.2:5353" in out
    assert "problems (skipped; everything else is served):" in out


def test_decode_prints_the_kubernetes_json_form(etcd: EtcdServer, tmp_path: Path) -> None:
    c = client_of(etcd)
    seed_cluster(c, encode_protobuf)
    # exactly what `etcdctl get --print-value-only` prints: the value plus a newline
    etcdctl = subprocess.run(
        ["etcdctl", "--endpoints", etcd.client_url, "get", "--print-value-only", SLICES + "default/web-b"],
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
    )
    proc = run_cli(write_config(tmp_path, etcd), "decode", "-", stdin=etcdctl.stdout)
    assert proc.returncode == 0, proc.stderr.decode()
    obj = json.loads(proc.stdout)
    assert (obj["kind"], obj["apiVersion"]) == ("EndpointSlice", "discovery.k8s.io/v1")
    assert obj["endpoints"][1]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert obj["ports"][0] == {"name": "http", "port": 9090, "protocol": "TCP"}

    lease = run_cli(
        write_config(tmp_path, etcd),
        "decode",
        "--key",
        f"{FLANNEL}/subnets/10.246.92.0-24",
        "-",
        stdin=c.get(f"{FLANNEL}/subnets/10.246.92.0-24")[0],
    )
    assert json.loads(lease.stdout)["Subnet"] == "10.246.92.0/24"
    bad = run_cli(write_config(tmp_path, etcd), "decode", "-", stdin=b"k8s:enc:aescbc:v1:key1:xyz")
    assert bad.returncode == 1 and b"aescbc" in bad.stderr


@pytest.mark.parametrize(
    "verb", [["plan"], ["explain", "default/web"], ["render"], ["render", "--all"], ["diff"]]
)
def test_unreachable_etcd_is_a_clear_error(tmp_path: Path, verb: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[etcd]\nendpoints = ["http://127.0.0.1:9"]\nretry_budget = 1.0\n[lb]\naddresses = ["10.0.0.1"]\n'
    )
    proc = run_cli(path, *verb)
    assert proc.returncode == 3, proc.stderr
    assert b"etcd unreachable after" in proc.stderr and b"http://127.0.0.1:9" in proc.stderr
    assert f"fix: list your etcd's client URLs in `[etcd] endpoints` in {path}".encode() in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_broken_config_refuses_with_a_precise_message(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[lb]\naddresses = ["192.168.121.999"]\n')
    proc = run_cli(path, "plan")
    assert proc.returncode == 2
    assert f"{path}: [lb] addresses: item 1 ('192.168.121.999'): not an IPv4 address".encode() in proc.stderr


def test_kube_subnet_manager_cluster(etcd: EtcdServer, tmp_path: Path) -> None:
    c = client_of(etcd)
    data = '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}'
    flannel = {
        "public-ip": "10.245.1.3",
        "backend-type": "vxlan",
        "backend-data": data,
        "kube-subnet-manager": "true",
    }
    c.put(
        "/registry/minions/node-1",
        encode_protobuf(k.node("node-1", "10.244.1.0/24", "10.245.1.3", flannel=flannel)),
    )
    c.put("/registry/minions/node-2", encode_protobuf(k.node("node-2", "10.244.2.0/24", "10.245.1.4")))
    c.put(SVC + "default/app", encode_protobuf(k.service("app", external_ips=[LB])))
    eps = [k.endpoint("10.244.1.7", "node-1"), k.endpoint("10.244.2.7", "node-2")]
    c.put(SLICES + "default/app-1", encode_protobuf(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    config = write_config(tmp_path, etcd, '[flannel]\nsubnet_manager = "kube"\nnetwork = "10.244.0.0/16"\n')
    plan = plan_json(config)
    assert backends(plan) == {f"{LB}:80/TCP": [("10.244.1.7", 80)]}
    assert plan["frontends"][0]["excluded"][0]["ip"] == "10.244.2.7"  # flanneld has not claimed node-2


def test_flannel_leases_in_the_v2_keyspace(etcd_v2: EtcdServer, tmp_path: Path) -> None:
    """flannel < 0.18 writes leases through the v2 API, with a TTL; the registry is in v3 as usual."""

    def v2_put(key: str, value: bytes, ttl: int | None = None) -> None:
        body = urllib.parse.urlencode(
            {"value": value.decode(), **({"ttl": str(ttl)} if ttl else {})}
        ).encode()
        req = urllib.request.Request(f"{etcd_v2.client_url}/v2/keys{key}", data=body, method="PUT")
        urllib.request.urlopen(req, timeout=5).read()

    v2_put(f"{FLANNEL}/config", NETWORK)
    v2_put(f"{FLANNEL}/subnets/10.246.92.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"), ttl=86400)
    v2_put(f"{FLANNEL}/subnets/10.246.55.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"), ttl=86400)
    c = client_of(etcd_v2)
    c.put(SVC + "default/app", encode_protobuf(k.service("app", external_ips=[LB])))
    eps = [k.endpoint("10.246.92.7"), k.endpoint("10.246.55.7")]
    c.put(SLICES + "default/app-1", encode_protobuf(k.endpoint_slice("app-1", "app", eps, [("", 80, "TCP")])))
    v3_config = write_config(tmp_path, etcd_v2)
    assert backends(plan_json(v3_config)) == {f"{LB}:80/TCP": []}  # v3 sees no flannel at all
    v2_config = write_config(tmp_path, etcd_v2, '[flannel]\netcd_api = "v2"\n')
    assert backends(plan_json(v2_config)) == {f"{LB}:80/TCP": [("10.246.55.7", 80), ("10.246.92.7", 80)]}


class PlanWatcher:
    """`flannel-lb plan --watch --json` in a subprocess; one JSON plan per line."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flannel_lb",
                "--config",
                str(config),
                "plan",
                "--watch",
                "--json",
                "--no-netcheck",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.plans: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.plans.put(json.loads(line))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                plan = self.plans.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(backends(plan))
            if predicate(plan):
                return plan
        raise AssertionError(f"no matching plan within {timeout} s; saw {seen}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def plan_watcher() -> Iterator[Callable[[Path], PlanWatcher]]:
    watchers: list[PlanWatcher] = []

    def start(config: Path) -> PlanWatcher:
        watchers.append(PlanWatcher(config))
        return watchers[-1]

    yield start
    for w in watchers:
        w.close()


def test_watch_follows_pods_leases_and_compaction(
    etcd: EtcdServer, tmp_path: Path, plan_watcher: Callable[[Path], PlanWatcher]
) -> None:
    c = client_of(etcd)
    put_leases(c, {"10.246.92.0-24": "10.245.1.3"})
    lease = c.lease(3)  # node-2's flannel lease; it is never refreshed, so it expires
    c.put(f"{FLANNEL}/subnets/10.246.55.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"), lease=lease)
    c.put(SVC + "default/app", encode_protobuf(k.service("app", external_ips=[LB])))

    def slice_with(*ips: str) -> bytes:
        return encode_protobuf(
            k.endpoint_slice("app-1", "app", [k.endpoint(ip) for ip in ips], [("", 80, "TCP")])
        )

    c.put(SLICES + "default/app-1", slice_with("10.246.92.2"))
    w = plan_watcher(write_config(tmp_path, etcd))
    frontend = f"{LB}:80/TCP"
    w.wait_for(lambda p: backends(p).get(frontend) == [("10.246.92.2", 80)])

    c.put(SLICES + "default/app-1", slice_with("10.246.92.2", "10.246.55.2"))  # a pod is added
    w.wait_for(lambda p: backends(p)[frontend] == [("10.246.55.2", 80), ("10.246.92.2", 80)])
    # node-2's lease runs out: etcd deletes the key, and its pod leaves the plan
    plan = w.wait_for(lambda p: backends(p)[frontend] == [("10.246.92.2", 80)], timeout=10)
    assert plan["frontends"][0]["excluded"][0]["ip"] == "10.246.55.2"

    rev = c.put(SLICES + "default/app-1", slice_with("10.246.92.3")).header.revision  # pod replaced
    w.wait_for(lambda p: backends(p)[frontend] == [("10.246.92.3", 80)])
    c.compact(rev)
    c.put(SLICES + "default/app-1", slice_with("10.246.92.3", "10.246.92.4"))
    w.wait_for(lambda p: backends(p)[frontend] == [("10.246.92.3", 80), ("10.246.92.4", 80)])

    etcd.kill()  # the watch breaks; the plan is kept and re-listed when etcd is back
    etcd.start()
    c = client_of(etcd)
    c.delete(SVC + "default/app")
    w.wait_for(lambda p: p["frontends"] == [], timeout=30)
