"""flannel-lb's agent running inside the lab's `loadbalancer` namespace, as systemd would run it on the VM.

The lab's etcd is only reachable from inside the lab, so the agent (and one-shot commands such as
`plan`) run there too: `ip netns exec <loadbalancer> python -m flannel_lb --config ... run`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flannel_lb.lab.topology import LB_INFRA_IP, LB_KUBE_IP

LB_HOST = "loadbalancer"


def agent_config(etcd_url: str, *, state_file: str = "", **dataplane: object) -> str:
    """The agent's config for the lab: the seed's etcd and LB addresses, plus dataplane overrides."""
    lines = [
        "[etcd]",
        f'endpoints = ["{etcd_url}"]',
        "retry_budget = 10.0",
        "[lb]",
        f'addresses = ["{LB_INFRA_IP}", "{LB_KUBE_IP}"]',
        *([f"state_file = {json.dumps(state_file)}"] if state_file else []),
        "[dataplane]",
    ]
    for key, value in dataplane.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += ["[metrics]", 'listen = "127.0.0.1:9842"', "[log]", 'level = "info"', 'format = "json"']
    return "\n".join(lines) + "\n"


class AgentProcess:
    """`flannel-lb run` in a namespace, with its JSON log lines collected as they arrive."""

    def __init__(self, netns: str, config: Path, log_path: Path | None = None) -> None:
        self.netns = netns
        self.config = config
        self.log_path = log_path
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *command: str) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            sys.executable,
            "-m",
            "flannel_lb",
            "--config",
            str(self.config),
            *command,
        ]

    def start(self, env: dict[str, str] | None = None) -> AgentProcess:
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.argv("run"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        sink = self.log_path.open("ab") if self.log_path else None
        try:
            for raw in stream:
                arrived = time.monotonic()
                if sink:
                    sink.write(raw)
                    sink.flush()
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = {"event": "raw", "line": raw.decode(errors="replace").rstrip()}
                self._stamp(event, arrived)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        finally:
            if sink:
                sink.close()

    def _stamp(self, event: dict[str, Any], arrived: float) -> None:
        """A hook for subclasses (the benchmarks record each event's arrival time)."""

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0, after: int = 0
    ) -> dict[str, Any]:
        """The first log event (from index `after` on) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None and not left > 0):
                    tail = "\n".join(json.dumps(e) for e in self.events[-15:])
                    raise TimeoutError(
                        f"agent: no matching log event within {timeout} s; last events:\n{tail}"
                    )
                self._cond.wait(min(left, 0.2))

    def wait_synced(self, timeout: float = 20.0, after: int = 0) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == "sync", timeout, after)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # `ip netns exec` execs the agent, so the pid is the agent's own
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the rules stay), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
