"""Names from etcd in human text: control, format and separator characters shown as escapes."""

from __future__ import annotations

import unicodedata

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _escape(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    if unicodedata.category(c) not in _UNSAFE:
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(s: str) -> str:
    """`s` with each Cc/Cf/Zl/Zp/Cs character as `\\n`, `\\x1b`, `\\u202e`, `\\udc80`, so a name cannot fake
    a line, move the cursor, reverse the text or fail to encode on print; everything else is unchanged."""
    if s.isprintable():  # C fast path: true only when no such character is present
        return s
    return "".join(_escape(c) for c in s)
