"""`flannel-lb bgp render` and `flannel-lb bgp write`: BIRD's config from `[bgp]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flannel_lb.bgp import bird
from flannel_lb.verbs import load_config, rendering


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


def register_commands(subparsers: Any) -> None:
    """Add `bgp render` and `bgp write` to the CLI's subcommands."""
    bgp = subparsers.add_parser("bgp", help="scale out behind BGP ECMP: BIRD's config")
    sub = bgp.add_subparsers(dest="bgp_command", required=True, metavar="VERB")
    r = sub.add_parser("render", help="print bird.conf, rendered from [bgp]")
    r.set_defaults(func=cmd_render)
    w = sub.add_parser("write", help="write bird.conf into [bgp] state_dir; print its path")
    w.set_defaults(func=cmd_write)
