"""etcd v3 (gRPC) access through etcd3 0.12.0, with the workarounds that library needs.

Workarounds, all measured against etcd 3.4 (see shared/reference/python-libraries.md §1):
* `get_range_response(limit=, revision=)` silently drops both arguments in 0.12.0, so range
  requests are built from the generated protobuf classes and sent on the client's own stub.
* A failed watch makes the client's watcher thread reconnect in a tight loop (100 % CPU, tens of
  thousands of threads); the channel is closed from the failure callback itself, before the
  loop can spin, and a new client is built for the next attempt.
* Without `grpc.http2.ping_timeout_ms` a SIGSTOPped etcd is noticed only when TCP gives up
  (over a minute), and without keepalive never.
* A watch the server cancels for any reason other than compaction is dropped silently by
  0.12.0; the response handler is wrapped so that such a cancel is reported as a failure.
* With username/password it attaches the token as gRPC call credentials, which grpcio refuses
  to send over plaintext; on http endpoints only the token metadata is kept.
* The closed channel kills the watcher thread with "Cannot invoke RPC: Channel closed!";
  `install_excepthook_filter` keeps that harmless traceback out of the logs.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]  # no stubs unless types-grpcio
import structlog

from flannel_lb.source.etcdrpc import etcd3, rpc_pb2
from flannel_lb.source.records import Event, KeyValue
from flannel_lb.source.settings import Endpoint, EtcdSettings

log = structlog.get_logger(__name__)

DEFAULT_PAGE_SIZE = 1000

# keepalive_time must stay >= etcd's --grpc-keepalive-min-time (5 s) or etcd answers
# GOAWAY "too_many_pings". time + ping timeout ~ 9 s to notice a hung server.
GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.http2.ping_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Paging keeps responses small, but a single huge object must not break a re-list.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)

OnEvents = Callable[[list[Event], int], None]
OnError = Callable[[BaseException], None]


class EtcdRpcError(Exception):
    """A gRPC status etcd3 0.12.0 does not translate (permission denied, unauthenticated, ...)."""


class WatchCanceled(Exception):
    """etcd canceled a watch (not a compaction), e.g. permission denied."""


class RangeCompacted(Exception):
    """A paged list asked for a revision that was compacted between two pages."""


def connect(endpoint: Endpoint, settings: EtcdSettings) -> Any:
    """Build an etcd3 client for one endpoint (authenticates at once when credentials are set)."""
    tls = endpoint.tls
    try:
        client = etcd3.client(
            host=f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host,
            port=endpoint.port,
            ca_cert=settings.ca_file if tls else None,
            cert_key=settings.key_file if tls else None,
            cert_cert=settings.cert_file if tls else None,
            timeout=settings.timeout,
            user=settings.username,
            password=settings.password,
            grpc_options=list(GRPC_OPTIONS),
        )
    except grpc.RpcError as exc:  # Authenticate() in the constructor is not translated by etcd3
        raise _translate(exc) from exc
    if not client.uses_secure_channel:
        # gRPC refuses call credentials on a plaintext channel ("insufficient security level");
        # the token also travels as plain metadata, which is all etcd needs.
        client.call_credentials = None
        client.watcher._credentials = None
    return client


def close(client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # closing must never mask the error that made us close
        log.debug("etcd_close_failed", error=repr(exc))


def list_prefixes(
    client: Any, prefixes: Sequence[str], page_size: int = DEFAULT_PAGE_SIZE, revision: int = 0
) -> tuple[int, list[KeyValue]]:
    """List all keys under `prefixes` at one revision (the first page's, unless given).

    Pages of `page_size` keys keep every response far below gRPC's message limit.
    """
    items: list[KeyValue] = []
    for prefix in prefixes:
        start = prefix.encode()
        end = prefix_end(start)
        while True:
            resp = range_page(client, start, end, page_size, revision)
            if revision == 0:
                revision = int(resp.header.revision)
            items.extend(
                KeyValue(_key(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.lease))
                for kv in resp.kvs
            )
            if not resp.more or not resp.kvs:
                break
            start = bytes(resp.kvs[-1].key) + b"\0"
    return revision, items


def current_revision(client: Any, prefix: str) -> int:
    """The store's revision now (one count-only range over `prefix`)."""
    start = prefix.encode()
    req = rpc_pb2.RangeRequest(key=start, range_end=prefix_end(start), count_only=True)
    try:
        resp = client.kvstub.Range(
            req, client.timeout, credentials=client.call_credentials, metadata=client.metadata
        )
    except grpc.RpcError as exc:
        raise _translate(exc) from exc
    return int(resp.header.revision)


def range_page(client: Any, start: bytes, end: bytes, limit: int, revision: int) -> Any:
    """One page of [start, end) at `revision` (0 = now), as etcd answers it; compaction is RangeCompacted."""
    req = rpc_pb2.RangeRequest(key=start, range_end=end, limit=limit, revision=revision)
    try:
        return client.kvstub.Range(
            req, client.timeout, credentials=client.call_credentials, metadata=client.metadata
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
            raise RangeCompacted(f"revision {revision}: {exc.details()}") from exc
        raise _translate(exc) from exc


def watch_prefixes(
    client: Any, prefixes: Sequence[str], start_revision: int, on_events: OnEvents, on_error: OnError
) -> None:
    """Watch every prefix from `start_revision` on; callbacks run on etcd3's watcher thread.

    `on_error` is called at most once per failure and must close the client at once.
    """
    watcher = client.watcher
    original = watcher._handle_response

    def handle_response(rs: Any) -> None:
        original(rs)
        if rs.canceled and not rs.compact_revision:
            on_error(WatchCanceled(rs.cancel_reason or "watch canceled by etcd"))

    watcher._handle_response = handle_response

    def callback(resp: Any) -> None:
        if isinstance(resp, BaseException):
            on_error(_translate(resp) if isinstance(resp, grpc.RpcError) else resp)
            return
        events = [_event(ev) for ev in resp.events]
        if events:
            on_events(events, int(resp.header.revision))

    for prefix in prefixes:
        key = prefix.encode()
        try:
            client.add_watch_prefix_callback(key, callback, start_revision=start_revision)
        except etcd3.exceptions.WatchTimedOut:
            raise etcd3.exceptions.ConnectionTimeoutError() from None


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers exactly the keys starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _event(ev: Any) -> Event:
    if isinstance(ev, etcd3.events.DeleteEvent):
        return Event("delete", _key(ev.key), b"", int(ev.mod_revision))
    return Event("put", _key(ev.key), bytes(ev.value), int(ev.mod_revision), int(ev.lease))


def _key(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


_CODES: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.UNAVAILABLE: etcd3.exceptions.ConnectionFailedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: etcd3.exceptions.ConnectionTimeoutError,
    grpc.StatusCode.INTERNAL: etcd3.exceptions.InternalServerError,
}


def _translate(exc: grpc.RpcError) -> Exception:
    cls = _CODES.get(exc.code()) if hasattr(exc, "code") else None
    new = cls() if cls else EtcdRpcError()
    new.__cause__ = exc
    return new


def describe(exc: BaseException) -> str:
    """One line naming the error and, for gRPC failures, the status code and details."""
    name = type(exc).__name__
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__cause__ or exc.__context__
    if isinstance(rpc, grpc.RpcError) and hasattr(rpc, "code"):
        return f"{name} ({rpc.code().name}: {rpc.details()})"
    if isinstance(exc, etcd3.exceptions.RevisionCompactedError):
        return f"{name} (compacted up to revision {exc.compacted_revision})"
    text = str(exc)
    return f"{name} ({text})" if text else name


def plain_cause(exc: BaseException) -> str:
    """The failure in a newcomer's words ("" when it is none of the usual ones)."""
    text = describe(exc)
    if "Connection refused" in text:
        return "nothing answering (connection refused)"
    status = re.search(r"http2 header with status: (\d+)", text)
    if status:
        return f"not an etcd server: HTTP {status.group(1)}"
    if "Failed parsing HTTP/2" in text or "UNIMPLEMENTED" in text:
        return "not an etcd server (it does not speak etcd's gRPC API)"
    if "SSL" in text or "TLS" in text or "handshake" in text.lower():
        return "TLS handshake failed"
    if "DEADLINE_EXCEEDED" in text or "Timeout" in type(exc).__name__ or "timed out" in text:
        return "timed out"
    if "Socket closed" in text:
        return "the server closed the connection at once"
    return ""


def tls_hint(endpoint: Endpoint, settings: EtcdSettings, error: str) -> str:
    """What a TLS failure most likely means, in the config's terms ("" when the error is no TLS failure).

    gRPC reports a client certificate that etcd refused only as a corrupted or closed stream (the alert
    that names the reason goes to gRPC's own log), so the local certificate is checked here to say why.
    """
    if "CERTIFICATE_VERIFY_FAILED" in error or "certificate verify failed" in error:
        return f"etcd's server certificate does not verify against ca_file {settings.ca_file}"
    if "Hostname Verification" in error or "doesn't match" in error or "Hostname mismatch" in error:
        return (
            f"etcd's server certificate does not name {endpoint.host}:"
            " use an endpoint address listed in its subjectAltName"
        )
    refused = ("TSI_DATA_CORRUPTED", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "certificate required")
    if endpoint.tls and any(marker in error for marker in refused):
        return "etcd refused our client certificate: " + _client_cert_problem(settings)
    if not endpoint.tls and "Socket closed" in error:
        return "if etcd serves TLS on this port, the endpoint must start with https://"
    return ""


def _client_cert_problem(settings: EtcdSettings) -> str:
    if settings.cert_file is None:
        return "no cert_file/key_file is configured, and etcd runs with --client-cert-auth"
    try:
        cert = ssl._ssl._test_decode_cert(settings.cert_file)  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(cert["notBefore"])
        not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    except (OSError, ValueError, KeyError) as exc:
        return f"cert_file {settings.cert_file} cannot be read as a PEM certificate ({exc})"
    now = time.time()
    if now > not_after:
        return f"cert_file {settings.cert_file} expired on {cert['notAfter']}"
    if now < not_before:
        return f"cert_file {settings.cert_file} is not valid before {cert['notBefore']}"
    issuer = ", ".join("=".join(pair) for rdn in cert.get("issuer", ()) for pair in rdn)
    return (
        f"cert_file {settings.cert_file} (issued by {issuer or '?'}) is not signed by a CA in etcd's"
        " --trusted-ca-file, or lacks the clientAuth usage"
    )


_hook_lock = threading.Lock()
_hook_installed = False


def install_excepthook_filter() -> None:
    """Drop the harmless "Channel closed!" ValueError etcd3's watcher thread dies with."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is ValueError and "Channel closed" in str(args.exc_value):
                log.debug("etcd3_watcher_thread_ended", thread=getattr(args.thread, "name", None))
                return
            previous(args)

        threading.excepthook = hook
        _hook_installed = True
