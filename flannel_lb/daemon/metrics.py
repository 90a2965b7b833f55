"""Prometheus metrics and the /healthz endpoint, served on `[metrics] listen` (loopback by default)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily


class KernelConntrackCounters:
    """The kernel's conntrack failure counters (/proc/net/stat/nf_conntrack, summed over CPUs).

    The kernel counts them from the network namespace's creation; they are exported as last sampled,
    as counters because that is what they are, and nothing here adds to them.
    """

    def __init__(self) -> None:
        self.values: tuple[int, int, int] | None = None  # insert_failed, drop, early_drop; None: not read

    def collect(self) -> Iterator[Any]:
        if self.values is None:
            return
        insert_failed, drop, early_drop = self.values
        yield CounterMetricFamily(
            "flannel_lb_conntrack_insert_failed",
            "Kernel count of new connections whose conntrack insert clashed (e.g. NAT tuples), per netns",
            value=insert_failed,
        )
        drops = CounterMetricFamily(
            "flannel_lb_conntrack_drops",
            "Kernel count of connections refused (drop) or evicted (early_drop) by a full conntrack table",
            labels=["kind"],
        )
        drops.add_metric(["drop"], drop)
        drops.add_metric(["early_drop"], early_drop)
        yield drops


class SourceRangeDrops:
    """New connections the kernel dropped for coming from outside a Service's loadBalancerSourceRanges,
    per frontend, as last sampled (iptables zeroes a rule's count when its chain is rewritten, which
    Prometheus' rate() reads as a counter reset)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}  # (service, frontend label) -> packets

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "flannel_lb_source_range_drops",
            "New connections dropped: their client is outside the Service's loadBalancerSourceRanges",
            labels=["service", "frontend"],
        )
        for (service, frontend), packets in sorted(self.values.items()):
            family.add_metric([service, frontend], packets)
        yield family


