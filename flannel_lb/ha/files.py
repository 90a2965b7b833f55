"""The pair's rendered files, written into state_dir (atomically: a daemon never reads half a file)."""

from __future__ import annotations

import os
from pathlib import Path

from flannel_lb.config import Config
from flannel_lb.ha import conntrackd, keepalived
from flannel_lb.ha.paths import Paths

KINDS = ("keepalived", "conntrackd", "notify")


def hash_limit(cfg: Config) -> int:
    """conntrackd's HashLimit: twice the conntrack table the [conntrack] section asks for (the manual)."""
    return 2 * max(cfg.conntrack.min, 131072)


def render(cfg: Config, kind: str, *, net_namespace: str | None = None) -> str:
    if kind == "keepalived":
        return keepalived.render(cfg.ha, net_namespace=net_namespace)
    if kind == "conntrackd":
        return conntrackd.render(cfg.ha, hash_limit(cfg))
    if kind == "notify":
        if not cfg.ha.enabled:
            raise ValueError("[ha] enabled is false: there is no pair to render")
        return keepalived.render_notify_script(cfg.ha)
    raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


def write_all(cfg: Config, *, net_namespace: str | None = None) -> list[str]:
    """Render every file into state_dir (created 0755, as keepalived's script security wants); their paths."""
    paths = Paths.of(cfg.ha)
    targets = {
        "keepalived": (paths.keepalived_conf, 0o644),
        "conntrackd": (paths.conntrackd_conf, 0o644),
        "notify": (paths.notify_script, 0o755),
    }
    texts = {kind: render(cfg, kind, net_namespace=net_namespace) for kind in KINDS}  # all or nothing
    state_dir = Path(cfg.ha.state_dir)
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    written = []
    for kind, (path, mode) in targets.items():
        tmp = Path(f"{path}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, texts[kind].encode())
            os.fchmod(fd, mode)  # whatever the umask
        finally:
            os.close(fd)
        os.replace(tmp, path)
        written.append(path)
    return written
