"""Graceful drain of one box of a BGP group: what the running agent and `flannel-lb drain` share.

The verb reaches the agent with a signal (SIGUSR1) to the pid the agent wrote into `[bgp] state_dir`,
the way SIGHUP already reloads it: no control socket to secure (only root, or the agent's own user, can
signal it), and it works the same under systemd (`systemctl kill -s USR1 flannel-lb`), in a lab
namespace or by hand. The agent then withdraws the VIPs, keeps its rules, waits for the open flows to
the VIPs to end (or `[bgp] drain_timeout`), writes what it found into `drain.json` beside the pid file,
and exits. docs/bgp.md has the reasoning and what a drain can and cannot keep.

Both files are read as hostile: a pid file that names no live flannel-lb agent (stale, another
process, garbage) is refused with a message naming the file, never signalled.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from flannel_lb.config import BGPConfig
from flannel_lb.untrusted import ascii_decimal, load_json

SIGNAL = signal.SIGUSR1
PID_FILE = "agent.pid"
RESULT_FILE = "drain.json"
MAX_FILE = 4096  # bytes read from either file: they are a few dozen
PID_MAX = 4194304  # the kernel's largest pid_max


class DrainError(Exception):
    """No agent to drain, or its answer cannot be read; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class DrainResult:
    pid: int
    open_flows_left: int  # -1: conntrack could not be read at the end
    seconds: float
    reason: str  # "flows finished", "deadline" or "not counted"

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "open_flows_left": self.open_flows_left,
            "seconds": self.seconds,
            "reason": self.reason,
        }


def pid_path(bgp: BGPConfig) -> Path:
    return Path(bgp.state_dir) / PID_FILE


def result_path(bgp: BGPConfig) -> Path:
    return Path(bgp.state_dir) / RESULT_FILE


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_pid(bgp: BGPConfig) -> Path:
    """The running agent says where it is (atomically; a stale file from a crash is replaced)."""
    path = pid_path(bgp)
    _write(path, f"{os.getpid()}\n")
    return path


def remove_pid(bgp: BGPConfig) -> None:
    """Remove the pid file if it is still this process's (a newer agent may have replaced it)."""
    path = pid_path(bgp)
    try:
        if _read(path).strip() == str(os.getpid()):
            path.unlink()
    except (OSError, DrainError):
        pass


def write_result(bgp: BGPConfig, result: DrainResult) -> Path:
    path = result_path(bgp)
    _write(path, json.dumps(result.to_json()) + "\n")
    return path


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise DrainError(f"{path}: no such file") from None
    except OSError as e:
        raise DrainError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE:
        raise DrainError(f"{path}: longer than {MAX_FILE} bytes, not written by flannel-lb")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DrainError(f"{path}: not ASCII text, not written by flannel-lb") from None


def running_agent(bgp: BGPConfig, proc: Path = Path("/proc")) -> int:
    """The pid of the running agent of this config, checked to be a live `flannel-lb ... run`."""
    path = pid_path(bgp)
    try:
        text = _read(path)
    except DrainError as e:
        if "no such file" in str(e):
            raise DrainError(f"{path}: no such file: no agent with [bgp] enabled is running") from None
        raise
    pid = ascii_decimal(text.strip())
    if pid is None or not 1 < pid <= PID_MAX:
        raise DrainError(f"{path}: expected a process id, got {text.strip()[:40]!r}")
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()[:MAX_FILE].split(b"\0")
    except OSError:
        raise DrainError(f"{path}: process {pid} is not running (a stale pid file)") from None
    if not any(b"flannel" in word for word in cmdline) or b"run" not in cmdline:
        raise DrainError(f"{path}: process {pid} is not a flannel-lb agent (a stale pid file)")
    return pid


def read_result(bgp: BGPConfig) -> DrainResult:
    """What the agent reported at the end of its drain."""
    path = result_path(bgp)
    try:
        doc = load_json(_read(path))
    except ValueError:
        raise DrainError(f"{path}: not JSON, not written by flannel-lb") from None
    fields = (("pid", int), ("open_flows_left", int), ("seconds", (int, float)), ("reason", str))
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), t) and not isinstance(doc.get(k), bool) for k, t in fields
    ):
        raise DrainError(f"{path}: not a drain result ({', '.join(k for k, _ in fields)})")
    seconds = float(doc["seconds"])
    if not 0 <= seconds < 1e9 or doc["open_flows_left"] < -1 or len(doc["reason"]) > 40:
        raise DrainError(f"{path}: values out of range")
    return DrainResult(doc["pid"], doc["open_flows_left"], seconds, doc["reason"])
