"""`flannel-lb ha render keepalived|conntrackd|notify`, `ha write` and `ha reservation`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flannel_lb.ha import files, reservation
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
    v = sub.add_parser("reservation", help="print the flannel reservation the shared overlay identity needs")
    v.add_argument("--backend", choices=("vxlan", "host-gw"), default="vxlan", help="flannel's backend type")
    v.add_argument("--vni", type=int, default=1, help="flannel's VNI (vxlan)")
    v.set_defaults(func=cmd_reservation)
