"""What the agent tells the rest of the load-balancer tier about this box: keepalived's health file
(`[ha]`, daemon/ha_health.py) and the BGP announcement of the VIPs (`[bgp]`, bgp/announce.py).

Both follow the data plane, never etcd: a box serves (and says so) once the kernel holds its plan,
steps back when the kernel refuses it, and changes nothing during an etcd outage, when its rules
are still right and so is what it tells the others (fail static).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from flannel_lb import config as config_mod
from flannel_lb.bgp.announce import Announcer
from flannel_lb.daemon.ha_health import HAHealth
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.ha.paths import Paths
from flannel_lb.kernel.netns import RunError

log = structlog.get_logger("flannel_lb.agent")


class TierSignals:
    """The box's fitness as keepalived and BGP see it; calls never raise into the agent's loop."""

    def __init__(self, cfg: config_mod.Config, metrics: Metrics, announcer: Announcer | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.announcer = announcer
        self.ha_health: HAHealth | None = None
        self._announced = False

    def start(self) -> None:
        """Only the running agent speaks for the box (`sync --once` must not hand addresses over)."""
        if self.cfg.ha.enabled and self.ha_health is None:
            self.ha_health = HAHealth(Path(Paths.of(self.cfg.ha).health_file), self.metrics)
        if self.announcer is None and self.cfg.bgp.enabled:
            self.announcer = Announcer.of(self.cfg.bgp)

    def turn(self) -> None:
        """Once per turn of the loop: a health verdict whose write failed is retried (no I/O otherwise)."""
        if self.ha_health is not None:
            self.ha_health.flush()

    def serving(self, *, live: bool, full: bool = False) -> None:
        """The kernel holds the plan: healthy; announced once the plan is live (from etcd, not the state
        file's), and again at every full resync, which puts back an address someone removed."""
        if self.ha_health is not None:
            self.ha_health.synced()
        if live and (full or not self._announced):
            self._announce(True, "live sync")

    def broken(self, reason: str, *, withdraw: bool = True) -> None:
        """The kernel refused the plan: a healthy peer takes the addresses, the others serve the flows."""
        if self.ha_health is not None:
            self.ha_health.failed()
        if withdraw:
            self._announce(False, reason)

    def stopping(self) -> None:
        self._announce(False, "stopping")

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

    def _announce(self, fit: bool, reason: str) -> None:
        if self.announcer is None:
            return
        try:
            changes = self.announcer.announce() if fit else self.announcer.withdraw()
        except (RunError, OSError, ValueError) as e:
            log.error("bgp_announce_failed" if fit else "bgp_withdraw_failed", error=str(e), reason=reason)
            return
        if changes or fit != self._announced:
            log.info("bgp_announced" if fit else "bgp_withdrawn", changed=changes, reason=reason)
        self._announced = fit
