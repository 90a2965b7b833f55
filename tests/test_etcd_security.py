"""etcd security: TLS with client certificates, clear errors for bad ones, and a least-privilege role.

Each test makes its own throwaway CA and certificates with the `openssl` CLI and runs a real etcd on
loopback (`--client-cert-auth` where TLS is on). The role is set up by running the very commands of
docs/etcd-access.md, so the doc is tested too. Everything flannel-lb does here is read-only: it works
under a role that cannot write, and a write with its credentials is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcd3
import pytest

from flannel_lb import config as config_mod
from flannel_lb.lab import objects as k
from flannel_lb.lab.etcd_server import EtcdServer, EtcdTLS
from flannel_lb.source import etcd_v3
from flannel_lb.source.settings import EtcdSettings, parse_endpoint
from tests.conftest import FAST_ETCD_ARGS, memory_agent

pytestmark = pytest.mark.etcd

LB = "192.168.121.201"
DOC = Path(__file__).resolve().parent.parent / "docs" / "etcd-access.md"
ROOT_PASSWORD = "root-pw"
FLB_PASSWORD = "flb-pw"
PREFIXES = ("/coreos.com/network/", "/registry/services/", "/registry/endpointslices/", "/registry/minions/")


# -- certificates -----------------------------------------------------------------------------------

_CA_CONFIG = """[ ca ]
default_ca = CA_default
[ CA_default ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
[ policy_any ]
commonName = supplied
"""


def make_certs(d: Path) -> dict[str, Path]:
    """Two CAs; etcd's server cert (IP 127.0.0.1); client certs: good (CN flannel-lb), admin (CN root),
    signed by the other CA, and expired (2020)."""
    if shutil.which("openssl") is None:
        pytest.skip("the `openssl` CLI is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-subj",
            f"/CN={ca}",
            "-days",
            "2",
        )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn, ext in (
        ("server", "etcd", "server"),
        ("client", "flannel-lb", "client"),
        ("admin", "root", "client"),
    ):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{ext}.ext",
        )  # fmt: skip
    run(
        "x509", "-req", "-in", "client.csr", "-CA", "other-ca.crt", "-CAkey", "other-ca.key",
        "-CAcreateserial", "-out", "foreign.crt", "-days", "2", "-extfile", "client.ext",
    )  # fmt: skip
    (d / "ca.cnf").write_text(_CA_CONFIG)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    run(
        "ca", "-batch", "-config", "ca.cnf", "-in", "client.csr", "-out", "expired.crt", "-keyfile", "ca.key",
        "-cert", "ca.crt", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
        "-extfile", "client.ext", "-notext",
    )  # fmt: skip
    return {p.stem + p.suffix: p for p in d.iterdir() if p.suffix in (".crt", ".key")}


def tls_server(etcd_factory: Callable[..., EtcdServer], certs: dict[str, Path]) -> EtcdServer:
    tls = EtcdTLS(
        cert_file=certs["server.crt"],
        key_file=certs["server.key"],
        ca_file=certs["ca.crt"],
        client_cert_file=certs["admin.crt"],
        client_key_file=certs["admin.key"],
    )
    return etcd_factory(tls=tls)


# -- plumbing -----------------------------------------------------------------------------------------


def seed(c: Any) -> None:
    """One Service on the LB address with two ready endpoints on two live leases."""
    c.put("/coreos.com/network/config", b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}')
    c.put("/coreos.com/network/subnets/10.246.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    c.put("/coreos.com/network/subnets/10.246.2.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"))
    c.put("/registry/services/specs/default/web", json.dumps(k.service("web", external_ips=[LB])).encode())
    eps = [k.endpoint("10.246.1.2", "node-1"), k.endpoint("10.246.2.2", "node-2")]
    c.put(
        "/registry/endpointslices/default/web-1",
        json.dumps(k.endpoint_slice("web-1", "web", eps, [("", 80, "TCP")])).encode(),
    )
    c.put("/registry/secrets/default/token", b"not for flannel-lb")


def admin_client(server: EtcdServer, certs: dict[str, Path] | None = None) -> Any:
    kw: dict[str, Any] = {}
    if certs is not None:
        kw = {
            "ca_cert": str(certs["ca.crt"]),
            "cert_cert": str(certs["admin.crt"]),
            "cert_key": str(certs["admin.key"]),
        }
    return etcd3.client("127.0.0.1", server.client_port, timeout=5, **kw)


def write_config(tmp_path: Path, server: EtcdServer, **etcd: str) -> Path:
    lines = ["[etcd]", f'endpoints = ["{etcd.pop("endpoint", server.client_url)}"]', "retry_budget = 0.3"]
    lines += [f'{key} = "{value}"' for key, value in etcd.items()]
    lines += ["[lb]", f'addresses = ["{LB}"]']
    path = tmp_path / f"flannel-lb-{len(list(tmp_path.glob('flannel-lb-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def plan(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel_lb", "--config", str(config), "plan", "--json", "--no-netcheck"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def backends(proc: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {
        f"{f['address']}:{f['port']}/{f['protocol']}": [f"{b['ip']}:{b['port']}" for b in f["backends"]]
        for f in doc["frontends"]
    }


WEB = {f"{LB}:80/TCP": ["10.246.1.2:80", "10.246.2.2:80"]}


def doc_commands() -> list[list[str]]:
    """The etcdctl lines of docs/etcd-access.md's role section, passwords filled in."""
    text = DOC.read_text()
    section = text[text.index("## A read-only role") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip().startswith("etcdctl ")]
    filled = [
        ln.replace('"$ROOT_PASSWORD"', ROOT_PASSWORD).replace('"$FLANNEL_LB_PASSWORD"', FLB_PASSWORD)
        for ln in lines
    ]
    assert all("$" not in ln for ln in filled), filled
    return [ln.split() for ln in filled]


def run_doc_commands(server: EtcdServer, certs: dict[str, Path] | None = None) -> None:
    env = {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": server.client_url}
    if certs is not None:
        env.update(
            ETCDCTL_CACERT=str(certs["ca.crt"]),
            ETCDCTL_CERT=str(certs["admin.crt"]),
            ETCDCTL_KEY=str(certs["admin.key"]),
        )
    for argv in doc_commands():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    role = subprocess.run(
        ["etcdctl", "--user", f"root:{ROOT_PASSWORD}", "role", "get", "flannel-lb"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert (
        all(f"[{p}, " in role for p in PREFIXES) and "write" not in role.lower().split("permissions")[-1][:20]
    )


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]) -> Iterator[EtcdServer]:
    """A TLS etcd with --client-cert-auth and the seed data, shared by the tests that do not change it."""
    if shutil.which("etcd") is None:
        pytest.skip("the `etcd` binary is not installed")
    tls = EtcdTLS(
        cert_file=certs["server.crt"],
        key_file=certs["server.key"],
        ca_file=certs["ca.crt"],
        client_cert_file=certs["admin.crt"],
        client_key_file=certs["admin.key"],
    )
    server = EtcdServer(tmp_path_factory.mktemp("tls-etcd"), extra_args=FAST_ETCD_ARGS, tls=tls)
    server.start()
    try:
        c = admin_client(server, certs)
        seed(c)
        c.close()
        yield server
    finally:
        server.stop()


def test_plan_over_tls_with_a_client_certificate(
    tmp_path: Path, tls_etcd: EtcdServer, certs: dict[str, Path]
) -> None:
    server = tls_etcd
    config = write_config(
        tmp_path,
        server,
        ca_file=str(certs["ca.crt"]),
        cert_file=str(certs["client.crt"]),
        key_file=str(certs["client.key"]),
    )
    assert backends(plan(config)) == WEB


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-ca", "etcd's server certificate does not verify against ca_file {d}/other-ca.crt"),
        ("no-client-cert", "etcd refused our client certificate: no cert_file/key_file is configured"),
        (
            "expired",
            "etcd refused our client certificate: cert_file {d}/expired.crt expired on Jan  2 00:00:00 2020",
        ),
        (
            "other-ca-client",
            "cert_file {d}/foreign.crt (issued by commonName=other-ca) is not signed by a CA in",
        ),
        ("hostname", "etcd's server certificate does not name localhost"),
        ("plain-http", "if etcd serves TLS on this port, the endpoint must start with https://"),
    ],
)
def test_a_bad_certificate_is_a_clear_error(
    tmp_path: Path, tls_etcd: EtcdServer, certs: dict[str, Path], case: str, expected: str
) -> None:
    server = tls_etcd
    ca, cert, key = str(certs["ca.crt"]), str(certs["client.crt"]), str(certs["client.key"])
    settings: dict[str, str] = {"ca_file": ca, "cert_file": cert, "key_file": key}
    if case == "wrong-ca":
        settings["ca_file"] = str(certs["other-ca.crt"])
    elif case == "no-client-cert":
        settings = {"ca_file": ca}
    elif case == "expired":
        settings["cert_file"] = str(certs["expired.crt"])
    elif case == "other-ca-client":
        settings["cert_file"] = str(certs["foreign.crt"])
    elif case == "hostname":
        settings["endpoint"] = server.client_url.replace("127.0.0.1", "localhost")
    elif case == "plain-http":
        settings["endpoint"] = server.client_url.replace("https://", "http://")
    endpoint = settings.get("endpoint", server.client_url)
    started = time.monotonic()
    proc = plan(write_config(tmp_path, server, **settings))
    took = time.monotonic() - started
    message = next(line for line in proc.stderr.splitlines() if line.startswith("flannel-lb plan:"))
    print(f"\n{case} ({took:.1f} s): {message}")
    assert proc.returncode == 3, proc.stderr
    assert message.startswith("flannel-lb plan: etcd unreachable after"), message
    assert f"tried {endpoint}: {endpoint}: " in message
    assert expected.format(d=certs["ca.crt"].parent) in message


