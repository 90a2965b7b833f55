"""The etcd snapshot read at 10k Services under each way of running etcd3 0.12.0 on protobuf.

One real etcd (on a free loopback port, no root needed) holds N Services x E endpoints, as the other
benchmarks build them (`bench.decode_state.generate`: each Service with its Endpoints and one
EndpointSlice, protobuf with the `k8s\\0` envelope, plus flannel's config and leases). Each option
then reads the agent's prefixes (`KeyLayout`: /registry/services/, /registry/endpointslices/,
/registry/minions/, /coreos.com/network/) with `flannel_lb.source.etcd_v3.list_prefixes`, at one
revision, in a fresh interpreter, `--repeat` times, interleaved (the order alternates):

  regenerated  this tree as it is: protobuf 7.x with upb (C), etcd3's messages regenerated
               (flannel_lb.source.etcdrpc); the interpreter running this benchmark
  python       protobuf 7.x, etcd3's own generated modules, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
  fork         python3-etcd3 0.13.0 (a fork of etcd3, one release, protoc 5.29 gencode) on
               protobuf 7.x (upb): protobuf 7 loads older gencode without a word, but its
               cross-version guarantee does not cover 5.x gencode any more
  eol          protobuf 3.20.3 (end of life) and etcd3's own modules: what flannel-lb shipped before

The last three run the same flannel_lb.source.etcd_v3 code with the stock `etcd3` package in place of
flannel_lb.source.etcdrpc (the child registers it under that name). `--compare` builds their
virtualenvs under `--venv-dir` with pip (once; they are reused) and rewrites this benchmark's section
of docs/benchmarks.md (unless `--no-doc`); without it only `regenerated` runs.

  read s     list_prefixes wall seconds (the client already connected), median of --repeat
  CPU s      the child's CPU seconds during the read (grpc's threads included)
  import s   importing flannel_lb.source.etcd_v3 (protobuf, grpc, etcd3 and the messages)
  peak RSS   the child's VmHWM after the read (interpreter, imports and the listed keys)
  digest     sha256 over every (key, value, mod_revision) read: the same digest, the same snapshot

Run: .venv/bin/python -m bench.etcd_protobuf [--compare] [--no-doc] [--services 10000] [--endpoints 10]
                                             [--repeat 3]
"""

from __future__ import annotations

# Only the standard library at module level: the children run this file as a script in other
# virtualenvs, where only etcd3, protobuf, grpcio and flannel_lb's own dependencies are installed.
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
COMMON = ("grpcio>=1.60,<2", "structlog>=24.1", "tenacity>=9.2")


@dataclass(frozen=True)
class Option:
    name: str
    label: str
    pip: tuple[str, ...] = ()  # empty: this interpreter (the tree's own .venv)
    stock: bool = True  # etcd3's own generated modules instead of flannel_lb.source.etcdrpc
    env: tuple[tuple[str, str], ...] = ()


OPTIONS = (
    Option("regenerated", "protobuf 7.x upb, regenerated messages (this tree)", stock=False),
    Option(
        "python",
        "protobuf 7.x pure Python, etcd3's own modules",
        ("etcd3==0.12.0", "protobuf>=7.35.1,<8"),
        env=(("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python"),),
    ),
    Option(
        "fork",
        "python3-etcd3 0.13.0 (5.29 gencode) on protobuf 7.x upb",
        ("python3-etcd3==0.13.0", "protobuf>=7.35.1,<8"),
    ),
    Option("eol", "protobuf 3.20.3 (EOL), etcd3's own modules", ("etcd3==0.12.0", "protobuf==3.20.3")),
)


# --- the measuring child -------------------------------------------------------------------------------


