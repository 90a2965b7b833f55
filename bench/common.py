"""What every benchmark shares: the lab, nginx in the pods, the agent, bulk etcd writes, the probe client.

Topology (the lab's, `flannel_lb.lab`): client 192.168.121.1 -> loadbalancer 192.168.121.201 ->
flannel vxlan -> pods on the nodes. Every process started here runs inside one of the lab's
namespaces, so `Lab.down()` (always called, in a `finally`) removes it together with the namespaces.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.objects import BenchService, Endpoint
from flannel_lb.kernel.netns import in_netns
from flannel_lb.lab.lab import Lab
from flannel_lb.lab.lbagent import LB_HOST, AgentProcess, agent_config
from flannel_lb.lab.progress import Progress
from flannel_lb.lab.topology import LB_INFRA_IP

VIP = LB_INFRA_IP
NGINX_PORT = 8000  # nginx in every pod (the lab's Python pod servers keep 80/8080)
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, agent died, timeout)."""


# --- the lab ----------------------------------------------------------------------------------------


def _raise_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, so `finally` blocks tear the lab down."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


@contextlib.contextmanager
def bench_lab(tag: str, *, nodes: int = 2, pods_per_node: int = 1) -> Iterator[Lab]:
    """A fresh lab named `b<tag><random>` with `nodes * pods_per_node` pods; always torn down."""
    _raise_on_sigterm()
    if os.geteuid() != 0:
        raise BenchError("the benchmarks build network namespaces: run them as root")
    lab = Lab(f"b{tag}{secrets.token_hex(2)}", nodes=nodes, pods_per_node=pods_per_node, expose=False)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def child_answer(argv: Sequence[str], env: dict[str, str], tree: Path, what: str) -> dict[str, Any]:
    """Run a benchmark's child in a fresh interpreter; its last line of output is JSON naming the
    flannel_lb it imported, which must be `tree`'s (so a measurement never runs the wrong code)."""
    proc = subprocess.run(
        list(argv), env=env, cwd=tree, capture_output=True, text=True, check=False, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(answer["flannel_lb"]).resolve() != (tree / "flannel_lb").resolve():
        raise RuntimeError(
            f"{what}: expected flannel_lb from {tree}, the child imported {answer['flannel_lb']}"
        )
    return answer


def pods(lab: Lab) -> list[tuple[str, str, str]]:
    """(pod name, node, ip) of the lab's running pods, sorted by name."""
    return sorted((p.name, p.node, p.ip) for p in lab.cluster().pods.values() if p.ip and not p.terminating)


def node_subnets(lab: Lab) -> list[tuple[str, str]]:
    """(node, first three octets of its flannel /24): where admitted fake endpoints can live."""
    return [(n.name, n.pod_cidr.rsplit(".", 1)[0]) for n in lab.cluster().nodes.values()]


@contextlib.contextmanager
def workdir(tag: str) -> Iterator[Path]:
    """A temporary directory for configs and logs; kept after a failure or with FLB_BENCH_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix=f"flannel-lb-bench-{tag}-"))
    keep = bool(os.environ.get("FLB_BENCH_KEEP"))
    try:
        yield path
    except BaseException:
        keep = True  # the agent's and the helpers' logs are what explains a failure
        raise
    finally:
        if keep:
            log(f"  logs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- nginx in the pods ------------------------------------------------------------------------------

NGINX_CONF = """\
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {port} backlog=4096;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""


def start_nginx(lab: Lab, pod: str, base: Path, port: int = NGINX_PORT) -> None:
    """nginx (1 worker, `return 200 "<pod>"`, no access log) inside the pod's namespace."""
    d = base / f"nginx-{pod}"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, port=port, name=pod))
    run_daemon(lab, pod, ["nginx", "-c", str(conf)], d / "start.log")
    wait_listening(lab, pod, "127.0.0.1", port)