class Metrics:
    """Everything the agent reports. One registry per agent, so tests can run several side by side."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.syncs = Counter(
            "flannel_lb_syncs", "Data-plane syncs, by kind and result", ["kind", "result"], registry=r
        )
        self.sync_seconds = Histogram(
            "flannel_lb_sync_duration_seconds",
            "Time to compute the plan and apply it to the kernel",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.programming_seconds = Histogram(
            "flannel_lb_network_programming_duration_seconds",
            "From an etcd change reaching the agent to its rules being live",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.last_sync = Gauge("flannel_lb_last_successful_sync_timestamp_seconds", "Unix time", registry=r)
        self.frontends = Gauge(
            "flannel_lb_frontends", "Frontends (address:port/protocol) programmed", registry=r
        )
        self.backends = Gauge("flannel_lb_backends", "Backends over all frontends", registry=r)
        self.excluded = Gauge(
            "flannel_lb_excluded_endpoints", "Endpoints left out, by reason", ["reason"], registry=r
        )
        self.problems = Gauge(
            "flannel_lb_input_problems", "etcd keys that could not be used, by kind", ["kind"], registry=r
        )
        self.conflicts = Gauge(
            "flannel_lb_conflicts", "address:port/protocol claimed by more than one Service", registry=r
        )
        self.denied = Gauge(
            "flannel_lb_denied_claims", "LB address:port claims refused by [policy]", registry=r
        )
        self.held = Gauge(
            "flannel_lb_held_services",
            "Services served from the saved last good frontends: their etcd spec does not decode",
            registry=r,
        )
        self.state_file_skipped = Gauge(
            "flannel_lb_state_file_lines_skipped",
            "Damaged lines of [lb] state_file skipped at start: their services were not held over",
            registry=r,
        )
        self.serving_stale = Gauge(
            "flannel_lb_serving_stale",
            "1 while the agent serves the state file's last good plan: etcd unreachable since it started",
            registry=r,
        )
        self.etcd_connected = Gauge(
            "flannel_lb_etcd_watch_connected", "1 while the etcd watch is up", registry=r
        )
        self.etcd_revision = Gauge(
            "flannel_lb_etcd_revision", "etcd revision of the state being served", registry=r
        )
        self.etcd_disconnects = Counter("flannel_lb_etcd_watch_failures", "Broken etcd watches", registry=r)
        self.backends_failing_checks = Gauge(
            "flannel_lb_backends_failing_checks",
            "Distinct backends (ip:port) failing the LB's own checks ([health]), whether excluded or not",
            registry=r,
        )
        self.node_paths_failing = Gauge(
            "flannel_lb_node_paths_failing",
            "flannel leases none of whose backends answers the LB's checks ([health]): their pods are out",
            registry=r,
        )
        self.health_targets = Gauge(
            "flannel_lb_health_check_targets",
            "Distinct checks ([health]: ip:port and HTTP path) the LB runs once per effective interval",
            registry=r,
        )
        self.health_effective_interval = Gauge(
            "flannel_lb_health_effective_interval_seconds",
            "Seconds between two checks of a target: [health] interval, stretched when max_rate binds",
            registry=r,
        )
        self.health_checks_per_second = Gauge(
            "flannel_lb_health_checks_per_second",
            "Checks per second the schedule runs at (targets / effective interval, at most max_rate)",
            registry=r,
        )
        self.health_checks = Counter(
            "flannel_lb_health_checks", "Backend checks finished, by result", ["result"], registry=r
        )
        self.path_faults = Gauge(
            "flannel_lb_lease_path_faults", "flannel leases with no kernel path", registry=r
        )
        self.conntrack_deleted = Counter(
            "flannel_lb_conntrack_entries_deleted", "Stale UDP/SCTP conntrack entries removed", registry=r
        )
        self.config_reloads = Counter(
            "flannel_lb_config_reloads", "SIGHUP reloads, by result", ["result"], registry=r
        )
        self.conntrack_entries = Gauge(
            "flannel_lb_conntrack_entries",
            "Conntrack entries in the agent's network namespace (nf_conntrack_count), last sample",
            registry=r,
        )
        self.conntrack_max = Gauge(
            "flannel_lb_conntrack_max", "Conntrack table size, host-wide (nf_conntrack_max)", registry=r
        )
        self.conntrack_kernel = KernelConntrackCounters()
        r.register(self.conntrack_kernel)
        self.ha_overlay_updates = Counter(
            "flannel_lb_ha_overlay_updates",
            "[ha] shared overlay identity: updates of this box's overlay from the leases, by result",
            ["result"],
            registry=r,
        )
        self.source_range_drops = SourceRangeDrops()
        r.register(self.source_range_drops)
        self._ha: tuple[Gauge, Counter] | None = None
        self._bgp: BGPMetrics | None = None
        self._ha_holder: Gauge | None = None

    def ha(self) -> tuple[Gauge, Counter]:
        """The pair's health metrics, registered on first use: a box without `[ha]` exports none."""
        if self._ha is None:
            healthy = Gauge(
                "flannel_lb_ha_healthy",
                "[ha]: 1 while the health file tells keepalived this box may hold the addresses (0 in it)",
                registry=self.registry,
            )
            failures = Counter(
                "flannel_lb_ha_health_write_failures",
                "[ha]: failed writes of the health file",
                registry=self.registry,
            )
            self._ha = (healthy, failures)
        return self._ha

    def ha_holder(self) -> Gauge:
        """[ha]: the floating addresses this box holds, registered on first use."""
        if self._ha_holder is None:
            self._ha_holder = Gauge(
                "flannel_lb_ha_addresses_held",
                "[ha]: how many of the pair's floating addresses (VIPs and the reservation's PublicIP)"
                " are on this box: all on the master, none on the backup; more than one box holding"
                " them (sum over the pair > the count of addresses) is split brain",
                registry=self.registry,
            )
        return self._ha_holder

    def bgp(self) -> BGPMetrics:
        """[bgp]'s metrics, registered on first use: a box without `[bgp]` exports none."""
        if self._bgp is None:
            self._bgp = BGPMetrics(self.registry)
        return self._bgp

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BGPMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.announced = Gauge(
            "flannel_lb_bgp_announced_vips",
            "[bgp]: VIPs this agent has on [bgp] interface, so BIRD announces them",
            registry=r,
        )
        self.session_up = Gauge(
            "flannel_lb_bgp_session_up",
            "[bgp]: 1 while BIRD's BGP session with the neighbour is Established (last poll)",
            ["neighbor"],
            registry=r,
        )
        self.bfd_up = Gauge(
            "flannel_lb_bgp_bfd_up",
            "[bgp]: 1 while BIRD's BFD session with the neighbour is Up (last poll; none with bfd off)",
            ["neighbor"],
            registry=r,
        )
        self.status_failures = Counter(
            "flannel_lb_bgp_status_failures", "[bgp]: polls of birdc that got no answer", registry=r
        )
        self.draining = Gauge("flannel_lb_bgp_draining", "[bgp]: 1 while this box drains", registry=r)


class MetricsServer:
    """A tiny HTTP server: /metrics for Prometheus, /healthz for probes (503 until the first sync)."""

    def __init__(self, listen: str, metrics: Metrics, health: HealthState) -> None:
        host, _, port = listen.rpartition(":")
        handler = _handler(metrics, health)
        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HealthState:
    """What /healthz reports: healthy once a sync succeeded and as long as the main loop is alive."""

    def __init__(self, stall_after: float = 120.0) -> None:
        self.synced = False
        self.heartbeat = time.monotonic()
        self.stall_after = stall_after
        self.detail = "starting"
        self.stale = ""  # why the rules served are the state file's, not etcd's ("" = they are etcd's)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def status(self) -> tuple[bool, str]:
        if not self.synced:
            return False, f"not synced yet: {self.detail}"
        stalled = time.monotonic() - self.heartbeat
        if stalled > self.stall_after:
            return False, f"main loop stalled for {stalled:.0f} s"
        return True, self.detail


def _handler(metrics: Metrics, health: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/livez"):
                ok, detail = health.status()
                word = "unhealthy" if not ok else "stale" if health.stale else "ok"
                if ok and health.stale:
                    detail = health.stale  # serving (200), but not what etcd says now
                self._reply(200 if ok else 503, f"{word}: {detail}\n".encode())
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the journal

    return Handler
