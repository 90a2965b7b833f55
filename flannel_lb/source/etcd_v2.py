"""etcd v2 keyspace over plain HTTP, for flannel < 0.18 (it keeps its leases there).

The v2 store is separate from the v3 one, has no multi-key read at an index and keeps only the
last 1000 events. So each v2 prefix is listed and long-polled on its own, and a poller that
falls out of the history window ("401 outdated and cleared") lists its prefix again and turns
the difference into events instead of forcing a full re-list of everything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog

from flannel_lb.source.records import Event, KeyValue
from flannel_lb.source.settings import Endpoint, EtcdSettings
from flannel_lb.untrusted import load_json

log = structlog.get_logger(__name__)

PUT_ACTIONS = frozenset({"set", "update", "create", "compareAndSwap"})
DELETE_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})

ERROR_KEY_NOT_FOUND = 100
ERROR_INDEX_CLEARED = 401


class V2Error(RuntimeError):
    """An HTTP-level or etcd-level error from the v2 API."""

    def __init__(self, message: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class IndexCleared(V2Error):
    """The wait index fell out of etcd's 1000-event v2 history: list again."""


class V2Client:
    """A minimal, read-only v2 client for one endpoint (one request at a time)."""

    def __init__(self, endpoint: Endpoint, settings: EtcdSettings) -> None:
        self.endpoint = endpoint
        self._timeout = settings.timeout
        self._ssl: ssl.SSLContext | None = None
        if endpoint.tls:
            self._ssl = ssl.create_default_context(cafile=settings.ca_file)
            if settings.cert_file and settings.key_file:
                self._ssl.load_cert_chain(settings.cert_file, settings.key_file)
        self._headers = {"Accept": "application/json"}
        if settings.username is not None and settings.password is not None:
            token = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False

    def list(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """All leaf keys under `prefix` and the X-Etcd-Index they are current at."""
        status, headers, body = self._get(_path(prefix, recursive="true", sorted="true", quorum="true"))
        data = _json(status, body)
        index = int(headers.get("X-Etcd-Index") or data.get("index") or 0)
        if status == 404 and data.get("errorCode") == ERROR_KEY_NOT_FOUND:
            return index, []
        _raise_for(status, data)
        items: list[KeyValue] = []
        _flatten(data["node"], items)
        return index, items

    def wait(self, prefix: str, wait_index: int, timeout: float) -> dict[str, Any] | None:
        """Long-poll for the next event under `prefix` at or after `wait_index`; None if idle."""
        query = _path(prefix, wait="true", recursive="true", waitIndex=str(wait_index))
        try:
            status, _, body = self._get(query, timeout)
        except TimeoutError:
            return None
        data = _json(status, body)
        _raise_for(status, data)
        return data

    def probe(self) -> None:
        """Fail fast if etcd stopped answering (an idle long poll cannot tell)."""
        status, _, body = self._get("/version")
        if status != 200:
            raise V2Error(f"GET /version: HTTP {status}: {body[:200]!r}", status=status)

    def abort(self) -> None:
        """Make a blocked long poll return now (from another thread)."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _get(self, path: str, timeout: float | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        ep = self.endpoint
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=timeout or self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout or self._timeout)
        with self._lock:
            if self._aborted:
                raise V2Error("v2 client closed")
            self._conn = conn
        try:
            conn.request("GET", path, headers=self._headers)
            resp = conn.getresponse()
            body = resp.read()
            if self._aborted:
                raise V2Error("v2 client closed")
            return resp.status, resp.headers, body
        finally:
            with self._lock:
                self._conn = None
            conn.close()


OnEvents = Callable[[list[Event], int], None]
OnError = Callable[[BaseException], None]


class V2Watch:
    """Long-polls one v2 prefix on its own thread and keeps a mirror of its keys.

    The mirror turns a directory delete into one delete per key and lets a re-list after
    "index cleared" be reported as the difference.
    """

    def __init__(
        self,
        client: V2Client,
        prefix: str,
        index: int,
        items: list[KeyValue],
        on_events: OnEvents,
        on_error: OnError,
        poll_timeout: float = 30.0,
        on_relist: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.index = index
        self.mirror = {kv.key: kv for kv in items}
        self._on_relist = on_relist
        self._on_events = on_events
        self._on_error = on_error
        self._poll_timeout = poll_timeout
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"flb-v2-watch {prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.client.abort()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._step()
        except Exception as exc:
            if not self._stopped.is_set():
                self._on_error(exc)

    def _step(self) -> None:
        try:
            data = self.client.wait(self.prefix, self.index + 1, self._poll_timeout)
        except IndexCleared as exc:
            log.info("etcd_v2_index_cleared", prefix=self.prefix, index=self.index, error=str(exc))
            self._relist()
            return
        if data is None:
            self.client.probe()
            return
        node = data.get("node") or {}
        events = apply_action(self.mirror, str(data.get("action", "")), node)
        self.index = max(self.index, int(node.get("modifiedIndex", self.index)))
        if events and not self._stopped.is_set():
            self._on_events(events, self.index)

    def _relist(self) -> None:
        index, items = self.client.list(self.prefix)
        if self._on_relist is not None:
            self._on_relist()
        new = {kv.key: kv for kv in items}
        events = [Event("delete", key, b"", index) for key in sorted(self.mirror.keys() - new.keys())]
        events += [_put(kv) for kv in items if self.mirror.get(kv.key) != kv]
        self.mirror = new
        self.index = index
        if events and not self._stopped.is_set():
            self._on_events(events, index)


def apply_action(mirror: dict[str, KeyValue], action: str, node: dict[str, Any]) -> list[Event]:
    """Turn one v2 watch response into events, updating `mirror` (directories expand to keys)."""
    key = str(node.get("key", ""))
    index = int(node.get("modifiedIndex", 0))
    if action in PUT_ACTIONS:
        if node.get("dir"):
            return []
        kv = _kv(node)
        mirror[key] = kv
        return [_put(kv)]
    if action in DELETE_ACTIONS:
        below = key.rstrip("/") + "/"
        gone = sorted(k for k in mirror if k == key or k.startswith(below))
        if not gone and not node.get("dir"):
            gone = [key]
        for k in gone:
            mirror.pop(k, None)
        return [Event("delete", k, b"", index) for k in gone]
    return []


def under(key: str, prefix: str) -> bool:
    """v2 prefixes are directory paths: `/a/b` covers `/a/b` and `/a/b/...`, not `/a/bc`."""
    base = prefix.rstrip("/")
    return key == base or key.startswith(base + "/")


def _put(kv: KeyValue) -> Event:
    return Event("put", kv.key, kv.value, kv.mod_revision, 0, kv.expires)


def _kv(node: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=str(node["key"]),
        value=str(node.get("value", "")).encode(),
        mod_revision=int(node.get("modifiedIndex", 0)),
        lease=0,
        expires=parse_expiration(node.get("expiration")),
    )


def _flatten(node: dict[str, Any], out: list[KeyValue]) -> None:
    if node.get("dir"):
        for child in node.get("nodes") or ():
            _flatten(child, out)
    else:
        out.append(_kv(node))


_EXPIRATION = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", re.ASCII)


def parse_expiration(text: object) -> float | None:
    """RFC 3339 with Go's nanoseconds (which `fromisoformat` rejects) -> epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    m = _EXPIRATION.match(text)
    if not m:
        return None
    base, frac, zone = m.groups()
    stamp = dt.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + (float(f"0.{frac}") if frac else 0.0)


def _path(prefix: str, **query: str) -> str:
    return (
        "/v2/keys"
        + urllib.parse.quote(prefix.rstrip("/") or "/", safe="/")
        + "?"
        + urllib.parse.urlencode(query)
    )


def _json(status: int, body: bytes) -> dict[str, Any]:
    try:
        data = load_json(body)
    except ValueError:
        raise V2Error(
            f"HTTP {status}: {body[:200].decode('utf-8', 'replace').strip()}", status=status
        ) from None
    if not isinstance(data, dict):
        raise V2Error(f"HTTP {status}: unexpected body", status=status)
    return data


def _raise_for(status: int, data: dict[str, Any]) -> None:
    code = data.get("errorCode")
    if status < 400 and code is None:
        return
    message = f"HTTP {status}: errorCode {code}: {data.get('message')} ({data.get('cause', '')})"
    if code == ERROR_INDEX_CLEARED:
        raise IndexCleared(message, code, status)
    raise V2Error(message, code, status)
