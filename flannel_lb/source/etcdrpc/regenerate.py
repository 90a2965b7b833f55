"""Regenerate this package's *_pb2 modules from the schema inside the installed etcd3 0.12.0.

etcd3's wheel ships no .proto files, only modules generated with protoc 3.x, each holding its file's
serialized FileDescriptorProto (`serialized_pb=_b('...')`). Those are read from the source text
(the old modules are never imported: they fail under protobuf >= 4 with upb), renamed from
`kv.proto` to `flannel_lb/source/etcdrpc/kv.proto` (so the generated imports point at this package),
and compiled with grpcio-tools' protoc (`--python_out`, `--pyi_out`). The messages are exactly
etcd3 0.12.0's: only the code that builds them is new.

Run: .venv/bin/python flannel_lb/source/etcdrpc/regenerate.py [--check]  (a script: the package imports
the modules it writes)
(`--check` compares instead of writing; it exits 1 when a committed file differs.)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTOS = ("kv", "auth", "rpc")  # dependency order
PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_DIR = "flannel_lb/source/etcdrpc"


def etcd3_dir() -> Path:
    spec = importlib.util.find_spec("etcd3")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("etcd3 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "etcdrpc"


def serialized_descriptor(source: str) -> bytes:
    """The `serialized_pb` argument of the FileDescriptor(...) call in an old generated module."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg != "serialized_pb":
                    continue
                value = kw.value
                if isinstance(value, ast.Call) and len(value.args) == 1:  # _b('...') (latin-1)
                    value = value.args[0]
                literal = ast.literal_eval(value)
                return literal.encode("latin1") if isinstance(literal, str) else bytes(literal)
    raise ValueError("no serialized_pb= in this module")


def descriptor_set(source_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    for name in PROTOS:
        proto = descriptor_pb2.FileDescriptorProto.FromString(
            serialized_descriptor((source_dir / f"{name}_pb2.py").read_text())
        )
        if proto.name != f"{name}.proto":
            raise ValueError(f"{name}_pb2.py describes {proto.name!r}")
        proto.name = f"{PROTO_DIR}/{name}.proto"
        proto.dependency[:] = [f"{PROTO_DIR}/{dep}" for dep in proto.dependency]
        files.file.append(proto)
    return files


def generate(out: Path, source_dir: Path | None = None) -> dict[str, bytes]:
    """Compile the descriptors into `out`; return {file name: content} of the generated modules."""
    from grpc_tools import protoc  # the generator only: grpcio-tools is a test/dev dependency

    source_dir = source_dir or etcd3_dir()
    set_path = out / "etcd3-0.12.0.binpb"
    set_path.write_bytes(descriptor_set(source_dir).SerializeToString())
    argv = [
        "protoc",
        f"--descriptor_set_in={set_path}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *(f"{PROTO_DIR}/{name}.proto" for name in PROTOS),
    ]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")
    generated = out / PROTO_DIR
    return {p.name: p.read_bytes() for p in sorted(generated.iterdir()) if p.suffix in (".py", ".pyi")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flb-etcdrpc-") as tmp:
        files = generate(Path(tmp))
    differ = [
        name
        for name, data in files.items()
        if not (PACKAGE_DIR / name).is_file() or (PACKAGE_DIR / name).read_bytes() != data
    ]
    if args.check:
        for name in differ:
            print(f"{PACKAGE_DIR / name} differs from what protoc generates now", file=sys.stderr)
        return 1 if differ else 0
    for name, data in files.items():
        (PACKAGE_DIR / name).write_bytes(data)
    print(f"wrote {', '.join(files)} to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
