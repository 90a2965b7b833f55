"""A client for the lab: request loops through the LB, counting every answer and every failure.

Runs inside a lab namespace (`ip netns exec <client> python -m flannel_lb.lab.traffic ...`) and prints
one JSON summary. The pods answer with their name, so the summary shows how requests spread.
TCP mode opens a new connection per request (every request walks the NAT rules); UDP mode can keep one
source port, the case where stale conntrack entries would blackhole a client.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    by_pod: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_failure: float | None = None  # seconds since start
    last_failure: float | None = None
    seconds: float = 0.0
    started: float = 0.0  # wall-clock (epoch) time of the first request: lines the timeline up with faults
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (t, pod or "!error"), if asked

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "by_pod": dict(sorted(self.by_pod.items())),
            "errors": dict(self.errors),
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
            "seconds": round(self.seconds, 3),
            "started": self.started,
            "timeline": self.timeline,
        }


def http_get(host: str, port: int, timeout: float) -> str:
    """One request on a new connection; returns the body's first line (the pod name)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise OSError(f"bad response: {head[:40]!r}")
    return body.decode(errors="replace").strip().splitlines()[0] if body.strip() else "?"


def udp_ask(sock: socket.socket, host: str, port: int, timeout: float) -> str:
    sock.settimeout(timeout)
    sock.sendto(b"who", (host, port))
    data, _ = sock.recvfrom(4096)
    return data.decode(errors="replace").strip()


def run(
    mode: str,
    host: str,
    port: int,
    *,
    count: int | None,
    duration: float | None,
    interval: float,
    timeout: float,
    source_port: int = 0,
    timeline: bool = False,
) -> Summary:
    """Send requests until `count` or `duration` is reached (at least one bound is required)."""
    if count is None and duration is None:
        raise ValueError("give a count or a duration: request loops are always bounded")
    summary = Summary()
    udp: socket.socket | None = None
    if mode == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", source_port))
    start = time.monotonic()
    summary.started = time.time()
    n = 0
    try:
        while (count is None or n < count) and (duration is None or time.monotonic() - start < duration):
            n += 1
            t = time.monotonic() - start
            try:
                name = udp_ask(udp, host, port, timeout) if udp else http_get(host, port, timeout)
                summary.ok += 1
                summary.by_pod[name] += 1
                if timeline:
                    summary.timeline.append((round(t, 3), name))
            except OSError as e:
                summary.failed += 1
                summary.errors[type(e).__name__ + (f": {e}" if isinstance(e, ConnectionError) else "")] += 1
                summary.first_failure = t if summary.first_failure is None else summary.first_failure
                summary.last_failure = t
                if timeline:
                    summary.timeline.append((round(t, 3), f"!{type(e).__name__}"))
            if interval:
                time.sleep(interval)
    finally:
        if udp is not None:
            udp.close()
    summary.seconds = time.monotonic() - start
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flannel_lb.lab.traffic", description=__doc__)
    p.add_argument("mode", choices=["http", "udp"])
    p.add_argument("target", help="HOST:PORT")
    p.add_argument("--count", type=int)
    p.add_argument("--duration", type=float, help="seconds")
    p.add_argument("--interval", type=float, default=0.0, help="pause between requests (s)")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--source-port", type=int, default=0, help="udp: keep this source port")
    p.add_argument("--timeline", action="store_true", help="record (time, pod) for every request")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    summary = run(
        args.mode,
        host,
        int(port),
        count=args.count,
        duration=args.duration,
        interval=args.interval,
        timeout=args.timeout,
        source_port=args.source_port,
        timeline=args.timeline,
    )
    json.dump(summary.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
