"""Which iptables binaries to run, and where (an explicit network namespace or the current one).

iptables-nft and iptables-legacy program two different kernel subsystems; rules written to the one the
rest of the host does not use are silently ineffective, so the backend follows the host's `iptables`
unless the operator overrides it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from flannel_lb.kernel.netns import in_netns

Backend = Literal["nft", "legacy"]
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")


class ToolError(RuntimeError):
    """An iptables tool could not be run or failed."""


@dataclass(frozen=True, slots=True)
class Tools:
    backend: Backend
    netns: str | None = None  # run every command inside this named namespace (ip netns exec)
    wait: int = 5  # seconds to wait for the xtables lock (-w) before failing

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return in_netns(argv, self.netns)

    def binary(self, kind: str) -> str:
        """`iptables-nft-restore` etc.; old distributions only ship the unsuffixed legacy names."""
        suffixed = f"iptables-{self.backend}{kind}"
        if shutil.which(suffixed) or self.backend == "nft":
            return suffixed
        return f"iptables{kind}"

    def restore_argv(self) -> list[str]:
        return self.wrap([self.binary("-restore"), "-w", str(self.wait), "--noflush"])

    def save_argv(self, table: str, *, counters: bool = False) -> list[str]:
        return self.wrap([self.binary("-save"), "-t", table, *(["-c"] if counters else [])])

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 120.0) -> str:
        """Run a tool; return stdout, raise ToolError with stderr on failure."""
        proc = run(argv, input=input, timeout=timeout)
        if proc.returncode != 0:
            raise ToolError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout


def run(
    argv: Sequence[str], *, input: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise ToolError(f"{argv[0]}: not installed") from e
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{' '.join(argv)}: no answer within {timeout} s") from e


def detect_backend(netns: str | None = None) -> Backend:
    """The backend of the host's `iptables` (what everything else on the host writes to)."""
    argv = Tools("nft", netns).wrap(["iptables", "--version"])
    out = run(argv, timeout=30).stdout
    if "(nf_tables)" in out:
        return "nft"
    if "(legacy)" in out or (out.startswith("iptables v1.") and "(" not in out):  # < 1.8 knows only legacy
        return "legacy"
    raise ToolError(f"cannot tell the iptables backend from {out.strip()!r} ({' '.join(argv)})")


def make_tools(backend: str = "auto", netns: str | None = None, wait: int = 5) -> Tools:
    """Tools for `backend` ("auto" follows the host's `iptables`)."""
    if backend == "auto":
        return Tools(detect_backend(netns), netns, wait)
    if backend not in BACKENDS:
        raise ValueError(f"iptables backend {backend!r}: expected auto, nft or legacy")
    return Tools("nft" if backend == "nft" else "legacy", netns, wait)
