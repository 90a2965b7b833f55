"""Active backend checks from the LB itself: TCP connects over the path DNATed traffic takes.

kubelet's readiness and the kernel's route to a lease can both be right while traffic still fails
(a broken overlay path with its route and FDB entry in place, an MTU black hole, a pod that answers
its probe on another port). A connect from the LB's own namespace goes through the same routes,
vxlan device and node as a client's DNATed connection, so it sees those faults too.

Two parts: a `Prober` keeps many checks in flight on one thread without blocking: a connect, or a GET
of a path (a Service's `flannel-lb.io/health-check-path`) for a pod that accepts connections but
answers errors; `probe_round` (`probe_tcp`, `probe_http`) runs one round of them, each target once.
`HealthTracker` turns results into up/down with rise and fall counts (HAProxy's semantics), so one
lost SYN does not take a backend out and one lucky connect does not bring it back. When the checks
run is the daemon's business (daemon/check_schedule.py spreads them over the interval).
"""

from __future__ import annotations

import enum
import errno
import re
import selectors
import socket
import time
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Target = tuple[str, int]  # (IPv4 address, TCP port)
HttpTarget = tuple[str, int, str]  # (IPv4 address, TCP port, URL path)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
K = TypeVar("K", bound=Hashable)


class Outcome(enum.Enum):
    """How a check went. FAILED and SILENT both fail it; they differ in what they say of the path to
    the node: a refused connect, or a connect accepted and then a bad answer, came back through the
    overlay (the path works, the pod does not); SILENT (no answer in time, no route) may be the path."""

    PASSED = "passed"
    FAILED = "failed"
    SILENT = "silent"


class Prober:
    """Checks in flight, without blocking: `start` begins a connect (and for an HTTP check its GET),
    `poll` hands back the ones that finished. One thread drives thousands at once, so the checks can be
    spread over the interval instead of waiting for each other in rounds.

    A check passes when its connect is accepted (TCP) or its status line is 2xx/3xx (HTTP), within
    `timeout` seconds of its start. A refused connect (RST) fails as much as a silent one (`Outcome`
    tells them apart). A connect check's socket is closed with a RST (no TIME_WAIT left behind by
    thousands of checks); an HTTP check's politely.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._sel = selectors.DefaultSelector()
        self._flight: dict[HttpTarget, _Probe] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def busy(self, target: HttpTarget) -> bool:
        return target in self._flight

    def start(self, target: HttpTarget, now: float) -> Outcome | None:
        """Begin one check ((ip, port, "") is a connect); its outcome if known at once (SILENT: no
        socket, e.g. no route), None while it runs. A target already in flight is not started twice."""
        if target in self._flight:
            return None
        sock = _start_connect((target[0], target[1]), reset=not target[2])
        if sock is None:
            return Outcome.SILENT
        probe = _Probe(sock, target, now + self.timeout)
        self._flight[target] = probe
        self._sel.register(sock, selectors.EVENT_WRITE, probe)
        return None

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._flight.values()), default=None)

    def poll(self, wait: float) -> list[tuple[HttpTarget, Outcome]]:
        """Wait up to `wait` seconds for progress; the checks that finished (or timed out) meanwhile."""
        done: list[tuple[HttpTarget, Outcome]] = []
        if self._flight:
            for key, events in self._sel.select(max(0.0, wait)):
                probe = key.data
                assert isinstance(probe, _Probe)
                result = self._advance(probe, events)
                if result is not None:
                    done.append((probe.target, result))
            now = time.monotonic()
            for probe in [p for p in self._flight.values() if p.deadline <= now]:
                self._finish(probe)
                # no answer in time; an HTTP check whose connect was accepted had one from the node
                done.append((probe.target, Outcome.SILENT if probe.state == "connect" else Outcome.FAILED))
        elif wait > 0:
            time.sleep(wait)
        return done

    def _advance(self, probe: _Probe, events: int) -> Outcome | None:
        """One step of a check's conversation; its result once it has one."""
        sock = probe.sock
        try:
            if probe.state == "connect":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err != 0:  # refused: the node answered (its path works); anything else: silent
                    return self._finish(
                        probe, Outcome.FAILED if err == errno.ECONNREFUSED else Outcome.SILENT
                    )
                if not probe.target[2]:
                    return self._finish(probe, Outcome.PASSED)
                ip, port, path = probe.target
                probe.out = (
                    f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: flannel-lb\r\n\r\n".encode()
                )
                probe.state = "send"
            if probe.state == "send" and events & selectors.EVENT_WRITE:
                probe.out = probe.out[sock.send(probe.out) :]
                if not probe.out:
                    probe.state = "recv"
                    self._sel.modify(sock, selectors.EVENT_READ, probe)
                return None
            if probe.state == "recv" and events & selectors.EVENT_READ:
                chunk = sock.recv(256)
                probe.head += chunk
                if chunk and b"\r\n" not in probe.head and len(probe.head) < 256:
                    return None
                m = _STATUS_LINE.match(probe.head)
                ok = m is not None and 200 <= int(m.group(1)) < 400
                return self._finish(probe, Outcome.PASSED if ok else Outcome.FAILED)
        except BlockingIOError:
            return None
        except OSError:  # reset or refused after the connect: the node answered
            return self._finish(probe, Outcome.SILENT if probe.state == "connect" else Outcome.FAILED)
        return None

    def _finish(self, probe: _Probe, result: Outcome = Outcome.SILENT) -> Outcome:
        del self._flight[probe.target]
        self._sel.unregister(probe.sock)
        probe.sock.close()
        return result

    def close(self) -> None:
        for probe in list(self._flight.values()):
            self._finish(probe)
        self._sel.close()


