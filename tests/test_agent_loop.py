"""The agent loop's own housekeeping, without etcd or a kernel: what it does with the first snapshot, and
what it tells keepalived ([ha])."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

from prometheus_client import generate_latest

from flannel_lb import config
from flannel_lb.daemon.agent import Agent
from flannel_lb.dataplane.plane import IptablesPlane, dataplane_options
from flannel_lb.ha.paths import Paths
from flannel_lb.lab.objects import port, service
from flannel_lb.source.records import KeyValue, Snapshot, Status
from tests.conftest import MemoryWriter, memory_agent


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


# --- [ha]: the health file keepalived tracks ------------------------------------------------------

LB = "192.168.121.201"
NETWORK = KeyValue("/coreos.com/network/config", b'{"Network": "10.246.0.0/16"}', 1)


def ha_config(tmp_path: Path, **lb: object) -> config.Config:
    return config.parse(
        {
            "lb": {"addresses": [LB], **lb},
            "ha": {"enabled": True, "peer": "10.245.1.143", "interface": "eth0", "state_dir": str(tmp_path)},
            # nothing here may touch the kernel: no conntrack cleanup, no ip_forward
            "dataplane": {"conntrack_cleanup": False, "manage_ip_forward": False},
        }
    )


def ha_agent(cfg: config.Config) -> tuple[Agent, MemoryWriter, Path]:
    writer = MemoryWriter()
    agent = Agent(cfg, dataplane=IptablesPlane(writer, dataplane_options(cfg)))
    agent.tier.start()
    assert agent.tier.ha_health is not None
    return agent, writer, Path(Paths.of(cfg.ha).health_file)


def snapshot(revision: int, *services: str) -> Snapshot:
    items = [NETWORK] + [
        KeyValue(
            f"/registry/services/specs/default/{name}",
            json.dumps(service(name, external_ips=[LB], ports=[port(80 + i)])).encode(),
            2 + i,
        )
        for i, name in enumerate(services)
    ]
    return Snapshot(revision, items)


def test_the_health_file_follows_syncs_and_not_etcd(tmp_path: Path) -> None:
    agent, writer, health = ha_agent(ha_config(tmp_path))
    assert not health.exists()  # keepalived's init_file 1 stands until the first sync
    agent.handle(snapshot(2, "web"))
    assert agent.sync(full=False) is not None
    assert health.read_text() == "0\n"
    # etcd goes away: the master keeps serving its last good rules, and keeps the addresses
    agent.handle(Status(False, reason="connection refused", attempt=1))
    assert agent.sync(full=True) is not None  # the periodic verifying resync, etcd or not
    assert health.read_text() == "0\n"
    # the data plane fails (a sync, then the verifying resync): give up the addresses
    writer.fail = "iptables-restore: line 3 failed"
    agent.handle(snapshot(3, "web", "api"))
    assert agent.sync(full=False) is None
    assert health.read_text() == "1\n"
    assert agent.sync(full=True) is None
    assert (
        health.read_text() == "1\n" and agent.tier.ha_health is not None and agent.tier.ha_health.writes == 2
    )
    writer.fail = ""
    assert agent.sync(full=False) is not None
    assert health.read_text() == "0\n"
    exported = generate_latest(agent.metrics.registry).decode()
    assert "flannel_lb_ha_healthy 1.0" in exported


def test_a_box_booting_during_an_etcd_outage_is_healthy_on_its_last_good_plan(tmp_path: Path) -> None:
    """Both boxes see the same etcd: one that reboots while it is down serves the state file's plan
    like the other serves its last good rules, and may hold the addresses (its priority decides)."""
    state_file = tmp_path / "state.jsonl"
    first, _, health = ha_agent(ha_config(tmp_path, state_file=str(state_file)))
    first.handle(snapshot(2, "web"))
    assert first.sync(full=False) is not None
    first.close()
    health.write_text("1\n")  # the reboot: /run is empty again, keepalived's `init_file 1` writes it
    booted, _, _ = ha_agent(ha_config(tmp_path, state_file=str(state_file)))
    booted.handle(Status(False, reason="connection refused", attempt=1))
    assert booted.stale is not None and booted.plan is not None and booted.plan.frontends
    assert health.read_text() == "0\n"
    booted.close()


def test_a_boot_plan_the_data_plane_refuses_is_unhealthy(tmp_path: Path) -> None:
    state_file = tmp_path / "state.jsonl"
    first, _, health = ha_agent(ha_config(tmp_path, state_file=str(state_file)))
    first.handle(snapshot(2, "web"))
    assert first.sync(full=False) is not None
    first.close()
    assert health.read_text() == "0\n"  # an agent restart under a running keepalived: 0 stays...
    booted, writer, _ = ha_agent(ha_config(tmp_path, state_file=str(state_file)))
    assert health.read_text() == "0\n"
    writer.fail = "iptables-restore: line 3 failed"
    booted.handle(Status(False, reason="connection refused", attempt=1))
    assert booted.stale is None
    assert health.read_text() == "1\n"  # ...until the new agent fails to program anything
    booted.close()


def test_without_ha_or_outside_run_no_health_file_is_written(tmp_path: Path) -> None:
    cfg = ha_config(tmp_path)
    writer = MemoryWriter()
    once = Agent(cfg, dataplane=IptablesPlane(writer, dataplane_options(cfg)))  # as `sync --once` builds it
    once.handle(snapshot(2, "web"))
    assert once.sync(full=False) is not None
    off = dataclasses.replace(cfg, ha=dataclasses.replace(cfg.ha, enabled=False))
    plain = Agent(off, dataplane=IptablesPlane(MemoryWriter(), dataplane_options(off)))
    plain.tier.start()
    assert plain.tier.ha_health is None
    assert list(tmp_path.iterdir()) == []
