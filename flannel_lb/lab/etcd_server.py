"""A real single-member etcd process for tests and the network-namespace lab.

Tests must exercise flannel-lb against the real server (its compaction, lease expiry, v2 history
window and keepalive behaviour are what the source code works around), so this wraps the
`etcd` binary rather than faking it. Every process it starts is reaped by `stop()`, by the
context manager, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from flannel_lb.kernel.netns import in_netns

log = structlog.get_logger(__name__)

_LIVE: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on `host` a moment ago (racy by nature; `start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """Server certificate, its key, and the CA that signs client certificates."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_auth: bool = True
    # Presented by the health probe when client_cert_auth is on.
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


class EtcdError(RuntimeError):
    """etcd did not come up (the message carries the tail of its log)."""


class EtcdServer:
    """One etcd member listening on `host`, optionally inside network namespace `netns`."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: str | None = None,
        enable_v2: bool = False,
        extra_args: Sequence[str] = (),
        name: str = "flb",
        tls: EtcdTLS | None = None,
        binary: str = "etcd",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.netns = netns
        self.enable_v2 = enable_v2
        self.extra_args = tuple(extra_args)
        self.name = name
        self.tls = tls
        self.binary = binary
        # Inside a fresh namespace the well-known ports are free; on the host pick free ones.
        self._auto_ports = netns is None and (client_port is None or peer_port is None)
        self.client_port = client_port if client_port is not None else (2379 if netns else free_port(host))
        self.peer_port = peer_port if peer_port is not None else (2380 if netns else free_port(host))
        self.log_path = self.data_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- addresses -------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{_bracket(self.host)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_bracket(self.host)}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.name}={self.peer_url}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.enable_v2:
            args.append("--enable-v2=true")
        if self.tls:
            args += [f"--cert-file={self.tls.cert_file}", f"--key-file={self.tls.key_file}"]
            if self.tls.client_cert_auth:
                args += ["--client-cert-auth", f"--trusted-ca-file={self.tls.ca_file}"]
        args += self.extra_args
        return in_netns(args, self.netns)

    def start(self, timeout: float = 15.0) -> None:
        """Spawn etcd and wait until /health says true; raise EtcdError with its log tail otherwise."""
        if self.running():
            return
        attempts = 3 if self._auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except EtcdError:
                if attempt == attempts or "address already in use" not in self._log_tail():
                    raise
                # Lost the free-port race against another process: pick new ports and retry.
                self.client_port, self.peer_port = free_port(self.host), free_port(self.host)

    def _start_once(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # keep terminal signals (Ctrl-C) for us, not etcd
            )
        _LIVE.add(self)
        log.debug("etcd_spawned", pid=self._proc.pid, url=self.client_url, netns=self.netns)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._healthy():
                return
            time.sleep(0.1)
        code = self._proc.poll()
        self.stop()
        why = f"exited with {code}" if code is not None else f"not healthy after {timeout:.1f} s"
        raise EtcdError(f"etcd at {self.client_url} {why}; log tail:\n{self._log_tail()}")

    def _healthy(self) -> bool:
        url = f"{self.client_url}/health"
        if self.netns:
            return self._healthy_in_netns(url)
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=self.client_ssl_context()) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _healthy_in_netns(self, url: str) -> bool:
        # The client URL may only be reachable from inside the namespace.
        probe = (
            "import json,ssl,sys,urllib.request as u\n"
            "c=None\n"
            "if sys.argv[2]:\n"
            " c=ssl.create_default_context(cafile=sys.argv[2])\n"
            " if sys.argv[3]: c.load_cert_chain(sys.argv[3],sys.argv[4])\n"
            "r=u.urlopen(sys.argv[1],timeout=1,context=c)\n"
            "sys.exit(0 if json.loads(r.read()).get('health')=='true' else 1)\n"
        )
        tls = self.tls
        argv = [
            url,
            str(tls.ca_file) if tls else "",
            str(tls.client_cert_file or "") if tls else "",
            str(tls.client_key_file or "") if tls else "",
        ]
        assert self.netns is not None
        cmd = in_netns([sys.executable, "-c", probe, *argv], self.netns)
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def client_ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        if self.tls.client_cert_file and self.tls.client_key_file:
            ctx.load_cert_chain(str(self.tls.client_cert_file), str(self.tls.client_key_file))
        return ctx

    def _log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        return True

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace`; idempotent; always reaps the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused etcd would never act on SIGTERM
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._proc = None
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL (a crash); the data directory stays, so `start()` brings the same data back."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        proc.wait()
        self._proc = None
        _LIVE.discard(self)

    def pause(self) -> None:
        """SIGSTOP: a hung server whose kernel still accepts and ACKs TCP."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EtcdServer({self.client_url!r}, pid={self.pid}, netns={self.netns!r})"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@atexit.register
def _reap_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(grace=2.0)