@dataclass(slots=True)
class _Probe:
    sock: socket.socket
    target: HttpTarget
    deadline: float
    state: str = "connect"  # connect -> (HTTP) send -> recv
    out: bytes = b""  # the request still to send
    head: bytes = b""  # the answer so far (its status line is all that is read)


def probe_round(
    targets: Iterable[HttpTarget], timeout: float, concurrency: int = 256
) -> dict[HttpTarget, bool]:
    """One check of each distinct target, at most `concurrency` in flight; True when it passed."""
    return {t: o is Outcome.PASSED for t, o in probe_outcomes(targets, timeout, concurrency).items()}


def probe_outcomes(
    targets: Iterable[HttpTarget], timeout: float, concurrency: int = 256
) -> dict[HttpTarget, Outcome]:
    """One check of each distinct target, at most `concurrency` in flight; how each went."""
    pending = list(dict.fromkeys(targets))
    pending.reverse()
    results: dict[HttpTarget, Outcome] = {}
    prober = Prober(timeout)
    try:
        while pending or prober.in_flight:
            while pending and prober.in_flight < concurrency:
                target = pending.pop()
                early = prober.start(target, time.monotonic())
                if early is not None:
                    results[target] = early
            deadline = prober.next_deadline()
            if deadline is not None:
                results.update(prober.poll(deadline - time.monotonic()))
    finally:
        prober.close()
    return results


def probe_tcp(targets: Iterable[Target], timeout: float, concurrency: int = 256) -> dict[Target, bool]:
    """One connect to each distinct target; True when it was accepted within `timeout` seconds."""
    got = probe_round(((ip, port, "") for ip, port in targets), timeout, concurrency)
    return {(ip, port): ok for (ip, port, _), ok in got.items()}


def probe_http(
    targets: Iterable[HttpTarget], timeout: float, concurrency: int = 256
) -> dict[HttpTarget, bool]:
    """One GET of each distinct (ip, port, path); True for a 2xx or 3xx status line within `timeout`."""
    return probe_round(targets, timeout, concurrency)


def _start_connect(target: Target, reset: bool = True) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if reset:  # a connect check: no TIME_WAIT left behind by thousands of them, the close sends a RST
        # (an HTTP check closes politely: the pod's server would log every reset as an error)
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


@dataclass
class HealthTracker(Generic[K]):
    """Up/down per target from the rounds of checks: `fall` failures in a row take a target down,
    `rise` successes in a row bring it back. A target is up until it has failed `fall` times."""

    rise: int = 2
    fall: int = 3
    _down: set[K] = field(default_factory=set)
    _streak: dict[K, int] = field(default_factory=dict)  # >0: successes in a row, <0: failures

    def record(self, results: Mapping[K, bool]) -> tuple[set[K], set[K]]:
        """Take one round over every target; returns (went down, came back). Targets not in `results`
        are forgotten."""
        self.retain(results.keys())
        return self.update(results)

    def retain(self, targets: Collection[K]) -> None:
        """Forget every target not in `targets` (it left the plan): a backend that comes back later
        starts afresh, up."""
        for target in [t for t in self._streak if t not in targets]:
            del self._streak[target]
            self._down.discard(target)

    def update(self, results: Mapping[K, bool] | Iterable[tuple[K, bool]]) -> tuple[set[K], set[K]]:
        """Take the results of some targets' checks (the others keep their streaks); returns (went
        down, came back)."""
        went_down: set[K] = set()
        came_back: set[K] = set()
        for target, ok in results.items() if isinstance(results, Mapping) else results:
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


def is_local_address(address: str) -> bool:
    """Whether `address` is one of this namespace's own: a bind to it works (one syscall, no netlink).
    Wrong where net.ipv4.ip_nonlocal_bind = 1, which lets any bind work."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True
