"""Decode (and encode) Kubernetes objects exactly as kube-apiserver stores them in etcd.

A value is protobuf (``k8s\\x00`` + runtime.Unknown envelope, the default since 1.6), JSON (1.5
and earlier, ``--storage-media-type=application/json``, CRDs), base64-wrapped protobuf (etcd2 with
protobuf, 1.6-1.12) or encrypted at rest (``k8s:enc:...``). :func:`decode_value` turns the first
three into the dict that ``kubectl get -o json`` would show; encrypted values cannot be read without
the API server's keys and raise :class:`EncryptedValueError` naming the provider and key.

Protobuf decoding is table-driven from :mod:`flannel_lb.decode.kube_schema`; the tables are compiled
once into dicts keyed by the raw field tag so the hot loop does one dict lookup per field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any, Final, Literal, NamedTuple

from flannel_lb.decode.kube_schema import KINDS, MAP_TYPES, MESSAGES, USED_FIELDS, Field
from flannel_lb.decode.wire import (
    LEN,
    MASK64,
    VARINT,
    WireError,
    read_length,
    read_tag,
    read_varint,
    skip_field,
    to_int32,
    to_int64,
    write_bytes_field,
    write_varint_field,
)
from flannel_lb.untrusted import load_json

__all__ = [
    "SUPPORTED_KINDS",
    "DecodeError",
    "EncodeError",
    "Encoding",
    "EncryptedValueError",
    "UnsupportedKindError",
    "decode_used",
    "decode_value",
    "detect",
    "encode_protobuf",
    "format_time",
    "parse_time",
]

Encoding = Literal["protobuf", "json", "encrypted", "unknown"]

PROTO_PREFIX: Final = b"k8s\x00"
ENCRYPTED_PREFIX: Final = b"k8s:enc:"
_BASE64_PROTO_PREFIX: Final = b"azhzA"  # base64 of "k8s\x00" always starts like this

SUPPORTED_KINDS: Final = frozenset(KINDS)
"""(apiVersion, kind) pairs :func:`decode_value` can decode from protobuf."""


class DecodeError(ValueError):
    """A value that cannot be turned into a Kubernetes object; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncryptedValueError(DecodeError):
    """The value is encrypted at rest (``k8s:enc:<provider>:<version>:<key>:``)."""

    def __init__(self, provider: str, version: str, key_name: str) -> None:
        if provider == "kms":
            reason = (
                f"encrypted at rest with kms {version} (provider {key_name!r}); flannel-lb cannot "
                "decode it without the API server's KMS plugin"
            )
        else:
            reason = (
                f"encrypted at rest with {provider} (key {key_name!r}); flannel-lb cannot decode it "
                "without the API server's keys"
            )
        super().__init__(reason)
        self.provider = provider
        self.version = version
        self.key_name = key_name


class UnsupportedKindError(DecodeError):
    """A well-formed protobuf envelope holding a kind we have no schema for."""

    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f"unknown kind {api_version} {kind}")
        self.api_version = api_version
        self.kind = kind


class EncodeError(ValueError):
    """``encode_protobuf`` got a dict that does not match the schema (the message has the path)."""


# --- detection ----------------------------------------------------------------------------------


def _classify(value: bytes) -> tuple[Encoding, bytes]:
    """Return the encoding and the bytes to decode (base64-unwrapped for etcd2-era protobuf)."""
    if value.startswith(ENCRYPTED_PREFIX):
        return "encrypted", value
    if value.startswith(PROTO_PREFIX):
        return "protobuf", value
    first = value[:1]
    if first == b"{" or (first.isspace() and value.lstrip()[:1] == b"{"):
        return "json", value
    if value.startswith(_BASE64_PROTO_PREFIX):
        try:
            unwrapped = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "unknown", value
        if unwrapped.startswith(PROTO_PREFIX):
            return "protobuf", unwrapped
    return "unknown", value


def detect(value: bytes) -> Encoding:
    """Classify an etcd value in the order kube-apiserver's transformers imply.

    ``k8s:enc:`` (encrypted) before ``k8s\\x00`` (protobuf) before ``{`` (JSON), then base64-wrapped
    protobuf written by 1.6-1.12 apiservers on etcd2.
    """
    return _classify(value if isinstance(value, bytes) else bytes(value))[0]


# --- compiled tables ----------------------------------------------------------------------------

