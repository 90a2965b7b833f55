"""The agent's periodic conntrack sample: metrics, and one log line each time usage crosses warn_usage."""

from __future__ import annotations

import structlog

from flannel_lb.daemon.metrics import Metrics
from flannel_lb.kernel.conntrack_limits import Paths, Reader, Stats, read_stats, read_text

log = structlog.get_logger("flannel_lb.conntrack")


class Monitor:
    """The agent's periodic sample: metrics, and one log line each time usage crosses warn_usage."""

    def __init__(
        self, metrics: Metrics | None = None, read: Reader = read_text, paths: Paths | None = None
    ) -> None:
        self.metrics, self.read, self.paths = metrics, read, paths or Paths()
        self.filling = False
        self._unreadable = False

    def sample(self, warn_usage: float) -> Stats | None:
        """Read the stats and log crossings; None (logged once until it recovers) when they cannot be read."""
        try:
            return self._sample(warn_usage)
        except Exception as e:  # a sample must never stop the agent from serving
            log.error("conntrack_sample_failed", error=repr(e))
            return None

    def _sample(self, warn_usage: float) -> Stats | None:
        try:
            stats = read_stats(self.read, self.paths.sysctl_dir, self.paths.stat)
        except Exception as e:
            if not self._unreadable:
                self._unreadable = True
                log.warning("conntrack_stats_unreadable", error=repr(e), hint="nf_conntrack not loaded yet?")
            return None
        self._unreadable = False
        if self.metrics is not None:
            self.metrics.conntrack_entries.set(stats.count)
            self.metrics.conntrack_max.set(stats.max)
            c = stats.counters
            self.metrics.conntrack_kernel.values = (c.insert_failed, c.drop, c.early_drop)
        if stats.usage >= warn_usage and not self.filling:
            self.filling = True
            log.warning(
                "conntrack_table_filling",
                entries=stats.count,
                max=stats.max,
                usage=round(stats.usage, 3),
                warn_usage=warn_usage,
                hint="when it is full new connections are dropped: raise net.netfilter.nf_conntrack_max",
            )
        elif stats.usage < warn_usage and self.filling:
            self.filling = False
            log.info("conntrack_table_ok", entries=stats.count, max=stats.max, usage=round(stats.usage, 3))
        return stats
