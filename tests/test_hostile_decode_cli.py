"""`flannel-lb decode` on whatever a person or etcd hands it: a missing file, a directory, deep or random
bytes, truncated protobuf. Always one line naming the input and the reason, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel_lb import cli

_PREFIXES = [b"", b"k8s\x00", b"k8s\x00\x0a\x02v1\x12\x07Service\x12", b"{", b'{"kind": "Service", "spec": ']


def _decode(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["decode", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("make", ["missing", "directory", "unreadable-bytes"])
def test_a_file_that_cannot_be_read_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: str
) -> None:
    path = tmp_path / "value"
    if make == "directory":
        path.mkdir()
    elif make == "unreadable-bytes":
        path.write_bytes(b"k8s\x00" + b"\xff" * 64)
    code, out, err = _decode(capsys, str(path))
    assert code != 0 and out == ""
    assert err.startswith(f"flannel-lb decode: cannot {'read' if make != 'unreadable-bytes' else 'decode'} ")
    assert str(path) in err and err.count("\n") == 1 and "Traceback" not in err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(_PREFIXES),
    depth=st.integers(0, 300_000),
    opener=st.sampled_from([b"[", b'{"a":', b"\x0a\x80\x80\x80\x01"]),
    tail=st.binary(max_size=64),
)
def test_any_bytes_decode_or_give_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, prefix: bytes, depth: int,
    opener: bytes, tail: bytes,
) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("decode") / "value"
    path.write_bytes(prefix + opener * depth + tail)
    code, out, err = _decode(capsys, str(path))
    if code == 0:
        json.loads(out)  # what it prints is strict JSON
    else:
        assert out == "" and err.startswith(f"flannel-lb decode: cannot decode {path}: ")
        assert err.count("\n") == 1 and len(err) < 1000


def test_standard_input_is_named_too() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flannel_lb", "decode", "-"],
        input=b"[" * 200_000,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.startswith(b"flannel-lb decode: cannot decode standard input: ")
    assert b"Traceback" not in proc.stderr