# Base kinds, as named in kube_schema (messages are _K_MESSAGE).
_K_INT32, _K_INT64, _K_BOOL = 0, 1, 2
_K_STRING, _K_MESSAGE, _K_BYTES, _K_TIME = 3, 4, 5, 6
_K_INTORSTRING, _K_QUANTITY, _K_FIELDSV1, _K_MAP_STRING, _K_MAP_QUANTITY = 8, 9, 10, 11, 12

_KIND_CODES: Final = {
    "int32": _K_INT32,
    "int64": _K_INT64,
    "bool": _K_BOOL,
    "string": _K_STRING,
    "bytes": _K_BYTES,
    "time": _K_TIME,
    "intorstring": _K_INTORSTRING,
    "quantity": _K_QUANTITY,
    "fieldsv1": _K_FIELDSV1,
    "map<string,string>": _K_MAP_STRING,
    "map<string,quantity>": _K_MAP_QUANTITY,
}
# Kinds subject to omitempty; structs and wrapped types are shown whenever they are on the wire.
_SCALAR_KINDS: Final = frozenset({_K_INT32, _K_INT64, _K_BOOL, _K_STRING, _K_BYTES})

# Op codes fold kind, repetition and omitempty into one number so the hot loop takes a single
# branch per field. Length-delimited ops are <= _OP_LEN_OTHER; the *_OTHER ops take a slow path.
# The _SKIP ops are known fields a table leaves out (`decode_used`): stepped over, nothing built.
_OP_STR, _OP_STR_ALL, _OP_STR_REP, _OP_MSG, _OP_MSG_REP, _OP_SKIP_LEN, _OP_LEN_OTHER = 0, 1, 2, 3, 4, 5, 6
_OP_BOOL, _OP_BOOL_ALL, _OP_INT32, _OP_INT64, _OP_VARINT_OTHER, _OP_SKIP_VARINT = 7, 8, 9, 10, 11, 12

# json name, op, sub-table (messages), extra: emit-zero flag for ints, (kind, repeated, emit zero)
# for the *_OTHER ops.
_Spec = tuple[str, int, "_Table | None", Any]


