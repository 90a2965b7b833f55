"""Kubernetes value decoding: upstream fixtures, encodings, error reasons and round-trip properties."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel_lb.decode import kube
from flannel_lb.decode.kube import (
    SUPPORTED_KINDS,
    DecodeError,
    EncodeError,
    EncryptedValueError,
    UnsupportedKindError,
    decode_used,
    decode_value,
    detect,
    encode_protobuf,
    format_time,
    parse_time,
)
from flannel_lb.decode.kube_schema import (
    KINDS,
    MAP_TYPES,
    MESSAGES,
    USED,
    USED_FIELDS,
    Field,
    parse_schema,
    parse_used,
)
from flannel_lb.decode.wire import (
    MAX_DEPTH,
    encode_varint,
    iter_fields,
    write_bytes_field,
    write_varint_field,
)

# --- upstream fixtures (kubernetes/api testdata; never copied into the project) ------------------

FIXTURES_ENV = "FLANNEL_LB_K8S_TESTDATA"


def _fixture_dir() -> Path:
    """A kubernetes/api checkout's testdata/ (HEAD/, v1.xx.0/), from the env var or the team's copy."""
    override = os.environ.get(FIXTURES_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "k8s-fixtures"


def _fixture_name(api_version: str, kind: str) -> str:
    """kubernetes/api names its files group.version.Kind, with "core" for the empty group."""
    group, _, version = api_version.rpartition("/")
    return f"{group or 'core'}.{version}.{kind}"


FIXTURE_DIR = _fixture_dir()
# A full testdata/ holds every API type; only the kinds the decoder supports are ours to check.
_SUPPORTED_FILES = {_fixture_name(*kind) for kind in SUPPORTED_KINDS}
FIXTURES = sorted(p for p in FIXTURE_DIR.glob("*/*.pb") if p.stem in _SUPPORTED_FILES)
NO_FIXTURES_REASON = (
    f"k8s fixtures not present at {FIXTURE_DIR}: set {FIXTURES_ENV} to a kubernetes/api checkout's testdata/"
)


def fixture_params() -> list[Any]:
    if not FIXTURES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_FIXTURES_REASON), id="no-fixtures")]
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}") for path in FIXTURES]


def _load(path: Path | None) -> tuple[bytes, dict[str, Any]]:
    assert path is not None
    return path.read_bytes(), json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_decodes_to_its_json_twin(path: Path | None) -> None:
    data, want = _load(path)
    assert detect(data) == "protobuf"
    assert decode_value(data) == want


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_json_encodes_to_the_exact_fixture_bytes(path: Path | None) -> None:
    data, want = _load(path)
    assert encode_protobuf(want) == data
    assert decode_value(encode_protobuf(want)) == want


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_other_encodings(path: Path | None) -> None:
    data, want = _load(path)
    assert decode_value(base64.b64encode(data)) == want  # etcd2 + protobuf (1.6-1.12)
    json_value = path.with_suffix(".json").read_bytes() if path else b""
    assert detect(json_value) == "json"
    assert decode_value(json_value) == want
    lean = decode_value(data, managed_fields=False)
    assert "managedFields" not in lean["metadata"]
    assert lean == {**want, "metadata": {k: v for k, v in want["metadata"].items() if k != "managedFields"}}


def _assert_truncations_raise(
    path: Path | None, decode: Callable[[bytes], Any], form: Callable[[dict[str, Any]], Any]
) -> None:
    """Every prefix of the value fails to decode, except those that only drop the optional trailer."""
    data, want = _load(path)
    trailer = len(data) - 4  # contentEncoding/contentType: "1a 00 22 00", both optional
    for size in range(len(data)):
        try:
            got = decode(data[:size])
        except DecodeError:
            continue
        assert size in (trailer, trailer + 2), f"prefix of {size} bytes decoded"
        assert got == form(want)


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_truncations_raise_decode_error(path: Path | None) -> None:
    _assert_truncations_raise(path, decode_value, lambda want: want)


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_byte_flips_only_raise_decode_error(path: Path | None) -> None:
    data, _ = _load(path)
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            mutated = data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :]
            with contextlib.suppress(DecodeError):
                assert isinstance(decode_value(mutated), dict)


def test_fixtures_cover_every_supported_kind_but_v1alpha1() -> None:
    if not FIXTURES:
        pytest.skip(NO_FIXTURES_REASON)
    seen = {(kind["apiVersion"], kind["kind"]) for kind in (_load(p)[1] for p in FIXTURES)}
    assert SUPPORTED_KINDS - {("discovery.k8s.io/v1alpha1", "EndpointSlice")} <= seen <= SUPPORTED_KINDS


# --- hand-built protobuf ------------------------------------------------------------------------


def _message(*fields: tuple[int, int | bytes | bytearray]) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            write_varint_field(out, number, value)
        else:
            write_bytes_field(out, number, value)
    return bytes(out)


def _envelope(api_version: str, kind: str, raw: bytes | None, content_encoding: str = "") -> bytes:
    fields: list[tuple[int, int | bytes | bytearray]] = [
        (1, _message((1, api_version.encode()), (2, kind.encode())))
    ]
    if raw is not None:
        fields.append((2, raw))
    fields += [(3, content_encoding.encode()), (4, b"")]
    return kube.PROTO_PREFIX + _message(*fields)


def test_unknown_kind_still_reports_the_envelope() -> None:
    value = _envelope("networking.k8s.io/v1", "Ingress", _message((1, b"")))
    assert detect(value) == "protobuf"
    with pytest.raises(UnsupportedKindError) as info:
        decode_value(value)
    assert info.value.reason == "unknown kind networking.k8s.io/v1 Ingress"
    assert (info.value.api_version, info.value.kind) == ("networking.k8s.io/v1", "Ingress")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_envelope("v1", "Service", None), "has no object bytes"),
        (_envelope("", "Service", b""), "no apiVersion/kind"),
        (_envelope("v1", "Service", b"", "gzip"), "unsupported envelope contentEncoding 'gzip'"),
        (kube.PROTO_PREFIX + b"\x0a\x05\x0a\x02v1", "malformed protobuf envelope: envelope field 1:"),
        (_envelope("v1", "Service", b"\x0a\x05\x0a\x02ab"), r"malformed protobuf v1 Service: .*overruns"),
        (_envelope("v1", "Service", b"\x10\x01"), r"Service field 2 has unexpected wire type 0"),
        (_envelope("v1", "Service", b"\x0a"), r"truncated core.v1.Service.metadata at offset"),
        (_envelope("v1", "Service", b"\x4b"), r"unsupported wire type 3"),  # a group
    ],
)
def test_malformed_protobuf_reasons(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_value(value)


def test_removed_and_unknown_fields_are_skipped() -> None:
    meta = _message((1, b"web"), (15, b"old-cluster-name"), (99, 7))
    spec = _message(
        (3, b"10.0.0.1"),
        (15, b"IPv4"),  # ipFamily, 1.16-1.19
        (16, b"kubernetes.io/hostname"),  # topologyKeys, 1.17-1.21
    )
    raw = _message((1, meta), (2, spec)) + b"\x25\x01\x02\x03\x04" + b"\x29" + b"\x00" * 8  # fixed32, fixed64
    assert decode_value(_envelope("v1", "Service", raw)) == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.0.0.1"},
    }


def test_go_zero_values_follow_json_tags() -> None:
    """Non-pointer zero scalars vanish (omitempty) unless the JSON tag keeps them; pointers always show."""
    port = _message((1, b""), (2, b"TCP"), (3, 0), (4, _message((1, 0), (2, 0), (3, b""))), (5, 0))
    spec = _message((1, port), (3, b""), (12, 0), (13, 0), (20, 0))  # allocateLoadBalancerNodePorts=false
    got = decode_value(_envelope("v1", "Service", _message((1, b""), (2, spec), (3, b""))))
    assert got == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {},
        "spec": {
            "ports": [{"protocol": "TCP", "port": 0, "targetPort": 0}],
            "allocateLoadBalancerNodePorts": False,
        },
        "status": {},
    }


def test_endpoint_conditions_keep_false_pointers() -> None:
    endpoint = _message((1, b"10.1.2.3"), (2, _message((1, 0), (2, 1), (3, 0))))
    got = decode_value(
        _envelope("discovery.k8s.io/v1", "EndpointSlice", _message((2, endpoint), (4, b"IPv4")))
    )
    assert got["endpoints"] == [
        {"addresses": ["10.1.2.3"], "conditions": {"ready": False, "serving": True, "terminating": False}}
    ]


def test_v1beta1_and_v1alpha1_endpoint_field_numbers() -> None:
    endpoint = _message((1, b"10.1.2.3"), (5, _message((1, b"kubernetes.io/hostname"), (2, b"n1"))), (7, b""))
    for version in ("v1beta1", "v1alpha1"):
        got = decode_value(_envelope(f"discovery.k8s.io/{version}", "EndpointSlice", _message((2, endpoint))))
        assert got["endpoints"] == [
            {"addresses": ["10.1.2.3"], "topology": {"kubernetes.io/hostname": "n1"}, "hints": {}}
        ]
    got = decode_value(_envelope("discovery.k8s.io/v1", "EndpointSlice", _message((2, endpoint))))
    assert got["endpoints"] == [
        {"addresses": ["10.1.2.3"], "deprecatedTopology": {"kubernetes.io/hostname": "n1"}, "zone": ""}
    ]


def test_negative_and_oversized_ints() -> None:
    spec = _message((12, -1))  # healthCheckNodePort: 10-byte varint
    spec += b"\x60" + encode_varint((1 << 32) + 7)  # an int32 wider than 32 bits: Go keeps the low bits
    meta = _message((7, -5), (10, 0))  # generation, deletionGracePeriodSeconds (pointer: 0 is kept)
    got = decode_value(_envelope("v1", "Service", _message((1, meta), (2, spec))))
    assert got["spec"] == {"healthCheckNodePort": 7}
    assert got["metadata"] == {"generation": -5, "deletionGracePeriodSeconds": 0}
    assert decode_value(_envelope("v1", "Service", _message((2, _message((12, -1))))))["spec"] == {
        "healthCheckNodePort": -1
    }


def test_invalid_utf8_is_replaced_like_go_json() -> None:
    got = decode_value(_envelope("v1", "Service", _message((1, _message((1, b"web\xff"))))))
    assert got["metadata"]["name"] == "web\ufffd"


def test_maps_last_key_wins_and_missing_quantity_is_zero() -> None:
    labels = [_message((1, b"a"), (2, b"1")), _message((1, b"a"), (2, b"2")), _message((2, b"x"))]
    meta = b"".join(_message((11, entry)) for entry in labels)
    status = _message((1, _message((1, b"cpu"))), (1, _message((1, b"memory"), (2, _message((1, b"1Gi"))))))
    got = decode_value(_envelope("v1", "Node", _message((1, meta), (3, status))))
    assert got["metadata"]["labels"] == {"a": "2", "": "x"}
    assert got["status"]["capacity"] == {"cpu": "0", "memory": "1Gi"}


def test_times() -> None:
    zero = _message((8, b""))  # a zero creationTimestamp is written as an empty message
    assert decode_value(_envelope("v1", "Service", _message((1, zero))))["metadata"] == {}
    epoch = _message((8, _message((1, 0), (2, 0))))
    assert decode_value(_envelope("v1", "Service", _message((1, epoch))))["metadata"] == {
        "creationTimestamp": "1970-01-01T00:00:00Z"
    }
    carry = _message((8, _message((1, 59), (2, 1_500_000_000))))  # nanos overflow carries, like time.Unix
    assert decode_value(_envelope("v1", "Service", _message((1, carry))))["metadata"] == {
        "creationTimestamp": "1970-01-01T00:01:00Z"
    }


@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_format_time_matches_datetime(seconds: int) -> None:
    expected = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    assert format_time(seconds) == expected.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")
    assert parse_time(format_time(seconds)) == (seconds, 0)


@given(st.integers(min_value=-(1 << 40), max_value=1 << 40))
def test_format_time_round_trips_any_year(seconds: int) -> None:
    assert parse_time(format_time(seconds)) == (seconds, 0)


def test_parse_time_offsets_and_fractions() -> None:
    assert parse_time("2008-01-01T03:01:01.5+02:00") == (1199149261, 500_000_000)
    assert parse_time("2008-01-01t01:01:01z") == (1199149261, 0)
    for bad in ("2008-01-01", "2008-13-01T00:00:00Z", "2008-01-01T00:00:00", "yesterday"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_intorstring_with_impossible_type() -> None:
    port = _message((4, _message((1, 2), (2, 80))))
    with pytest.raises(DecodeError, match="impossible type 2"):
        decode_value(_envelope("v1", "Service", _message((2, _message((1, port))))))


def test_fields_v1_must_be_json() -> None:
    entry = _message((7, _message((1, b"{not json"))))
    with pytest.raises(DecodeError, match=r"fieldsV1 .* is not valid JSON"):
        decode_value(_envelope("v1", "Service", _message((1, _message((17, entry))))))


def test_nesting_is_bounded_by_an_acyclic_schema() -> None:
    """The decoder recurses once per message field, so hostile nesting is bounded by the schema's
    depth; a message that leads back to itself would need a depth limit in the decoder."""

    def depth(message: str, path: tuple[str, ...]) -> int:
        assert message not in path, f"schema cycle: {' -> '.join((*path, message))}"
        subs = [f.type for f in MESSAGES[message].values() if f.is_message]
        return 1 + max((depth(sub, (*path, message)) for sub in subs), default=0)

    deepest = max(depth(top, ()) for top in KINDS.values())
    assert 2 <= deepest <= MAX_DEPTH


# --- other encodings ----------------------------------------------------------------------------


def test_json_values() -> None:
    obj = {"kind": "Ingress", "apiVersion": "networking.k8s.io/v1", "metadata": {"name": "x"}}
    assert decode_value(json.dumps(obj).encode()) == obj  # JSON of any kind passes through
    assert decode_value(b"\n  " + json.dumps(obj).encode()) == obj
    assert detect(b" {}") == "json"


def test_json_envelope_only_validation() -> None:
    """Only the envelope is checked: a wrongly-typed spec field is returned as stored."""
    obj = {"kind": "Service", "apiVersion": "v1", "spec": {"ports": "not-a-list"}}
    assert decode_value(json.dumps(obj).encode()) == obj


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "invalid JSON value"),
        (b'{"kind": "Service"}', "no apiVersion string"),
        (b'{"kind": 5, "apiVersion": "v1"}', "no kind string"),
        (b'{"kind": "", "apiVersion": "v1"}', "no kind string"),
        (b'{"kind": "Service", "apiVersion": "v1", "metadata": []}', "metadata is not an object"),
        (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid JSON value"),
    ],
)
def test_bad_json_values(value: bytes, reason: str) -> None:
    assert detect(value) == "json"
    with pytest.raises(DecodeError, match=reason):
        decode_value(value)


_CIPHERTEXT = bytes(range(256))  # may contain ':' and anything else


@pytest.mark.parametrize(
    ("value", "provider", "version", "key", "reason"),
    [
        (b"k8s:enc:aescbc:v1:key1:" + _CIPHERTEXT, "aescbc", "v1", "key1", "with aescbc (key 'key1'); "),
        (
            b"k8s:enc:aesgcm:v1:2024-01:" + _CIPHERTEXT,
            "aesgcm",
            "v1",
            "2024-01",
            "with aesgcm (key '2024-01')",
        ),
        (b"k8s:enc:secretbox:v1:sb:" + _CIPHERTEXT, "secretbox", "v1", "sb", "with secretbox (key 'sb')"),
        (b"k8s:enc:kms:v1:vault:" + _CIPHERTEXT, "kms", "v1", "vault", "with kms v1 (provider 'vault')"),
        (b"k8s:enc:kms:v2:aws:" + _CIPHERTEXT, "kms", "v2", "aws", "with kms v2 (provider 'aws')"),
        (b"k8s:enc:aescbc:v1:unterminated", "aescbc", "v1", "?", "with aescbc (key '?')"),
        (b"k8s:enc:", "?", "?", "?", "with ? (key '?')"),
    ],
)
def test_encrypted_values(value: bytes, provider: str, version: str, key: str, reason: str) -> None:
    assert detect(value) == "encrypted"
    with pytest.raises(EncryptedValueError) as info:
        decode_value(value)
    assert (info.value.provider, info.value.version, info.value.key_name) == (provider, version, key)
    assert info.value.reason.startswith("encrypted at rest ")
    assert reason in info.value.reason
    needs = "KMS plugin" if provider == "kms" else "keys"
    assert info.value.reason.endswith(f"; flannel-lb cannot decode it without the API server's {needs}")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", r"not a Kubernetes value \(starts with b''\)"),
        (b"\x01\x02\x03", r"not a Kubernetes value \(starts with b'\\x01\\x02\\x03'\)"),
        (b"k8s\x01rest", "unsupported Kubernetes encoding style byte 0x01"),
        (b"azhzAAo=!!", "not a Kubernetes value"),  # base64-looking but invalid
        (base64.b64encode(b"k8s\x01abc"), "not a Kubernetes value"),
        (b"[1, 2]", "not a Kubernetes value"),
    ],
)
def test_garbage(value: bytes, reason: str) -> None:
    assert detect(value) == "unknown"
    with pytest.raises(DecodeError, match=reason):
        decode_value(value)


def test_decode_error_is_a_value_error_with_reason() -> None:
    err = DecodeError("x")
    assert isinstance(err, ValueError)
    assert err.reason == "x" == str(err)


# --- encoding -----------------------------------------------------------------------------------


def test_encode_writes_absent_non_pointer_fields_like_gogo() -> None:
    meta = bytes.fromhex("0a00 1200 1a00 2200 2a00 3200 3800 4200")  # strings, generation, creationTimestamp
    spec = bytes.fromhex("1a00 2200 3a00 4200 5200 5a00 6000 6800")  # clusterIP ... publishNotReadyAddresses
    status = bytes.fromhex("0a00")  # loadBalancer
    value = encode_protobuf({"kind": "Service", "apiVersion": "v1"})
    assert value == _envelope("v1", "Service", _message((1, meta), (2, spec), (3, status)))
    assert decode_value(value) == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {},
        "spec": {},
        "status": {"loadBalancer": {}},  # as kubectl shows it: non-pointer structs are never omitted
    }


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"kind": "Ingress", "apiVersion": "networking.k8s.io/v1"}, "cannot encode kind"),
        ({"kind": "Service"}, "cannot encode kind"),
        (
            {"kind": "Service", "apiVersion": "v1", "spec": {"portz": []}},
            r"Service\.spec: unknown field\(s\) portz",
        ),
        ({"kind": "Service", "apiVersion": "v1", "spec": {"ports": {}}}, r"spec\.ports: expected a list"),
        ({"kind": "Service", "apiVersion": "v1", "spec": {"ports": [{"port": "80"}]}}, r"ports\[0\]\.port"),
        ({"kind": "Service", "apiVersion": "v1", "spec": {"ports": [{"port": True}]}}, "expected an integer"),
        (
            {"kind": "Service", "apiVersion": "v1", "spec": {"ports": [{"port": 1 << 31}]}},
            "does not fit in int32",
        ),
        ({"kind": "Service", "apiVersion": "v1", "spec": {"type": 1}}, "expected a string"),
        (
            {"kind": "Service", "apiVersion": "v1", "spec": {"publishNotReadyAddresses": 1}},
            "expected a boolean",
        ),
        ({"kind": "Service", "apiVersion": "v1", "spec": {"selector": {"a": 1}}}, "expected a string"),
        ({"kind": "Service", "apiVersion": "v1", "metadata": {"creationTimestamp": "now"}}, "not an RFC3339"),
        ({"kind": "Service", "apiVersion": "v1", "spec": "x"}, "expected an object"),
        (
            {"kind": "Service", "apiVersion": "v1", "spec": {"ports": [{"targetPort": 1.5}]}},
            "integer or a string",
        ),
        ({"kind": "Node", "apiVersion": "v1", "status": {"capacity": {"cpu": 1.5}}}, "quantity string"),
    ],
)
def test_encode_errors(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(EncodeError, match=reason):
        encode_protobuf(obj)


def test_encode_quantity_accepts_numbers_and_zero_time_is_empty() -> None:
    node = {"kind": "Node", "apiVersion": "v1", "status": {"capacity": {"cpu": 4}}}
    assert decode_value(encode_protobuf(node))["status"]["capacity"] == {"cpu": "4"}
    svc = {"kind": "Service", "apiVersion": "v1", "metadata": {"creationTimestamp": "0001-01-01T00:00:00Z"}}
    assert decode_value(encode_protobuf(svc))["metadata"] == {}


# --- schema -------------------------------------------------------------------------------------


# parse_schema also checks KINDS: declare the messages KINDS names so only the mistake can fail.
_KIND_STUBS = "\n".join(f"message {name}" for name in sorted(set(KINDS.values())))


@pytest.mark.parametrize(
    "text",
    [
        "message a\n  1 x string\n  1 y string",
        "message a\n  0 x string",
        "message a\n  1 x strin",
        "message a\n  1 x string bogus",
        "  1 x string",
        "message a\n  1 x b.Missing",
        "message a\n  1 x string ptr keep",
        "message a\n  1 x map<string,string> rep",
    ],
)
def test_schema_parser_rejects_mistakes(text: str) -> None:
    assert "a" in parse_schema(f"message a\n  1 x string\n{_KIND_STUBS}")
    with pytest.raises(ValueError, match="schema"):
        parse_schema(f"{text}\n{_KIND_STUBS}")


def test_supported_kinds() -> None:
    assert frozenset(KINDS) == SUPPORTED_KINDS
    assert ("v1", "Service") in SUPPORTED_KINDS


# --- properties ---------------------------------------------------------------------------------

_ZERO_TIME = -62135596800
_times = st.integers(min_value=_ZERO_TIME + 1, max_value=253402300799).map(format_time)
_json_trees: st.SearchStrategy[Any] = st.recursive(
    st.just({}), lambda c: st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6
)


def _scalar(field: Field, allow_zero: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t in ("int32", "int64"):
        bits = 32 if t == "int32" else 64
        ints = st.integers(min_value=-(1 << (bits - 1)), max_value=(1 << (bits - 1)) - 1)
        return ints if allow_zero else ints.filter(bool)
    if t == "bool":
        return st.booleans() if allow_zero else st.just(True)
    if t == "time":
        return _times
    if t == "intorstring":
        return st.one_of(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1), st.text(max_size=10))
    if t == "quantity":
        return st.text(min_size=1, max_size=8)
    if t == "fieldsv1":
        return _json_trees
    assert t == "string", t
    return st.text(max_size=12) if allow_zero else st.text(min_size=1, max_size=12)


def json_form(message: str) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts in exactly the form decode_value yields for `message` (its own normal form)."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in MESSAGES[message].values():
        element: st.SearchStrategy[Any]
        if field.type in MAP_TYPES:
            value = st.text(min_size=1, max_size=6) if "quantity" in field.type else st.text(max_size=8)
            optional[field.name] = st.dictionaries(st.text(max_size=8), value, min_size=1, max_size=3)
            continue
        element = (
            json_form(field.type) if field.is_message else _scalar(field, field.repeated or field.pointer)
        )
        if field.repeated:
            optional[field.name] = st.lists(element, min_size=1, max_size=3)
        elif field.keep_zero:
            required[field.name] = _scalar(field, True)  # written as zero when absent, and shown
        elif not field.pointer and (field.is_message or field.type in ("intorstring", "quantity")):
            required[field.name] = element  # gogo always writes non-pointer structs
        else:
            optional[field.name] = element
    return st.fixed_dictionaries(required, optional=optional)


def _objects(api_version: str, kind: str) -> st.SearchStrategy[dict[str, Any]]:
    head = st.fixed_dictionaries({"kind": st.just(kind), "apiVersion": st.just(api_version)})
    return st.tuples(head, json_form(KINDS[(api_version, kind)])).map(lambda t: {**t[0], **t[1]})


_ROUND_TRIP_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("api_kind", sorted(SUPPORTED_KINDS), ids=lambda k: f"{k[0]}:{k[1]}")
@_ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_round_trip_generated_objects(api_kind: tuple[str, str], data: st.DataObject) -> None:
    obj = data.draw(_objects(*api_kind))
    value = encode_protobuf(obj)
    assert decode_value(value) == obj
    assert encode_protobuf(decode_value(value)) == value


@_ROUND_TRIP_SETTINGS
@given(obj=_objects("discovery.k8s.io/v1", "EndpointSlice"), cut=st.integers(min_value=0))
def test_truncated_generated_values_raise(obj: dict[str, Any], cut: int) -> None:
    value = encode_protobuf(obj)
    cut %= len(value) - 4  # everything but the optional empty trailer fields
    with pytest.raises(DecodeError):
        decode_value(value[:cut])


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: kube.PROTO_PREFIX + b)))
def test_arbitrary_bytes_only_raise_decode_error(value: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert isinstance(decode_value(value), dict)


@settings(max_examples=300)
@given(api_kind=st.sampled_from(sorted(SUPPORTED_KINDS)), body=st.binary(max_size=300))
def test_arbitrary_bodies_of_supported_kinds_only_raise_decode_error(
    api_kind: tuple[str, str], body: bytes
) -> None:
    with contextlib.suppress(DecodeError):
        assert isinstance(decode_value(_envelope(*api_kind, body)), dict)


# --- decode_used: only the fields the converters read -----------------------------------------------


def _prune(obj: Any, message: str, used: dict[str, frozenset[str]]) -> Any:
    """`obj` (message `message` in its JSON form) cut down to the fields `used` keeps."""
    fields = {f.name: f for f in MESSAGES[message].values()}
    out = {}
    for name, value in obj.items():
        if name not in used[message]:
            continue
        field = fields[name]
        if field.is_message and field.type not in MAP_TYPES:
            value = (
                [_prune(v, field.type, used) for v in value]
                if field.repeated
                else _prune(value, field.type, used)
            )
        out[name] = value
    return out


def _used_form(obj: dict[str, Any]) -> dict[str, Any]:
    """What decode_used yields for a protobuf value whose decode_value is `obj`."""
    top = KINDS[(obj["apiVersion"], obj["kind"])]
    body = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    return {"kind": obj["kind"], "apiVersion": obj["apiVersion"], **_prune(body, top, USED_FIELDS[top])}


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_decode_used_is_the_full_decode_pruned(path: Path | None) -> None:
    data, want = _load(path)
    assert decode_used(data) == _used_form(want)
    assert decode_used(base64.b64encode(data)) == _used_form(want)
    json_value = path.with_suffix(".json").read_bytes() if path else b""
    lean = {**want, "metadata": {k: v for k, v in want["metadata"].items() if k != "managedFields"}}
    assert decode_used(json_value) == lean  # JSON values are returned whole


@pytest.mark.parametrize("path", fixture_params())
def test_fixture_truncations_raise_in_decode_used_too(path: Path | None) -> None:
    _assert_truncations_raise(path, decode_used, _used_form)


@pytest.mark.parametrize("api_kind", sorted(SUPPORTED_KINDS), ids=lambda k: f"{k[0]}:{k[1]}")
@_ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_decode_used_is_the_full_decode_pruned(api_kind: tuple[str, str], data: st.DataObject) -> None:
    obj = data.draw(_objects(*api_kind))
    assert decode_used(encode_protobuf(obj)) == _used_form(obj)


def test_decode_used_steps_over_unread_fields_without_looking_inside() -> None:
    # metadata.ownerReferences (13) and spec.selector (2) hold garbage; nothing reads them
    meta = _message((1, b"web"), (13, b"\xff\xff\xff"))
    spec = _message((2, b"\x0a"), (3, b"10.0.0.1"))
    value = _envelope("v1", "Service", _message((1, meta), (2, spec)))
    with pytest.raises(DecodeError, match="malformed protobuf v1 Service"):
        decode_value(value)
    assert decode_used(value) == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.0.0.1"},
    }
    # ... but their bounds and wire types are still checked
    overrun = _envelope("v1", "Service", _message((1, meta)) + b"\x12\x05\x12\x09ab")
    with pytest.raises(DecodeError, match="overruns"):
        decode_used(overrun)
    wrong_type = _envelope("v1", "Service", _message((1, _message((13, 5)))))
    with pytest.raises(DecodeError, match="ObjectMeta field 13 has unexpected wire type 0"):
        decode_used(wrong_type)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind core.v1.Bogus", "bad or duplicate kind"),
        ("kind core.v1.Service\n  core.v1.Service metadata", "keeps core.v1.Service.metadata but not"),
        ("kind core.v1.Service\n  core.v1.Service metdata", "has no field"),
        ("kind core.v1.Service\n  core.v1.Service spec\n  core.v1.Service status", "repeated message"),
        ("  core.v1.Service spec", "before the first kind"),
        ("kind core.v1.Node\n  core.v1.NodeSpec podCIDR", "does not list its own message"),
    ],
)
def test_used_fields_parser_rejects_mistakes(text: str, reason: str) -> None:
    assert parse_used(USED, MESSAGES) == USED_FIELDS
    with pytest.raises(ValueError, match=reason):
        parse_used(text, MESSAGES)


def _both_paths(value: bytes, *, shortcuts: bool = True) -> dict[str, Any] | str:
    """What `decode_value` gives (or its error), with or without its in-place shortcuts."""
    try:
        return decode_value(value, shortcuts=shortcuts)
    except DecodeError as exc:
        return f"DecodeError: {exc}"


@settings(max_examples=500)
@given(
    api_version=st.sampled_from(["v1", "discovery.k8s.io/v1", "", "x" * 130]),
    kind=st.sampled_from(["Service", "EndpointSlice", "", "K" * 140]),
    raw=st.binary(max_size=200),
    trailer=st.sampled_from(
        [b"", b"\x1a\x00\x22\x00", b"\x1a\x00", b"\x22\x00", b"\x1a\x01x", b"\x22\x02ab"]
    ),
    cut=st.integers(0, 400),
    flip=st.tuples(st.integers(4, 400), st.integers(0, 255)),
)
def test_envelope_fast_path_agrees_with_the_field_loop(
    api_version: str, kind: str, raw: bytes, trailer: bytes, cut: int, flip: tuple[int, int]
) -> None:
    type_meta = _message((1, api_version.encode()), (2, kind.encode()))
    value = bytearray(kube.PROTO_PREFIX + _message((1, type_meta), (2, raw)) + trailer)
    if flip[0] < len(value):
        value[flip[0]] ^= flip[1]
    for data in (bytes(value), bytes(value[: max(4, len(value) - cut)])):
        assert _both_paths(data) == _both_paths(data, shortcuts=False)


@settings(max_examples=500)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 2]), st.binary(max_size=140)), max_size=3).map(
        lambda fs: b"".join(_message((n, v if t == 2 else len(v))) for n, t, v in fs)
    ),
    st.integers(0, 3),
)
def test_map_entries_read_in_place_or_field_by_field_alike(entry: bytes, cut: int) -> None:
    entry = entry[: len(entry) - cut] if cut < len(entry) else entry

    def field_by_field() -> tuple[str, str]:
        key = value = ""
        for number, wire_type, payload in iter_fields(entry):
            if wire_type == 2 and number in (1, 2):
                assert isinstance(payload, bytes)
                text = payload.decode("utf-8", "replace")
                key, value = (text, value) if number == 1 else (key, text)
        return key, value

    value = _envelope("v1", "Service", _message((1, _message((11, entry)))))
    try:
        want: Any = dict([field_by_field()])
    except kube.WireError:
        want = "DecodeError"
    for shortcuts in (True, False):
        got = _both_paths(value, shortcuts=shortcuts)
        assert (got.split(":")[0] if isinstance(got, str) else got["metadata"]["labels"]) == want
