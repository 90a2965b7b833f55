"""The agent loop's own housekeeping, without etcd or a kernel: what it does with the first snapshot."""

from __future__ import annotations

import gc
import json

from flannel_lb import config
from flannel_lb.lab.objects import service
from flannel_lb.source.records import KeyValue, Snapshot
from tests.conftest import memory_agent


def test_first_snapshot_is_frozen_out_of_the_collector() -> None:
    """The decoded cluster is long-lived: it leaves the collector's generations before the first plan
    (which would otherwise pay for full collections walking it); later snapshots change nothing."""
    cfg = config.parse({"lb": {"addresses": ["192.168.121.201"]}})
    agent = memory_agent(cfg)
    svc = json.dumps(service("web", external_ips=["192.168.121.201"])).encode()
    items = [
        KeyValue("/coreos.com/network/config", b'{"Network": "10.246.0.0/16"}', 1),
        KeyValue("/registry/services/specs/default/web", svc, 2),
    ]
    assert gc.get_freeze_count() == 0
    agent.handle(Snapshot(2, items))
    decoded = agent.state.services[("default", "web")]
    assert agent.have_snapshot and gc.get_freeze_count() > 0
    assert not any(o is decoded for o in gc.get_objects())  # in the permanent generation now
    frozen = gc.get_freeze_count()
    agent.handle(Snapshot(3, items))
    assert gc.get_freeze_count() <= frozen  # not frozen again (frozen objects may still be freed)
