"""ClusterSource: consistent snapshots of etcd prefixes followed by their changes.

One connection ("generation") = one etcd3 client + its watches + one v2 poller per v2 prefix.
Everything they report goes into one queue tagged with the generation number, and the single
consumer thread (the caller of `stream`) drops whatever a dead generation still delivers.
Any watch failure ends the generation: the client is closed at once, and the next generation
starts with a full new Snapshot, which the consumer substitutes for its state. So no event is
lost or applied twice across a re-list, and no partial state is ever handed out.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]  # no stubs unless types-grpcio
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, stop_never
from tenacity.wait import wait_exponential_jitter

from flannel_lb.source import etcd_v2, etcd_v3
from flannel_lb.source.etcdrpc import etcd3
from flannel_lb.source.records import (
    EtcdUnavailable,
    Event,
    EventBatch,
    KeyValue,
    Snapshot,
    Status,
    Update,
)
from flannel_lb.source.settings import Endpoint, EtcdSettings

log = structlog.get_logger(__name__)

# Errors that mean "this endpoint, right now": try the next one, then back off.
RETRYABLE: tuple[type[BaseException], ...] = (
    etcd3.exceptions.Etcd3Exception,
    grpc.RpcError,
    etcd_v3.RangeCompacted,
    etcd_v3.EtcdRpcError,
    etcd_v3.WatchCanceled,
    etcd_v2.V2Error,
    OSError,  # includes socket timeouts and TLS errors
    ValueError,  # "Cannot invoke RPC on closed channel!" racing with a concurrent close; bad JSON
)


class _Stopped(Exception):
    """The caller's stop event was set while we were waiting."""


class _AllEndpointsFailed(Exception):
    def __init__(self, errors: list[tuple[Endpoint, BaseException]], settings: EtcdSettings) -> None:
        self.errors = errors
        self.settings = settings
        super().__init__(self.describe())

    def describe(self) -> str:
        """Every endpoint's error, in plain words first when they are known."""
        parts = []
        for endpoint, exc in self.errors:
            text = etcd_v3.describe(exc)
            hint = etcd_v3.tls_hint(endpoint, self.settings, text)
            plain = etcd_v3.plain_cause(exc)
            parts.append(
                f"{endpoint.url}: {plain + ' [' + text + ']' if plain else text}"
                + (f" -- {hint}" if hint else "")
            )
        return "; ".join(parts)


@dataclass(slots=True)
class _Item:
    generation: int
    events: list[Event] = field(default_factory=list)
    revision: int = 0  # v3 header revision
    v2: bool = False
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class SourceStats:
    connect_attempts: int
    relists: int
    v2_relists: int


class _Generation:
    """One connection to one endpoint; thread-safe `fail`, idempotent `close`."""

    def __init__(self, number: int, endpoint: Endpoint, q: queue.Queue[_Item]) -> None:
        self.number = number
        self.endpoint = endpoint
        self.client: Any = None
        self.v2_watches: list[etcd_v2.V2Watch] = []
        self._q = q
        self._lock = threading.Lock()
        self._dead = False

    def on_v3_events(self, events: list[Event], revision: int) -> None:
        if not self._dead:
            self._q.put(_Item(self.number, events, revision))

    def on_v2_events(self, events: list[Event], index: int) -> None:
        if not self._dead:
            self._q.put(_Item(self.number, events, v2=True))

    def fail(self, exc: BaseException) -> None:
        """Called from etcd3's watcher thread or a v2 poller: report once, then close at once."""
        with self._lock:
            if self._dead:
                return
            self._dead = True
        self._q.put(_Item(self.number, error=exc))
        self._shutdown()

    def close(self) -> None:
        with self._lock:
            already = self._dead
            self._dead = True
        if not already:
            self._shutdown()
        for w in self.v2_watches:
            w.join(1.0)

    def _shutdown(self) -> None:
        # Closing the channel is what stops etcd3's watcher thread from spinning.
        if self.client is not None:
            etcd_v3.close(self.client)
        for w in self.v2_watches:
            w.stop()


