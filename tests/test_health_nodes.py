"""[health] per node: a lease none of whose backends answers for a whole pass is reported as a failing
path (one pass, not `fall` failures of each backend), and comes back at the first answer; silent
addresses next to a pod that answers never take its node out, nor does one silent pod. Real connects
in a network namespace where the leases' addresses are local and nft drops what a broken overlay would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flannel_lb.lab.netns import Namespaces, unique_prefix

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parent.parent

# Runs inside the namespace: a listener on :80 for every local address, the agent's checker on two
# leases' pods, then node 1's path breaks (nft drops its SYNs) and heals. Prints what it was told.
CHILD = r"""
import json, socket, subprocess, threading, time
from flannel_lb.config import HealthConfig
from flannel_lb.daemon.backend_checks import BackendChecker
from flannel_lb.lab import objects as k
from flannel_lb.plan.compute import LeaseIndex
from flannel_lb.state.cluster import ClusterState

state = ClusterState()
state.put("/coreos.com/network/subnets/10.99.1.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
state.put("/coreos.com/network/subnets/10.99.2.0-24", k.lease("10.245.1.4", "aa:00:00:00:00:02"))
state.put("/coreos.com/network/subnets/10.99.3.0-24", k.lease("10.245.1.5", "aa:00:00:00:00:03"))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 80))
srv.listen(512)
threading.Thread(target=lambda: [srv.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()

def nft(text):
    subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)

# on lease 2, ten addresses nobody answers at (a tenant's Endpoints could name them) beside a real pod
nft("table ip ghosts {\n chain out {\n type filter hook output priority 0;\n"
    " ip daddr 10.99.2.50-10.99.2.59 tcp dport 80 drop\n }\n}\n")
events = []
start = time.monotonic()
def note(kind):
    return lambda value: events.append((time.monotonic() - start, kind, sorted(map(str, value))))
settings = HealthConfig(enabled=True, interval=0.5, timeout=0.2, rise=1, fall=3)
checker = BackendChecker(settings, note("down"), on_paths=note("paths"))
checker.leases = LeaseIndex(state.leases(), time.time())
node1 = [f"10.99.1.{i}" for i in (2, 3, 4)]
lease2 = ["10.99.2.2"] + [f"10.99.2.{i}" for i in range(50, 60)]
# lease 3: one pod with a TCP and an HTTP check (the listener closes at once: the GET fails, answered)
lease3 = [("10.99.3.2", 80, ""), ("10.99.3.2", 80, "/healthz")]
checker.targets = frozenset([(ip, 80, "") for ip in node1 + lease2] + lease3)
checker.start()

def wait(pred):
    deadline = time.monotonic() + 15
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)

time.sleep(2.0)  # a few passes: every lease has answered
broken = time.monotonic() - start
nft("table ip broken {\n chain out {\n type filter hook output priority 0;\n"
    " ip daddr { 10.99.1.0/24, 10.99.3.2 } drop\n }\n}\n")
wait(lambda: any(k == "down" and set(v) >= {f"('{ip}', 80)" for ip in node1} for _, k, v in events))
healed = time.monotonic() - start
subprocess.run(["nft", "delete", "table", "ip", "broken"], check=True)
wait(lambda: events[-1][1:] == ("paths", []))
checker.stop()
print(json.dumps({"broken": broken, "healed": healed, "events": events}))
"""


def test_a_node_whose_path_breaks_is_reported_in_one_pass_and_back_at_its_first_answer() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds a network namespace")
    with Namespaces(unique_prefix("t-hn")) as ns:
        ns.add("lb")
        ns.run("lb", ["ip", "route", "add", "local", "10.99.0.0/16", "dev", "lo", "table", "local"])
        done = subprocess.run(
            ns.argv("lb", [sys.executable, "-c", CHILD]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    paths = [(t, v) for t, kind, v in got["events"] if kind == "paths"]
    # lease 1 only: never lease 2 (its real pod answers, whatever its ten silent neighbours do), nor
    # lease 3 (one pod silent, through two checks, is that pod's fault as much as the path's)
    assert [v for _, v in paths] == [["10.99.1.0/24"], []], got["events"]
    failing_at, back_at = paths[0][0], paths[1][0]
    assert got["broken"] < failing_at < got["healed"] < back_at
    # the node went in one pass, before all of its backends had failed their own `fall` checks
    node1 = {f"('10.99.1.{i}', 80)" for i in (2, 3, 4)}
    all_down_at = next(t for t, kind, v in got["events"] if kind == "down" and node1 <= set(v))
    assert failing_at <= all_down_at, got["events"]
    print(
        f"\nnode path failing {failing_at - got['broken']:.2f} s after the break, every backend down "
        f"{all_down_at - got['broken']:.2f} s (interval 0.5 s, timeout 0.2 s, fall 3); "
        f"back {back_at - got['healed']:.2f} s after it healed"
    )
