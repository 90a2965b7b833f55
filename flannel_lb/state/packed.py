"""Raw values kept for later, packed into one buffer instead of one heap block each.

The cluster state keeps every legacy Endpoints value undecoded while its Service has slices (one per
Service). As separate `bytes` objects they sit one in three among the snapshot's
other values, which are freed after decoding: every heap page keeps a live value, so none of the
snapshot's memory could go back to the kernel. Copied into one growing buffer they leave the heap
free to shrink.
"""

from __future__ import annotations

from collections.abc import Iterator


class PackedValues:
    """A `str -> bytes` store: `put`, `pop`, `in`, iteration over keys. Values are copied in."""

    def __init__(self, compact_above: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._where: dict[str, tuple[int, int]] = {}  # key -> (offset, length)
        self._dead = 0  # bytes of the buffer no key points at any more
        self._compact_above = compact_above

    def put(self, key: str, value: bytes) -> None:
        self._release(key)
        self._where[key] = (len(self._buffer), len(value))
        self._buffer += value

    def pop(self, key: str) -> bytes | None:
        """The value stored under `key` (then forgotten), or None."""
        where = self._where.get(key)
        if where is None:
            return None
        offset, length = where
        value = bytes(self._buffer[offset : offset + length])
        self._release(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def nbytes(self) -> int:
        """The buffer's size, dead bytes included."""
        return len(self._buffer)

    def _release(self, key: str) -> None:
        where = self._where.pop(key, None)
        if where is None:
            return
        self._dead += where[1]
        if self._dead > self._compact_above and self._dead * 2 > len(self._buffer):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the live values into a new buffer: churn costs at most twice the live bytes."""
        old, buffer = self._buffer, bytearray()
        for key, (offset, length) in self._where.items():
            self._where[key] = (len(buffer), length)
            buffer += old[offset : offset + length]
        self._buffer, self._dead = buffer, 0