class ClusterSource:
    """Read-only view of etcd prefixes: `snapshot()` once, or `stream()` for list + watch.

    `prefixes` are raw v3 key prefixes (give "/registry/" with the slash if "/registryX" must
    not match); `v2_prefixes` are v2 directory paths. The same key must not be reachable
    through both, since the two stores are separate and their keys would collide.
    """

    # A connection that breaks sooner than this after opening counts as part of the same
    # outage, so a server that accepts and then drops us at once is not re-listed in a loop.
    HEALTHY_AFTER = 10.0

    def __init__(
        self,
        settings: EtcdSettings,
        prefixes: Sequence[str],
        v2_prefixes: Sequence[str] = (),
        *,
        retry_max_wait: float = 30.0,
        retry_initial_wait: float = 0.5,
        connect_budget: float = 30.0,
        page_size: int = etcd_v3.DEFAULT_PAGE_SIZE,
        v2_poll_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.endpoints = settings.parsed_endpoints()
        self.prefixes = _minimal_prefixes(prefixes)
        self.v2_prefixes = tuple(dict.fromkeys(p.rstrip("/") or "/" for p in v2_prefixes))
        for p2 in self.v2_prefixes:
            for p3 in self.prefixes:
                base = p2.rstrip("/") + "/"
                if p3.startswith(base) or base.startswith(p3) or p3 == p2:
                    raise ValueError(f"v2 prefix {p2!r} overlaps v3 prefix {p3!r}")
        if not self.prefixes and not self.v2_prefixes:
            raise ValueError("nothing to watch: no prefixes")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.retry_max_wait = retry_max_wait
        self.retry_initial_wait = retry_initial_wait
        self.connect_budget = connect_budget
        self.page_size = page_size
        self.v2_poll_timeout = v2_poll_timeout
        self._connect_attempts = 0
        self._generation_ids = itertools.count(1)  # unique, so late deliveries can never match
        self._relists = 0
        self._v2_relists = 0
        self._counter_lock = threading.Lock()
        etcd_v3.install_excepthook_filter()

    @property
    def stats(self) -> SourceStats:
        with self._counter_lock:
            return SourceStats(self._connect_attempts, self._relists, self._v2_relists)

    # -- one-shot ----------------------------------------------------------------------------

    def snapshot(self, retry_budget: float | None = None) -> Snapshot:
        """One consistent list; retries for `retry_budget` s (default `connect_budget`).

        Raises EtcdUnavailable naming every endpoint and the last error when the budget runs out.
        """
        budget = self.connect_budget if retry_budget is None else retry_budget
        started = time.monotonic()
        try:
            for attempt in self._retrying(threading.Event(), budget):
                with attempt:
                    snap: Snapshot = self._try_endpoints(self._list_once)
                    return snap
        except _AllEndpointsFailed as exc:
            raise EtcdUnavailable(
                time.monotonic() - started, tuple(ep.url for ep in self.endpoints), exc.describe()
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _list_once(self, endpoint: Endpoint) -> Snapshot:
        client = etcd_v3.connect(endpoint, self.settings) if self.prefixes else None
        try:
            return self._list(endpoint, client)
        finally:
            if client is not None:
                etcd_v3.close(client)

    # -- list + watch ------------------------------------------------------------------------

    def stream(self, stop: threading.Event, resume_from: Snapshot | None = None) -> Iterator[Update]:
        """Yield Snapshot, then EventBatches, with Status on every connect and disconnect.

        The first update after each (re)connect is a Snapshot unless `resume_from` is given
        (the caller already holds that state; watching resumes right after it). Returns when
        `stop` is set. While etcd is down it sleeps in back-off and yields Status(connected=False).
        """
        q: queue.Queue[_Item] = queue.Queue()
        resume = resume_from
        gen: _Generation | None = None
        flaps = 0  # consecutive connections that broke before HEALTHY_AFTER
        try:
            while not stop.is_set():
                opened: list[tuple[_Generation, Snapshot]] = []
                retrying = self._retrying(stop, None)
                for attempt in retrying:
                    with attempt:
                        opened.append(self._try_endpoints(self._opener(q, resume)))
                    outcome = attempt.retry_state.outcome
                    if outcome is not None and outcome.failed:
                        exc = outcome.exception()
                        why = exc.describe() if isinstance(exc, _AllEndpointsFailed) else repr(exc)
                        yield Status(False, why, None, attempt.retry_state.attempt_number)
                gen, snap = opened.pop()
                revision = snap.revision
                if snap is not resume:
                    with self._counter_lock:
                        self._relists += 1
                    yield snap
                # This frame lives as long as the connection: it must not keep the snapshot's values
                # (the largest allocation of a cold start) once the consumer has them.
                del snap
                resume = None  # after any failure only a full re-list is safe
                yield Status(True, "", gen.endpoint.url)
                opened_at = time.monotonic()
                reason = yield from self._pump(gen, q, stop, revision)
                gen.close()
                gen = None
                if reason is None:
                    continue
                log.warning("etcd_watch_broken", reason=reason)
                yield Status(False, reason)
                flaps = flaps + 1 if time.monotonic() - opened_at < self.HEALTHY_AFTER else 0
                if flaps >= 2:  # the first quick failure (e.g. a compacted resume) re-lists at once
                    delay = min(self.retry_max_wait, self.retry_initial_wait * 2 ** (flaps - 2))
                    if stop.wait(delay):
                        return
        except _Stopped:
            return
        finally:
            if gen is not None:
                gen.close()

    def _opener(
        self, q: queue.Queue[_Item], resume: Snapshot | None
    ) -> Callable[[Endpoint], tuple[_Generation, Snapshot]]:
        def open_generation(endpoint: Endpoint) -> tuple[_Generation, Snapshot]:
            gen = _Generation(next(self._generation_ids), endpoint, q)
            try:
                if self.prefixes:
                    gen.client = etcd_v3.connect(endpoint, self.settings)
                snap = resume if resume is not None and self._resumable(gen.client, resume) else None
                if snap is None:
                    snap = self._list(endpoint, gen.client)
                if self.prefixes:
                    etcd_v3.watch_prefixes(
                        gen.client, self.prefixes, snap.revision + 1, gen.on_v3_events, gen.fail
                    )
                self._start_v2_watches(gen, endpoint, snap)
            except BaseException:
                gen.close()
                raise
            return gen, snap

        return open_generation

    def _resumable(self, client: Any, resume: Snapshot) -> bool:
        """False when the store is behind the state we hold: etcd was restored from an older backup.

        etcd accepts a watch from a future revision and stays silent until the store gets there, so
        resuming would miss every change made after the restore. Only a fresh list is safe then.
        """
        if not self.prefixes:
            return True
        current = etcd_v3.current_revision(client, self.prefixes[0])
        if current >= resume.revision:
            return True
        log.warning(
            "etcd_revision_went_backwards",
            held=resume.revision,
            server=current,
            action="re-list (etcd restored from an older snapshot?)",
        )
        return False

    def _start_v2_watches(self, gen: _Generation, endpoint: Endpoint, snap: Snapshot) -> None:
        for prefix in self.v2_prefixes:
            items = [kv for kv in snap.items if etcd_v2.under(kv.key, prefix)]
            index = snap.v2_index.get(prefix, 0)
            watch = etcd_v2.V2Watch(
                etcd_v2.V2Client(endpoint, self.settings),
                prefix,
                index,
                items,
                gen.on_v2_events,
                gen.fail,
                self.v2_poll_timeout,
                self._count_v2_relist,
            )
            gen.v2_watches.append(watch)
            watch.start()

    def _count_v2_relist(self) -> None:
        with self._counter_lock:
            self._v2_relists += 1

    def _pump(
        self, gen: _Generation, q: queue.Queue[_Item], stop: threading.Event, revision: int
    ) -> Generator[Update, None, str | None]:
        """Hand over the generation's events in batches until it fails (-> reason) or stop."""
        while not stop.is_set():
            try:
                items = [q.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(items) < 10_000:
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            v3: list[Event] = []
            v2: list[Event] = []
            error: BaseException | None = None
            for item in items:
                if item.generation != gen.number:
                    continue  # late delivery from a generation we already dropped
                if item.error is not None:
                    error = item.error
                    break
                if item.v2:
                    v2.extend(item.events)
                else:
                    v3.extend(item.events)
                    revision = max(revision, item.revision)
            # Different prefixes are different watches: merge them in revision order.
            v3.sort(key=lambda ev: ev.revision)
            if v3 or v2:
                yield EventBatch(v3 + v2, revision)
            if error is not None:
                return etcd_v3.describe(error)
        return None

    # -- shared helpers ----------------------------------------------------------------------

    def _list(self, endpoint: Endpoint, client: Any) -> Snapshot:
        revision, items = 0, list[KeyValue]()
        if self.prefixes:
            revision, items = etcd_v3.list_prefixes(client, self.prefixes, self.page_size)
        v2_index: dict[str, int] = {}
        for prefix in self.v2_prefixes:
            index, v2_items = etcd_v2.V2Client(endpoint, self.settings).list(prefix)
            v2_index[prefix] = index
            items.extend(v2_items)
        log.info("etcd_listed", endpoint=endpoint.url, revision=revision, keys=len(items), v2_index=v2_index)
        return Snapshot(revision, items, v2_index)

    def _try_endpoints(self, fn: Callable[[Endpoint], Any]) -> Any:
        errors: list[tuple[Endpoint, BaseException]] = []
        for endpoint in self.endpoints:
            with self._counter_lock:
                self._connect_attempts += 1
            try:
                return fn(endpoint)
            except RETRYABLE as exc:
                log.debug("etcd_endpoint_failed", endpoint=endpoint.url, error=etcd_v3.describe(exc))
                errors.append((endpoint, exc))
        raise _AllEndpointsFailed(errors, self.settings)

    def _retrying(self, stop: threading.Event, budget: float | None) -> Retrying:
        """A fresh Retrying per outage, so back-off restarts small after a healthy period.

        With a budget the last sleep is cut short so that one last attempt happens right at
        the deadline instead of giving up early.
        """
        backoff = wait_exponential_jitter(
            multiplier=self.retry_initial_wait, max=self.retry_max_wait, jitter=self.retry_initial_wait
        )
        deadline = None if budget is None else time.monotonic() + budget

        def wait(state: RetryCallState) -> float:
            seconds = float(backoff(state))
            if deadline is not None:
                seconds = min(seconds, max(0.0, deadline - time.monotonic()))
            return seconds

        def sleep(seconds: float) -> None:
            if stop.wait(seconds):
                raise _Stopped

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "etcd_retry",
                attempt=state.attempt_number,
                sleep_s=round(state.next_action.sleep, 2) if state.next_action else None,
                error=exc.describe() if isinstance(exc, _AllEndpointsFailed) else repr(exc),
            )

        return Retrying(
            retry=retry_if_exception_type(_AllEndpointsFailed),
            wait=wait,
            stop=stop_never if budget is None else stop_after_delay(budget),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


def _minimal_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """Drop prefixes covered by another one: overlapping watches would duplicate events."""
    unique = sorted(set(prefixes))
    kept: list[str] = []
    for p in unique:
        if not any(p.startswith(k) for k in kept):
            kept.append(p)
    # Keep the caller's order: the first prefix sets the snapshot revision (cosmetic only).
    return tuple(p for p in dict.fromkeys(prefixes) if p in kept)
