"""A damaged state file: each damaged line is skipped, the rest loaded, and nothing from it escapes the
checks a frontend from etcd passes (the file must not be able to inject rules)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel_lb.plan.holdover import load
from flannel_lb.plan.model import Backend, Frontend, frontend_json

HEADER = b'{"version": 1, "saved": 0, "revision": 1}'


def _line(n: int) -> tuple[str, bytes]:
    f = Frontend(
        address="192.168.121.201",
        port=8000 + n,
        protocol="TCP",
        service=f"default/s{n}",
        backends=(Backend("10.246.1.2", 80),),
    )
    return f.service, json.dumps({"service": f.service, "frontends": [frontend_json(f)]}).encode()


def _field(line: bytes, old: bytes, new: bytes) -> bytes:
    return line.replace(old, new, 1)


CORRUPTIONS = [
    lambda b: b[: len(b) // 2],  # truncated
    lambda b: b[:5] + b"\xff\xfe" + b[5:],  # not UTF-8
    lambda b: _field(b, b'"port": 80', b'"port": 70000'),
    lambda b: _field(b, b'"port": 80', b'"port": -1'),
    lambda b: _field(b, b'"port": 80', b'"port": 1e309'),
    lambda b: _field(b, b'"port": 80', b'"port": NaN'),
    lambda b: _field(b, b'"port": 80', b'"port": "x"'),
    lambda b: _field(b, b'"protocol": "TCP"', b'"protocol": "ICMP"'),
    lambda b: _field(b, b'"address": "192.168.121.201"', b'"address": "0.0.0.0/0 -j ACCEPT"'),
    lambda b: _field(b, b'"ip": "10.246.1.2"', b'"ip": "10.246.1.2\\n-A INPUT"'),
    lambda b: _field(b, b'"frontends": [', b'"frontends": [' * 100_000),  # deep nesting
    lambda b: b'{"service": "x", "frontends": 5}',
    lambda b: b"[" * 200_000 + b"]" * 200_000,
    lambda b: b"null",
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(min_value=1, max_value=8),
    damage=st.dictionaries(st.integers(0, 7), st.integers(0, len(CORRUPTIONS) - 1)),
)
def test_damaged_lines_are_skipped_and_the_rest_loaded(
    tmp_path: Path, n: int, damage: dict[int, int]
) -> None:
    lines = [_line(i) for i in range(n)]
    body = [CORRUPTIONS[damage[i]](text) if i in damage else text for i, (_, text) in enumerate(lines)]
    path = tmp_path / "state.jsonl"
    path.write_bytes(b"\n".join([HEADER, *body]) + b"\n")
    loaded = load(path)  # never raises
    got = loaded.saved
    intact = {service for i, (service, _) in enumerate(lines) if i not in damage}
    assert intact <= set(got)
    assert set(got) <= {service for service, _ in lines} | {"x"}
    # counted (flannel_lb_state_file_lines_skipped): only damaged lines, and each damaged line not loaded
    damaged = {i for i in damage if i < n}
    assert set(loaded.skipped) <= {i + 2 for i in damaged}
    assert {i + 2 for i in damaged if lines[i][0] not in got} <= set(loaded.skipped)
    for frontends in got.values():
        for f in frontends:
            assert f.protocol in ("TCP", "UDP", "SCTP") and 1 <= f.port <= 65535
            assert all(1 <= b.port <= 65535 and "\n" not in b.ip for b in f.backends)
