"""Network namespaces that clean up after themselves.

Every test and lab host lives in a namespace named with a unique prefix, so that teardown (also after
a crash, via `cleanup_prefix`) can find and remove exactly what it created and nothing else. Nothing
here ever touches the caller's own (root) network namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from flannel_lb.kernel.netns import in_netns

NETNS_DIR = "/run/netns"


def unique_prefix(tag: str = "t") -> str:
    """A short, unique namespace prefix such as `flb-t-1a2b3c-` (interface names stay under 16 chars)."""
    return f"flb-{tag}-{secrets.token_hex(3)}-"


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def kill_namespace_processes(name: str, grace: float = 2.0) -> None:
    """SIGTERM every process in the namespace, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGCONT, signal.SIGTERM):  # SIGCONT first: a SIGSTOPped process ignores TERM
        for pid in namespace_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while namespace_pids(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_namespace(name: str) -> None:
    kill_namespace_processes(name)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove every namespace whose name starts with `prefix` (and its processes); return their names."""
    if not prefix or not prefix.startswith("flb-"):
        raise ValueError(f"refusing to clean up namespaces with prefix {prefix!r}: not a flannel-lb prefix")
    removed = [n for n in list_namespaces() if n.startswith(prefix)]
    for name in removed:
        delete_namespace(name)
    return removed


class Namespaces:
    """A group of namespaces sharing one unique prefix, removed together on `close()`."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or unique_prefix()
        self._names: dict[str, str] = {}

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def name(self, short: str) -> str:
        return self._names[short]

    def add(self, short: str) -> str:
        name = self.prefix + short
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self._names[short] = name
        self.run(short, ["ip", "link", "set", "lo", "up"])
        return name

    def argv(self, short: str, argv: Sequence[str]) -> list[str]:
        return in_netns(argv, self._names[short])

    def run(
        self,
        short: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(short, argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"in netns {self._names[short]}: {' '.join(argv)} exited {proc.returncode}: "
                f"{proc.stderr.strip()}"
            )
        return proc

    def popen(
        self, short: str, argv: Sequence[str], *, stdout: int | IO[Any] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(short, argv), stdout=stdout, **kwargs)

    def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair with one end in namespace `a` (named a_if) and the other in `b` (named b_if)."""
        tmp = f"v{secrets.token_hex(5)}"
        self.run(a, ["ip", "link", "add", a_if, "type", "veth", "peer", "name", tmp])
        self.run(a, ["ip", "link", "set", tmp, "netns", self._names[b]])
        self.run(b, ["ip", "link", "set", tmp, "name", b_if])
        self.run(a, ["ip", "link", "set", a_if, "up"])
        self.run(b, ["ip", "link", "set", b_if, "up"])

    def sysctl(self, short: str, key: str, value: str) -> None:
        """Set a sysctl inside the namespace (per-namespace keys only, e.g. net.ipv4.ip_forward)."""
        self.run(short, ["sysctl", "-q", "-w", f"{key}={value}"])

    def close(self) -> None:
        for name in list(self._names.values()):
            delete_namespace(name)
        self._names.clear()
        cleanup_prefix(self.prefix)  # also whatever a crashed caller added without registering
