"""etcd3 0.12.0 runs on a supported protobuf through flannel_lb.source.etcdrpc's regenerated messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import __version__ as protobuf_version
from google.protobuf import descriptor_pb2
from google.protobuf.internal import api_implementation

from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.source import etcd_v3, etcdrpc
from flannel_lb.source.etcdrpc import etcd3, kv_pb2, regenerate, rpc_pb2
from flannel_lb.source.settings import EtcdSettings

ETCDRPC = Path(etcdrpc.__file__).parent
ROOT = ETCDRPC.parents[2]


def gencode_version() -> tuple[int, int, int]:
    """The protobuf version protoc wrote into the committed rpc_pb2.py."""
    m = re.search(
        r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)$", (ETCDRPC / "rpc_pb2.py").read_text(), re.M
    )
    assert m, "rpc_pb2.py carries no 'Protobuf Python Version' line"
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


def test_installed_protobuf_is_not_the_eol_line_and_matches_the_gencode() -> None:
    installed = tuple(int(p) for p in protobuf_version.split(".")[:3])
    assert installed[0] > 3, f"protobuf {protobuf_version}: the 3.x line is end-of-life"
    gencode = gencode_version()
    assert installed[0] == gencode[0] and installed >= gencode, (
        f"protobuf {protobuf_version} cannot run gencode {gencode} (same major, not older, is required)"
    )


def test_protobuf_runs_its_c_implementation() -> None:
    assert api_implementation.Type() == "upb"


def test_etcd3_uses_the_regenerated_modules() -> None:
    for name, module in etcdrpc.REPLACED.items():
        assert sys.modules[name] is module
    assert etcd3.etcdrpc.RangeRequest is rpc_pb2.RangeRequest  # etcd3.etcdrpc's star import
    assert etcd3.etcdrpc.rpc_pb2_grpc.rpc__pb2 is rpc_pb2  # the gRPC stubs etcd3 calls
    assert sys.modules["etcd3.client"].etcdrpc.WatchCreateRequest is rpc_pb2.WatchCreateRequest
    assert rpc_pb2.RangeRequest.__module__ == "flannel_lb.source.etcdrpc.rpc_pb2"
    assert kv_pb2.DESCRIPTOR.name == "flannel_lb/source/etcdrpc/kv.proto"


def test_the_regenerated_schema_is_etcd3s_own() -> None:
    """Every message, field and service of etcd3 0.12.0's modules, read from their source text."""
    stock = regenerate.descriptor_set(regenerate.etcd3_dir())
    assert [f.name for f in stock.file] == [m.DESCRIPTOR.name for m in etcdrpc.REPLACED.values()]
    for want, module in zip(stock.file, etcdrpc.REPLACED.values(), strict=True):
        got = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert got == want, module.__name__
    assert "RangeRequest" in [m.name for m in stock.file[-1].message_type]


def test_the_committed_modules_are_what_protoc_generates() -> None:
    proc = subprocess.run(
        [sys.executable, str(ETCDRPC / "regenerate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_serialized_descriptor_reads_the_old_generated_form() -> None:
    source = (
        "DESCRIPTOR = _descriptor.FileDescriptor(name='x.proto', serialized_pb=_b('\\n\\x07x.proto\\xe9'))"
    )
    assert regenerate.serialized_descriptor(source) == b"\n\x07x.proto\xe9"
    with pytest.raises(ValueError, match="no serialized_pb"):
        regenerate.serialized_descriptor("DESCRIPTOR = None")


def test_etcd3_imported_first_is_refused() -> None:
    """etcd3's own modules loaded first (possible only in pure-Python mode) are not silently kept."""
    code = "import etcd3\nimport flannel_lb.source.etcdrpc"
    env = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "ImportError: etcd3.etcdrpc.kv_pb2 was imported before flannel_lb.source.etcdrpc" in proc.stderr


def test_etcd3s_own_modules_do_not_import_under_upb() -> None:
    """Why the package exists: without it, etcd3 0.12.0 fails on this protobuf."""
    proc = subprocess.run([sys.executable, "-c", "import etcd3"], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "Descriptors cannot be created directly" in proc.stderr


@pytest.mark.etcd
def test_a_real_etcd_answers_in_regenerated_messages(etcd: EtcdServer) -> None:
    client = etcd3.client("127.0.0.1", etcd.client_port)
    try:
        client.put("/registry/services/specs/default/a", b"\x00\xffvalue")
        resp = etcd_v3.range_page(client, b"/registry/", etcd_v3.prefix_end(b"/registry/"), 10, 0)
        assert type(resp) is rpc_pb2.RangeResponse
        assert type(resp.kvs[0]) is kv_pb2.KeyValue
        revision, items = etcd_v3.list_prefixes(client, ["/registry/"])
        assert [(kv.key, kv.value) for kv in items] == [
            ("/registry/services/specs/default/a", b"\x00\xffvalue")
        ]
        assert revision == resp.header.revision
    finally:
        client.close()
    settings = EtcdSettings(endpoints=(etcd.client_url,))
    client = etcd_v3.connect(settings.parsed_endpoints()[0], settings)  # the agent's way in
    try:
        assert etcd_v3.current_revision(client, "/registry/") == revision
    finally:
        etcd_v3.close(client)