class _Table:
    """One message, compiled: raw tag (number << 3 | wire type) -> spec."""

    __slots__ = ("name", "numbers", "specs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.specs: dict[int, _Spec] = {}
        self.numbers: set[int] = set()


def _op(kind: int, repeated: bool, emit_zero: bool) -> int:
    if kind == _K_STRING:
        return _OP_STR_REP if repeated else _OP_STR_ALL if emit_zero else _OP_STR
    if kind == _K_MESSAGE:
        return _OP_MSG_REP if repeated else _OP_MSG
    if kind > _K_BOOL:
        return _OP_LEN_OTHER
    if repeated:
        return _OP_VARINT_OTHER
    if kind == _K_BOOL:
        return _OP_BOOL_ALL if emit_zero else _OP_BOOL
    return _OP_INT32 if kind == _K_INT32 else _OP_INT64


def _compile(
    name: str,
    memo: dict[str, _Table],
    omit: frozenset[tuple[str, int]],
    used: Mapping[str, frozenset[str]] | None = None,
    shortcuts: bool = True,
) -> _Table:
    """Compile `name` and the messages it leads to. `used` (message -> json names): only those fields
    are decoded; the message's other fields stay known (a wrong wire type is still an error) but
    are skipped by their length, and the messages they lead to are not compiled."""
    table = memo.get(name)
    if table is not None:
        return table
    table = memo[name] = _Table(name)  # registered first: a message shared by several compiles once
    keep = None if used is None else used[name]
    for field in MESSAGES[name].values():
        if (name, field.number) in omit:
            continue  # left out of both dicts: skipped like an unknown field
        kind = _K_MESSAGE if field.is_message else _KIND_CODES[field.type]
        wire_type = VARINT if kind <= _K_BOOL else LEN
        table.numbers.add(field.number)
        if keep is not None and field.name not in keep:
            skip = _OP_SKIP_VARINT if wire_type == VARINT else _OP_SKIP_LEN
            table.specs[field.number << 3 | wire_type] = (field.name, skip, None, None)
            continue
        sub = _compile(field.type, memo, omit, used, shortcuts) if field.is_message else None
        # Wrapped values that are JSON null (a zero Time) are dropped by the decoder returning None.
        emit_zero = kind not in _SCALAR_KINDS or field.pointer or field.keep_zero
        op = _op(kind, field.repeated, emit_zero)
        extra = emit_zero if op in (_OP_INT32, _OP_INT64) else (kind, field.repeated, emit_zero, shortcuts)
        table.specs[field.number << 3 | wire_type] = (field.name, op, sub, extra)
    return table


def _compile_kinds(omit: frozenset[tuple[str, int]], shortcuts: bool = True) -> dict[tuple[str, str], _Table]:
    memo: dict[str, _Table] = {}
    return {api_kind: _compile(top, memo, omit, None, shortcuts) for api_kind, top in KINDS.items()}


def _compile_used() -> dict[tuple[str, str], _Table]:
    """One table set per kind: the kinds keep different ObjectMeta fields."""
    return {api_kind: _compile(top, {}, frozenset(), USED_FIELDS[top]) for api_kind, top in KINDS.items()}


_NO_MANAGED: Final = frozenset({("meta.v1.ObjectMeta", 17)})
_TABLES: Final = _compile_kinds(frozenset())
_TABLES_NO_MANAGED: Final = _compile_kinds(_NO_MANAGED)


@cache
def _careful_tables(managed_fields: bool) -> dict[tuple[str, str], _Table]:
    """The tables without in-place shortcuts (`decode_value(shortcuts=False)`), built on first use."""
    return _compile_kinds(frozenset() if managed_fields else _NO_MANAGED, shortcuts=False)


_TABLES_USED: Final = _compile_used()
_TYPE_META: Final = _compile("runtime.TypeMeta", {}, frozenset())


# --- protobuf decoding --------------------------------------------------------------------------


def _decode(buf: bytes, pos: int, end: int, table: _Table) -> dict[str, Any]:
    """Decode one message occupying buf[pos:end] into its JSON-form dict.

    The recursion is bounded by the schema, which has no cycles (tests/test_decode_kube.py checks
    it stays so), not by the bytes: hostile nesting cannot go deeper than the tables do."""
    out: dict[str, Any] = {}
    specs = table.specs
    while pos < end:
        # Tags and lengths are varints, read inline when they take 1 or 2 bytes (fields up to 2047,
        # lengths up to 16383): what nearly every field of a Kubernetes object takes.
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        elif pos + 1 < end and buf[pos + 1] < 0x80:
            tag = (tag & 0x7F) | buf[pos + 1] << 7
            pos += 2
        else:
            tag, pos = read_varint(buf, pos, end)
        try:
            name, op, sub, extra = specs[tag]
        except KeyError:
            pos = _skip_unknown(buf, pos, end, tag, table)
            continue
        # Varint value or length prefix: both are a varint.
        if pos >= end:
            raise WireError(f"truncated {table.name}.{name} at offset {pos}")
        value = buf[pos]
        if value < 0x80:
            pos += 1
        elif pos + 1 < end and buf[pos + 1] < 0x80:
            value = (value & 0x7F) | buf[pos + 1] << 7
            pos += 2
        else:
            value, pos = read_varint(buf, pos, end)
        if op <= _OP_LEN_OTHER:
            stop = pos + value
            if stop > end:
                raise WireError(
                    f"{table.name}.{name} at offset {pos} overruns its message "
                    f"(needs {value} bytes, {end - pos} left)"
                )
            if op == _OP_STR:
                if value:
                    out[name] = buf[pos:stop].decode("utf-8", "replace")
            elif op == _OP_MSG:
                out[name] = _decode(buf, pos, stop, sub)  # type: ignore[arg-type]
            elif op in (_OP_MSG_REP, _OP_STR_REP):  # _append, inlined: the hottest ops
                item: Any
                if op == _OP_MSG_REP:
                    item = _decode(buf, pos, stop, sub)  # type: ignore[arg-type]
                else:
                    item = buf[pos:stop].decode("utf-8", "replace")
                items = out.get(name)
                if items is None:
                    out[name] = [item]
                else:
                    items.append(item)
            elif op == _OP_STR_ALL:
                out[name] = buf[pos:stop].decode("utf-8", "replace")
            elif op != _OP_SKIP_LEN:
                _decode_len_other(out, name, buf, pos, stop, extra)
            pos = stop
        elif op == _OP_BOOL_ALL:
            out[name] = value != 0
        elif op == _OP_BOOL:
            if value:
                out[name] = True
        elif op == _OP_SKIP_VARINT:
            pass
        elif op == _OP_VARINT_OTHER:
            _decode_varint_other(out, name, value, extra)
        else:
            if value > 0x7FFFFFFF:
                value = to_int32(value) if op == _OP_INT32 else to_int64(value)
            if value or extra:
                out[name] = value
    if pos != end:
        raise WireError(f"{table.name} overruns its end at offset {end}")
    return out


def _append(out: dict[str, Any], name: str, item: Any) -> None:
    items = out.get(name)
    if items is None:
        out[name] = [item]
    else:
        items.append(item)


def _decode_len_other(
    out: dict[str, Any], name: str, buf: bytes, pos: int, stop: int, extra: tuple[int, bool, bool, bool]
) -> None:
    """Maps, wrapped types (Time, IntOrString, ...) and bytes: rarer, so off the hot path."""
    kind, repeated, emit_zero, shortcuts = extra
    if kind >= _K_MAP_STRING:
        key, item = _map_entry(buf, pos, stop, kind == _K_MAP_QUANTITY, shortcuts)
        mapping = out.get(name)
        if mapping is None:
            out[name] = {key: item}
        else:
            mapping[key] = item
        return
    value = _decode_wrapped(buf, pos, stop, kind)
    if value is None:
        return
    if repeated:
        _append(out, name, value)
    elif value or emit_zero:
        out[name] = value


def _decode_varint_other(out: dict[str, Any], name: str, value: int, extra: tuple[int, bool, bool]) -> None:
    """Repeated (unpacked) varints; no field we read has them today."""
    kind = extra[0]
    if kind == _K_BOOL:
        _append(out, name, value != 0)
    else:
        _append(out, name, to_int32(value) if kind == _K_INT32 else to_int64(value))


def _skip_unknown(buf: bytes, pos: int, end: int, tag: int, table: _Table) -> int:
    number = tag >> 3
    if number == 0 or number > 0x1FFFFFFF:
        raise WireError(f"invalid field number {number} before offset {pos}")
    if number in table.numbers:
        raise WireError(f"{table.name} field {number} has unexpected wire type {tag & 7} before offset {pos}")
    return skip_field(buf, pos, end, tag & 7)


def _string_field(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read the length prefix of a field expected to be length-delimited; return (start, stop)."""
    try:
        return read_length(buf, pos, end)
    except WireError as exc:
        raise WireError(f"{what}: {exc}") from None


def _map_entry(buf: bytes, pos: int, end: int, quantity: bool, shortcut: bool) -> tuple[str, Any]:
    # The usual entry, key then string value with 1-byte lengths, read in place; the loop below
    # gives the same for it and handles everything else.
    if shortcut and not quantity and end - pos >= 4 and buf[pos] == 0x0A and buf[pos + 1] < 0x80:
        key_end = pos + 2 + buf[pos + 1]
        if (
            key_end + 2 <= end
            and buf[key_end] == 0x12
            and buf[key_end + 1] < 0x80
            and key_end + 2 + buf[key_end + 1] == end
        ):
            return (
                buf[pos + 2 : key_end].decode("utf-8", "replace"),
                buf[key_end + 2 : end].decode("utf-8", "replace"),
            )
    key = ""
    value = "0" if quantity else ""  # a missing Quantity is the zero quantity, printed "0"
    while pos < end:
        number, wire_type, pos = read_tag(buf, pos, end)
        if wire_type != LEN or number not in (1, 2):
            pos = skip_field(buf, pos, end, wire_type)
            continue
        start, pos = read_length(buf, pos, end)
        if number == 1:
            key = buf[start:pos].decode("utf-8", "replace")
        elif quantity:
            value = _quantity(buf, start, pos)
        else:
            value = buf[start:pos].decode("utf-8", "replace")
    return key, value


def _quantity(buf: bytes, pos: int, end: int) -> str:
    # Stored as Quantity.String(), already canonical, so it is passed through unparsed.
    text = ""
    while pos < end:
        number, wire_type, pos = read_tag(buf, pos, end)
        if number == 1 and wire_type == LEN:
            start, pos = read_length(buf, pos, end)
            text = buf[start:pos].decode("utf-8", "replace")
        else:
            pos = skip_field(buf, pos, end, wire_type)
    return text


def _timestamp(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    seconds = nanos = 0
    while pos < end:
        number, wire_type, pos = read_tag(buf, pos, end)
        if wire_type == VARINT and number in (1, 2):
            raw, pos = read_varint(buf, pos, end)
            if number == 1:
                seconds = to_int64(raw)
            else:
                nanos = to_int32(raw)
        else:
            pos = skip_field(buf, pos, end, wire_type)
    if not 0 <= nanos < 1_000_000_000:  # Go's time.Unix normalises out-of-range nanoseconds
        carry, nanos = divmod(nanos, 1_000_000_000)
        seconds += carry
    return seconds, nanos


def _decode_wrapped(buf: bytes, pos: int, end: int, kind: int) -> Any:
    """Decode a message that is a scalar in JSON (Time, IntOrString, Quantity, FieldsV1, bytes)."""
    if kind == _K_TIME:
        if pos == end:
            return None  # zero time: Go marshals it as null
        seconds, _nanos = _timestamp(buf, pos, end)
        return format_time(seconds)  # metav1.Time JSON has whole seconds only
    if kind == _K_INTORSTRING:
        return _intorstring(buf, pos, end)
    if kind == _K_QUANTITY:
        return _quantity(buf, pos, end)
    if kind == _K_FIELDSV1:
        raw = b"null"
        while pos < end:
            number, wire_type, pos = read_tag(buf, pos, end)
            if number == 1 and wire_type == LEN:
                start, pos = read_length(buf, pos, end)
                raw = buf[start:pos]
            else:
                pos = skip_field(buf, pos, end, wire_type)
        try:
            return load_json(raw)
        except ValueError as exc:
            raise WireError(f"fieldsV1 before offset {end} is not valid JSON ({exc})") from None
    return base64.b64encode(buf[pos:end]).decode("ascii")  # _K_BYTES


def _intorstring(buf: bytes, pos: int, end: int) -> int | str:
    type_ = int_val = 0
    str_val = ""
    while pos < end:
        number, wire_type, pos = read_tag(buf, pos, end)
        if wire_type == VARINT and number in (1, 2):
            raw, pos = read_varint(buf, pos, end)
            if number == 1:
                type_ = to_int64(raw)
            else:
                int_val = to_int32(raw)
        elif wire_type == LEN and number == 3:
            start, pos = read_length(buf, pos, end)
            str_val = buf[start:pos].decode("utf-8", "replace")
        else:
            pos = skip_field(buf, pos, end, wire_type)
    if type_ == 0:
        return int_val
    if type_ == 1:
        return str_val
    raise WireError(f"IntOrString before offset {end} has impossible type {type_}")


class _Envelope(NamedTuple):
    api_version: str
    kind: str
    raw_start: int
    raw_stop: int


# What kube-apiserver writes after ``raw``: empty contentEncoding and contentType (or nothing).
_PLAIN_TRAILERS: Final = (b"\x1a\x00\x22\x00", b"", b"\x1a\x00", b"\x22\x00")


def _read_envelope(data: bytes) -> _Envelope:
    """Parse the runtime.Unknown after the 4-byte prefix without copying ``raw``."""
    end = len(data)
    # The layout kube-apiserver writes (typeMeta with short apiVersion and kind, raw, the empty
    # trailer) read in place; anything else takes the general loop below, which gives the same
    # result for this layout.
    if end > 10 and data[4] == 0x0A and data[5] < 0x80 and data[6] == 0x0A and 0 < data[7] < 0x80:
        type_end = 6 + data[5]
        version_end = 8 + data[7]
        if (
            version_end + 2 < type_end < end
            and data[version_end] == 0x12
            and data[version_end + 1] < 0x80
            and version_end + 2 + data[version_end + 1] == type_end
            and data[type_end] == 0x12
        ):
            try:
                length, start = read_varint(data, type_end + 1, end)
            except WireError:
                return _read_envelope_fields(data)  # which says what is wrong
            if start + length <= end and data[start + length :] in _PLAIN_TRAILERS:
                return _Envelope(
                    data[8:version_end].decode("utf-8", "replace"),
                    data[version_end + 2 : type_end].decode("utf-8", "replace"),
                    start,
                    start + length,
                )
    return _read_envelope_fields(data)


def _read_envelope_fields(data: bytes) -> _Envelope:
    """`_read_envelope` for any layout: field by field, the last of a repeated field wins."""
    pos, end = len(PROTO_PREFIX), len(data)
    type_meta: dict[str, Any] = {}
    raw: tuple[int, int] | None = None
    content_encoding = ""
    while pos < end:
        number, wire_type, pos = read_tag(data, pos, end)
        if wire_type != LEN or number not in (1, 2, 3):
            pos = skip_field(data, pos, end, wire_type)
            continue
        start, pos = _string_field(data, pos, end, f"envelope field {number}")
        if number == 1:
            type_meta = _decode(data, start, pos, _TYPE_META)
        elif number == 2:
            raw = (start, pos)
        else:
            content_encoding = data[start:pos].decode("utf-8", "replace")
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if not api_version or not kind:
        raise WireError("envelope has no apiVersion/kind")
    if content_encoding:
        raise WireError(f"unsupported envelope contentEncoding {content_encoding!r}")
    if raw is None:
        raise WireError(f"envelope for {api_version} {kind} has no object bytes")
    return _Envelope(api_version, kind, raw[0], raw[1])


def _decode_protobuf(
    data: bytes, tables: Mapping[tuple[str, str], _Table], shortcuts: bool
) -> dict[str, Any]:
    try:
        env = _read_envelope(data) if shortcuts else _read_envelope_fields(data)
    except WireError as exc:
        raise DecodeError(f"malformed protobuf envelope: {exc}") from None
    table = tables.get((env.api_version, env.kind))
    if table is None:
        raise UnsupportedKindError(env.api_version, env.kind)
    try:
        body = _decode(data, env.raw_start, env.raw_stop, table)
    except WireError as exc:
        raise DecodeError(f"malformed protobuf {env.api_version} {env.kind}: {exc}") from None
    obj: dict[str, Any] = {"kind": env.kind, "apiVersion": env.api_version}
    obj.update(body)
    return obj


# --- JSON and encrypted values ------------------------------------------------------------------


def _decode_json(data: bytes) -> dict[str, Any]:
    try:
        obj = load_json(data)
    except ValueError as exc:
        raise DecodeError(f"invalid JSON value: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"JSON value is a {type(obj).__name__}, not an object")
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise DecodeError(f"JSON object has no {key} string")
    if not isinstance(obj.get("metadata", {}), dict):
        raise DecodeError("JSON object's metadata is not an object")
    return obj


def _encrypted_error(data: bytes) -> EncryptedValueError:
    # k8s:enc:<provider>:<version>:<key name, or KMS provider name>:<ciphertext>
    parts = data[len(ENCRYPTED_PREFIX) :].split(b":", 3)
    words = [part[:64].decode("utf-8", "replace") or "?" for part in parts[:3]]
    if len(parts) < 4:  # the last word is not colon-terminated, so it is not a complete name
        words = words[: len(parts) - 1]
    provider, version, key_name = [*words, "?", "?", "?"][:3]
    return EncryptedValueError(provider, version, key_name)


# --- public API ---------------------------------------------------------------------------------


def decode_value(value: bytes, *, managed_fields: bool = True, shortcuts: bool = True) -> dict[str, Any]:
    """Decode one etcd value into the object's ``kubectl get -o json`` form.

    Only the envelope is validated: protobuf must hold a supported kind and be well formed, JSON
    must be an object with string ``apiVersion``/``kind`` (and an object ``metadata`` if present);
    JSON of any kind is returned as stored, and field types inside ``spec``/``status`` are not
    checked. Protobuf follows Go's JSON rules: zero scalars are dropped where the Go field is
    ``omitempty`` (pointer fields set to ``false``/``0`` are kept), non-pointer structs always show
    (``"status": {"loadBalancer": {}}``), and a zero ``Time`` is omitted rather than ``null``.
    ``managed_fields=False`` leaves out ``metadata.managedFields``, the costliest part to decode and
    useless to flannel-lb. ``shortcuts=False`` reads the envelope and map entries field by field
    instead of in place: slower, the reference the shortcuts must agree with. Raises
    :class:`DecodeError` (or a subclass), never anything else.
    """
    if not shortcuts:
        return _decode_value(value, _careful_tables(managed_fields), managed_fields, shortcuts=False)
    return _decode_value(value, _TABLES if managed_fields else _TABLES_NO_MANAGED, managed_fields)


def decode_used(value: bytes) -> dict[str, Any]:
    """:func:`decode_value` (``managed_fields=False``) for flannel-lb's own use: the fields the object
    converters (:mod:`flannel_lb.decode.objects`) read, and nothing else.

    A protobuf value keeps only the fields listed in :data:`~flannel_lb.decode.kube_schema.USED`;
    every other field is stepped over by its length, without building anything for it or looking
    inside, so a malformed field that nothing reads is not an error (its bounds and wire type still
    are). JSON values are returned whole, as :func:`decode_value` returns them (less managedFields).
    The converters give the same records for both forms. Raises :class:`DecodeError` like
    :func:`decode_value`.
    """
    return _decode_value(value, _TABLES_USED, False)


def _decode_value(
    value: bytes, tables: Mapping[tuple[str, str], _Table], managed_fields: bool, shortcuts: bool = True
) -> dict[str, Any]:
    encoding, data = _classify(value if isinstance(value, bytes) else bytes(value))
    if encoding == "protobuf":
        return _decode_protobuf(data, tables, shortcuts)
    if encoding == "json":
        obj = _decode_json(data)
        if not managed_fields:
            obj.get("metadata", {}).pop("managedFields", None)
        return obj
    if encoding == "encrypted":
        raise _encrypted_error(data)
    if data.startswith(b"k8s") and len(data) >= 4:
        raise DecodeError(f"unsupported Kubernetes encoding style byte {data[3]:#04x} after 'k8s'")
    raise DecodeError(f"not a Kubernetes value (starts with {data[:8]!r})")


def encode_protobuf(obj: Mapping[str, Any]) -> bytes:
    """Encode a JSON-form object the way kube-apiserver writes it to etcd (``k8s\\x00`` envelope).

    Fields are written in field-number order, maps sorted by key, and non-pointer fields always
    (zero when absent), as gogo-protobuf does, so values written by the API server round-trip
    byte for byte. Raises :class:`EncodeError` for unsupported kinds, unknown keys or wrong types.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    top = KINDS.get((api_version, kind)) if isinstance(api_version, str) and isinstance(kind, str) else None
    if top is None:
        raise EncodeError(f"cannot encode kind {api_version} {kind}")
    assert isinstance(api_version, str) and isinstance(kind, str)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    raw = _encode_message(body, top, kind)
    type_meta = bytearray()
    write_bytes_field(type_meta, 1, api_version.encode())
    write_bytes_field(type_meta, 2, kind.encode())
    out = bytearray(PROTO_PREFIX)
    write_bytes_field(out, 1, type_meta)
    write_bytes_field(out, 2, raw)
    write_bytes_field(out, 3, b"")  # contentEncoding and contentType: present and empty, as stored
    write_bytes_field(out, 4, b"")
    return bytes(out)


# --- protobuf encoding --------------------------------------------------------------------------


@cache
def _sorted_fields(message: str) -> tuple[tuple[Field, ...], frozenset[str]]:
    fields = tuple(sorted(MESSAGES[message].values(), key=lambda f: f.number))
    return fields, frozenset(f.name for f in fields)


def _encode_message(obj: Mapping[str, Any], message: str, path: str) -> bytes:
    if not isinstance(obj, Mapping):
        raise EncodeError(f"{path}: expected an object for {message}, got {type(obj).__name__}")
    fields, names = _sorted_fields(message)
    unknown = sorted(k for k in obj if k not in names)
    if unknown:
        raise EncodeError(f"{path}: unknown field(s) {', '.join(map(str, unknown))} for {message}")
    out = bytearray()
    for field in fields:
        value = obj.get(field.name)
        where = f"{path}.{field.name}"
        if field.type in MAP_TYPES:
            if value is not None:
                _encode_map(out, field, value, where)
        elif field.repeated:
            if value is None:
                continue
            if not isinstance(value, list | tuple):
                raise EncodeError(f"{where}: expected a list, got {type(value).__name__}")
            for i, item in enumerate(value):
                _encode_one(out, field, item, f"{where}[{i}]")
        elif value is not None:
            _encode_one(out, field, value, where)
        elif not field.pointer:
            _encode_zero(out, field, where)
    return bytes(out)


def _encode_map(out: bytearray, field: Field, value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise EncodeError(f"{where}: expected an object, got {type(value).__name__}")
    for key in sorted(value):  # gogo sorts map keys; UTF-8 byte order == code point order
        if not isinstance(key, str):
            raise EncodeError(f"{where}: map key {key!r} is not a string")
        entry = bytearray()
        write_bytes_field(entry, 1, _utf8(key, where))
        item = value[key]
        if field.type == "map<string,quantity>":
            write_bytes_field(entry, 2, _quantity_bytes(item, f"{where}[{key!r}]"))
        elif isinstance(item, str):
            write_bytes_field(entry, 2, _utf8(item, where))
        else:
            raise EncodeError(f"{where}[{key!r}]: expected a string, got {type(item).__name__}")
        write_bytes_field(out, field.number, entry)


def _encode_zero(out: bytearray, field: Field, where: str) -> None:
    """Write what gogo writes for an unset non-pointer field."""
    if field.is_message:  # a zero struct still carries its own non-pointer zero fields
        write_bytes_field(out, field.number, _encode_message({}, field.type, where))
    elif field.type in ("int32", "int64", "bool"):
        write_varint_field(out, field.number, 0)
    elif field.type == "intorstring":
        write_bytes_field(out, field.number, _intorstring_bytes(0, ""))
    elif field.type == "quantity":
        write_bytes_field(out, field.number, _quantity_bytes("0", ""))
    elif field.type not in ("bytes", "fieldsv1"):  # nil []byte is not written
        write_bytes_field(out, field.number, b"")  # "" string or zero Time


def _encode_one(out: bytearray, field: Field, value: Any, where: str) -> None:
    ftype = field.type
    if ftype == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{where}: expected a string, got {type(value).__name__}")
        write_bytes_field(out, field.number, _utf8(value, where))
    elif ftype in ("int32", "int64"):
        bits = 32 if ftype == "int32" else 64
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodeError(f"{where}: expected an integer, got {type(value).__name__}")
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise EncodeError(f"{where}: {value} does not fit in {ftype}")
        write_varint_field(out, field.number, value)
    elif ftype == "bool":
        if not isinstance(value, bool):
            raise EncodeError(f"{where}: expected a boolean, got {type(value).__name__}")
        write_varint_field(out, field.number, int(value))
    elif ftype == "time":
        write_bytes_field(out, field.number, _time_bytes(value, where))
    elif ftype == "intorstring":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise EncodeError(f"{where}: expected an integer or a string, got {type(value).__name__}")
        if isinstance(value, int) and not -(1 << 31) <= value < 1 << 31:
            raise EncodeError(f"{where}: {value} does not fit in an IntOrString")
        payload = _intorstring_bytes(value, "") if isinstance(value, int) else _intorstring_bytes(None, value)
        write_bytes_field(out, field.number, payload)
    elif ftype == "quantity":
        write_bytes_field(out, field.number, _quantity_bytes(value, where))
    elif ftype == "fieldsv1":
        try:
            raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(f"{where}: not JSON-serialisable ({exc})") from None
        wrapper = bytearray()
        write_bytes_field(wrapper, 1, raw)
        write_bytes_field(out, field.number, wrapper)
    elif ftype == "bytes":
        if not isinstance(value, str):
            raise EncodeError(f"{where}: expected a base64 string, got {type(value).__name__}")
        try:
            write_bytes_field(out, field.number, base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise EncodeError(f"{where}: invalid base64 ({exc})") from None
    else:
        write_bytes_field(out, field.number, _encode_message(value, ftype, where))


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{where}: not encodable as UTF-8 ({exc})") from None


def _intorstring_bytes(int_val: int | None, str_val: str) -> bytes:
    payload = bytearray()
    write_varint_field(payload, 1, 0 if int_val is not None else 1)
    write_varint_field(payload, 2, int_val or 0)
    write_bytes_field(payload, 3, _utf8(str_val, "IntOrString"))
    return bytes(payload)


def _quantity_bytes(value: Any, where: str) -> bytes:
    # Kubernetes JSON accepts bare numbers for quantities ("cpu": 4).
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EncodeError(f"{where}: expected a quantity string, got {type(value).__name__}")
    payload = bytearray()
    write_bytes_field(payload, 1, _utf8(str(value), where))
    return bytes(payload)


# --- time ---------------------------------------------------------------------------------------

_ZERO_TIME_SECONDS: Final = -62135596800  # Go's zero time.Time, 0001-01-01T00:00:00Z
_TIME_RE: Final = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)\Z",
    re.ASCII,  # `\d` alone takes any Unicode digit
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, any year)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


@lru_cache(maxsize=16384)
def format_time(seconds: int) -> str:
    """Unix seconds -> RFC3339 UTC like metav1.Time's JSON ("2008-01-01T01:01:01Z"); any range."""
    days, rem = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    hour, rem = divmod(rem, 3600)
    minute, second = divmod(rem, 60)
    sign = "-" if year < 0 else ""  # Go pads the magnitude: year -5 is "-0005"
    return f"{sign}{abs(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def parse_time(text: str) -> tuple[int, int]:
    """RFC3339 (as accepted by Go's time.RFC3339 parser) -> (Unix seconds, nanoseconds)."""
    match = _TIME_RE.match(text)
    if match is None:
        raise ValueError(f"not an RFC3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        raise ValueError(f"not an RFC3339 time: {text!r}")
    fraction, zone = match.group(7), match.group(8)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if zone not in ("Z", "z"):
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return seconds, nanos


def _time_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"{where}: expected an RFC3339 string, got {type(value).__name__}")
    try:
        seconds, _nanos = parse_time(value)
    except ValueError as exc:
        raise EncodeError(f"{where}: {exc}") from None
    if seconds == _ZERO_TIME_SECONDS:
        return b""  # Go's IsZero time marshals to nothing
    if not -(1 << 63) <= seconds < 1 << 63:
        raise EncodeError(f"{where}: {value!r} is out of range")
    payload = bytearray()
    write_varint_field(payload, 1, seconds & MASK64)
    write_varint_field(payload, 2, 0)  # metav1.Time deliberately stores whole seconds (time_proto.go)
    return bytes(payload)
