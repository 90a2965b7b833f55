"""What the active checks ([health]) cost at 10k Services x 10 endpoints: agent CPU per minute, checks/s.

The targets come through the agent's own parts: Services, Endpoints and EndpointSlices from the lab's
object factory (`bench.objects`, protobuf as kube-apiserver stores them) are loaded into a
`ClusterState` as the agent's first snapshot is, planned (`compute_plan`), and `check_targets(plan)`
gives the distinct (ip, port, path) checks. The agent's `BackendChecker` then runs them on its thread,
spread over the interval and bounded by `max_rate`, for `--seconds`, inside a scratch network
namespace where every pod address is local (`ip route add local 10.240.0.0/12 dev lo`) and a
listener on the pods' port accepts and closes each connection (its CPU is not the agent's).

Two shapes of the same 10k x 10:
  distinct   every endpoint its own pod: 100,000 distinct targets (the worst case)
  shared     the other benchmarks' layout (`bench.objects.fake_endpoints`: pods reused by many
             Services on 8 nodes), which collapses to the distinct ip:port the pods really have

Per run (a fresh interpreter in the namespace): the targets, the effective interval and rate the
schedule runs at, the checks done per second (mean, and the most in any 1 s: a burst would show
there), the failures (0 expected: every target listens), the checker process's CPU seconds (user +
sys, which includes the kernel's loopback handshakes) per minute of checking, and what the agent pays
per sync: `check_targets(plan)` and the schedule taking a new target set with one Service changed.

Run (as root): .venv/bin/python -m bench.health_cost [--seconds 60] [--rates 1000,10000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import NGINX_PORT, ROOT, VIP, bulk_services, log
from bench.objects import Endpoint, encoded, fake_endpoints
from flannel_lb.kernel.health import HttpTarget, Outcome, Prober

NETWORK = b'{"Network": "10.240.0.0/12", "Backend": {"Type": "vxlan"}}'
PODS_PER_NODE = 250  # one /24 lease per node, hosts .2-.251


def _subnet(node: int) -> str:
    return f"10.{240 + node // 256}.{node % 256}"


def _distinct(index: int, count: int) -> tuple[Endpoint, ...]:
    """`count` pods of their own for Service `index`: pod k = index * count + j on node k // 250."""
    out = []
    for j in range(count):
        k = index * count + j
        node = k // PODS_PER_NODE
        out.append(Endpoint(f"{_subnet(node)}.{2 + k % PODS_PER_NODE}", f"node-{node}"))
    return tuple(out)


