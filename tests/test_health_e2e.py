"""[health] in the lab: a node whose overlay path is silently broken (its route and FDB entry intact, so
netcheck sees nothing) leaves the rotation through the LB's own checks, and comes back when it heals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from tests.test_agent_e2e import traffic
from tests.test_faults import fetch, per_pod, pods_on
from tests.test_lab import module_lab

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

VIP = "192.168.121.201"
HEALTH = "[health]\nenabled = true\ninterval = 0.5\ntimeout = 0.3\nrise = 2\nfall = 2\n"
# node-1 stops taking the LB's vxlan packets: its route, FDB and lease stay as they are
BLACKHOLE = """table ip flb_test_blackhole {
  chain in {
    type filter hook input priority 0;
    udp dport 8472 drop
  }
}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from module_lab("h")


def test_a_silently_broken_node_leaves_and_rejoins(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url) + HEALTH)
    agent = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent.log").start()
    node1 = pods_on(lab, "node-1")
    try:
        agent.wait_synced(timeout=30)
        assert traffic(lab, "http", f"{VIP}:80", count=40)["failed"] == 0
        mark = agent.mark()
        broken = time.monotonic()
        lab.exec_in("node-1", ["nft", "-f", "-"], input=BLACKHOLE, check=True)
        # TCP backends on node-1 leave (80/TCP: 2 of 4); 53/UDP is not checked and keeps all 4
        agent.wait_for(
            lambda e: e.get("event") == "sync" and e.get("backends") == 2 + 4, after=mark, timeout=30
        )
        print(f"\nnode-1 out of rotation {time.monotonic() - broken:.2f} s after its overlay broke")
        assert 'flannel_lb_excluded_endpoints{reason="health_failing"} 2.0' in fetch(lab, "/metrics")
        result = traffic(lab, "http", f"{VIP}:80", count=40)
        assert result["failed"] == 0 and not set(result["by_pod"]) & node1, result
        failing = [e for e in agent.events[mark:] if e.get("event") == "backend_check_failing"]
        assert len(failing) == 2, failing  # one line per backend that went down

        mark = agent.mark()
        healed = time.monotonic()
        lab.exec_in("node-1", ["nft", "delete", "table", "ip", "flb_test_blackhole"], check=True)
        agent.wait_for(lambda e: e.get("event") == "sync" and e.get("backends") == per_pod(4), after=mark)
        print(f"node-1 back {time.monotonic() - healed:.2f} s after its overlay healed")
        assert set(traffic(lab, "http", f"{VIP}:80", count=80)["by_pod"]) >= node1
    finally:
        lab.exec_in("node-1", ["nft", "delete", "table", "ip", "flb_test_blackhole"], check=False)
        agent.stop()
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=False)
