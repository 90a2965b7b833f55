"""`flannel-lb bgp render` and `flannel-lb bgp write`: BIRD's config from `[bgp]`; `flannel-lb drain`:
take this box out of the BGP group without resetting its flows (bgp/drain.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from flannel_lb.bgp import bird, drain
from flannel_lb.verbs import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CommandError, load_config, rendering

DRAIN_GRACE = 30.0  # seconds the verb waits beyond drain_timeout for the agent to exit


def cmd_render(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with rendering("bgp", cfg.bgp.state_dir):
        sys.stdout.write(bird.render(cfg.bgp))
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with rendering("bgp", cfg.bgp.state_dir):
        print(bird.write(cfg.bgp))
    return 0


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie has exited: its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def cmd_drain(args: argparse.Namespace) -> int:
    """Signal the running agent to drain, wait for it to exit, print what it reported."""
    cfg = load_config(args)
    if not cfg.bgp.enabled:
        raise CommandError(
            f"[bgp] enabled is false in {cfg.path}: nothing is announced, so there is nothing to drain "
            "(stop the agent instead)",
            EXIT_CONFIG,
        )
    try:
        pid = drain.running_agent(cfg.bgp)
    except drain.DrainError as e:
        raise CommandError(str(e)) from None
    try:
        os.kill(pid, drain.SIGNAL)
    except ProcessLookupError:
        raise CommandError(f"agent {pid} exited before it could be asked to drain") from None
    except PermissionError:
        raise CommandError(f"not allowed to signal agent {pid}: run as root or as the agent's user") from None
    limit = cfg.bgp.drain_timeout + DRAIN_GRACE
    print(
        f"draining agent {pid}: VIPs withdrawn, waiting up to {cfg.bgp.drain_timeout:g} s "
        "for the open flows to end",
        flush=True,
    )
    if args.no_wait:
        return EXIT_OK
    started = time.monotonic()
    while _alive(pid):
        if time.monotonic() - started > limit:
            raise CommandError(f"agent {pid} did not exit within {limit:g} s of the drain request")
        time.sleep(0.1)
    try:
        result = drain.read_result(cfg.bgp)
    except drain.DrainError as e:
        raise CommandError(f"agent {pid} exited, but its drain result is unreadable: {e}") from None
    if result.pid != pid:
        older = drain.result_path(cfg.bgp)
        raise CommandError(f"agent {pid} exited without a drain result ({older} is an older one)")
    left = "not counted" if result.open_flows_left < 0 else f"{result.open_flows_left} open flows left"
    print(f"drained in {result.seconds:.1f} s ({result.reason}): {left}")
    return EXIT_OK if result.open_flows_left == 0 else EXIT_FAILED


def register_commands(subparsers: Any) -> None:
    """Add `bgp render` and `bgp write` to the CLI's subcommands."""
    bgp = subparsers.add_parser("bgp", help="scale out behind BGP ECMP: BIRD's config")
    sub = bgp.add_subparsers(dest="bgp_command", required=True, metavar="VERB")
    r = sub.add_parser("render", help="print bird.conf, rendered from [bgp]")
    r.set_defaults(func=cmd_render)
    w = sub.add_parser("write", help="write bird.conf into [bgp] state_dir; print its path")
    w.set_defaults(func=cmd_write)
    d = subparsers.add_parser(
        "drain",
        help="[bgp]: withdraw this box's VIPs, let its open flows end (or drain_timeout), stop the agent",
    )
    d.add_argument("--no-wait", action="store_true", help="signal the agent and return at once")
    d.set_defaults(func=cmd_drain)
