"""A config pointing at something that is not etcd: the CLI says what was tried and what to fix."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.test_cli_etcd import run_cli


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    do_POST = do_PRI = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http404() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_not_etcd() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop(None)


def test_each_endpoint_named_with_its_cause_and_the_key_to_fix(
    tmp_path: Path, http404: str, grpc_not_etcd: str
) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    path = tmp_path / "c.toml"
    urls = ", ".join(f'"{u}"' for u in (closed, http404, grpc_not_etcd))
    path.write_text(f'[etcd]\nendpoints = [{urls}]\nretry_budget = 0.5\n[lb]\naddresses = ["10.0.0.1"]\n')
    proc = run_cli(path, "plan", "--no-netcheck")
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert f"{closed}: nothing answering (connection refused)" in err
    assert f"{http404}: not an etcd server" in err
    assert f"{grpc_not_etcd}: not an etcd server" in err
    assert f"`[etcd] endpoints` in {path}" in err
