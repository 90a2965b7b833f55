"""The v2 (flannel < 0.18) part of the etcd source against a real etcd with --enable-v2."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import etcd3
import pytest

from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.source import ClusterSource, EtcdSettings, EtcdUnavailable, EventBatch, Snapshot
from flannel_lb.source.etcd_v2 import apply_action, parse_expiration, under

pytestmark = pytest.mark.etcd

NET = "/coreos.com/network"


def v2_put(server: EtcdServer, key: str, value: str, ttl: int | None = None) -> dict[str, Any]:
    form = {"value": value} | ({"ttl": str(ttl)} if ttl else {})
    req = urllib.request.Request(
        f"{server.client_url}/v2/keys{key}", data=urllib.parse.urlencode(form).encode(), method="PUT"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def v2_delete(server: EtcdServer, key: str, recursive: bool = False) -> None:
    query = "?recursive=true" if recursive else ""
    req = urllib.request.Request(f"{server.client_url}/v2/keys{key}{query}", method="DELETE")
    urllib.request.urlopen(req, timeout=5).read()


def v2_state(server: EtcdServer, prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}

    def walk(node: dict[str, Any]) -> None:
        if node.get("dir"):
            for child in node.get("nodes", []):
                walk(child)
        else:
            out[node["key"]] = node["value"].encode()

    url = f"{server.client_url}/v2/keys{prefix}?recursive=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        walk(json.loads(resp.read())["node"])
    return out


def source_for(server: EtcdServer, v3: list[str], v2: list[str], **kwargs: Any) -> ClusterSource:
    settings = EtcdSettings((server.client_url,), timeout=2.0)
    return ClusterSource(settings, v3, v2, retry_initial_wait=0.2, retry_max_wait=2.0, **kwargs)


# -- pure functions -----------------------------------------------------------------------------


def test_parse_expiration_keeps_go_nanoseconds() -> None:
    assert parse_expiration("2026-11-27T06:38:39.59764003Z") == pytest.approx(1795761519.59764003)
    assert parse_expiration("2026-11-27T06:38:39Z") == 1795761519.0
    assert parse_expiration("2026-11-27T07:38:39+01:00") == 1795761519.0
    assert parse_expiration(None) is None and parse_expiration("garbage") is None


def test_directory_delete_removes_every_key_below() -> None:
    mirror: dict[str, Any] = {}
    for key in ("/n/subnets/a", "/n/subnets/b", "/n/subnetsX", "/n/config"):
        apply_action(mirror, "set", {"key": key, "value": "v", "modifiedIndex": 5})
    events = apply_action(mirror, "delete", {"key": "/n/subnets", "dir": True, "modifiedIndex": 9})
    assert [(e.kind, e.key, e.revision) for e in events] == [
        ("delete", "/n/subnets/a", 9),
        ("delete", "/n/subnets/b", 9),
    ]
    assert sorted(mirror) == ["/n/config", "/n/subnetsX"]
    assert apply_action(mirror, "set", {"key": "/n/d", "dir": True, "modifiedIndex": 10}) == []
    assert under("/n/subnets/a", "/n/subnets/") and not under("/n/subnetsX", "/n/subnets")


# -- real etcd ----------------------------------------------------------------------------------


def test_v2_list_watch_and_ttl_expire(etcd_v2: EtcdServer, consume: Callable[..., Any]) -> None:
    v2_put(etcd_v2, f"{NET}/config", '{"Network":"10.5.0.0/16"}')
    lease = v2_put(etcd_v2, f"{NET}/subnets/10.5.1.0-24", '{"PublicIP":"10.245.1.3"}', ttl=600)
    v2_put(etcd_v2, "/elsewhere/x", "not watched")
    src = source_for(etcd_v2, [], [NET])
    snap = src.snapshot()
    by_key = {kv.key: kv for kv in snap.items}
    assert sorted(by_key) == [f"{NET}/config", f"{NET}/subnets/10.5.1.0-24"]
    assert by_key[f"{NET}/config"].expires is None
    expires = by_key[f"{NET}/subnets/10.5.1.0-24"].expires
    assert expires is not None and 590 < expires - time.time() <= 600
    assert by_key[f"{NET}/subnets/10.5.1.0-24"].mod_revision == lease["node"]["modifiedIndex"]
    assert snap.v2_index[NET] >= lease["node"]["modifiedIndex"]

    consumer = consume(src)
    assert consumer.wait_for(lambda s: s.connected)
    v2_put(etcd_v2, f"{NET}/subnets/10.5.2.0-24", '{"PublicIP":"10.245.1.4"}', ttl=1)
    v2_put(etcd_v2, f"{NET}/subnets/10.5.1.0-24", '{"PublicIP":"10.245.1.3","renewed":1}', ttl=600)
    v2_put(etcd_v2, "/elsewhere/y", "not watched")
    assert consumer.wait_for(lambda s: f"{NET}/subnets/10.5.2.0-24" in s.state, timeout=5)
    started = time.monotonic()
    assert consumer.wait_for(lambda s: f"{NET}/subnets/10.5.2.0-24" not in s.state, timeout=10)
    print(f"\nv2 ttl=1 key expired {time.monotonic() - started:.1f} s after it was seen")
    v2_delete(etcd_v2, f"{NET}/subnets", recursive=True)
    assert consumer.wait_for(lambda s: s.state == {f"{NET}/config": b'{"Network":"10.5.0.0/16"}'})

    events = [ev for batch in consumer.of_type(EventBatch) for ev in batch.events]
    assert [(e.kind, e.key.rsplit("/", 1)[1]) for e in events] == [
        ("put", "10.5.2.0-24"),
        ("put", "10.5.1.0-24"),
        ("delete", "10.5.2.0-24"),  # the `expire` action
        ("delete", "10.5.1.0-24"),  # from the recursive directory delete
    ]
    assert events[0].expires is not None and events[1].expires is not None
    assert [e.revision for e in events] == sorted(e.revision for e in events)


def test_v2_index_cleared_relists_only_v2(etcd_v2: EtcdServer, consume: Callable[..., Any]) -> None:
    """A poller more than 1000 events behind gets "401 outdated and cleared" and lists again."""
    for i in range(5):
        v2_put(etcd_v2, f"{NET}/subnets/10.5.{i}.0-24", f"lease{i}")
    c = etcd3.client("127.0.0.1", etcd_v2.client_port)
    c.put("/registry/services/specs/default/a", b"svc")
    src = source_for(etcd_v2, ["/registry/"], [NET])
    old = src.snapshot()
    # 1,100 writes, mostly outside the prefix, push the old index out of v2's event history.
    v2_delete(etcd_v2, f"{NET}/subnets/10.5.0.0-24")
    v2_put(etcd_v2, f"{NET}/subnets/10.5.1.0-24", "changed")
    for i in range(1098):
        v2_put(etcd_v2, f"/noise/{i % 10}", str(i))
    v2_put(etcd_v2, f"{NET}/subnets/10.5.9.0-24", "new")
    expected = v2_state(etcd_v2, NET) | {"/registry/services/specs/default/a": b"svc"}

    consumer = consume(src, resume_from=old)
    assert consumer.wait_for(lambda s: s.state == expected, timeout=10)
    assert src.stats.v2_relists == 1
    assert consumer.of_type(Snapshot) == [], "only the v2 part should have been listed again"
    diff = [ev for batch in consumer.of_type(EventBatch) for ev in batch.events]
    assert sorted((e.kind, e.key.rsplit("/", 1)[1]) for e in diff) == [
        ("delete", "10.5.0.0-24"),
        ("put", "10.5.1.0-24"),
        ("put", "10.5.9.0-24"),
    ]
    # The v3 watch kept running through all this.
    c.put("/registry/services/specs/default/b", b"svc2")
    assert consumer.wait_for(lambda s: "/registry/services/specs/default/b" in s.state)
    c.close()


def test_v2_and_v3_together_survive_a_restart(etcd_v2: EtcdServer, consume: Callable[..., Any]) -> None:
    c = etcd3.client("127.0.0.1", etcd_v2.client_port)
    c.put("/registry/x", b"v3")
    v2_put(etcd_v2, f"{NET}/config", "cfg")
    consumer = consume(source_for(etcd_v2, ["/registry/"], [NET]))
    assert consumer.wait_for(lambda s: s.state == {"/registry/x": b"v3", f"{NET}/config": b"cfg"})
    etcd_v2.kill()
    assert consumer.wait_for(lambda s: not s.connected, timeout=5)
    etcd_v2.start()
    v2_put(etcd_v2, f"{NET}/subnets/10.5.7.0-24", "after restart")
    assert consumer.wait_for(lambda s: f"{NET}/subnets/10.5.7.0-24" in s.state, timeout=15)
    assert consumer.connected
    c.close()


def test_v2_disabled_is_reported(etcd: EtcdServer) -> None:
    src = ClusterSource(EtcdSettings((etcd.client_url,), timeout=1.0), [], [NET])
    with pytest.raises(EtcdUnavailable, match="404"):
        src.snapshot(retry_budget=0)


def test_v2_prefix_must_not_overlap_v3(etcd: EtcdServer) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        ClusterSource(EtcdSettings((etcd.client_url,)), [f"{NET}/"], [NET])
