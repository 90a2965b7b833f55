"""Where the pair's files live: all under `[ha] state_dir`; two boxes on one host never share one."""

from __future__ import annotations

from dataclasses import dataclass

from flannel_lb.config import HAConfig


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: str

    @classmethod
    def of(cls, ha: HAConfig) -> Paths:
        return cls(ha.state_dir)

    def _in(self, name: str) -> str:
        return f"{self.state_dir.rstrip('/')}/{name}"

    @property
    def keepalived_conf(self) -> str:
        return self._in("keepalived.conf")

    @property
    def keepalived_pid(self) -> str:
        return self._in("keepalived.pid")

    @property
    def vrrp_pid(self) -> str:
        return self._in("keepalived-vrrp.pid")

    @property
    def notify_script(self) -> str:
        return self._in("notify.sh")

    @property
    def notify_fifo(self) -> str:
        return self._in("notify.fifo")

    @property
    def notify_log(self) -> str:
        return self._in("notify.log")

    @property
    def health_file(self) -> str:
        """keepalived's track_file, the running agent's: 0 = healthy, 1 = a healthy peer is preferred."""
        return self._in("agent-health")

    @property
    def conntrackd_conf(self) -> str:
        return self._in("conntrackd.conf")

    @property
    def conntrackd_lock(self) -> str:
        return self._in("conntrackd.lock")

    @property
    def conntrackd_socket(self) -> str:
        return self._in("conntrackd.ctl")

    @property
    def conntrackd_log(self) -> str:
        return self._in("conntrackd.log")
