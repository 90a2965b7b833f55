"""The v3 etcd source against a real etcd: consistency, paging, watch, leases, compaction, faults."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import etcd3
import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from flannel_lb.lab.etcd_server import EtcdServer, EtcdTLS, free_port
from flannel_lb.source import (
    ClusterSource,
    EtcdSettings,
    EtcdUnavailable,
    EventBatch,
    Snapshot,
    Status,
    etcd_v3,
    parse_endpoint,
)
from flannel_lb.source.etcd_v3 import prefix_end

pytestmark = pytest.mark.etcd


def client_for(server: EtcdServer) -> Any:
    return etcd3.client("127.0.0.1", server.client_port)


def source_for(server: EtcdServer, prefixes: list[str], **kwargs: Any) -> ClusterSource:
    kwargs.setdefault("retry_initial_wait", 0.2)
    kwargs.setdefault("retry_max_wait", 2.0)
    settings = EtcdSettings((server.client_url,), timeout=kwargs.pop("timeout", 2.0))
    return ClusterSource(settings, prefixes, **kwargs)


def etcd_state(client: Any, prefixes: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for prefix in prefixes:
        for value, meta in client.get_prefix(prefix):
            out[meta.key.decode()] = value
    return out


def range_calls(server: EtcdServer) -> int:
    """etcd's own count of Range RPCs served (to check paging without mocks)."""
    with urllib.request.urlopen(f"{server.client_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_method="Range"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# -- settings (no etcd needed) ------------------------------------------------------------------


def test_parse_endpoint() -> None:
    assert parse_endpoint("http://10.245.1.2:4379").url == "http://10.245.1.2:4379"
    assert parse_endpoint("https://etcd.example").port == 2379
    assert parse_endpoint("10.0.0.1").url == "http://10.0.0.1:2379"
    ep = parse_endpoint("https://[fd00::1]:2379")
    assert (ep.host, ep.netloc) == ("fd00::1", "[fd00::1]:2379")
    for bad in ("ftp://x", "http://x:99999", "http://x/v2", "http://"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    with pytest.raises(ValueError, match="ca_file"):
        EtcdSettings(("https://x:2379",))
    with pytest.raises(ValueError, match="go together"):
        EtcdSettings(("http://x",), username="u")
    with pytest.raises(TypeError):
        EtcdSettings("http://x")  # type: ignore[arg-type]


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


# -- snapshots ----------------------------------------------------------------------------------


def test_paging_lists_every_key_once(etcd: EtcdServer) -> None:
    c = client_for(etcd)
    for i in range(1050):
        c.put(f"/p/{i:05d}", f"v{i}")
    c.put("/q/only", b"q")
    c.put("/p0", b"outside the /p/ prefix")
    src = source_for(etcd, ["/p/", "/q/"], page_size=100)
    before = range_calls(etcd)
    snap = src.snapshot()
    calls = range_calls(etcd) - before
    keys = [kv.key for kv in snap.items]
    assert keys == [f"/p/{i:05d}" for i in range(1050)] + ["/q/only"]
    assert snap.items[7].value == b"v7"
    # 11 pages for /p/ (the last one empty-ended by more=False) and 1 for /q/.
    assert calls == 12, calls
    assert snap.revision == c.get("/p0")[1].mod_revision


def test_snapshot_is_consistent_while_writing(etcd: EtcdServer) -> None:
    """Every snapshot must equal the replayed write log at exactly its revision."""
    c = client_for(etcd)
    log: list[tuple[int, str, str | None]] = []  # (revision, key, value or None for delete)
    log_lock = threading.Lock()
    stop = threading.Event()

    def writer() -> None:
        w = client_for(etcd)
        i = 0
        while not stop.is_set():
            i += 1
            slot = i % 40
            for prefix in ("/x/", "/y/"):  # two prefixes, listed by separate range requests
                key = f"{prefix}{slot:03d}"
                entry: tuple[int, str, str | None]
                if i % 7 == 0:
                    resp = w.delete(key, return_response=True)
                    entry = (resp.header.revision, key, None)
                else:
                    resp = w.put(key, str(i))
                    entry = (resp.header.revision, key, str(i))
                with log_lock:
                    log.append(entry)
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        src = source_for(etcd, ["/x/", "/y/"], page_size=7)
        time.sleep(0.3)
        snaps = [src.snapshot() for _ in range(25)]
    finally:
        stop.set()
        thread.join()
    c.close()
    revisions = {s.revision for s in snaps}
    assert len(revisions) > 10, "writer too slow to make the test meaningful"
    for snap in snaps:
        expected: dict[str, str] = {}
        for rev, key, value in sorted(log):
            if rev > snap.revision:
                break
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        got = {kv.key: kv.value.decode() for kv in snap.items}
        assert got == expected, f"snapshot at {snap.revision} is not the state at that revision"
        assert all(kv.mod_revision <= snap.revision for kv in snap.items)


def test_unreachable_names_every_endpoint() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    src = ClusterSource(EtcdSettings(tuple(dead), timeout=1.0), ["/registry/"], retry_initial_wait=0.2)
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable) as info:
        src.snapshot(retry_budget=1.5)
    elapsed = time.monotonic() - started
    msg = str(info.value)
    assert msg.startswith("etcd unreachable after ")
    assert dead[0] in msg and dead[1] in msg
    assert "UNAVAILABLE" in msg
    assert elapsed < 4.0
    print(f"\nEtcdUnavailable after {elapsed:.2f} s: {msg}")


def test_second_endpoint_used_when_first_is_down(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = EtcdSettings((dead, etcd.client_url), timeout=2.0)
    src = ClusterSource(settings, ["/a/"], retry_initial_wait=0.2, retry_max_wait=1.0)
    assert src.snapshot(retry_budget=0).revision >= 1
    consumer = consume(src)
    assert consumer.wait_for(lambda c: c.connected)
    assert consumer.of_type(Status)[-1].endpoint == etcd.client_url


# -- watching -----------------------------------------------------------------------------------


def test_watch_delivers_puts_and_deletes_in_order(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    c = client_for(etcd)
    c.put("/a/1", b"one")
    consumer = consume(source_for(etcd, ["/a/", "/b/"]))
    assert consumer.wait_for(lambda s: s.connected)
    snap = consumer.of_type(Snapshot)[0]
    assert [kv.key for kv in snap.items] == ["/a/1"]
    c.put("/a/2", b"two")
    c.put("/b/1", b"b-one")
    c.delete("/a/1")
    c.put("/a/2", b"two again")
    c.put("/c/ignored", b"not watched")
    c.delete("/b/1")
    assert consumer.wait_for(lambda s: s.state == {"/a/2": b"two again"})
    events = [ev for batch in consumer.of_type(EventBatch) for ev in batch.events]
    assert [(e.kind, e.key, e.value) for e in events] == [
        ("put", "/a/2", b"two"),
        ("put", "/b/1", b"b-one"),
        ("delete", "/a/1", b""),
        ("put", "/a/2", b"two again"),
        ("delete", "/b/1", b""),
    ]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and revisions[0] == snap.revision + 1
    assert len(consumer.of_type(Snapshot)) == 1


def test_stream_keeps_no_reference_to_a_snapshot_it_handed_out(etcd: EtcdServer) -> None:
    """The stream's frame lives as long as the connection; a snapshot is most of the agent's memory
    until its consumer has decoded it, and must be freed then."""
    client_for(etcd).put("/keep/1", b"one")
    stop = threading.Event()
    stream = source_for(etcd, ["/keep/"]).stream(stop)
    try:
        snap = next(stream)
        assert isinstance(snap, Snapshot) and [kv.key for kv in snap.items] == ["/keep/1"]
        assert next(stream) == Status(True, "", etcd.client_url)  # the stream ran on past the snapshot
        gc.collect()
        here = sys._getframe()
        assert [type(r).__name__ for r in gc.get_referrers(snap) if r is not here] == []
    finally:
        stop.set()
        stream.close()


def test_lease_expiry_arrives_as_delete(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    c = client_for(etcd)
    consumer = consume(source_for(etcd, ["/coreos.com/network/subnets/"]))
    assert consumer.wait_for(lambda s: s.connected)
    lease = c.lease(ttl=2)
    key = "/coreos.com/network/subnets/10.5.1.0-24"
    c.put(key, b'{"PublicIP":"10.245.1.3"}', lease=lease)
    started = time.monotonic()
    assert consumer.wait_for(lambda s: key in s.state, timeout=5)
    assert consumer.wait_for(lambda s: key not in s.state, timeout=10)
    print(f"\nlease key deleted {time.monotonic() - started:.1f} s after put (ttl 2 s)")
    events = [ev for batch in consumer.of_type(EventBatch) for ev in batch.events]
    assert [e.kind for e in events] == ["put", "delete"]
    assert events[0].lease == lease.id


def test_compaction_while_behind_relists(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    """A consumer resuming from an old snapshot whose revision was compacted gets a new one."""
    c = client_for(etcd)
    for i in range(5):
        c.put(f"/a/{i}", b"old")
    src = source_for(etcd, ["/a/"])
    old = src.snapshot()
    c.delete("/a/0")
    c.put("/a/1", b"new")
    c.put("/a/9", b"added")
    _, meta = c.get("/a/9")
    c.compact(meta.mod_revision)
    consumer = consume(src, resume_from=old)
    expected = etcd_state(c, ["/a/"])
    assert consumer.wait_for(lambda s: len(s.of_type(Snapshot)) == 1)
    snap = consumer.of_type(Snapshot)[0]
    assert {kv.key: kv.value for kv in snap.items} == expected
    assert snap.revision == meta.mod_revision
    downs = [u for u in consumer.of_type(Status) if not u.connected]
    assert downs and "RevisionCompactedError" in downs[0].reason
    c.put("/a/10", b"after")
    assert consumer.wait_for(lambda s: s.state.get("/a/10") == b"after")


def test_resume_without_compaction_needs_no_relist(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    c = client_for(etcd)
    c.put("/a/1", b"1")
    src = source_for(etcd, ["/a/"])
    old = src.snapshot()
    c.put("/a/2", b"2")
    consumer = consume(src, resume_from=old)
    assert consumer.wait_for(lambda s: s.state == {"/a/1": b"1", "/a/2": b"2"})
    assert consumer.of_type(Snapshot) == []


# -- faults -------------------------------------------------------------------------------------


def test_kill_and_restart(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    c = client_for(etcd)
    c.put("/a/before", b"1")
    src = source_for(etcd, ["/a/"], retry_initial_wait=0.5, retry_max_wait=10.0)
    consumer = consume(src)
    assert consumer.wait_for(lambda s: s.connected)
    threads_before = threading.active_count()

    etcd.kill()
    assert consumer.wait_for(lambda s: not s.connected, timeout=5)
    attempts_before = src.stats.connect_attempts
    cpu_before = time.process_time()
    time.sleep(5.0)
    cpu = time.process_time() - cpu_before
    attempts = src.stats.connect_attempts - attempts_before
    print(f"\n5 s outage: process CPU {cpu:.3f} s, {attempts} connection attempts")
    assert attempts < 20

    # Make writes the source cannot see: same data, another client port, then back.
    port = etcd.client_port
    etcd.client_port = free_port()
    etcd.start()
    hidden = client_for(etcd)
    hidden.put("/a/while-away", b"2")
    hidden.delete("/a/before")
    hidden.close()
    etcd.kill()
    etcd.client_port = port
    etcd.start()

    assert consumer.wait_for(lambda s: len(s.of_type(Snapshot)) == 2 and s.connected, timeout=15)
    snap = consumer.of_type(Snapshot)[1]
    assert {kv.key: kv.value for kv in snap.items} == {"/a/while-away": b"2"}
    c2 = client_for(etcd)
    c2.put("/a/after", b"3")
    assert consumer.wait_for(lambda s: s.state == {"/a/while-away": b"2", "/a/after": b"3"})
    # Nothing from before the re-list leaks past it, nothing after it is replayed twice.
    updates = [u for _, u in consumer.updates]
    after = updates[next(i for i, u in enumerate(updates) if u is snap) :]
    revs = [ev.revision for u in after if isinstance(u, EventBatch) for ev in u.events]
    assert revs and all(r > snap.revision for r in revs) and len(revs) == len(set(revs))
    assert threading.active_count() <= threads_before + 1, "threads leaked across reconnects"
    c.close()
    c2.close()


def test_hung_etcd_is_noticed(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    """SIGSTOP: the kernel still ACKs TCP, only gRPC keepalive notices."""
    src = source_for(etcd, ["/a/"], retry_initial_wait=0.5, retry_max_wait=2.0)
    consumer = consume(src)
    assert consumer.wait_for(lambda s: s.connected)
    time.sleep(2)  # right after connecting gRPC's own pings make detection faster than steady state
    etcd.pause()
    paused = time.monotonic()
    try:
        assert consumer.wait_for(lambda s: not s.connected, timeout=20)
        detected = time.monotonic() - paused
    finally:
        etcd.resume()
    print(f"\nhung etcd noticed after {detected:.1f} s")
    assert detected < 15
    c = client_for(etcd)
    c.put("/a/x", b"back")
    assert consumer.wait_for(lambda s: s.state.get("/a/x") == b"back", timeout=15)
    c.close()


# -- TLS ----------------------------------------------------------------------------------------


def _make_certs(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert (openssl CLI)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=flb-test-ca", "-days", "2")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=flb-{name}")
        (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_tls_with_client_certificates(
    tmp_path: Path, etcd_factory: Callable[..., EtcdServer], consume: Callable[..., Any]
) -> None:
    certs = _make_certs(tmp_path)
    tls = EtcdTLS(
        cert_file=certs["server.crt"],
        key_file=certs["server.key"],
        ca_file=certs["ca.crt"],
        client_cert_file=certs["client.crt"],
        client_key_file=certs["client.key"],
    )
    server = etcd_factory(enable_v2=True, tls=tls)
    assert server.client_url.startswith("https://")
    settings = EtcdSettings(
        (server.client_url,),
        ca_file=str(certs["ca.crt"]),
        cert_file=str(certs["client.crt"]),
        key_file=str(certs["client.key"]),
        timeout=2.0,
    )
    c = etcd3.client(
        "127.0.0.1",
        server.client_port,
        ca_cert=str(certs["ca.crt"]),
        cert_cert=str(certs["client.crt"]),
        cert_key=str(certs["client.key"]),
    )
    c.put("/a/1", b"tls")
    ctx = server.client_ssl_context()
    req = urllib.request.Request(f"{server.client_url}/v2/keys/flannel/k", data=b"value=v2", method="PUT")
    urllib.request.urlopen(req, context=ctx).read()
    src = ClusterSource(settings, ["/a/"], ["/flannel"], retry_initial_wait=0.2, retry_max_wait=1.0)
    snap = src.snapshot(retry_budget=5)
    assert {kv.key: kv.value for kv in snap.items} == {"/a/1": b"tls", "/flannel/k": b"v2"}
    consumer = consume(src)
    assert consumer.wait_for(lambda s: s.connected)
    c.put("/a/2", b"watched over tls")
    assert consumer.wait_for(lambda s: s.state.get("/a/2") == b"watched over tls")
    c.close()
    # Without a client certificate the server refuses us, and the error says so.
    no_cert = EtcdSettings((server.client_url,), ca_file=str(certs["ca.crt"]), timeout=1.0)
    with pytest.raises(EtcdUnavailable):
        ClusterSource(no_cert, ["/a/"]).snapshot(retry_budget=0)


# -- size ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_snapshot_of_a_20mb_registry(etcd: EtcdServer) -> None:
    """20,000 keys of 1 KiB: no page may hit gRPC's 4 MB default, and how long a re-list takes."""
    c = client_for(etcd)
    value = b"x" * 1024
    for start in range(0, 20_000, 100):
        puts = [c.transactions.put(f"/registry/pods/ns/p{i:06d}", value) for i in range(start, start + 100)]
        c.transaction(compare=[], success=puts, failure=[])
    # What paging avoids: one unpaged response is over gRPC's default 4 MB receive limit.
    with pytest.raises(grpc.RpcError) as too_big:
        c.get_prefix_response("/registry/")
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    c.close()
    for page_size in (500, 1000, 5000):
        src = source_for(etcd, ["/registry/"], page_size=page_size)
        started = time.perf_counter()
        snap = src.snapshot()
        took = time.perf_counter() - started
        assert len(snap.items) == 20_000
        print(f"\nsnapshot of 20,000 x 1 KiB keys, page_size={page_size}: {took:.2f} s")


def test_username_and_password_over_plain_http(etcd: EtcdServer, consume: Callable[..., Any]) -> None:
    c = client_for(etcd)
    c.put("/a/1", b"secret")
    ctl = ["etcdctl", f"--endpoints={etcd.client_url}"]
    for args in (["user", "add", "root:pw"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
        subprocess.run(ctl + args, check=True, capture_output=True, timeout=10)
    c.close()
    anonymous = ClusterSource(EtcdSettings((etcd.client_url,), timeout=2.0), ["/a/"])
    with pytest.raises(EtcdUnavailable) as denied:
        anonymous.snapshot(retry_budget=0)
    assert "user name is empty" in str(denied.value)
    settings = EtcdSettings((etcd.client_url,), timeout=2.0, username="root", password="pw")
    src = ClusterSource(settings, ["/a/"], retry_initial_wait=0.2, retry_max_wait=1.0)
    assert [kv.value for kv in src.snapshot(retry_budget=0).items] == [b"secret"]
    consumer = consume(src)
    assert consumer.wait_for(lambda s: s.connected)
    # A plain etcd3 client with user/password fails here (grpcio refuses call credentials
    # on plaintext); connect() applies the workaround.
    writer = etcd_v3.connect(parse_endpoint(etcd.client_url), settings)
    writer.put("/a/2", b"watched")
    assert consumer.wait_for(lambda s: s.state.get("/a/2") == b"watched")
    writer.close()
