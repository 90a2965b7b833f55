"""Bulk writes to the lab's etcd, from inside the `master` namespace (etcd listens only there).

The lab's `EtcdWriter` does one put per round trip, which is fine for a handful of objects but slow
for 90,000 (30k Services, their Endpoints and EndpointSlices). This subprocess takes JSON lines
`{"puts": [[key, base64], ...], "deletes": [key, ...]}` on stdin, writes them in etcd transactions
of at most 128 operations (etcd's default `--max-txn-ops`), and answers `{"ok": true, "revision": R}`.
`{"dump": [prefix, ...]}` answers `{"ok": true, "revision": R, "kvs": [[key, base64], ...]}`: the
keys under the prefixes at one revision (for replaying the agent's pipeline in-process).
A batch with exactly one put or delete is written with a plain put/delete, so single changes (the
convergence benchmark) cost one round trip and get their own revision.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import urlsplit

MAX_TXN_OPS = 128


def write_batch(client: Any, puts: list[tuple[str, bytes]], deletes: list[str]) -> int:
    """Write one batch; return the etcd revision after it."""
    if len(puts) + len(deletes) == 1:
        resp = client.put(*puts[0]) if puts else client.delete(deletes[0], return_response=True)
        return int(resp.header.revision)
    ops = [client.transactions.put(k, v) for k, v in puts]
    ops += [client.transactions.delete(k) for k in deletes]
    for i in range(0, len(ops), MAX_TXN_OPS):
        client.transaction(compare=[], success=ops[i : i + MAX_TXN_OPS], failure=[])
    return int(client.get_response("/").header.revision)


def _dump(client: Any, prefixes: list[str]) -> dict[str, Any]:
    """Every key under `prefixes` at one revision, paged as the agent reads them."""
    from flannel_lb.source.etcd_v3 import list_prefixes

    revision, items = list_prefixes(client, prefixes)
    return {"revision": revision, "kvs": [[kv.key, base64.b64encode(kv.value).decode()] for kv in items]}


def serve(endpoint: str, stdin: IO[str], stdout: IO[str]) -> None:
    from flannel_lb.source.etcdrpc import etcd3

    url = urlsplit(endpoint)
    client = etcd3.client(host=url.hostname, port=url.port or 2379, timeout=60)
    for line in stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if "dump" in cmd:
                stdout.write(json.dumps({"ok": True, **_dump(client, cmd["dump"])}) + "\n")
                stdout.flush()
                continue
            puts = [(k, base64.b64decode(v)) for k, v in cmd.get("puts", [])]
            answer: dict[str, Any] = {
                "ok": True,
                "revision": write_batch(client, puts, cmd.get("deletes", [])),
            }
        except Exception as e:  # the caller decides
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", required=True)
    args = p.parse_args(argv)
    serve(args.endpoint, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
