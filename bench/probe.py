"""The benchmarks' client, running inside the lab's `client` namespace (JSON lines on stdin/stdout).

Commands:
  {"op": "connect", "host": H, "port": P, "count": N}
      N new TCP connections, one after the other. Each one's connect time is the time blocking
      `connect()` takes: from sending the SYN to the socket being established (SYN-ACK received,
      ACK sent). The socket is then closed with a RST (SO_LINGER 0), so no TIME_WAIT piles up.
      Answer: {"us": [connect time in microseconds, ...], "failed": F}.
  {"op": "wait", "host": H, "port": P, "want": "open"|"closed", "timeout": S, "interval": S}
      First answers {"armed": true}, then tries one connection every `interval` seconds until the
      frontend is in the wanted state: "open" = a connection is established (a backend answered),
      "closed" = it is refused (the LB's REJECT for a frontend without backends). The final answer
      carries `t`, the CLOCK_MONOTONIC time at which the first successful try *started*: the rule
      was live at that moment at the latest, and not yet at the start of the try before.
      Monotonic time is shared by every namespace, so the caller compares it with its own clock.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import IO, Any

_LINGER_RST = struct.pack("ii", 1, 0)


def connect_once(host: str, port: int, timeout: float) -> float | None:
    """Connect time in microseconds, or None if the connection failed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    s.settimeout(timeout)
    try:
        t = time.perf_counter_ns()
        s.connect((host, port))
        return (time.perf_counter_ns() - t) / 1000.0
    except OSError:
        return None
    finally:
        s.close()


def state(host: str, port: int, timeout: float) -> str:
    """'open' (established), 'closed' (refused) or 'timeout'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "timeout"
    finally:
        s.close()


def connect_many(cmd: dict[str, Any]) -> dict[str, Any]:
    times: list[float] = []
    failed = 0
    for _ in range(int(cmd["count"])):
        us = connect_once(cmd["host"], int(cmd["port"]), float(cmd.get("timeout", 3.0)))
        if us is None:
            failed += 1
        else:
            times.append(round(us, 1))
    return {"us": times, "failed": failed}


def wait(cmd: dict[str, Any], say: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    say({"armed": True})
    deadline = time.monotonic() + float(cmd.get("timeout", 30.0))
    interval = float(cmd.get("interval", 0.001))
    attempts = 0
    while True:
        t = time.monotonic()
        attempts += 1
        if state(cmd["host"], int(cmd["port"]), 0.5) == cmd["want"]:
            return {"t": t, "attempts": attempts}
        if t > deadline:
            return {"t": None, "attempts": attempts}
        time.sleep(interval)


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    def say(doc: dict[str, Any]) -> None:
        stdout.write(json.dumps(doc) + "\n")
        stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["op"] == "connect":
                say(connect_many(cmd))
            elif cmd["op"] == "wait":
                say(wait(cmd, say))
            else:
                say({"error": f"unknown op {cmd['op']!r}"})
        except Exception as e:
            say({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
