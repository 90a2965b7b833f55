"""Active backend checks (kernel/health.py): real connects to real listeners, and the rise/fall rule."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.config import HealthConfig
from flannel_lb.daemon.backend_checks import BackendChecker
from flannel_lb.kernel.health import HealthTracker, probe_http, probe_tcp
from flannel_lb.lab.netns import Namespaces, unique_prefix


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # bound once, now nobody listens there: a connect is refused
    return port


def test_an_open_port_passes_and_a_closed_one_fails(listener: int) -> None:
    closed = _closed_port()
    got = probe_tcp([("127.0.0.1", listener), ("127.0.0.1", closed), ("127.0.0.1", listener)], timeout=2.0)
    assert got == {("127.0.0.1", listener): True, ("127.0.0.1", closed): False}  # each target checked once


def test_many_targets_with_little_concurrency(listener: int) -> None:
    closed = [_closed_port() for _ in range(20)]
    targets = [("127.0.0.1", listener)] + [("127.0.0.1", p) for p in closed]
    got = probe_tcp(targets, timeout=2.0, concurrency=3)
    assert got[("127.0.0.1", listener)] is True and not any(got[("127.0.0.1", p)] for p in closed)


PROBE = """
import json, sys
from flannel_lb.kernel.health import probe_tcp
print(json.dumps({f"{ip}:{port}": ok for (ip, port), ok in probe_tcp([(sys.argv[1], 80)], 0.5).items()}))
"""


def test_a_silent_path_times_out() -> None:
    """SYNs dropped on the way (an nft drop, as a broken overlay would): the check fails after its timeout."""
    if os.geteuid() != 0:
        pytest.skip("needs root: builds a network namespace")
    with Namespaces(unique_prefix("t-hc")) as ns:
        ns.add("lb")
        ns.run("lb", ["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"])
        ruleset = (
            "table ip t {\n chain out {\n type filter hook output priority 0;\n tcp dport 80 drop\n }\n}\n"
        )
        ns.run("lb", ["nft", "-f", "-"], input=ruleset)
        done = subprocess.run(
            ns.argv("lb", [sys.executable, "-c", PROBE, "10.99.0.1"]),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    assert json.loads(done.stdout) == {"10.99.0.1:80": False}


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 4), st.integers(1, 4))
def test_rise_and_fall_follow_the_streaks(rounds: list[bool], rise: int, fall: int) -> None:
    tracker = HealthTracker(rise=rise, fall=fall)
    target = ("10.246.1.2", 80)
    up, streak = True, 0
    for ok in rounds:
        streak = (max(streak, 0) + 1) if ok else (min(streak, 0) - 1)
        went_down, came_back = tracker.record({target: ok})
        if up and -streak >= fall:
            up = False
            assert went_down == {target} and not came_back
        elif not up and streak >= rise:
            up = True
            assert came_back == {target} and not went_down
        else:
            assert not went_down and not came_back  # one line per transition, nothing in between
        assert (target in tracker.down) == (not up)


def test_a_target_no_longer_checked_is_forgotten() -> None:
    tracker = HealthTracker(rise=1, fall=1)
    tracker.record({("10.246.1.2", 80): False})
    assert tracker.down == {("10.246.1.2", 80)}
    tracker.record({})  # the backend left the plan
    assert tracker.down == frozenset()


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 302 if self.path == "/moved" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_check_wants_a_2xx_or_3xx_answer(http_server: int, listener: int) -> None:
    port, closed = http_server, _closed_port()
    got = probe_http(
        [
            ("127.0.0.1", port, "/ok"),
            ("127.0.0.1", port, "/moved"),
            ("127.0.0.1", port, "/broken"),  # accepts the connection, answers 500
            ("127.0.0.1", closed, "/ok"),
            ("127.0.0.1", listener, "/ok"),  # accepts, never answers: the timeout
        ],
        timeout=0.5,
    )
    assert got == {
        ("127.0.0.1", port, "/ok"): True,
        ("127.0.0.1", port, "/moved"): True,
        ("127.0.0.1", port, "/broken"): False,
        ("127.0.0.1", closed, "/ok"): False,
        ("127.0.0.1", listener, "/ok"): False,
    }


def test_the_checker_takes_out_a_backend_whose_http_check_fails(http_server: int) -> None:
    changes: list[frozenset[tuple[str, int]]] = []
    settings = HealthConfig(enabled=True, timeout=0.5, rise=1, fall=2)
    checker = BackendChecker(settings, changes.append)
    checker.targets = frozenset({("127.0.0.1", http_server, "/broken"), ("127.0.0.1", http_server, "/ok")})
    assert checker.check_once() == frozenset() and changes == []  # one failure: not yet
    assert checker.check_once() == {("127.0.0.1", http_server)}  # any failing check takes it out
    assert changes == [frozenset({("127.0.0.1", http_server)})]
    checker.targets = frozenset({("127.0.0.1", http_server, "/ok")})
    assert checker.check_once() == frozenset() and changes[-1] == frozenset()
