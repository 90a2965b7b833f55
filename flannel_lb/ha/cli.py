"""`flannel-lb ha render keepalived|conntrackd|notify`, `ha write`, `ha exec` and `ha reservation`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from flannel_lb.ha import conntrackd, files, keepalived, reservation
from flannel_lb.ha.paths import Paths
from flannel_lb.verbs import load_config, rendering


def cmd_render(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with rendering("ha", cfg.ha.state_dir):
        sys.stdout.write(files.render(cfg, args.kind, net_namespace=args.net_namespace))
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with rendering("ha", cfg.ha.state_dir):
        written = files.write_all(cfg, net_namespace=args.net_namespace)
    print("\n".join(written))
    return 0


def _execvp(file: str, argv: list[str]) -> None:
    os.execvp(file, argv)


def cmd_exec(args: argparse.Namespace, execv: Callable[[str, list[str]], None] = _execvp) -> int:
    """What the pair's systemd units run: render every file from the config, then become the daemon
    (exec, so systemd supervises keepalived or conntrackd itself, with the command the tests run)."""
    cfg = load_config(args)
    with rendering("ha", cfg.ha.state_dir):
        if not cfg.ha.enabled:
            raise ValueError("[ha] enabled is false: there is no pair to run")
        files.write_all(cfg)
    if args.daemon == "conntrackd":
        # A killed conntrackd leaves its lock and refuses to start; the unit runs one instance only.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Paths.of(cfg.ha).conntrackd_lock)
        argv = conntrackd.command(cfg.ha)
    else:
        argv = keepalived.command(cfg.ha)
    sys.stdout.flush()
    execv(argv[0], argv)
    return 0


def cmd_reservation(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with rendering("ha", cfg.ha.state_dir):
        sys.stdout.write(reservation.instructions(cfg, args.backend, args.vni))
    return 0


def register_commands(subparsers: Any) -> None:
    """Add `ha render KIND` and `ha write` to the CLI's subcommands."""
    ha = subparsers.add_parser("ha", help="the active/standby pair: keepalived and conntrackd configs")
    sub = ha.add_subparsers(dest="ha_command", required=True, metavar="VERB")
    netns_help = "render keepalived's top-level `net_namespace NAME` (a box living in a namespace)"
    r = sub.add_parser("render", help="print one rendered file of the pair, from [ha]")
    r.add_argument("kind", choices=files.KINDS, help="keepalived.conf, conntrackd.conf or the notify hook")
    r.add_argument("--net-namespace", metavar="NAME", help=netns_help)
    r.set_defaults(func=cmd_render)
    w = sub.add_parser("write", help="write every rendered file into [ha] state_dir; print their paths")
    w.add_argument("--net-namespace", metavar="NAME", help=netns_help)
    w.set_defaults(func=cmd_write)
    x = sub.add_parser("exec", help="render every file, then become keepalived or conntrackd (the units)")
    x.add_argument("daemon", choices=("keepalived", "conntrackd"))
    x.set_defaults(func=cmd_exec)
    v = sub.add_parser("reservation", help="print the flannel reservation the shared overlay identity needs")
    v.add_argument("--backend", choices=("vxlan", "host-gw"), default="vxlan", help="flannel's backend type")
    v.add_argument("--vni", type=int, default=1, help="flannel's VNI (vxlan)")
    v.set_defaults(func=cmd_reservation)
