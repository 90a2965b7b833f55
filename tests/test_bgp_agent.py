"""The agent announces the VIPs over BGP only while it is fit: after a live sync, through an etcd outage,
not after its data plane failed, not after it stopped.

Real parts in two network namespaces: the agent's nftables data plane in `dp`, the announcer's lo in `lb`
(two, so that removing `dp` breaks the data plane for real while the announcer keeps working). No BIRD
here: what BIRD does with the addresses is tests/test_bgp_bird.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flannel_lb import config
from flannel_lb.bgp.announce import Announcer
from flannel_lb.daemon.agent import Agent
from flannel_lb.dataplane.plane import make_dataplane
from flannel_lb.lab.netns import Namespaces, unique_prefix
from flannel_lb.lab.objects import service
from flannel_lb.source.records import KeyValue, Snapshot, Status

pytestmark = pytest.mark.netns

VIP = "10.81.0.100"


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root: builds network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/setup.sh installs it)"
    return ""


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


@dataclass
class Box:
    ns: Namespaces
    agent: Agent

    def on_lo(self) -> list[tuple[str, str]]:
        text = self.ns.run("lb", ["ip", "-j", "-4", "addr", "show", "dev", "lo"]).stdout
        return sorted(
            (a["local"], a.get("label", "")) for link in json.loads(text) for a in link["addr_info"]
        )


def _config() -> config.Config:
    return config.parse(
        {
            "lb": {"addresses": [VIP]},
            "dataplane": {"writer": "nft", "manage_ip_forward": False, "conntrack_cleanup": False},
            "bgp": {"enabled": True, "asn": 65001, "neighbors": [{"address": "10.80.0.1", "asn": 65000}]},
        }
    )


def _snapshot(revision: int) -> Snapshot:
    svc = json.dumps(service("web", external_ips=[VIP])).encode()
    return Snapshot(
        revision,
        [
            KeyValue("/coreos.com/network/config", b'{"Network": "10.246.0.0/16"}', 1),
            KeyValue("/registry/services/specs/default/web", svc, 2),
        ],
    )


@pytest.fixture
def box() -> Iterator[Box]:
    with Namespaces(unique_prefix("bgpg")) as ns:
        ns.add("dp")
        ns.add("lb")
        cfg = _config()
        agent = Agent(
            cfg,
            dataplane=make_dataplane(cfg, ns.name("dp")),
            announcer=Announcer.of(cfg.bgp, ns.name("lb")),
        )
        yield Box(ns, agent)


LO = ("127.0.0.1", "lo")


def test_the_vip_goes_on_after_the_first_live_sync_and_stays_through_an_etcd_outage(box: Box) -> None:
    box.agent.handle(Status(connected=False, reason="etcd down at boot"))  # no state file: nothing served
    assert box.on_lo() == [LO]
    box.agent.handle(_snapshot(2))
    assert box.on_lo() == [LO]  # decoded, not yet synced: not fit yet
    assert box.agent.sync(full=False) is not None
    assert box.ns.run("dp", ["nft", "list", "tables"]).stdout == "table ip flb\n"  # the rules are in
    assert box.on_lo() == [(VIP, "lo:flb"), LO]
    box.agent.handle(Status(connected=False, reason="connection refused", attempt=1))
    assert box.agent.sync(full=True) is not None  # the periodic resync during the outage
    assert box.on_lo() == [(VIP, "lo:flb"), LO]  # fail static: still announced
    box.agent.close()  # what `run` does when it stops
    assert box.on_lo() == [LO]


def test_a_failing_data_plane_withdraws_the_vip(box: Box) -> None:
    box.agent.handle(_snapshot(2))
    assert box.agent.sync(full=False) is not None
    assert box.on_lo() == [(VIP, "lo:flb"), LO]
    subprocess.run(["ip", "netns", "delete", box.ns.name("dp")], check=True)  # the data plane is gone
    assert box.agent.sync(full=True) is None
    assert box.on_lo() == [LO]  # the other boxes serve


def test_a_full_resync_puts_back_a_vip_someone_removed(box: Box) -> None:
    box.agent.handle(_snapshot(2))
    assert box.agent.sync(full=False) is not None
    box.ns.run("lb", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"])
    assert box.on_lo() == [LO]
    assert box.agent.sync(full=True) is not None
    assert box.on_lo() == [(VIP, "lo:flb"), LO]


def test_sync_once_never_announces(box: Box) -> None:
    """An agent made without an announcer (`sync --once`) leaves lo alone, [bgp] on or not."""
    cfg = _config()
    agent = Agent(cfg, dataplane=make_dataplane(cfg, box.ns.name("dp")))
    agent.handle(_snapshot(2))
    assert agent.sync(full=False) is not None
    agent.close()
    assert box.on_lo() == [LO]


def test_a_reloaded_bgp_section_moves_or_withdraws_the_announcement(box: Box, tmp_path: Path) -> None:
    path = tmp_path / "flannel-lb.toml"
    base = (
        f'[lb]\naddresses = ["{VIP}", "10.81.0.101"]\n'
        '[dataplane]\nwriter = "nft"\nmanage_ip_forward = false\nconntrack_cleanup = false\n'
        '[bgp]\nenabled = true\nasn = 65001\nneighbors = [{ address = "10.80.0.1", asn = 65000 }]\n'
    )
    path.write_text(base + f'addresses = ["{VIP}"]\n')
    cfg = config.load(path)
    agent = Agent(
        cfg,
        dataplane=make_dataplane(cfg, box.ns.name("dp")),
        announcer=Announcer.of(cfg.bgp, box.ns.name("lb")),
    )
    agent.handle(_snapshot(2))
    assert agent.sync(full=False) is not None
    assert box.on_lo() == [(VIP, "lo:flb"), LO]
    path.write_text(base + 'addresses = ["10.81.0.101"]\n')  # announce another address (SIGHUP)
    agent.reload()
    assert agent.sync(full=False) is not None
    assert box.on_lo() == [("10.81.0.101", "lo:flb"), LO]
    path.write_text(base.replace("enabled = true", "enabled = false"))
    agent.reload()  # BGP turned off: everything it announced goes at once
    assert box.on_lo() == [LO]
    assert agent.sync(full=True) is not None
    assert box.on_lo() == [LO]
    agent.close()
