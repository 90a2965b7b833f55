"""The daemon: keeps the kernel's NAT rules in step with etcd, and fails static.

One thread follows etcd (`ClusterSource.stream`) and posts updates to an inbox. The main loop owns
everything else: it applies updates to the cluster state, re-plans the services they touched,
coalesces bursts (`min_sync_interval`), writes only the frontend chains that changed, checks the
kernel paths to the leases (netcheck), repairs drift with a periodic full resync, and pings
systemd's watchdog. Nothing here ever removes working rules because etcd is down, hung or sending
garbage: the rules only change when a fresh, decoded state says so. SIGTERM leaves them in place.
With `[bgp]`, SIGUSR1 (`flannel-lb drain`, or SIGTERM with `drain_on_sigterm`) drains the box first:
the VIPs are withdrawn for good, the loop keeps the rules in step while the open flows to the VIPs
end (or `drain_timeout` passes), then the agent exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from flannel_lb import config as config_mod
from flannel_lb import parts
from flannel_lb.bgp import drain as drain_files
from flannel_lb.bgp.announce import Announcer
from flannel_lb.daemon import memory
from flannel_lb.daemon.backend_checks import BackendChecker, check_targets
from flannel_lb.daemon.conntrack_monitor import Monitor
from flannel_lb.daemon.draining import Drain
from flannel_lb.daemon.metrics import HealthState, Metrics
from flannel_lb.daemon.overlay_keeper import OverlayKeeper
from flannel_lb.daemon.reporting import SyncReporter
from flannel_lb.daemon.scheduler import SyncScheduler
from flannel_lb.daemon.sdnotify import Notifier
from flannel_lb.daemon.source_ranges import DropSampler
from flannel_lb.daemon.tier import TierSignals
from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.plane import DataPlane, SyncReport, dataplane_options, make_dataplane
from flannel_lb.decode.model import Lease, NetworkConfig
from flannel_lb.kernel import conntrack_limits
from flannel_lb.kernel.conntrack import clear_stale, stale_flows
from flannel_lb.kernel.health import is_local_address
from flannel_lb.plan import bootplan, holdover
from flannel_lb.plan.model import Plan
from flannel_lb.plan.planner import Planner
from flannel_lb.source.records import Snapshot, Status, Update
from flannel_lb.source.watcher import ClusterSource
from flannel_lb.state.cluster import Change, ClusterState

log = structlog.get_logger("flannel_lb.agent")

NETCHECK_INTERVAL = 2.0  # seconds between kernel path checks (routes appearing later are picked up)
SYNC_RETRY_MAX = 30.0


class PathChecker(Protocol):
    def check(
        self,
        leases: list[Lease],
        network: NetworkConfig | None,
        own_subnet: ipaddress.IPv4Network | None = None,
    ) -> dict[ipaddress.IPv4Network, str]: ...


@dataclass(slots=True)
class _Reload:
    """Posted by SIGHUP: re-read the config file."""


@dataclass(slots=True)
class _Health:
    """Posted by the backend checks: the backends now failing them."""

    down: frozenset[tuple[str, int]]


@dataclass(slots=True)
class _Paths:
    """Posted by the backend checks: the leases none of whose backends answers them."""

    failing: frozenset[ipaddress.IPv4Network]


@dataclass(slots=True)
class _Drain:
    """Posted by SIGUSR1 (`flannel-lb drain`) or a configured SIGTERM: drain, then exit."""


@dataclass(slots=True)
class _SourceDone:
    error: BaseException | None


Input = Update | _Reload | _Health | _Paths | _Drain | _SourceDone  # what the loop takes from its inbox


def enable_ip_forward(path: Path = Path("/proc/sys/net/ipv4/ip_forward")) -> bool:
    """Turn on forwarding in this network namespace; True if it had to be changed."""
    if path.read_text().strip() == "1":
        return False
    path.write_text("1\n")
    return True


class Agent:
    def __init__(
        self,
        cfg: config_mod.Config,
        *,
        dataplane: DataPlane | None = None,
        checker: PathChecker | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        announcer: Announcer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        # [bgp]: the VIPs go on the interface after a live sync and off when the data plane fails or the
        # agent stops (None: not announcing; `run` makes one when [bgp] is on, `sync --once` never does)
        self.state: ClusterState = parts.new_state(cfg)
        self.planner = Planner(self.state, parts.plan_settings(cfg))
        self.dataplane = dataplane if dataplane is not None else make_dataplane(cfg)
        self.saver: holdover.Saver | None = None
        self.metrics = metrics or Metrics()
        self.tier = TierSignals(cfg, self.metrics, announcer)  # keepalived's health file, BGP
        self.reporter = SyncReporter(self.metrics)
        if cfg.lb.state_file:
            loaded = holdover.load(Path(cfg.lb.state_file))
            self.planner.holdover = loaded.saved
            self.metrics.state_file_skipped.set(len(loaded.skipped))
            self.saver = holdover.Saver(Path(cfg.lb.state_file))
        self.checker = checker
        self.conntrack = Monitor(self.metrics)
        self.drops = DropSampler(self.metrics)
        self.overlay: OverlayKeeper | None = None  # [ha] shared identity: started by run()
        self.health = HealthState()
        self.notifier = notifier or Notifier()
        self.clock = clock
        # SimpleQueue: its put() is reentrant, so signal handlers may post to it
        self.inbox: queue.SimpleQueue[Input] = queue.SimpleQueue()
        self.drain: Drain | None = None  # a drain in progress
        self.drain_requested = False  # set by the signal handler, before the loop sees _Drain
        self.drained = False  # the drain is over: `run` returns
        self.plan: Plan | None = None  # what the kernel holds (the last plan applied)
        self.have_snapshot = False
        self._pending: Change | None = None  # changes not yet synced
        self.last_sync_seconds = 0.0  # the last successful sync: plan, kernel write, conntrack cleanup
        self.scheduler = SyncScheduler(
            min_interval=cfg.dataplane.min_sync_interval,
            full_interval=cfg.dataplane.full_resync_interval,
            netcheck_interval=NETCHECK_INTERVAL,
            retry_max=SYNC_RETRY_MAX,
            now=clock(),
        )
        self._ready_sent = False
        self._settled = False  # the first sync from an etcd snapshot is done (its memory frozen)
        self.checker_thread: BackendChecker | None = None  # [health]: started by run()
        self.stale: bootplan.Header | None = None  # serving the state file's plan: no snapshot yet
        # keepalived's track_file ([ha] enabled): `run` opens it; `sync --once` leaves it alone

    @property
    def options(self) -> Options:
        """What the data plane currently renders with."""
        return self.dataplane.options

    def _use_options(self, options: Options) -> None:
        """The one place options change (start, reload, flannel's config, the boot plan); a writer given
        new ones rebuilds what they shape."""
        if options != self.dataplane.options:
            self.dataplane.options = options

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set. The rules stay in the kernel afterwards."""
        self.prepare_host()
        self.tier.start()
        if self.cfg.ha.enabled and self.cfg.ha.shared_overlay and self.overlay is None:
            self.overlay = OverlayKeeper(self.cfg.ha, self.metrics)
        source = parts.source(self.cfg)
        feeder = threading.Thread(target=self._feed, args=(source, stop), name="etcd-source", daemon=True)
        feeder.start()
        if self.cfg.health.enabled:
            self.checker_thread = BackendChecker(
                self.cfg.health,
                lambda down: self.inbox.put(_Health(down)),
                self.metrics,
                on_paths=lambda failing: self.inbox.put(_Paths(failing)),
                active=self._checks_come_back(),
            )
            self.checker_thread.start()
        try:
            while not stop.is_set() and not self.drained:
                self.step()
        finally:
            stop.set()
            if self.checker_thread is not None:
                self.checker_thread.stop()
            self.notifier.stopping()
            feeder.join(timeout=10)
            self.close()
            log.info("stopped", rules="left in place", frontends=len(self.plan.frontends) if self.plan else 0)

    def prepare_host(self) -> None:
        """What the rules need from this host besides themselves, for `run` and `sync --once` alike:
        forwarding on (`manage_ip_forward`) and the opt-in conntrack limits. Never raises."""
        if self.cfg.dataplane.manage_ip_forward:
            try:
                if enable_ip_forward():
                    log.info("ip_forward_enabled")
            except OSError as e:
                log.error(
                    "ip_forward_unchangeable", error=str(e), hint="DNATed packets will not be forwarded"
                )
        conntrack_limits.apply_at_start(self.cfg.conntrack, self.conntrack.paths)  # opt-in; never raises

    def close(self) -> None:
        """Withdraw the BGP announcement (when announcing), save the last plan (when configured) and
        release the data plane; the rules stay."""
        self.tier.stopping()
        if self.saver is not None:
            self.saver.close()
        self.dataplane.close()

    def request_reload(self) -> None:
        self.inbox.put(_Reload())

    def request_drain(self) -> None:
        """Safe in a signal handler: the loop starts the drain at its next turn."""
        self.drain_requested = True
        self.inbox.put(_Drain())

    def _feed(self, source: ClusterSource, stop: threading.Event) -> None:
        try:
            for update in source.stream(stop):
                self.inbox.put(update)
            self.inbox.put(_SourceDone(None))
        except BaseException as e:  # the loop decides; a dead feeder must not go unnoticed
            self.inbox.put(_SourceDone(e))

    def _sample_ha_addresses(self) -> None:
        """How many of the pair's floating addresses are here (`flannel_lb_ha_addresses_held`): one
        bind each; summed over both boxes by the monitoring, it shows a split brain."""
        ha = self.cfg.ha
        floating = [*ha.addresses, *([ha.overlay_public_ip] if ha.shared_overlay else [])]
        self.metrics.ha_holder().set(sum(1 for a in floating if is_local_address(a)))

    def _checks_come_back(self) -> Callable[[], bool] | None:
        """[ha] shared identity: the pods answer the pair's address, which only the holder of its
        PublicIP receives; a standby checking would see every backend fail."""
        ha = self.cfg.ha
        if not (ha.enabled and ha.shared_overlay):
            return None
        return lambda: is_local_address(ha.overlay_public_ip)

    def step(self) -> None:
        """One turn of the loop: take what arrived (waiting at most until the scheduler's next
        deadline), then run the netcheck and the sync that are due."""
        now = self.clock()
        wait = self.scheduler.deadline(now, watching=self.have_snapshot) - now
        if self.drain is not None:
            wait = min(wait, self.drain.next_check - now)
        try:
            item = self.inbox.get(timeout=max(0.0, min(wait, 1.0)))
        except queue.Empty:
            item = None
        while item is not None:
            self.handle(item)
            try:
                item = self.inbox.get_nowait()  # coalesce everything already waiting
            except queue.Empty:
                item = None
        self.health.beat()
        self.tier.turn(self.clock())
        if self.drain is not None and self.drain.due(self.clock()):
            self._drain_check()
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog()
        if not self.have_snapshot:
            return
        now = self.clock()
        if self.scheduler.netcheck_due(now):
            if self.overlay is not None:
                self.overlay.turn(self.state)  # first: the netcheck then sees the routes it made
            if self.cfg.ha.enabled:
                self._sample_ha_addresses()
            self._netcheck()
            self.conntrack.sample(self.cfg.conntrack.warn_usage)  # never raises
            self.drops.sample(self.plan, self.dataplane)  # never raises
            self.scheduler.netcheck_done(now)
        expiry = self.planner.next_expiry()
        if expiry is not None and time.time() >= expiry:
            self._mark(None)  # a v2 lease ran out: nothing in etcd says so until its TTL event
        due = self.scheduler.due(now)
        if due is not None:
            self.sync(full=due == "full")

    # --- inputs -----------------------------------------------------------------------------------

    def handle(self, item: Input) -> None:
        """Apply one input: an etcd update or status, a reload request, the end of the source."""
        if isinstance(item, Status):
            self.metrics.etcd_connected.set(1 if item.connected else 0)
            if item.connected:
                log.info("etcd_connected", endpoint=item.endpoint)
                self.health.detail = f"etcd watch up ({item.endpoint})"
            else:
                self.metrics.etcd_disconnects.inc()
                log.warning("etcd_unavailable", reason=item.reason, attempt=item.attempt, rules="kept")
                self.health.detail = f"etcd unavailable, serving the last good rules: {item.reason}"
                if not self.have_snapshot and self.plan is None:
                    self._serve_last_good(item.reason)
            return
        if isinstance(item, _Reload):
            self.reload()
            return
        if isinstance(item, _Drain):
            self._drain_start()
            return
        if isinstance(item, _Health):
            self.metrics.backends_failing_checks.set(len(item.down))
            if self.planner.set_unhealthy(item.down):
                self._mark(None)
            return
        if isinstance(item, _Paths):
            if self.planner.set_failing_paths(item.failing):
                self._mark(None)
            return
        if isinstance(item, _SourceDone):
            if item.error is not None:
                log.error("etcd_source_died", error=repr(item.error))
                raise item.error
            return
        if isinstance(item, Snapshot) and self.have_snapshot and item.revision < self.state.revision:
            # Only a restore from an older backup makes etcd's revision go down.
            log.warning(
                "etcd_revision_went_backwards",
                was=self.state.revision,
                now=item.revision,
                action="serving the listed state",
            )
        change = parts.apply_update(self.state, item)
        if isinstance(item, Snapshot):
            log.info("etcd_snapshot", revision=item.revision, keys=len(item.items))
            if not self.have_snapshot:
                self.have_snapshot = True
                change = Change(set(), everything=True)
                memory.first_snapshot_decoded()
        self.metrics.etcd_revision.set(self.state.revision)
        self._mark(change)

    def _mark(self, change: Change | None) -> None:
        if change is not None and not change.services and not change.everything:
            return
        if self._pending is None:
            self._pending = Change(set())
            self.scheduler.change(self.clock())
        self._pending.merge(change or Change(set(), everything=True))

    def _netcheck(self) -> None:
        if self.checker is None:
            return
        try:
            own = parts.lease_hint(self.cfg, self.state)
            faults = self.checker.check(self.state.leases(), self.state.network_config, own)
        except Exception as e:  # a broken netlink read must not stop serving
            log.error("netcheck_failed", error=repr(e))
            return
        self.metrics.path_faults.set(len(faults))
        if self.planner.set_path_faults(faults):
            log.info("lease_paths_changed", faults={str(k): v for k, v in faults.items()})
            self._mark(None)

    # --- drain ------------------------------------------------------------------------------------

    def _drain_start(self) -> None:
        """Withdraw the VIPs for good, keep the rules, start counting the open flows to them."""
        if self.drain is not None or self.drained:
            log.info("drain_already_started")
            return
        announcer = self.tier.announcer
        if not self.cfg.bgp.enabled or announcer is None:
            self.drain_requested = False
            log.warning("drain_ignored", reason="[bgp] is off: nothing is announced, so nothing to drain")
            return
        now = self.clock()
        withdrawn = self.tier.drain()
        self.drain = Drain(announcer.addresses, announcer.netns, now, self.cfg.bgp.drain_timeout)
        self.drain.tally(now)
        log.info(
            "drain_started",
            withdrawn=withdrawn if withdrawn is not None else "failed (see bgp_withdraw_failed)",
            open_flows=self.drain.open,
            timeout=self.drain.timeout,
            rules="kept until the agent exits, and after",
        )
        self.notifier.status(f"draining: {self.drain.open} open flows, at most {self.drain.timeout:g} s")
        self._drain_check(counted=True)

    def _drain_check(self, *, counted: bool = False) -> None:
        drain = self.drain
        assert drain is not None
        now = self.clock()
        if not counted:
            drain.tally(now)
        reason = drain.finished(now)
        if reason is None:
            return
        took = round(now - drain.started, 3)
        if drain.open < 0:
            reason = "not counted"
        result = drain_files.DrainResult(os.getpid(), drain.open, took, reason)
        log.info("drain_finished", open_flows_left=drain.open, seconds=took, reason=reason)
        try:
            drain_files.write_result(self.cfg.bgp, result)
        except OSError as e:
            log.error("drain_result_unwritable", error=str(e))
        self.drained = True

    def reload(self) -> None:
        """Re-read the config file (SIGHUP, through `request_reload`); a broken one is refused."""
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.cfg.path)
        except config_mod.ConfigError as e:
            self.metrics.config_reloads.labels("error").inc()
            log.error("config_reload_failed", error=str(e), kept="the running config")
            self.notifier.ready("config reload failed; running config kept")
            return
        restart = (cfg.etcd, cfg.flannel, cfg.kubernetes, cfg.ha.enabled, cfg.ha.state_dir) != (
            self.cfg.etcd,
            self.cfg.flannel,
            self.cfg.kubernetes,
            self.cfg.ha.enabled,
            self.cfg.ha.state_dir,
        )
        if restart or cfg.dataplane.chain_prefix != self.cfg.dataplane.chain_prefix:
            self.metrics.config_reloads.labels("needs_restart").inc()
            log.warning(
                "config_reload_partial",
                detail="etcd, flannel, kubernetes, chain_prefix and [ha] enabled/state_dir need a restart",
            )
        self.tier.reconfigured(cfg)
        if cfg.conntrack != self.cfg.conntrack:
            conntrack_limits.apply_at_start(cfg.conntrack, self.conntrack.paths)  # opt-in; never raises
        self.cfg = cfg
        self.scheduler.min_interval = cfg.dataplane.min_sync_interval
        self.scheduler.full_interval = cfg.dataplane.full_resync_interval
        self.planner.settings = parts.plan_settings(cfg)
        self._use_options(dataplane_options(cfg, self.state.network_config))
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config_reloaded", path=cfg.path)
        self._mark(None)
        self.notifier.ready("config reloaded")

    # --- output -----------------------------------------------------------------------------------

    def sync(self, *, full: bool) -> SyncReport | None:
        """Plan what changed and program it (full: the periodic verifying resync); None if it failed."""
        change, since = self._pending, self.scheduler.pending_since or 0.0
        started = time.perf_counter()
        plan = self.planner.plan(change if change is not None else Change(set()))
        kind = "full" if full else "partial"
        self._use_options(
            dataplane_options(self.cfg, self.state.network_config)
        )  # its overlay port may change
        try:
            # the periodic resync reads the kernel back and rewrites only what drifted
            result = self.dataplane.sync(plan, verify=full)
        except Exception as e:
            self.reporter.failed(kind)
            wait = self.scheduler.failed(self.clock())
            log.error("sync_failed", error=str(e), retry_in=wait, rules="unchanged")
            self.tier.broken("sync failed")
            return None
        now = self.clock()
        self.scheduler.synced(now, full=full)
        self._pending = None
        old, self.plan = self.plan, plan
        if self.checker_thread is not None:
            self.checker_thread.leases = self.planner.admission().leases  # to group the targets by node
            self.checker_thread.targets = check_targets(plan)
        if self.saver is not None and (old is None or not _same_frontends(old, plan)):
            self.saver.header_extra = {"overlay_udp_port": self.options.overlay_udp_port}
            self.saver.offer(plan)
        cleared = None
        if self.cfg.dataplane.conntrack_cleanup:
            try:
                cleared = clear_stale(stale_flows(old, plan), mark=self.options.mark)
                self.metrics.conntrack_deleted.inc(cleared.deleted + cleared.unnatted)
            except Exception as e:
                log.warning("conntrack_cleanup_failed", error=repr(e))
        # One figure for the whole sync (plan, kernel write, conntrack cleanup): the histogram, the
        # log line and `sync --once` all report this one.
        self.last_sync_seconds = round(time.perf_counter() - started, 4)
        latency = now - since if change else None
        counted = self.reporter.applied(
            old, plan, result, kind, self.last_sync_seconds, latency, self.planner.held
        )
        log.info(
            "sync",
            mode=result.mode,
            revision=plan.revision,
            frontends=len(plan.frontends),
            backends=counted.backends,
            excluded=sum(counted.excluded.values()),
            problems=len(plan.problems),
            conflicts=len(plan.conflicts),
            changed=result.summary(),
            conntrack_deleted=cleared.deleted if cleared else 0,
            seconds=self.last_sync_seconds,
        )
        self.health.synced = True
        if self.stale is not None:
            log.info("serving_live", revision=plan.revision, replaced=bootplan.describe(self.stale))
            self.stale = None
            self.health.stale = ""
            self.metrics.serving_stale.set(0)
            self.notifier.status(f"serving {len(plan.frontends)} frontends")
        self.tier.serving(live=True, full=full)
        if not self._settled:
            memory.first_sync_done()
            self._settled = True
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(f"serving {len(plan.frontends)} frontends")
        return result

    def _serve_last_good(self, reason: str) -> None:
        """etcd is unreachable and nothing was served yet: program the state file's plan, reported
        stale, so an LB that boots during an etcd outage serves what it served before. The data plane
        adopts what the kernel still holds; the first snapshot later replaces the plan by a diff."""
        if not self.planner.holdover or not self.cfg.lb.state_file:
            return
        started = time.perf_counter()
        header = bootplan.read_header(Path(self.cfg.lb.state_file))
        plan = bootplan.boot_plan(self.planner.holdover, header, self.planner.settings)
        self._use_options(
            dataclasses.replace(dataplane_options(self.cfg), overlay_udp_port=header.overlay_udp_port)
        )
        try:
            result = self.dataplane.sync(plan)
        except Exception as e:
            self.metrics.syncs.labels("boot", "error").inc()
            log.error("boot_plan_failed", error=str(e), retry="at the next etcd attempt")
            self.tier.broken("boot plan failed", withdraw=False)
            return
        self.plan, self.stale = plan, header
        counted = self.reporter.recorded(plan, result, "boot", time.perf_counter() - started)
        self.metrics.serving_stale.set(1)
        saved = bootplan.describe(header)
        self.health.synced = True
        self.tier.serving(live=False)  # the last good plan during an etcd outage: healthy, as the peer
        self.health.stale = f"serving the last good plan ({saved}) until etcd answers: {reason}"
        log.warning(
            "serving_last_good_plan",
            saved=saved,
            frontends=len(plan.frontends),
            backends=counted.backends,
            mode=result.mode,
            changed=result.summary(),
            etcd=reason,
        )
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(f"stale: etcd unreachable; serving {len(plan.frontends)} frontends ({saved})")

    def sync_once(self, retry_budget: float | None = None) -> SyncReport:
        """`flannel-lb sync --once`: one snapshot, one netcheck, one sync; the host prepared as for `run`."""
        source = parts.source(self.cfg)
        snap = source.snapshot(retry_budget=retry_budget)
        self.prepare_host()
        self.handle(snap)
        self._netcheck()
        result = self.sync(full=False)
        if result is None:
            raise RuntimeError("the sync failed; see the log for iptables' message")
        return result


