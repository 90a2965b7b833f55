"""Writes to the lab's etcd, which only listens inside the `master` namespace.

The root namespace cannot reach 10.245.1.2:4379 by design, so a small long-lived subprocess runs
inside a lab namespace and takes JSON-line commands on stdin, one JSON-line answer each. Starting
it once per lab process (instead of once per write) keeps a write at about a millisecond.

Commands (values are base64):
  {"op": "put", "key": K, "value": B64, "ttl": SECONDS|null}  -> {"revision": R, "lease": ID}
  {"op": "delete", "key": K}                                  -> {"revision": R, "deleted": N}
  {"op": "revoke", "lease": ID} | {"op": "revoke", "key": K}  -> {"revision": R, "lease": ID}
  {"op": "compact", "revision": R|null}                       -> {"revision": R}
  {"op": "get-revision"}                                      -> {"revision": R}
  {"op": "get", "key": K}  -> {"revision": R, "value": B64|null, "lease": ID, "mod_revision": M}
  {"op": "list", "prefix": P}                                 -> {"revision": R, "keys": [...]}
  {"op": "ping"}                                              -> {}
Every answer also carries "ok": true, or is {"ok": false, "error": "..."}.
The subprocess exits when its stdin closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from flannel_lb.lab.netns import Namespaces


class EtcdWriteError(RuntimeError):
    """The writer answered with an error, died, or did not answer in time."""


# --- the subprocess --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _handle(client: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "ping":
        client.get_response("/")  # proves etcd answers, not just that the channel exists
        return {}
    if op == "put":
        lease_id = None
        if cmd.get("ttl"):
            lease_id = client.lease(int(cmd["ttl"])).id
        resp = client.put(cmd["key"], base64.b64decode(cmd["value"]), lease=lease_id)
        return {"revision": resp.header.revision, "lease": lease_id or 0}
    if op == "delete":
        resp = client.delete(cmd["key"], return_response=True)
        return {"revision": resp.header.revision, "deleted": resp.deleted}
    if op == "revoke":
        lease_id = cmd.get("lease")
        if not lease_id:
            resp = client.get_response(cmd["key"])
            lease_id = resp.kvs[0].lease if resp.kvs else 0
        if lease_id:
            client.revoke_lease(lease_id)
        return {"revision": client.get_response("/").header.revision, "lease": lease_id}
    if op == "compact":
        rev = cmd.get("revision") or client.get_response("/").header.revision
        client.compact(rev)
        return {"revision": rev}
    if op == "get-revision":
        return {"revision": client.get_response("/").header.revision}
    if op == "get":
        resp = client.get_response(cmd["key"])
        out: dict[str, Any] = {"revision": resp.header.revision, "value": None, "lease": 0, "mod_revision": 0}
        if resp.kvs:
            kv = resp.kvs[0]
            out.update(value=_b64(kv.value), lease=kv.lease, mod_revision=kv.mod_revision)
        return out
    if op == "list":
        resp = client.get_prefix_response(cmd["prefix"], keys_only=True)
        return {"revision": resp.header.revision, "keys": [kv.key.decode() for kv in resp.kvs]}
    raise ValueError(f"unknown op {op!r}")


def serve(endpoint: str, stdin: IO[str], stdout: IO[str]) -> None:
    from flannel_lb.source.etcdrpc import etcd3  # late: only the subprocess pays for grpc

    url = urlsplit(endpoint)
    client = etcd3.client(host=url.hostname, port=url.port or 2379, timeout=10)
    for line in stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, **_handle(client, json.loads(line))}
        except Exception as e:  # every failure becomes an answer; the caller decides
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="JSON-line etcd v3 writer (runs inside a lab namespace)")
    p.add_argument("--endpoint", required=True, help="e.g. http://10.245.1.2:4379")
    args = p.parse_args(argv)
    serve(args.endpoint, sys.stdin, sys.stdout)
    return 0


# --- the caller's side -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    value: bytes
    lease: int
    mod_revision: int


class EtcdWriter:
    """The caller's handle on one writer subprocess running in namespace `host` of `ns`."""

    def __init__(self, ns: Namespaces, host: str, endpoint: str, log_path: Path | None = None) -> None:
        self.ns = ns
        self.host = host
        self.endpoint = endpoint
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the writer and wait until etcd answers through it."""
        if self.pid is not None:
            return
        err: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            err = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = self.ns.popen(
                self.host,
                [sys.executable, "-m", "flannel_lb.lab.etcd_writer", "--endpoint", self.endpoint],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        finally:
            if not isinstance(err, int):
                err.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call({"op": "ping"}, timeout=max(0.5, deadline - time.monotonic()))
                return
            except EtcdWriteError:
                if time.monotonic() >= deadline or self.pid is None:
                    raise
                time.sleep(0.1)

    def call(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise EtcdWriteError("etcd writer is not running")
        try:
            proc.stdin.write((json.dumps(cmd) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise EtcdWriteError(f"etcd writer died: {e}") from None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            self.close()  # a late answer would be read as the answer to the next command
            raise EtcdWriteError(f"no answer from the etcd writer to {cmd.get('op')} within {timeout:.0f}s")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise EtcdWriteError(f"{cmd.get('op')} {cmd.get('key', '')}: {answer.get('error')}")
        return answer

    def put(self, key: str, value: bytes, ttl: int | None = None) -> tuple[int, int]:
        """Write one key (attached to a fresh lease of `ttl` seconds if given); return (revision, lease)."""
        a = self.call({"op": "put", "key": key, "value": _b64(value), "ttl": ttl})
        return int(a["revision"]), int(a["lease"])

    def delete(self, key: str) -> int:
        return int(self.call({"op": "delete", "key": key})["revision"])

    def revoke(self, lease: int = 0, key: str | None = None) -> int:
        """Revoke a lease (by id, or the one `key` is attached to): etcd deletes its keys."""
        return int(self.call({"op": "revoke", "lease": lease, "key": key})["revision"])

    def compact(self, revision: int | None = None) -> int:
        return int(self.call({"op": "compact", "revision": revision})["revision"])

    def revision(self) -> int:
        return int(self.call({"op": "get-revision"})["revision"])

    def get(self, key: str) -> KeyValue | None:
        a = self.call({"op": "get", "key": key})
        if a["value"] is None:
            return None
        return KeyValue(base64.b64decode(a["value"]), int(a["lease"]), int(a["mod_revision"]))

    def keys(self, prefix: str) -> list[str]:
        return list(self.call({"op": "list", "prefix": prefix})["keys"])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
