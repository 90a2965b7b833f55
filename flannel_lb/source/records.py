"""What the etcd source hands to its consumer: raw keys and values, never decoded objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int  # v3 mod_revision, or v2 modifiedIndex for keys from the v2 store
    lease: int = 0  # v3 lease id; 0 = no lease (v3 keys simply vanish when their lease expires)
    expires: float | None = None  # v2 only: epoch seconds of the node's `expiration`; None = no TTL


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    key: str
    value: bytes  # b"" for deletes
    revision: int  # v3 revision, or v2 index for keys from the v2 store
    lease: int = 0
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The complete state of all watched prefixes; the consumer replaces what it had.

    The v3 part is the state at exactly `revision`. The v2 store is separate and has no
    multi-key reads, so each v2 prefix is consistent within itself, at `v2_index[prefix]`.
    """

    revision: int
    items: list[KeyValue]
    v2_index: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Changes after the last Snapshot/EventBatch; apply them in order."""

    events: list[Event]
    revision: int  # the v3 revision the consumer is at after applying the batch


@dataclass(frozen=True, slots=True)
class Status:
    """Watch state; while disconnected the consumer should keep serving its last good state."""

    connected: bool
    reason: str = ""  # why the watch broke, or the last connection error
    endpoint: str | None = None  # the endpoint in use when connected
    attempt: int = 0  # failed connection attempts in the current outage


Update = Snapshot | EventBatch | Status


class EtcdUnavailable(RuntimeError):
    """No endpoint answered within the retry budget."""

    def __init__(self, elapsed: float, endpoints: tuple[str, ...], last_error: str) -> None:
        self.elapsed = elapsed
        self.endpoints = endpoints
        self.last_error = last_error
        super().__init__(
            f"etcd unreachable after {elapsed:.1f} s; tried {', '.join(endpoints)}: {last_error}"
        )
