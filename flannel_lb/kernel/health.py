"""Active backend checks from the LB itself: TCP connects over the path DNATed traffic takes.

kubelet's readiness and the kernel's route to a lease can both be right while traffic still fails
(a broken overlay path with its route and FDB entry in place, an MTU black hole, a pod that answers
its probe on another port). A connect from the LB's own namespace goes through the same routes,
vxlan device and node as a client's DNATed connection, so it sees those faults too.

Three parts: `probe_tcp` runs one round of non-blocking connects, many at once, each target once;
`probe_http` GETs a path (a Service's `flannel-lb.io/health-check-path`), for a pod that accepts
connections but answers errors;
`HealthTracker` turns rounds into up/down with rise and fall counts (HAProxy's semantics), so one
lost SYN does not take a backend out and one lucky connect does not bring it back.
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import time
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Target = tuple[str, int]  # (IPv4 address, TCP port)
HttpTarget = tuple[str, int, str]  # (IPv4 address, TCP port, URL path)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
K = TypeVar("K", bound=Hashable)
HTTP_WORKERS = 32  # GETs in flight at once: they block a thread each, unlike the connects


def probe_tcp(targets: Iterable[Target], timeout: float, concurrency: int = 256) -> dict[Target, bool]:
    """One connect to each distinct target; True when it was accepted within `timeout` seconds.

    At most `concurrency` connects are in flight; each gets its own `timeout` from when it starts.
    A refused connect (RST) is a failure as much as a silent one. Sockets are closed right away.
    """
    pending = list(dict.fromkeys(targets))
    results: dict[Target, bool] = {}
    sel = selectors.DefaultSelector()
    in_flight: dict[socket.socket, tuple[Target, float]] = {}
    try:
        while pending or in_flight:
            while pending and len(in_flight) < concurrency:
                target = pending.pop()
                sock = _start_connect(target)
                if sock is None:
                    results[target] = False
                    continue
                in_flight[sock] = (target, time.monotonic() + timeout)
                sel.register(sock, selectors.EVENT_WRITE)
            if not in_flight:
                continue
            wait = max(0.0, min(deadline for _, deadline in in_flight.values()) - time.monotonic())
            for key, _ in sel.select(wait):
                done = key.fileobj
                assert isinstance(done, socket.socket)
                target, _deadline = in_flight.pop(done)
                results[target] = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                sel.unregister(done)
                done.close()
            now = time.monotonic()
            for sock, (target, deadline) in list(in_flight.items()):
                if now >= deadline:
                    results[target] = False
                    del in_flight[sock]
                    sel.unregister(sock)
                    sock.close()
    finally:
        for sock in in_flight:
            sock.close()
        sel.close()
    return results


def _start_connect(target: Target) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    # no TIME_WAIT left behind by thousands of checks: the close sends a RST
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    try:
        err = sock.connect_ex(target)
    except OSError:
        sock.close()
        return None
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def probe_http(targets: Iterable[HttpTarget], timeout: float) -> dict[HttpTarget, bool]:
    """One GET of each distinct (ip, port, path); True for a 2xx or 3xx status line within `timeout`."""
    distinct = list(dict.fromkeys(targets))
    if not distinct:
        return {}
    with ThreadPoolExecutor(max_workers=min(HTTP_WORKERS, len(distinct))) as pool:
        return dict(zip(distinct, pool.map(lambda t: _get_ok(t, timeout), distinct), strict=True))


def _get_ok(target: HttpTarget, timeout: float) -> bool:
    ip, port, path = target
    request = f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: flannel-lb\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 256:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(256)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    m = _STATUS_LINE.match(head)
    return m is not None and 200 <= int(m.group(1)) < 400


@dataclass
class HealthTracker(Generic[K]):
    """Up/down per target from the rounds of checks: `fall` failures in a row take a target down,
    `rise` successes in a row bring it back. A target is up until it has failed `fall` times."""

    rise: int = 2
    fall: int = 3
    _down: set[K] = field(default_factory=set)
    _streak: dict[K, int] = field(default_factory=dict)  # >0: successes in a row, <0: failures

    def record(self, results: Mapping[K, bool]) -> tuple[set[K], set[K]]:
        """Take one round; returns (went down, came back). Targets not in `results` are forgotten."""
        went_down: set[K] = set()
        came_back: set[K] = set()
        for target in set(self._streak) - results.keys():
            del self._streak[target]
            self._down.discard(target)
        for target, ok in results.items():
            streak = self._streak.get(target, 0)
            streak = (streak + 1 if streak > 0 else 1) if ok else (streak - 1 if streak < 0 else -1)
            self._streak[target] = streak
            if target in self._down and streak >= self.rise:
                self._down.discard(target)
                came_back.add(target)
            elif target not in self._down and -streak >= self.fall:
                self._down.add(target)
                went_down.add(target)
        return went_down, came_back

    @property
    def down(self) -> frozenset[K]:
        return frozenset(self._down)