# -- RBAC ---------------------------------------------------------------------------------------------


def _denied(fn: Callable[[], Any]) -> str:
    with pytest.raises(Exception) as exc:
        fn()
    return etcd_v3.describe(exc.value)


def test_least_privilege_role_with_a_password(
    tmp_path: Path, etcd_factory: Callable[..., EtcdServer]
) -> None:
    """The doc's role: plan, list and watch work; writes and other prefixes are denied."""
    server = etcd_factory()
    c = admin_client(server)
    seed(c)
    c.close()
    run_doc_commands(server)

    anonymous = plan(write_config(tmp_path, server))
    assert anonymous.returncode == 3 and f"tried {server.client_url}" in anonymous.stderr
    assert "user name is empty" in anonymous.stderr

    config = write_config(tmp_path, server, username="flannel-lb", password=FLB_PASSWORD)
    assert backends(plan(config)) == WEB

    settings = EtcdSettings((server.client_url,), timeout=2.0, username="flannel-lb", password=FLB_PASSWORD)
    client = etcd_v3.connect(parse_endpoint(server.client_url), settings)
    try:
        put = _denied(lambda: client.put("/registry/services/specs/default/evil", b"x"))
        delete = _denied(lambda: client.delete("/coreos.com/network/config"))
        secrets = _denied(lambda: etcd_v3.list_prefixes(client, ["/registry/secrets/"]))
    finally:
        client.close()
    print(f"\nwrite denied: {put}\ndelete denied: {delete}\nsecrets denied: {secrets}")
    for why in (put, delete, secrets):
        assert "permission denied" in why, why

    # The agent itself runs under the role: it lists, watches and follows a change made by an admin.
    cfg = config_mod.parse(
        {
            "etcd": {"endpoints": [server.client_url], "username": "flannel-lb", "password": FLB_PASSWORD},
            "lb": {"addresses": [LB]},
            "dataplane": {"conntrack_cleanup": False, "manage_ip_forward": False, "min_sync_interval": 0.01},
        }
    )
    agent = memory_agent(cfg)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert _wait(lambda: agent.plan is not None and len(agent.plan.frontends) == 1)
        root = EtcdSettings((server.client_url,), timeout=2.0, username="root", password=ROOT_PASSWORD)
        admin = etcd_v3.connect(
            parse_endpoint(server.client_url), root
        )  # plain etcd3 cannot send a token over http
        admin.put(
            "/registry/services/specs/default/api",
            json.dumps(k.service("api", ports=[k.port(443)], external_ips=[LB])).encode(),
        )
        admin.close()
        assert _wait(lambda: agent.plan is not None and len(agent.plan.frontends) == 2)
        assert "flannel_lb_etcd_watch_connected 1.0" in agent.metrics.exposition().decode()
    finally:
        stop.set()
        runner.join(15)
    assert not runner.is_alive()


def test_least_privilege_role_from_the_client_certificate(
    tmp_path: Path, etcd_factory: Callable[..., EtcdServer], certs: dict[str, Path]
) -> None:
    """With --client-cert-auth and auth on, etcd takes the user from the certificate's CN: a
    `CN=flannel-lb` certificate gets exactly the read-only role, with no password anywhere."""
    server = tls_server(etcd_factory, certs)
    c = admin_client(server, certs)
    seed(c)
    c.close()
    run_doc_commands(server, certs)
    tls = {
        "ca_file": str(certs["ca.crt"]),
        "cert_file": str(certs["client.crt"]),
        "key_file": str(certs["client.key"]),
    }
    assert backends(plan(write_config(tmp_path, server, **tls))) == WEB
    settings = EtcdSettings((server.client_url,), timeout=2.0, **tls)
    client = etcd_v3.connect(parse_endpoint(server.client_url), settings)
    try:
        put = _denied(lambda: client.put("/registry/minions/evil", b"x"))
        secrets = _denied(lambda: etcd_v3.list_prefixes(client, ["/registry/secrets/"]))
    finally:
        client.close()
    assert "permission denied" in put and "permission denied" in secrets, (put, secrets)


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
