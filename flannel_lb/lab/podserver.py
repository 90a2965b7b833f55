"""The workload of one lab pod: answers every request with the pod's name.

A reply that names its pod is all a load-balancer test needs to tell backends apart, and the
source address the pod saw (logged, and sent back in `X-Remote-Addr`) shows whether the LB
masqueraded. Standard library only, so each pod starts in a few tens of milliseconds.

Run inside the pod's namespace: `python -m flannel_lb.lab.podserver --name web-1 --tcp 80 --udp 53`.
It prints `ready` on stdout once every socket is bound, then only logs to stderr.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


def _http_handler(name: str, port: int) -> type[BaseHTTPRequestHandler]:
    body = f"{name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "flb-podserver"

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, *, with_body: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Pod-Name", name)
            self.send_header("X-Remote-Addr", f"{self.client_address[0]}:{self.client_address[1]}")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"http :{port} from {self.client_address[0]} {format % args}\n")

    return Handler


def _serve_udp(sock: socket.socket, name: str) -> None:
    reply = name.encode()
    while True:
        _data, peer = sock.recvfrom(65535)
        sys.stderr.write(f"udp :{sock.getsockname()[1]} from {peer[0]}\n")
        sock.sendto(reply, peer)


def serve(name: str, tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
    """Bind everything first (so `ready` means reachable), then serve until SIGTERM."""
    http_servers = [ThreadingHTTPServer(("0.0.0.0", port), _http_handler(name, port)) for port in tcp_ports]
    udp_socks: list[socket.socket] = []
    for port in udp_ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        udp_socks.append(sock)
    for srv in http_servers:
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    for sock in udp_socks:
        threading.Thread(target=_serve_udp, args=(sock, name), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.close()  # the launcher stops reading after `ready`; never write to that pipe again
    threading.Event().wait()


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--tcp", type=int, action="append", default=[], help="HTTP port (repeatable)")
    p.add_argument("--udp", type=int, action="append", default=[], help="UDP echo port (repeatable)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit)
    serve(args.name, args.tcp, args.udp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
