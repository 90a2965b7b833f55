"""What the agent tells the rest of the load-balancer tier about this box: keepalived's health file
(`[ha]`, daemon/ha_health.py) and the BGP announcement of the VIPs (`[bgp]`, bgp/announce.py).

Both follow the data plane, never etcd: a box serves (and says so) once the kernel holds its plan,
steps back when the kernel refuses it, and changes nothing during an etcd outage, when its rules
are still right and so is what it tells the others (fail static).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import structlog

from flannel_lb import config as config_mod
from flannel_lb.bgp import drain
from flannel_lb.bgp import status as bgp_status
from flannel_lb.bgp.announce import Announcer
from flannel_lb.bgp.redirect import Redirect
from flannel_lb.daemon.ha_health import HAHealth
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.ha.paths import Paths
from flannel_lb.kernel.netns import RunError

log = structlog.get_logger("flannel_lb.agent")

REDIRECT_REFRESH = 2.0  # seconds between reads of the routers' MACs (the redirect's neighbour set)
SESSION_POLL = 5.0  # seconds between birdc polls for the session metrics
BIRDC_TIMEOUT = 2.0  # the loop waits for birdc at most this long


class TierSignals:
    """The box's fitness as keepalived and BGP see it; calls never raise into the agent's loop."""

    def __init__(self, cfg: config_mod.Config, metrics: Metrics, announcer: Announcer | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.announcer = announcer
        self.ha_health: HAHealth | None = None
        self._announced = False
        self.drained = False  # a drain withdrew the VIPs: nothing announces them again until a restart
        self._pid_at: config_mod.BGPConfig | None = None  # where the pid file was written
        self.redirect: Redirect | None = None  # [bgp] peers: second chance for flows the router moved
        self._redirect_with: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (MACs, peers) written
        self._redirect_due = 0.0
        self._redirect_failing = False
        self._sessions_due = 0.0
        self._sessions_failing = False

    def start(self) -> None:
        """Only the running agent speaks for the box (`sync --once` must not hand addresses over)."""
        if self.cfg.ha.enabled and self.ha_health is None:
            self.ha_health = HAHealth(Path(Paths.of(self.cfg.ha).health_file), self.metrics)
        if self.announcer is None and self.cfg.bgp.enabled:
            self.announcer = Announcer.of(self.cfg.bgp)
        if self.cfg.bgp.enabled and self.redirect is None and self.announcer is not None:
            self.redirect = Redirect.of(self.cfg.bgp, self.announcer.netns)
            if self.redirect is not None:
                self._refresh_redirect(0.0)
        if self.cfg.bgp.enabled and self._pid_at is None:
            try:  # `flannel-lb drain` finds the agent through it
                drain.write_pid(self.cfg.bgp)
                self._pid_at = self.cfg.bgp
            except OSError as e:
                log.error("pid_file_unwritable", error=str(e), hint="`flannel-lb drain` cannot find it")

    def turn(self, now: float) -> None:
        """Once per turn of the loop: a health verdict whose write failed is retried; every
        REDIRECT_REFRESH s the routers' MACs are read and the redirect rewritten if they changed; every
        SESSION_POLL s BIRD is asked for the session metrics."""
        if self.ha_health is not None:
            self.ha_health.flush()
        if self.redirect is not None and now >= self._redirect_due:
            self._refresh_redirect(now)
        if self.announcer is not None and self.cfg.bgp.enabled and now >= self._sessions_due:
            self.poll_sessions(now)

    def poll_sessions(self, now: float) -> None:
        """Each neighbour's BGP and BFD state from birdc into the metrics; never raises."""
        self._sessions_due = now + SESSION_POLL
        bgp, metrics = self.cfg.bgp, self.metrics.bgp()
        try:
            found = bgp_status.query(bgp, self.announcer.netns if self.announcer else None, BIRDC_TIMEOUT)
        except RunError as e:
            metrics.status_failures.inc()
            for n in bgp.neighbors:
                metrics.session_up.labels(n.address).set(0)
                if bgp.bfd:
                    metrics.bfd_up.labels(n.address).set(0)
            if not self._sessions_failing:
                log.warning("bgp_status_unreadable", error=str(e), retry_in=SESSION_POLL)
            self._sessions_failing = True
            return
        self._sessions_failing = False
        for s in found:
            metrics.session_up.labels(s.address).set(1 if s.bgp is not None and s.bgp.established else 0)
            if bgp.bfd:
                metrics.bfd_up.labels(s.address).set(1 if s.bfd is not None and s.bfd.state == "Up" else 0)

    def _refresh_redirect(self, now: float) -> None:
        if self.redirect is None:
            return
        self._redirect_due = now + REDIRECT_REFRESH
        try:
            macs, peers = self.redirect.router_macs(), self.redirect.others()
            if (macs, peers) != self._redirect_with:
                self.redirect.apply(macs, peers)
                log.info("bgp_redirect_written", peers=list(peers), router_macs=list(macs))
                self._redirect_with = (macs, peers)
            self._redirect_failing = False
        except (RunError, OSError, ValueError) as e:
            if not self._redirect_failing:
                log.error("bgp_redirect_failed", error=str(e), retry_in=REDIRECT_REFRESH)
            self._redirect_failing = True

    def serving(self, *, live: bool, full: bool = False) -> None:
        """The kernel holds the plan: healthy; announced once the plan is live (from etcd, not the state
        file's), and again at every full resync, which puts back an address someone removed."""
        if self.ha_health is not None:
            self.ha_health.synced()
        if live and not self.drained and (full or not self._announced):
            self._announce(True, "live sync")

    def broken(self, reason: str, *, withdraw: bool = True) -> None:
        """The kernel refused the plan: a healthy peer takes the addresses, the others serve the flows."""
        if self.ha_health is not None:
            self.ha_health.failed()
        if withdraw:
            self._announce(False, reason)

    def drain(self) -> list[str] | None:
        """Withdraw for good (until restarted): the router sends new flows to the other boxes. The VIPs
        taken off, or None when `ip` failed (logged; `stopping` tries again)."""
        self.drained = True
        self.metrics.bgp().draining.set(1)
        return self._announce(False, "draining")

    def stopping(self) -> None:
        self._announce(False, "stopping")
        if self._pid_at is not None:
            drain.remove_pid(self._pid_at)
            self._pid_at = None

    def reconfigured(self, cfg: config_mod.Config) -> None:
        """A reloaded config: the next sync announces the new addresses (and takes off the ones no longer
        listed); a new interface or `enabled = false` first withdraws everything from the old one."""
        old, changed = self.announcer, cfg.bgp != self.cfg.bgp
        self.cfg = cfg
        if not changed:
            return
        if old is None:
            if cfg.bgp.enabled:
                log.warning("config_reload_partial", detail="[bgp] enabled at run time needs a restart")
            return
        new = Announcer.of(cfg.bgp, old.netns) if cfg.bgp.enabled else None
        if new is None or new.interface != old.interface:
            self._announce(False, "config reloaded")
        self.announcer, self._announced = new, False
        redirect = Redirect.of(cfg.bgp, old.netns) if new is not None else None
        if redirect != self.redirect:
            if redirect is None and self.redirect is not None:
                self.redirect.remove()
            self.redirect, self._redirect_with, self._redirect_due = redirect, None, 0.0

    def _announce(self, fit: bool, reason: str) -> list[str] | None:
        if self.announcer is None:
            return []
        try:
            changes = self.announcer.announce() if fit else self.announcer.withdraw()
        except (RunError, OSError, ValueError) as e:
            log.error("bgp_announce_failed" if fit else "bgp_withdraw_failed", error=str(e), reason=reason)
            return None
        if changes or fit != self._announced:
            log.info("bgp_announced" if fit else "bgp_withdrawn", changed=changes, reason=reason)
        self._announced = fit
        with contextlib.suppress(RunError, OSError, ValueError):  # the gauge only; serving goes on
            self.metrics.bgp().announced.set(len(self.announcer.announced()))
        return changes
