"""Read-only etcd source: consistent snapshots of v3 (and legacy v2) prefixes, then their changes."""

from flannel_lb.source.records import (
    EtcdUnavailable,
    Event,
    EventBatch,
    KeyValue,
    Snapshot,
    Status,
    Update,
)
from flannel_lb.source.settings import Endpoint, EtcdSettings, parse_endpoint
from flannel_lb.source.watcher import ClusterSource, SourceStats

__all__ = [
    "ClusterSource",
    "Endpoint",
    "EtcdSettings",
    "EtcdUnavailable",
    "Event",
    "EventBatch",
    "KeyValue",
    "Snapshot",
    "SourceStats",
    "Status",
    "Update",
    "parse_endpoint",
]
