"""Load for failover and drain measurements: long-lived TCP flows that keep exchanging data, plus a steady
rate of new connections, against a TCP echo server.

`python -m flannel_lb.lab.flows serve ADDRESS:PORT` runs the echo server (in a pod's namespace);
`python -m flannel_lb.lab.flows load ADDRESS:PORT --stop-file F ...` runs the client (in the client's
namespace) until F exists, then closes every open flow cleanly and prints one JSON summary. A long-lived
flow that fails (reset, timeout, a wrong echo, an early close) is counted `broken` with its error, a new
connection that fails `new_failed`: what a planned drain must keep at zero.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LINE = 32  # bytes a long-lived flow sends and expects back, every `gap` seconds


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            sock.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def serve(address: str, port: int) -> None:
    with _Server((address, port), _Echo) as server:
        server.serve_forever()


@dataclass
class Summary:
    new_ok: int = 0
    new_failed: int = 0
    new_errors: Counter[str] = field(default_factory=Counter)
    flows_completed: int = 0  # long-lived flows that ran their whole life and closed cleanly
    flows_broken: int = 0
    flow_errors: Counter[str] = field(default_factory=Counter)
    flows_closed_at_stop: int = 0  # still open when the stop file appeared: closed cleanly then
    exchanges: int = 0  # echoes of long-lived flows that came back right
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "new_ok": self.new_ok,
            "new_failed": self.new_failed,
            "new_errors": dict(self.new_errors),
            "flows_completed": self.flows_completed,
            "flows_broken": self.flows_broken,
            "flow_errors": dict(self.flow_errors),
            "flows_closed_at_stop": self.flows_closed_at_stop,
            "exchanges": self.exchanges,
            "seconds": round(self.seconds, 3),
        }


def _error(e: BaseException) -> str:
    return (
        type(e).__name__
        if not isinstance(e, OSError) or not e.strerror
        else f"{type(e).__name__}: {e.strerror}"
    )


def _exchange(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(len(payload) - len(got))
        if not data:
            raise ConnectionError("closed by the far end")
        got += data
    if got != payload:
        raise ValueError("wrong echo")


def _close(sock: socket.socket, timeout: float) -> None:
    """A clean close: our FIN, then the server's, so no flow ends in a reset of our own making."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(timeout)
    while sock.recv(65536):
        pass
    sock.close()


def long_flows(
    host: str,
    port: int,
    life: float,
    gap: float,
    timeout: float,
    stop: threading.Event,
    s: Summary,
    share: float,
) -> None:
    """One long-lived flow after the other, each exchanging a line every `gap` s for `life` s; the
    first one lives `share` of `life` only, so that the flows' ends are spread over every `life`."""
    n = 0
    while not stop.is_set():
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(timeout)
            end = time.monotonic() + (life * share if n == 0 else life)
            while time.monotonic() < end and not stop.is_set():
                n += 1
                _exchange(sock, f"{share:.5f} {n:010d} ".ljust(LINE, ".").encode())
                with s.lock:
                    s.exchanges += 1
                time.sleep(gap)
            _close(sock, timeout)
            with s.lock:
                if stop.is_set():
                    s.flows_closed_at_stop += 1
                else:
                    s.flows_completed += 1
        except (OSError, ValueError) as e:
            with s.lock:
                s.flows_broken += 1
                s.flow_errors[_error(e)] += 1
            if sock is not None:
                sock.close()


def new_connections(
    host: str, port: int, rate: float, timeout: float, stop: threading.Event, s: Summary
) -> None:
    """`rate` new connections a second, each one echo and a clean close."""
    step = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(timeout)
            _exchange(sock, b"new\n")
            _close(sock, timeout)
            with s.lock:
                s.new_ok += 1
        except (OSError, ValueError) as e:
            with s.lock:
                s.new_failed += 1
                s.new_errors[_error(e)] += 1
        due += step
        time.sleep(max(0.0, due - time.monotonic()))


def load(
    host: str, port: int, *, flows: int, rate: float, life: float, gap: float, timeout: float, stop_file: str
) -> Summary:
    s = Summary()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=long_flows, args=(host, port, life, gap, timeout, stop, s, (i + 1) / flows), daemon=True
        )
        for i in range(flows)
    ]
    threads.append(
        threading.Thread(target=new_connections, args=(host, port, rate, timeout, stop, s), daemon=True)
    )
    started = time.monotonic()
    for t in threads:
        t.start()
    while not os.path.exists(stop_file):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout * 3 + life)
    s.seconds = time.monotonic() - started
    return s


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flannel_lb.lab.flows", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    sv = sub.add_parser("serve", help="a TCP echo server")
    sv.add_argument("listen", help="ADDRESS:PORT")
    ld = sub.add_parser("load", help="long-lived flows plus new connections; a JSON summary at the end")
    ld.add_argument("target", help="ADDRESS:PORT")
    ld.add_argument("--stop-file", required=True, help="stop (cleanly) once this file exists")
    ld.add_argument("--flows", type=int, default=20, help="long-lived flows open at any time")
    ld.add_argument("--rate", type=float, default=50.0, help="new connections a second")
    ld.add_argument("--life", type=float, default=3.0, help="seconds each long-lived flow lasts")
    ld.add_argument("--gap", type=float, default=0.02, help="seconds between a flow's exchanges")
    ld.add_argument("--timeout", type=float, default=2.0, help="seconds any connect, echo or close may take")
    args = p.parse_args(argv)
    if args.mode == "serve":
        serve(*_target(args.listen))
        return 0
    host, port = _target(args.target)
    s = load(
        host,
        port,
        flows=args.flows,
        rate=args.rate,
        life=args.life,
        gap=args.gap,
        timeout=args.timeout,
        stop_file=args.stop_file,
    )
    json.dump(s.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
