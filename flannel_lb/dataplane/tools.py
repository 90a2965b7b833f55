"""Which iptables binaries to run, and where (an explicit network namespace or the current one).

iptables-nft and iptables-legacy program two different kernel subsystems; rules written to the one the
rest of the host does not use are silently ineffective, so the backend follows the host's `iptables`
unless the operator overrides it. `choose_backend` is that decision, for the agent's writers and for
`flannel-lb check` alike.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from flannel_lb.kernel.netns import RunError, output, run

Backend = Literal["nft", "legacy"]
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")


@dataclass(frozen=True, slots=True)
class Tools:
    backend: Backend
    netns: str | None = None  # run every command inside this named namespace (ip netns exec)
    wait: int = 5  # seconds to wait for the xtables lock (-w) before failing

    def binary(self, kind: str) -> str:
        """`iptables-nft-restore` etc.; old distributions only ship the unsuffixed legacy names."""
        suffixed = f"iptables-{self.backend}{kind}"
        if shutil.which(suffixed) or self.backend == "nft":
            return suffixed
        return f"iptables{kind}"

    def restore_argv(self) -> list[str]:
        return [self.binary("-restore"), "-w", str(self.wait), "--noflush"]

    def save_argv(self, table: str, *, counters: bool = False) -> list[str]:
        return [self.binary("-save"), "-t", table, *(["-c"] if counters else [])]

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace, whatever its exit status (RunError: could not run it)."""
        return run(argv, self.netns, input=input, timeout=timeout)

    def output(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 120.0) -> str:
        """Run a command in this namespace; its stdout, or RunError with its stderr on failure."""
        return output(argv, self.netns, input=input, timeout=timeout)


@dataclass(frozen=True, slots=True)
class HostIptables:
    """What the namespace's `iptables` is: its backend, and its version line as printed."""

    backend: Backend
    version: str


def host_iptables(netns: str | None = None) -> HostIptables:
    """The backend of the host's `iptables` (what everything else on the host writes to).

    Never a guess: an `iptables` that cannot be run, or whose version line names neither backend,
    raises RunError, and the agent does not start (`check` fails with the same message).
    """
    version = output(["iptables", "--version"], netns, timeout=30).strip()
    if "(nf_tables)" in version:
        return HostIptables("nft", version)
    if "(legacy)" in version or (version.startswith("iptables v1.") and "(" not in version):  # < 1.8: legacy
        return HostIptables("legacy", version)
    raise RunError(f"cannot tell the iptables backend from {version!r} (`iptables --version`)")


def choose_backend(backend: str = "auto", netns: str | None = None) -> Backend:
    """The backend flannel-lb's iptables writers program: `backend` ([dataplane] iptables_backend), and
    for "auto" the host's `iptables`.

    The rules already in either backend do not choose: an empty namespace (neither holds rules) still
    has the `iptables` its firewall tools will use, and where both hold rules (or only the other one
    does) flannel-lb still joins the host's `iptables`, and `check` warns about the other backend's NAT
    rules, which compete for the same connections.
    """
    if backend == "auto":
        return host_iptables(netns).backend
    if backend not in BACKENDS:
        raise ValueError(f"iptables backend {backend!r}: expected auto, nft or legacy")
    return "nft" if backend == "nft" else "legacy"


def make_tools(backend: str = "auto", netns: str | None = None, wait: int = 5) -> Tools:
    """Tools for `backend` ("auto" follows the host's `iptables`: `choose_backend`)."""
    return Tools(choose_backend(backend, netns), netns, wait)