def _status_mb(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(endpoint: str, stock: bool) -> dict[str, Any]:
    import hashlib
    import types

    started = time.perf_counter()
    if stock:
        import etcd3

        shim = types.ModuleType("flannel_lb.source.etcdrpc")
        shim.etcd3 = etcd3  # type: ignore[attr-defined]
        shim.rpc_pb2 = etcd3.etcdrpc  # type: ignore[attr-defined]  # RangeRequest, star-imported there
        sys.modules["flannel_lb.source.etcdrpc"] = shim
    from flannel_lb.source import etcd_v3
    from flannel_lb.source.settings import EtcdSettings
    from flannel_lb.state.cluster import KeyLayout

    imported = time.perf_counter() - started
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    settings = EtcdSettings(endpoints=(endpoint,), timeout=60.0)
    client = etcd_v3.connect(settings.parsed_endpoints()[0], settings)
    layout = KeyLayout()
    wall, cpu = time.perf_counter(), time.process_time()
    revision, items = etcd_v3.list_prefixes(client, [*layout.kube_prefixes(), *layout.flannel_prefixes()])
    read, read_cpu = time.perf_counter() - wall, time.process_time() - cpu
    digest = hashlib.sha256()
    for kv in items:
        digest.update(b"%s\0%d\0%d\0" % (kv.key.encode(), kv.mod_revision, len(kv.value)) + kv.value)
    etcd_v3.close(client)
    return {
        "flannel_lb": str(Path(etcd_v3.__file__).parent.parent),
        "range_request": sys.modules["flannel_lb.source.etcdrpc"].rpc_pb2.RangeRequest.__module__,
        "protobuf": protobuf_version,
        "implementation": api_implementation.Type(),
        "import": imported,
        "read": read,
        "read_cpu": read_cpu,
        "hwm_mb": _status_mb("VmHWM"),
        "keys": len(items),
        "revision": revision,
        "digest": digest.hexdigest()[:12],
    }


# --- the parent -------------------------------------------------------------------------------------------


def venv_python(option: Option, venv_dir: Path) -> Path:
    """The option's interpreter: this one, or a virtualenv built (once) with its packages."""
    if not option.pip:
        return Path(sys.executable)
    from bench.common import log

    venv = venv_dir / option.name
    stamp = venv / ".flb-packages"
    wanted = "\n".join((*option.pip, *COMMON))
    if not stamp.is_file() or stamp.read_text() != wanted:
        log(f"  building {venv} ({', '.join(option.pip)})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", *option.pip, *COMMON],
            check=True,
        )
        stamp.write_text(wanted)
    return venv / "bin/python"


def run_child(option: Option, python: Path, endpoint: str) -> dict[str, Any]:
    from bench.common import child_answer  # here: the child itself imports nothing of bench/

    env = {**os.environ, **dict(option.env), "PYTHONPATH": str(ROOT)}
    if "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" not in dict(option.env):
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    argv = [str(python), "-P", str(HERE), "--child", endpoint, "stock" if option.stock else "etcdrpc"]
    return child_answer(argv, env, ROOT, option.name)


def fill(endpoint: str, items: list[tuple[str, bytes]]) -> int:
    """Write `items` to etcd in transactions (bench.etcdbulk); return the revision after."""
    from urllib.parse import urlsplit

    from bench.etcdbulk import write_batch
    from flannel_lb.source.etcdrpc import etcd3

    url = urlsplit(endpoint)
    client = etcd3.client(host=url.hostname, port=url.port, timeout=60)
    try:
        revision = 0
        for i in range(0, len(items), 4096):
            revision = write_batch(client, items[i : i + 4096], [])
        return revision
    finally:
        client.close()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.common import median

    return {
        "read": median([r["read"] for r in runs]),
        "range": (min(r["read"] for r in runs), max(r["read"] for r in runs)),
        "read_cpu": median([r["read_cpu"] for r in runs]),
        "import": median([r["import"] for r in runs]),
        "hwm_mb": median([r["hwm_mb"] for r in runs]),
        "keys": runs[0]["keys"],
        "digests": sorted({r["digest"] for r in runs}),
        "protobuf": f"{runs[0]['protobuf']} ({runs[0]['implementation']})",
        "messages": runs[0]["range_request"],
    }


