"""`flannel-lb lab demo`: the seed's story in under a minute, through the real agent.

Up: namespaces, etcd, a vxlan overlay and pods. Then flannel-lb runs in the LB's namespace and the
client curls 192.168.121.201. The demo shows the requests spreading over the pods, scales the
deployment and shows the change, and tears everything down. With `--no-masquerade` it reproduces
the seed's failure (DNAT alone times out) and explains why.

The agent's config and log live in the lab's state dir, so tearing the lab down removes them; after a
failure they are copied to a temporary directory first, and the demo says where.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from flannel_lb.lab.topology import CLIENT_IP, LB_INFRA_IP
from flannel_lb.plan.report import counted

VIP = LB_INFRA_IP


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(n: int, title: str) -> None:
    _say()
    _say(f"== {n}. {title}")


def _requests(lab: Lab, count: int, timeout: float = 1.0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "flannel_lb.lab.traffic", "http", f"{VIP}:80", "--count", str(count)]
    out = lab.exec_in("client", [*argv, "--timeout", str(timeout)], check=True, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _show_spread(result: dict[str, Any]) -> None:
    total = result["ok"] + result["failed"]
    _say(f"   {result['ok']}/{total} answered" + (f", {result['failed']} failed" if result["failed"] else ""))
    for pod, n in result["by_pod"].items():
        _say(f"   {pod:<30} {n:>4}  {'#' * max(1, round(40 * n / max(1, total)))}")


def run_demo(*, no_masquerade: bool = False, keep: bool = False, name: str = "demo") -> int:
    started = time.monotonic()
    lab = Lab(name, nodes=2, pods_per_node=2)
    if lab.is_up():
        lab.down()  # a previous demo that was interrupted
    workdir = lab.state_dir / "demo"
    agent: AgentProcess | None = None
    code = 1
    try:
        _step(1, "the seed's lab, rebuilt in network namespaces")
        lab.up()
        workdir.mkdir()
        pods = sorted((p.name, p.node, p.ip) for p in lab.cluster().pods.values())
        _say(f"   client {CLIENT_IP} -> loadbalancer {VIP} (+ 10.245.1.142) -> flannel vxlan -> pods")
        _say(f"   etcd {lab.etcd_url} in the master namespace holds the flannel leases and the registry")
        for pod, node, ip in pods:
            _say(f"   pod {pod:<30} on {node}  {ip}")
        _say(f"   Service default/nginx: `kubectl expose deployment nginx --port=80 --external-ip={VIP}`")

        config = workdir / "flannel-lb.toml"
        config.write_text(agent_config(lab.etcd_url, masquerade=not no_masquerade))
        agent = AgentProcess(lab.namespace(LB_HOST), config, workdir / "agent.log").start()
        sync = agent.wait_synced(timeout=30)
        _step(2, "flannel-lb reads etcd and programs the LB (`flannel-lb run` in the loadbalancer namespace)")
        _say(
            f"   first sync: {counted(sync['frontends'], 'frontend')}, "
            f"{counted(sync['backends'], 'backend')}, {sync['seconds']} s"
        )
        plan = lab.exec_in(LB_HOST, agent.argv("plan")[4:], check=True).stdout
        _say("   " + "\n   ".join(plan.strip().splitlines()))

        if no_masquerade:
            code = _masquerade_story(lab, agent)
            return code

        _step(3, f"the client curls {VIP} 40 times, a new connection each time")
        _show_spread(_requests(lab, 40))

        _step(4, "kubectl scale deployment nginx --replicas=6")
        mark = agent.mark()
        lab.scale("nginx", 6)
        revision = lab.etcd().revision()
        t0 = time.monotonic()
        agent.wait_for(lambda e: e.get("event") == "sync" and e.get("revision", 0) >= revision, after=mark)
        _say(f"   etcd revision {revision} -> rules live in {1000 * (time.monotonic() - t0):.0f} ms")
        _show_spread(_requests(lab, 60))

        victim = sorted(p.name for p in lab.cluster().pods.values() if not p.terminating)[0]
        _step(5, f"kubectl delete pod {victim}")
        mark = agent.mark()
        lab.kill_pod(victim)
        agent.wait_synced(after=mark)
        result = _requests(lab, 50)
        _show_spread(result)
        _say(f"   {victim} gets no new connections: {'yes' if victim not in result['by_pod'] else 'NO'}")
        _say()
        _say(f"done in {time.monotonic() - started:.0f} s")
        code = 0
        return code
    finally:
        if agent is not None:
            agent.stop()
        if keep:
            lab.close()
            _say(f"the lab stays up; the agent's log is {workdir / 'agent.log'}")
            _say(f"`flannel-lb lab --lab {name} down` removes the lab and that log")
        else:
            if code != 0 and workdir.is_dir():
                kept = Path(tempfile.mkdtemp(prefix=f"flannel-lb-demo-{name}-"))
                shutil.copytree(workdir, kept, dirs_exist_ok=True)
                _say(f"the demo failed: the agent's config and log are kept in {kept}")
            lab.down()


def _masquerade_story(lab: Lab, agent: AgentProcess) -> int:
    _step(3, f"--no-masquerade: the client curls {VIP} with DNAT rules only")
    result = _requests(lab, 3, timeout=2.0)
    _show_spread(result)
    _say(
        "   Every request timed out, as in the seed notes. The LB rewrote the destination to a pod IP,\n"
        f"   but the pod answers {CLIENT_IP} through its node's default gateway, not through the LB. The\n"
        "   client gets a reply from an address it never called, or none at all, and the LB never sees\n"
        "   the reply, so it cannot undo its DNAT. flannel-lb therefore MASQUERADEs the connections it\n"
        "   DNATs (connmark): the pod sees the LB's flannel address, and replies come back through the LB."
    )
    text = agent.config.read_text().replace("masquerade = false", "masquerade = true")
    agent.config.write_text(text)
    mark = agent.mark()
    agent.signal(signal.SIGHUP)
    agent.wait_synced(after=mark)
    _step(4, "masquerade = true (config reloaded with SIGHUP), 20 more requests")
    fixed = _requests(lab, 20)
    _show_spread(fixed)
    reproduced = result["ok"] == 0 and fixed["failed"] == 0
    _say()
    _say("the seed's failure and its fix, reproduced" if reproduced else "UNEXPECTED: see the counts above")
    return 0 if reproduced else 1