def _same_frontends(a: Plan, b: Plan) -> bool:
    """Whether two plans hold the very same frontends (the planner keeps unchanged ones identical)."""
    return len(a.frontends) == len(b.frontends) and all(
        x is y for x, y in zip(a.frontends, b.frontends, strict=True)
    )


def install_signal_handlers(agent: Agent, stop: threading.Event) -> None:
    """SIGTERM/SIGINT stop (the rules stay); SIGUSR1 drains, and so does SIGTERM with `[bgp]
    drain_on_sigterm` (a second SIGTERM during the drain stops at once); SIGHUP reloads."""
    import signal

    def on_stop(signum: int, _frame: object) -> None:
        bgp = agent.cfg.bgp
        if signum == signal.SIGTERM and bgp.enabled and bgp.drain_on_sigterm and not agent.drain_requested:
            log.info("signal", signal="SIGTERM", action="drain ([bgp] drain_on_sigterm), then stop")
            agent.request_drain()
            return
        log.info("signal", signal=signal.Signals(signum).name, action="stop; rules stay in place")
        stop.set()

    def on_drain(_signum: int, _frame: object) -> None:
        log.info("signal", signal="SIGUSR1", action="drain, then stop")
        agent.request_drain()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(drain_files.SIGNAL, on_drain)
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGHUP, lambda _s, _f: agent.request_reload())
