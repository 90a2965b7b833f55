"""Commands, inside a named network namespace when asked: the one place that spells `ip netns exec`,
and the one command runner the data plane and the doctor share."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence


class RunError(RuntimeError):
    """A command could not be started, gave no answer in time, or (where checked) failed."""


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """`argv` to run inside `netns`; unchanged for None (this process's own namespace)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str], netns: str | None = None, *, input: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (in `netns`) and return it whatever its exit status; RunError when it cannot be
    started or does not finish within `timeout` seconds."""
    full = in_netns(argv, netns)
    try:
        return subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RunError(f"`{full[0]}` is not installed") from None
    except subprocess.TimeoutExpired:
        raise RunError(f"`{shlex.join(full)}` gave no answer within {timeout:g} s") from None


def output(
    argv: Sequence[str], netns: str | None = None, *, input: str | None = None, timeout: float = 120.0
) -> str:
    """The stdout of `argv` (in `netns`); RunError naming the command, its exit status and its
    stderr when it fails."""
    proc = run(argv, netns, input=input, timeout=timeout)
    if proc.returncode != 0:
        raise RunError(
            f"`{shlex.join(in_netns(argv, netns))}` exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout
