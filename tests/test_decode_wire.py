"""The protobuf wire reader/writer: exact encodings, bounds checks and error messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.decode import wire
from flannel_lb.decode.wire import WireError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (1199149261, b"\xcd\xa1\xe6\xbb\x04"),  # creationTimestamp seconds in the fixtures
        ((1 << 64) - 1, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),  # negative int32/int64: 64-bit two's complement
    ],
)
def test_varint_vectors(value: int, encoded: bytes) -> None:
    assert wire.encode_varint(value) == encoded
    decoded, pos = wire.read_varint(encoded, 0, len(encoded))
    assert pos == len(encoded)
    assert wire.to_int64(decoded) == (value if value < 1 << 63 else value - (1 << 64))


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = wire.encode_varint(value)
    decoded, pos = wire.read_varint(b"\x99" + encoded + b"\x01", 1, len(encoded) + 1)
    assert pos == len(encoded) + 1
    assert decoded == value & wire.MASK64


@given(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1))
def test_int32_survives_the_64_bit_encoding(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert wire.to_int32(wire.read_varint(encoded, 0, len(encoded))[0]) == value


def test_to_int32_truncates_like_go() -> None:
    assert wire.to_int32((1 << 32) + 5) == 5
    assert wire.to_int32(0xFFFFFFFF) == -1


def test_truncated_varint_names_offset() -> None:
    with pytest.raises(WireError, match=r"^truncated varint at offset 2$"):
        wire.read_varint(b"\x00\x00\x80\x80", 2, 4)


def test_varint_respects_end_not_buffer_length() -> None:
    with pytest.raises(WireError, match="truncated varint"):
        wire.read_varint(b"\x80\x01", 0, 1)


def test_overlong_varint() -> None:
    with pytest.raises(WireError, match="longer than 10 bytes at offset 0"):
        wire.read_varint(b"\x80" * 11 + b"\x01", 0, 12)


def test_encode_varint_rejects_too_wide() -> None:
    with pytest.raises(WireError):
        wire.encode_varint(1 << 64)
    with pytest.raises(WireError):
        wire.encode_varint(-(1 << 64))


def test_length_overrun() -> None:
    with pytest.raises(WireError, match=r"offset 1 overruns its message \(needs 5 bytes, 2 left\)"):
        wire.read_length(b"\x00\x05ab", 1, 4)
    assert wire.read_length(b"\x00\x02ab", 1, 4) == (2, 4)


@pytest.mark.parametrize(
    ("wire_type", "payload", "after"),
    [
        (wire.VARINT, b"\x96\x01", 2),
        (wire.LEN, b"\x02ab", 3),
        (wire.I64, b"12345678", 8),
        (wire.I32, b"1234", 4),
    ],
)
def test_skip_field(wire_type: int, payload: bytes, after: int) -> None:
    assert wire.skip_field(payload + b"tail", 0, len(payload) + 4, wire_type) == after


@pytest.mark.parametrize("wire_type", [wire.SGROUP, wire.EGROUP, 6, 7])
def test_skip_refuses_groups_and_invalid_types(wire_type: int) -> None:
    with pytest.raises(WireError, match=f"unsupported wire type {wire_type} at offset 0"):
        wire.skip_field(b"\x00" * 8, 0, 8, wire_type)


@pytest.mark.parametrize(("wire_type", "bits"), [(wire.I64, 64), (wire.I32, 32)])
def test_truncated_fixed(wire_type: int, bits: int) -> None:
    with pytest.raises(WireError, match=f"truncated fixed{bits} at offset 1"):
        wire.skip_field(b"\x00\x00\x00", 1, 3, wire_type)


def test_field_number_zero_is_invalid() -> None:
    with pytest.raises(WireError, match="invalid field number 0 at offset 0"):
        wire.read_tag(b"\x02\x00", 0, 2)


def test_iter_fields_and_writer_agree() -> None:
    out = bytearray()
    wire.write_varint_field(out, 1, 150)
    wire.write_bytes_field(out, 2, b"testing")
    wire.write_varint_field(out, 3, -2)
    out += wire.encode_tag(4, wire.I32) + b"\x01\x00\x00\x00"
    out += wire.encode_tag(5, wire.I64) + b"\x02" + b"\x00" * 7
    wire.write_bytes_field(out, 100000, b"")
    assert bytes(out[:3]) == b"\x08\x96\x01"  # the protobuf documentation's example
    assert list(wire.iter_fields(bytes(out))) == [
        (1, wire.VARINT, 150),
        (2, wire.LEN, b"testing"),
        (3, wire.VARINT, (1 << 64) - 2),
        (4, wire.I32, 1),
        (5, wire.I64, 2),
        (100000, wire.LEN, b""),
    ]


def test_iter_fields_bounds() -> None:
    with pytest.raises(WireError, match="bad bounds"):
        list(wire.iter_fields(b"\x08\x01", 0, 3))
    assert list(wire.iter_fields(b"\xff\x08\x01\xff", 1, 3)) == [(1, wire.VARINT, 1)]


def test_encode_tag_validates() -> None:
    with pytest.raises(WireError):
        wire.encode_tag(0, wire.VARINT)
    with pytest.raises(WireError):
        wire.encode_tag(1, 6)


def test_check_depth() -> None:
    wire.check_depth(wire.MAX_DEPTH)
    with pytest.raises(WireError, match="nesting deeper"):
        wire.check_depth(wire.MAX_DEPTH + 1)


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        for number, wire_type, _value in wire.iter_fields(data):
            assert number > 0
            assert wire_type in (wire.VARINT, wire.I64, wire.LEN, wire.I32)