def run_daemon(lab: Lab, host: str, argv: Sequence[str], log: Path) -> None:
    """Start a self-daemonising server in a lab namespace; it lives until the lab is torn down."""
    with open(log, "wb") as err:
        proc = subprocess.run(
            in_netns(argv, lab.namespace(host)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
            timeout=30,
        )
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {host} exited {proc.returncode}; see {log}")


def wait_listening(lab: Lab, host: str, ip: str, port: int, timeout: float = 10.0) -> None:
    code = (
        "import socket,sys,time\n"
        f"end=time.monotonic()+{timeout}\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(({ip!r},{port}),timeout=1).close(); break\n"
        "    except OSError:\n"
        "        if time.monotonic()>end: sys.exit(1)\n"
        "        time.sleep(0.05)\n"
    )
    lab.exec_in(host, [sys.executable, "-c", code], check=True, timeout=timeout + 5)


# --- the agent --------------------------------------------------------------------------------------


class TimedAgent(AgentProcess):
    """`flannel-lb run` in the LB namespace; every log event gets `_t`, its arrival (monotonic) time."""

    def _stamp(self, event: dict[str, Any], arrived: float) -> None:
        event["_t"] = arrived

    def wait_sync_where(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0
    ) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == "sync" and predicate(e), timeout, after)


# The agent's data planes (`[dataplane] writer`): every figure that runs the agent can be measured
# with either. Each writer's figures get their own section of docs/benchmarks.md.
WRITERS = ("restore", "nft")
WRITER_LABELS = {"restore": "iptables-restore writer", "nft": "nftables writer"}
WRITER_NOTES = {"restore": "iptables-nft (the host's default)", "nft": '`[dataplane] writer = "nft"`'}


def add_writer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--writer",
        default="restore",
        choices=WRITERS,
        help="the agent's data plane (`[dataplane] writer`): restore = iptables rules (default), "
        "nft = its native nftables table",
    )


def writer_section(name: str, writer: str) -> str:
    """The docs section a run writes: `name` for the iptables writer, `name_nft_writer` for nft."""
    return name if writer == "restore" else f"{name}_nft_writer"


def start_agent(lab: Lab, base: Path, **dataplane: object) -> TimedAgent:
    config = base / "flannel-lb.toml"
    keys: dict[str, Any] = dict(dataplane)  # `[dataplane]` keys (agent_config also takes `state_file`)
    config.write_text(agent_config(lab.etcd_url, **keys))
    return TimedAgent(lab.namespace(LB_HOST), config, base / "agent.log").start()  # type: ignore[return-value]


def stop_agent(agent: TimedAgent | None, *, cleanup: bool = True) -> None:
    """Stop the agent; with `cleanup`, also remove its rules (`flannel-lb cleanup`)."""
    if agent is None:
        return
    agent.stop()
    if cleanup:
        subprocess.run(agent.argv("cleanup"), capture_output=True, check=False, timeout=300)


@dataclass(frozen=True, slots=True)
class ProcUsage:
    """CPU seconds (own and of waited-for children such as iptables-restore) and memory of a process."""

    user: float
    system: float
    children_user: float
    children_system: float
    rss_mb: float
    hwm_mb: float

    @property
    def own(self) -> float:
        return self.user + self.system

    @property
    def children(self) -> float:
        return self.children_user + self.children_system

    def minus(self, before: ProcUsage) -> ProcUsage:
        return ProcUsage(
            self.user - before.user,
            self.system - before.system,
            self.children_user - before.children_user,
            self.children_system - before.children_system,
            self.rss_mb,
            self.hwm_mb,
        )


def proc_usage(pid: int) -> ProcUsage:
    tick = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) / 1024
    return ProcUsage(utime, stime, cutime, cstime, mem.get("VmRSS", 0.0), mem.get("VmHWM", 0.0))


# --- etcd: bulk writes ------------------------------------------------------------------------------


