"""Minimal protobuf wire-format reader and writer.

Kubernetes stores objects as proto2 messages produced by gogo-protobuf. Only the wire format is
needed to read them, so this module stays dependency-free: protobuf carries only etcd's gRPC
messages (flannel_lb.source.etcdrpc), and generated Kubernetes bindings would drag in hundreds of
messages we never look at.

Every reader is bounds-checked against an explicit ``end`` and raises :class:`WireError` (never
IndexError) on malformed input, so callers can feed it arbitrary bytes from etcd.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
I64 = 1
LEN = 2
SGROUP = 3
EGROUP = 4
I32 = 5

MAX_DEPTH = 32
"""Deepest message nesting a decoder accepts; Kubernetes objects we read nest about 6 deep."""

MASK64 = (1 << 64) - 1
_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1


class WireError(ValueError):
    """Malformed protobuf bytes; the message names the problem and the byte offset."""


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read an unsigned varint at ``pos``; return (value truncated to 64 bits, next position)."""
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at offset {start}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & MASK64, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at offset {start}")


def to_int64(value: int) -> int:
    """Reinterpret a 64-bit varint as a signed int64 (proto int64 / negative int32 encoding)."""
    return value - (1 << 64) if value > _INT64_MAX else value


def to_int32(value: int) -> int:
    """Truncate a varint to a signed int32, as Go's generated unmarshalers do."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value > _INT32_MAX else value


def read_length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a length prefix at ``pos``; return (payload start, payload stop), checked against ``end``."""
    length, start = read_varint(buf, pos, end)
    if length > end - start:
        raise WireError(
            f"length-delimited field at offset {pos} overruns its message "
            f"(needs {length} bytes, {end - start} left)"
        )
    return start, start + length


def skip_field(buf: bytes, pos: int, end: int, wire_type: int) -> int:
    """Skip the value of a field whose tag was just read; return the position after it."""
    if wire_type == VARINT:
        return read_varint(buf, pos, end)[1]
    if wire_type == LEN:
        return read_length(buf, pos, end)[1]
    if wire_type == I64:
        size = 8
    elif wire_type == I32:
        size = 4
    else:
        # Groups (3/4) are deprecated proto2 and never written by gogo; 6/7 do not exist.
        raise WireError(f"unsupported wire type {wire_type} at offset {pos}")
    if end - pos < size:
        raise WireError(f"truncated fixed{size * 8} at offset {pos}")
    return pos + size


def read_tag(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read a field tag; return (field number, wire type, next position)."""
    tag, nxt = read_varint(buf, pos, end)
    number = tag >> 3
    if number == 0 or number > 0x1FFFFFFF:
        raise WireError(f"invalid field number {number} at offset {pos}")
    return number, tag & 7, nxt


def iter_fields(buf: bytes, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message.

    The value is an int for varint and fixed fields (unsigned, little-endian for fixed) and the raw
    payload bytes for length-delimited fields. Meant for envelopes and diagnostics, not hot paths.
    """
    stop = len(buf) if end is None else end
    if not 0 <= pos <= stop <= len(buf):
        raise WireError(f"bad bounds [{pos}, {stop}) for a buffer of {len(buf)} bytes")
    while pos < stop:
        number, wire_type, pos = read_tag(buf, pos, stop)
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, stop)
            yield number, wire_type, value
        elif wire_type == LEN:
            start, pos = read_length(buf, pos, stop)
            yield number, wire_type, buf[start:pos]
        else:
            nxt = skip_field(buf, pos, stop, wire_type)
            yield number, wire_type, int.from_bytes(buf[pos:nxt], "little")
            pos = nxt


def check_depth(depth: int) -> None:
    """Refuse nesting beyond :data:`MAX_DEPTH` (protects recursive schemas from stack exhaustion)."""
    if depth > MAX_DEPTH:
        raise WireError(f"message nesting deeper than {MAX_DEPTH}")


# --- writer -------------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode an int as a varint; negative values use 64-bit two's complement (10 bytes)."""
    if not -(1 << 63) <= value <= MASK64:
        raise WireError(f"varint value {value} does not fit in 64 bits")
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire_type: int) -> bytes:
    """Encode a field tag."""
    if not 0 < number <= 0x1FFFFFFF or not 0 <= wire_type <= 5:
        raise WireError(f"invalid tag: field {number}, wire type {wire_type}")
    return encode_varint(number << 3 | wire_type)


def write_varint_field(out: bytearray, number: int, value: int) -> None:
    """Append a varint field (int32/int64/bool)."""
    out += encode_tag(number, VARINT)
    out += encode_varint(value)


def write_bytes_field(out: bytearray, number: int, payload: bytes | bytearray) -> None:
    """Append a length-delimited field (string, bytes or an already-encoded message)."""
    out += encode_tag(number, LEN)
    out += encode_varint(len(payload))
    out += payload