def generate(shape: str, services: int, endpoints: int, path: Path) -> int:
    """The snapshot's (key, value) pairs, pickled to `path`; returns the number of keys."""
    from flannel_lb.lab import objects

    if shape == "distinct":
        nodes = -(-services * endpoints // PODS_PER_NODE)
        bulk = bulk_services(0, services, 20000, lambda i: _distinct(i, endpoints))
    else:
        nodes = 8
        subnets = [(f"node-{n}", _subnet(n)) for n in range(nodes)]
        bulk = bulk_services(0, services, 20000, lambda i: fake_endpoints(i, endpoints, subnets))
    items: list[tuple[str, bytes]] = [("/coreos.com/network/config", NETWORK)]
    for n in range(nodes):
        lease = objects.lease(
            f"192.168.{n // 250}.{1 + n % 250}", f"aa:00:00:00:{n // 256:02x}:{n % 256:02x}"
        )
        items.append((f"/coreos.com/network/subnets/{_subnet(n)}.0-24", lease))
    items += [kv for i, svc in enumerate(bulk) for kv in encoded(svc, i)]
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(items)


# --- the measuring child (inside the namespace) ----------------------------------------------------


class CountingProber(Prober):
    """The agent's prober, noting when each check really started (the rate bound, measured)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.starts: list[float] = []

    def start(self, target: HttpTarget, now: float) -> Outcome | None:
        self.starts.append(time.monotonic())
        return super().start(target, now)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(items_path: str, interval: float, max_rate: int, seconds: float) -> dict[str, Any]:
    """Plan the snapshot, run the agent's checker on its targets for `seconds`, measure."""
    from flannel_lb.config import HealthConfig
    from flannel_lb.daemon.backend_checks import BackendChecker, Check, check_targets
    from flannel_lb.daemon.check_schedule import CheckSchedule
    from flannel_lb.daemon.metrics import Metrics
    from flannel_lb.plan.compute import PlanSettings, compute_plan
    from flannel_lb.state.cluster import ClusterState

    with open(items_path, "rb") as f:
        items: list[tuple[str, bytes]] = pickle.load(f)
    state = ClusterState()
    state.replace(((k, v, None) for k, v in items), len(items))
    del items
    plan = compute_plan(state, PlanSettings(addresses=frozenset({VIP})), now=time.time())
    backends = sum(len(f.backends) for f in plan.frontends)
    start = time.perf_counter()
    targets = check_targets(plan)
    targets_ms = (time.perf_counter() - start) * 1000

    # what a sync hands the checker: the whole target set (cold), then one Service's endpoints replaced
    scratch: CheckSchedule[Check] = CheckSchedule(interval, max_rate, time.monotonic())
    start = time.perf_counter()
    scratch.set_targets(targets)
    cold_ms = (time.perf_counter() - start) * 1000
    first = plan.frontends[0]
    changed = (targets - {(b.ip, b.port, first.check_path) for b in first.backends}) | {
        (b.ip, b.port + 1, first.check_path) for b in first.backends
    }
    start = time.perf_counter()
    scratch.set_targets(changed)
    swap_ms = (time.perf_counter() - start) * 1000

    settings = HealthConfig(enabled=True, interval=interval, timeout=1.0, max_rate=max_rate)
    metrics = Metrics()
    checker = BackendChecker(settings, lambda down: None, metrics)
    checker.targets = targets
    stop = threading.Event()
    prober = CountingProber(settings.timeout)
    thread = threading.Thread(target=checker.run, args=(stop, prober), daemon=True)
    thread.start()
    time.sleep(2.0)  # warm-up: the first slots, imports, the selector
    samples: list[tuple[float, int]] = []
    cpu0, wall0 = _cpu(), time.monotonic()
    while (now := time.monotonic()) < wall0 + seconds:
        samples.append((now, checker.checks))
        time.sleep(0.1)
    samples.append((time.monotonic(), checker.checks))
    cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
    stop.set()
    thread.join(timeout=5)
    done = samples[-1][1] - samples[0][1]
    starts = [t for t in prober.starts if wall0 <= t <= wall0 + wall]
    peak, j = 0, 0
    for i, t in enumerate(starts):  # the most checks started in any 1 s window (t - 1, t]
        while starts[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    failed = metrics.registry.get_sample_value("flannel_lb_health_checks_total", {"result": "failed"}) or 0.0
    return {
        "frontends": len(plan.frontends),
        "backends": backends,
        "targets": len(targets),
        "check_targets_ms": targets_ms,
        "effective_interval": checker.schedule.effective_interval,
        "scheduled_rate": checker.schedule.checks_per_second,
        "checks": done,
        "checks_per_second": done / wall,
        "peak_per_second": peak,
        "failed": failed,
        "cpu_per_minute": cpu / wall * 60,
        "cpu_ms_per_1000_checks": cpu / max(done, 1) * 1e6,
        "cold_ms": cold_ms,
        "swap_ms": swap_ms,
        "seconds": wall,
    }


# --- the parent -----------------------------------------------------------------------------------------


LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(65535)
while True:
    s.accept()[0].close()
"""


def measure(ns: Any, items: Path, interval: float, max_rate: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    argv = [
        sys.executable,
        "-m",
        "bench.health_cost",
        "--child",
        str(items),
        str(interval),
        str(max_rate),
        str(seconds),
    ]
    proc = subprocess.run(
        ns.argv("hc", argv),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return got


def render(rows: list[tuple[str, int, dict[str, Any]]], interval: float) -> str:
    from bench.report import table

    headers = [
        "shape",
        "backends -> distinct targets",
        "max_rate",
        "effective interval s",
        "checks/s (mean; most started in 1 s)",
        "failed",
        "agent CPU s per minute",
        "CPU ms per 1,000 checks",
        "per sync: check_targets(plan) ms",
        "schedule: all targets new; 1 Service changed (ms)",
    ]
    out = []
    for shape, rate, r in rows:
        out.append(
            [
                shape,
                f"{r['backends']:,} -> {r['targets']:,}",
                f"{rate:,}",
                f"{r['effective_interval']:.1f}"
                + (" (stretched)" if r["effective_interval"] > interval else ""),
                f"{r['checks_per_second']:,.0f}; {r['peak_per_second']:,}",
                f"{r['failed']:.0f}",
                f"{r['cpu_per_minute']:.2f}",
                f"{r['cpu_ms_per_1000_checks']:.0f}",
                f"{r['check_targets_ms']:.0f}",
                f"{r['cold_ms']:.0f}; {r['swap_ms']:.1f}",
            ]
        )
    return table(headers, out)


def summary(rows: list[tuple[str, int, dict[str, Any]]], interval: float) -> str:
    """What the rows mean, in words (the default bound first)."""
    out = []
    for shape, rate, r in rows:
        e = r["effective_interval"]
        when = (
            f"checked every {e:.0f} s instead of {interval:g} s (rate-bound: a backend is out after "
            f"fall x {e:.0f} s, a node whose path fails after one pass, {e:.0f} s)"
            if e > interval
            else f"all checked every {interval:g} s"
        )
        out.append(
            f"- {shape}, max_rate {rate:,}: {r['backends']:,} backends are {r['targets']:,} distinct checks, "
            f"{when}; {r['checks_per_second']:,.0f} checks/s cost the agent {r['cpu_per_minute']:.1f} CPU s "
            f"per minute ({r['cpu_per_minute'] / 60:.0%} of a core), at most {r['peak_per_second']:,} "
            "started in any second."
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--interval", type=float, default=2.0, help="[health] interval (default: the default)")
    p.add_argument("--rates", default="1000", help="[health] max_rate values, comma-separated (default 1000)")
    p.add_argument("--seconds", type=float, default=60.0, help="checking time measured per run")
    p.add_argument("--quick", action="store_true", help="20 s per run")
    p.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("health_cost builds a network namespace: run it as root")
    seconds = 20.0 if args.quick else args.seconds
    rates = [int(r) for r in args.rates.split(",")]

    from bench.report import now, preamble, update_section
    from flannel_lb.lab.netns import Namespaces, unique_prefix

    started = now()
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="flb-health-cost-") as tmp, Namespaces(unique_prefix("hc")) as ns:
        ns.add("hc")
        ns.run("hc", ["ip", "route", "add", "local", "10.240.0.0/12", "dev", "lo", "table", "local"])
        ns.sysctl("hc", "net.core.somaxconn", "65535")
        ns.sysctl("hc", "net.ipv4.tcp_max_syn_backlog", "65535")
        listeners = [ns.popen("hc", [sys.executable, "-c", LISTENER, str(NGINX_PORT)]) for _ in range(2)]
        try:
            for shape in ("shared", "distinct"):
                items = Path(tmp) / f"{shape}.pickle"
                keys = generate(shape, args.services, args.endpoints, items)
                log(f"{shape}: {args.services:,} Services x {args.endpoints} endpoints, {keys:,} keys")
                for rate in rates:
                    r = measure(ns, items, args.interval, rate, seconds)
                    log(
                        f"  max_rate {rate}: {r['targets']:,} targets, "
                        f"every {r['effective_interval']:.1f} s, "
                        f"{r['checks_per_second']:.0f} checks/s, CPU {r['cpu_per_minute']:.2f} s/min, "
                        f"{r['failed']:.0f} failed"
                    )
                    rows.append((shape, rate, r))
        finally:
            for proc in listeners:
                proc.kill()
                proc.wait()
    body = render(rows, args.interval)
    print(body)
    if not args.no_doc:
        note = (
            f"{args.services:,} Services x {args.endpoints} endpoints, "
            f"[health] interval {args.interval:g} s, "
            f"timeout 1 s, concurrency 256; {seconds:.0f} s of checking measured per row (after 2 s)"
        )
        text = preamble("Health checks at scale ([health])", started, note)
        text += (
            "\nThe agent's `BackendChecker` on the targets `check_targets` takes from a real plan of the "
            "lab's objects; every pod address is local in a scratch namespace, where a listener accepts "
            "each check (its CPU is not counted). CPU = the checking process's user + sys time (the "
            "kernel's side of the loopback handshakes included), per minute of checking.\n\n"
        )
        update_section("health_cost", text + body + "\n\n" + summary(rows, args.interval) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
        sys.exit(0)
    sys.exit(main())
