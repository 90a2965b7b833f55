"""[health] in the lab: a node whose overlay path is silently broken (its route and FDB entry intact, so
netcheck sees nothing) leaves the rotation through the LB's own checks, all its pods at once (UDP ones
too), and comes back when it heals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.decode.values import decode_any
from flannel_lb.kernel.netns import in_netns
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from flannel_lb.lab.netns import namespace_pids
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


def passed_checks(lab: Lab, at_least: int, timeout: float = 30) -> None:
    """Wait until the agent's checks have passed `at_least` times (its metrics)."""
    pattern = re.compile(r'^flannel_lb_health_checks_total\{result="passed"\} (\S+)$', re.M)
    deadline = time.monotonic() + timeout
    while True:
        m = pattern.search(fetch(lab, "/metrics"))
        if m is not None and float(m.group(1)) >= at_least:
            return
        assert time.monotonic() < deadline, "the agent's checks did not pass"
        time.sleep(0.1)


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
        passed_checks(lab, at_least=8)  # two passes over the 4 TCP backends: every node has answered
        mark = agent.mark()
        broken = time.monotonic()
        lab.exec_in("node-1", ["nft", "-f", "-"], input=BLACKHOLE, check=True)
        # node-1's path fails: all its pods leave at once (80/TCP: 2 of 4), its 53/UDP ones too,
        # which have no check of their own
        agent.wait_for(
            lambda e: e.get("event") == "sync" and e.get("backends") == 2 + 2, after=mark, timeout=30
        )
        print(f"\nnode-1 out of rotation {time.monotonic() - broken:.2f} s after its overlay broke")
        metrics = fetch(lab, "/metrics")
        assert 'flannel_lb_excluded_endpoints{reason="node_path_failing"} 4.0' in metrics, metrics
        assert "flannel_lb_node_paths_failing 1.0" in metrics
        result = traffic(lab, "http", f"{VIP}:80", count=40)
        assert result["failed"] == 0 and not set(result["by_pod"]) & node1, result
        lines = [e for e in agent.events[mark:] if e.get("event") == "node_path_failing"]
        assert len(lines) == 1 and lines[0]["unanswered"] == 2, lines  # one line per node

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


# a pod whose workload accepts connections and answers its health path with 500 (others: its name)
SICK_POD = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sick = self.path == "/healthz"
        body = b"" if sick else sys.argv[1].encode() + b"\\n"
        self.send_response(500 if sick else 200)
        self.send_header("X-Pod-Name", sys.argv[1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"""


def test_an_http_check_takes_out_a_pod_that_accepts_connections_but_answers_500(
    lab: Lab, tmp_path: Path
) -> None:
    key = "/registry/services/specs/default/nginx"
    writer = lab.etcd()
    original = writer.get(key)
    assert original is not None
    svc = decode_any(original.value, key=key)
    svc["metadata"].setdefault("annotations", {})["flannel-lb.io/health-check-path"] = "/healthz"
    sick = sorted(pods_on(lab, "node-2"))[0]
    pod_ns = lab.namespace(sick)
    config = tmp_path / "flannel-lb.toml"
    config.write_text(agent_config(lab.etcd_url) + HEALTH)
    agent = AgentProcess(lab.namespace(LB_HOST), config, tmp_path / "agent.log").start()
    replacement: subprocess.Popen[bytes] | None = None
    try:
        writer.put(key, encode_protobuf(svc))
        agent.wait_synced(timeout=30)
        mark = agent.mark()
        for pid in namespace_pids(pod_ns):  # the pod's own workload...
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        # ...replaced by one that still accepts connections on port 80 but fails its health path
        replacement = subprocess.Popen(in_netns([sys.executable, "-c", SICK_POD, sick], pod_ns))
        out = agent.wait_for(lambda e: e.get("event") == "sync" and e.get("excluded") == 1, 30, mark)
        assert out["backends"] == 3 + 4, out  # 80/TCP loses the sick pod; 53/UDP is not checked
        failing = [e for e in agent.events[mark:] if e.get("event") == "backend_check_failing"]
        assert [e["check"] for e in failing] == ["/healthz"], failing
        result = traffic(lab, "http", f"{VIP}:80", count=40)
        assert result["failed"] == 0 and sick not in result["by_pod"], result
    finally:
        if replacement is not None:
            replacement.kill()
            replacement.wait()
        writer.put(key, original.value)
        agent.stop()
        lab.exec_in(LB_HOST, agent.argv("cleanup")[4:], check=False)
