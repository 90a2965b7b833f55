"""Shared fixtures: real etcd servers on free loopback ports, and a stream consumer."""

from __future__ import annotations

import gc
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flannel_lb.dataplane.iptables.changes import Changes
from flannel_lb.dataplane.iptables.rules import RuleSet
from flannel_lb.dataplane.iptables.sync_state import SyncState
from flannel_lb.lab.etcd_server import EtcdServer
from flannel_lb.source import ClusterSource, EventBatch, Snapshot, Status, Update

# A one-member cluster elects itself after one election timeout: keep start-up near 0.2 s.
FAST_ETCD_ARGS = ("--heartbeat-interval=50", "--election-timeout=300")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def require_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("the `etcd` binary is not installed (Debian: apt-get install etcd-server)")


@pytest.fixture(autouse=True)
def _collector_unfrozen() -> Iterator[None]:
    """An in-process Agent freezes what it decoded (gc.freeze); the rest of the run collects as usual."""
    yield
    gc.unfreeze()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """Start extra etcd servers (each in its own directory); all are stopped at teardown."""
    require_etcd()
    servers: list[EtcdServer] = []

    def make(enable_v2: bool = False, **kwargs: Any) -> EtcdServer:
        kwargs.setdefault("extra_args", FAST_ETCD_ARGS)
        server = EtcdServer(tmp_path / f"etcd{len(servers)}", enable_v2=enable_v2, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def etcd(etcd_factory: Callable[..., EtcdServer]) -> EtcdServer:
    """A started etcd (v3 only) on free loopback ports, fresh for each test."""
    return etcd_factory()


@pytest.fixture
def etcd_v2(etcd_factory: Callable[..., EtcdServer]) -> EtcdServer:
    """A started etcd with the v2 API enabled (flannel < 0.18 keeps its leases there)."""
    return etcd_factory(enable_v2=True)


class StreamConsumer:
    """Runs `source.stream()` on a thread and applies it the way the agent will."""

    def __init__(self, source: ClusterSource, resume_from: Snapshot | None = None) -> None:
        self.source = source
        self.stop = threading.Event()
        self.updates: list[tuple[float, Update]] = []
        self.state: dict[str, bytes] = {kv.key: kv.value for kv in resume_from.items} if resume_from else {}
        self.connected = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._resume = resume_from
        self._thread = threading.Thread(target=self._run, name="test-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for update in self.source.stream(self.stop, self._resume):
                with self._cond:
                    if isinstance(update, Snapshot):
                        self.state = {kv.key: kv.value for kv in update.items}
                    elif isinstance(update, EventBatch):
                        for ev in update.events:
                            if ev.kind == "put":
                                self.state[ev.key] = ev.value
                            else:
                                self.state.pop(ev.key, None)
                    elif isinstance(update, Status):
                        self.connected = update.connected
                    self.updates.append((time.monotonic(), update))
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[StreamConsumer], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                if self.error is not None:
                    raise self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def of_type(self, cls: type[Any]) -> list[Any]:
        with self._cond:
            return [u for _, u in self.updates if isinstance(u, cls)]

    def close(self) -> None:
        self.stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "stream did not stop within 15 s"
        if self.error is not None:
            raise self.error


@pytest.fixture
def consume() -> Iterator[Callable[..., StreamConsumer]]:
    """consume(source, resume_from=None) -> a running StreamConsumer, stopped at teardown."""
    consumers: list[StreamConsumer] = []

    def start(source: ClusterSource, resume_from: Snapshot | None = None) -> StreamConsumer:
        consumer = StreamConsumer(source, resume_from)
        consumers.append(consumer)
        return consumer

    yield start
    for consumer in consumers:
        consumer.close()


class MemoryWriter(SyncState):
    """A writer whose kernel is a variable: what the last sync applied. `fail` makes its commits raise,
    as iptables-restore refusing a transaction (or iptables-save a read-back) does."""

    def __init__(self) -> None:
        super().__init__("FLB-")
        self.kernel = RuleSet("FLB-")
        self.fail = ""

    def read_owned(self) -> RuleSet:
        return self.kernel

    def _commit(self, changes: Changes, text: str) -> None:
        pass

    def sync(self, desired: RuleSet, *, full: bool = False, verify: bool = False) -> Any:
        if self.fail:
            raise RuntimeError(self.fail)
        result = super().sync(desired, full=full, verify=verify)
        self.kernel = desired
        return result

    def cleanup(self) -> Changes:
        self.kernel = RuleSet("FLB-")
        return Changes()


def memory_agent(cfg: Any) -> Any:
    """An Agent whose data plane is the iptables one over a MemoryWriter: no kernel, no root."""
    from flannel_lb.daemon.agent import Agent
    from flannel_lb.dataplane.plane import IptablesPlane, dataplane_options

    return Agent(cfg, dataplane=IptablesPlane(MemoryWriter(), dataplane_options(cfg)))
