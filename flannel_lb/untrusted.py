"""Reading numbers and JSON out of untrusted text (etcd values, the config, the state file).

Python's own readers are too generous for input an attacker may write: `str.isdigit()`, `int()`
and regex `\\d` take any Unicode digit ("٨٠" reads as 80; "²" passes `isdigit()` and then makes
`int()` raise), and `json.loads` recurses once per nesting level, so a value of a few kilobytes of
brackets raises RecursionError (and a document just under the limit makes every later walk of it,
`repr` included, raise instead).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DIGITS = 64
"""Longest digit string `ascii_decimal` reads (`int()` refuses strings of thousands of digits)."""

MAX_JSON_DEPTH = 100
"""Deepest JSON nesting accepted. The objects flannel-lb reads nest about 12 deep (managedFields'
FieldsV1 a little deeper); 100 keeps every later recursive walk far from Python's recursion limit."""

# A JSON string (escapes included), or a run of characters that are neither brackets nor quotes.
_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+', re.DOTALL)
_AS_PARENS = str.maketrans("[{]}", "(())")


def ascii_decimal(text: str) -> int | None:
    """`text` as a non-negative integer when it is 1 to MAX_DIGITS ASCII digits, else None."""
    if not text or len(text) > MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


class JSONDepthError(ValueError):
    """A JSON document nested deeper than MAX_JSON_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def load_json(data: bytes | bytearray | str) -> Any:
    """`json.loads` for untrusted input: ValueError (JSONDepthError when too deep), never RecursionError.

    Bytes are decoded as `json.loads` decodes them (UTF-8/16/32) and then checked: without brackets
    enough to exceed the limit nothing more is done; otherwise the strings are cut out and the
    brackets left are reduced pair by pair, one nesting level per pass, at C speed.
    """
    text = data if isinstance(data, str) else bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(text):
        raise JSONDepthError()
    try:
        return json.loads(text)
    except RecursionError:  # brackets that never close: the scan above leaves them to the parser
        raise JSONDepthError() from None


def _too_deep(text: str) -> bool:
    brackets = _NOT_BRACKETS.sub("", text).translate(_AS_PARENS)
    for _ in range(MAX_JSON_DEPTH):
        reduced = brackets.replace("()", "")
        if reduced == brackets:
            return False  # balanced ones are gone; what is left is not valid JSON (json says so)
        brackets = reduced
    return "()" in brackets