def render(summaries: dict[Option, dict[str, Any]], repeat: int) -> str:
    from bench.report import table

    headers = [
        "option",
        "protobuf (implementation)",
        "RangeRequest from",
        f"read s (median of {repeat}; range)",
        "CPU s",
        "import s",
        "peak RSS MB",
        "keys",
        "digest",
    ]
    rows: list[list[object]] = []
    for option, s in summaries.items():
        lo, hi = s["range"]
        rows.append(
            [
                f"{option.name}: {option.label}",
                s["protobuf"],
                f"`{s['messages']}`",
                f"{s['read']:.2f} ({lo:.2f}-{hi:.2f})",
                f"{s['read_cpu']:.2f}",
                f"{s['import']:.2f}",
                f"{s['hwm_mb']:.0f}",
                f"{s['keys']:,}",
                ", ".join(s["digests"]),
            ]
        )
    return table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    parser.add_argument("--nodes", type=int, default=8, help="nodes (flannel leases)")
    parser.add_argument("--repeat", type=int, default=3, help="reads per option (fresh interpreter each)")
    parser.add_argument("--compare", action="store_true", help="also the python, fork and eol options")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--venv-dir", type=Path, default=Path(tempfile.gettempdir()) / "flb-protobuf-venvs")
    args = parser.parse_args(argv)

    from bench import report
    from bench.common import log, machine
    from bench.decode_state import generate
    from flannel_lb.lab.etcd_server import EtcdServer

    started_at = report.now()
    options = OPTIONS if args.compare else OPTIONS[:1]
    pythons = {o: venv_python(o, args.venv_dir) for o in options}
    runs: dict[Option, list[dict[str, Any]]] = {o: [] for o in options}
    with tempfile.TemporaryDirectory(prefix="flb-etcd-protobuf-") as tmp:
        path = Path(tmp) / "items.pickle"
        keys, size = generate(args.services, args.endpoints, args.nodes, path)
        with open(path, "rb") as f:
            items: list[tuple[str, bytes]] = pickle.load(f)
        with EtcdServer(Path(tmp) / "etcd") as server:
            started = time.monotonic()
            revision = fill(server.client_url, items)
            del items
            log(
                f"{args.services:,} Services x {args.endpoints} endpoints: {keys:,} keys, "
                f"{size / 1e6:.1f} MB written to {server.client_url} (revision {revision}) "
                f"in {time.monotonic() - started:.1f} s"
            )
            for r in range(args.repeat):
                for option in options if r % 2 == 0 else tuple(reversed(options)):
                    got = run_child(option, pythons[option], server.client_url)
                    runs[option].append(got)
                    log(f"  {option.name}: read {got['read']:.2f} s, peak RSS {got['hwm_mb']:.0f} MB")
    summaries = {o: summarise(r) for o, r in runs.items()}
    m = machine()
    text = render(summaries, args.repeat)
    print()
    print(
        f"etcd_protobuf: snapshot read of {keys:,} keys ({args.services:,} Services x {args.endpoints} "
        f"endpoints, {size / 1e6:.1f} MB of values) from a real etcd on loopback; {m['cpu']}, "
        f"Python {m['python']}; load average at the end {m['load']}"
    )
    print(text)
    if args.compare and not args.no_doc:
        note = (
            f"{args.services:,} Services x {args.endpoints} endpoints: {keys:,} keys, "
            f"{size / 1e6:.1f} MB of values, one etcd on loopback; {args.repeat} reads per option"
        )
        body = report.preamble("etcd snapshot read by protobuf option", started_at, note)
        report.update_section("etcd_protobuf", f"{body}\n{text}\n")
    digests = {d for s in summaries.values() for d in s["digests"]}
    if len(digests) != 1:
        print(f"DIFFERENT SNAPSHOTS: {sorted(digests)}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3] == "stock")))
        sys.exit(0)
    sys.exit(main())