class _LineProcess:
    """A JSON-line subprocess in a lab namespace: one command line in, one or more answer lines out."""

    def __init__(self, lab: Lab, host: str, argv: Sequence[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                in_netns(argv, lab.namespace(host)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
            )
        self._buf = b""
        self.name = " ".join(argv[-3:])

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        """The next answer line. Reads the pipe's fd directly: a buffered reader could swallow two
        lines at once, and `select` would then wait for a second line that is already here."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 1 << 20) if ready else b""
            if not chunk:
                code = self.proc.poll()
                why = f"exited with {code}" if code is not None else f"no answer within {timeout:.0f} s"
                raise BenchError(f"{self.name}: {why}; see {self.log}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("ok") is False or "error" in answer:
            raise BenchError(f"{self.name}: {answer.get('error')}")
        return answer

    def call(self, cmd: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        self.send(cmd)
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class BulkWriter(_LineProcess):
    """`bench.etcdbulk` inside `master`: batched puts/deletes in etcd transactions."""

    def __init__(self, lab: Lab, log: Path) -> None:
        argv = [sys.executable, "-m", "bench.etcdbulk", "--endpoint", lab.etcd_url]
        super().__init__(lab, "master", argv, log)

    def write(
        self, puts: Iterable[tuple[str, bytes]] = (), deletes: Iterable[str] = (), batch: int = 384
    ) -> int:
        """Write everything (in batches of `batch` operations); return the last revision."""
        revision = 0
        pending: list[list[str]] = []
        with Progress("etcd bulk writes") as progress:
            for key, value in puts:
                pending.append([key, base64.b64encode(value).decode()])
                if len(pending) >= batch:
                    revision = self.call({"puts": pending})["revision"]
                    progress.advance(len(pending))
                    pending = []
            if pending:
                revision = self.call({"puts": pending})["revision"]
                progress.advance(len(pending))
            dels = list(deletes)
            for i in range(0, len(dels), batch):
                revision = self.call({"deletes": dels[i : i + batch]})["revision"]
                progress.advance(len(dels[i : i + batch]))
        return int(revision)

    def put(self, key: str, value: bytes) -> int:
        return int(self.call({"puts": [[key, base64.b64encode(value).decode()]]})["revision"])


# --- the client -------------------------------------------------------------------------------------


class Prober(_LineProcess):
    """`bench.probe` inside `client`: connect-time samples and waits for a frontend to open/close."""

    def __init__(self, lab: Lab, log: Path) -> None:
        super().__init__(lab, "client", [sys.executable, "-m", "bench.probe"], log)

    def connect_times(self, host: str, port: int, count: int) -> tuple[list[float], int]:
        a = self.call({"op": "connect", "host": host, "port": port, "count": count}, timeout=600)
        return list(a["us"]), int(a["failed"])

    def arm(self, host: str, port: int, want: str, timeout: float = 60.0, interval: float = 0.001) -> None:
        """Start polling; returns once the prober is polling (then trigger the change)."""
        cmd = {"op": "wait", "host": host, "port": port, "want": want, "timeout": timeout}
        self.call({**cmd, "interval": interval}, timeout=10)

    def result(self, timeout: float = 90.0) -> float | None:
        """The monotonic time the frontend was first seen in the wanted state (None: never)."""
        t = self.read(timeout)["t"]
        return float(t) if t is not None else None


# --- services ---------------------------------------------------------------------------------------


def real_endpoints(lab: Lab) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ip, node) for _, node, ip in pods(lab))


def bulk_services(
    start: int, stop: int, base_port: int, endpoints: Callable[[int], Sequence[Endpoint]]
) -> list[BenchService]:
    """Services `bulk-<i>` for i in [start, stop), exposed on VIP:(base_port + i)."""
    return [
        BenchService(f"bulk-{i:05d}", VIP, base_port + i, NGINX_PORT, tuple(endpoints(i)))
        for i in range(start, stop)
    ]


# --- statistics and the machine ---------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, str]:
    """What the figures were measured on."""

    def out(argv: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_gb:.0f} GiB",
        "kernel": platform.release(),
        "iptables": out(["iptables", "--version"]),
        "nft": out(["nft", "--version"]),
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def log(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)
