"""[ha] with a shared overlay identity: the agent keeps the pair's side of the flannel overlay in step
with the leases (kernel/overlay.py), on both boxes, so a takeover needs no overlay change at all."""

from __future__ import annotations

import ipaddress
import time

import structlog

from flannel_lb.config import HAConfig
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.kernel.netns import RunError
from flannel_lb.kernel.overlay import Desired, Identity, Overlay, OverlayError, desired
from flannel_lb.state.cluster import ClusterState

log = structlog.get_logger("flannel_lb.agent")

REPAIR_INTERVAL = 30.0  # seconds: an unchanged overlay is still read back this often, to repair it


class OverlayKeeper:
    """Applies the desired overlay when the leases change, and every REPAIR_INTERVAL; never raises."""

    def __init__(self, ha: HAConfig, metrics: Metrics, netns: str | None = None) -> None:
        me = Identity(
            ipaddress.IPv4Network(ha.overlay_subnet), ha.overlay_public_ip, ha.vtep_mac, ha.overlay_interface
        )
        self.overlay = Overlay(me, netns)
        self.metrics = metrics
        self._applied: Desired | None = None
        self._at = 0.0
        self._failing = ""

    def turn(self, state: ClusterState, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        try:
            want = desired(state.network_config, state.leases(), self.overlay.me)
            if want is None or (want == self._applied and now - self._at < REPAIR_INTERVAL):
                return
            changes = self.overlay.apply(want)
        except (OverlayError, RunError, ValueError) as e:  # a read-back that fails or is not JSON too
            self.metrics.ha_overlay_updates.labels("error").inc()
            if str(e) != self._failing:
                log.error("ha_overlay_failed", error=str(e), kept="what the kernel holds")
            self._failing = str(e)
            return
        self._applied, self._at, self._failing = want, now, ""
        if changes:
            self.metrics.ha_overlay_updates.labels("ok").inc()
            log.info("ha_overlay_updated", peers=len(want.peers), changes=len(changes), first=changes[:5])
