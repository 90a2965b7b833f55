"""`flannel-lb ha render keepalived|conntrackd|notify` and `flannel-lb ha write`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from flannel_lb import config as config_mod
from flannel_lb.ha import files
from flannel_lb.text import printable

EXIT_FAILED, EXIT_CONFIG = 1, 2  # as the other verbs: it failed; the config cannot be used


class _Refused(Exception):
    """A config the pair's files cannot be rendered from, or a state_dir that cannot be written."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def _config(args: argparse.Namespace) -> config_mod.Config:
    try:
        return config_mod.load(args.config or config_mod.default_path())
    except config_mod.ConfigError as e:
        raise _Refused(f"config error: {e}") from None


def _run(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _Refused as e:
            print(f"flannel-lb ha {args.ha_command}: {printable(str(e))}", file=sys.stderr)
            return e.code

    return run


def cmd_render(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        sys.stdout.write(files.render(cfg, args.kind, net_namespace=args.net_namespace))
    except ValueError as e:
        raise _Refused(str(e)) from None
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        written = files.write_all(cfg, net_namespace=args.net_namespace)
    except ValueError as e:
        raise _Refused(str(e)) from None
    except OSError as e:
        message = f"cannot write into [ha] state_dir {cfg.ha.state_dir}: {e.strerror or e}"
        raise _Refused(message, EXIT_FAILED) from None
    print("\n".join(written))
    return 0


def register_commands(subparsers: Any) -> None:
    """Add `ha render KIND` and `ha write` to the CLI's subcommands."""
    ha = subparsers.add_parser("ha", help="the active/standby pair: keepalived and conntrackd configs")
    sub = ha.add_subparsers(dest="ha_command", required=True, metavar="VERB")
    netns_help = "render keepalived's top-level `net_namespace NAME` (a box living in a namespace)"
    r = sub.add_parser("render", help="print one rendered file of the pair, from [ha]")
    r.add_argument("kind", choices=files.KINDS, help="keepalived.conf, conntrackd.conf or the notify hook")
    r.add_argument("--net-namespace", metavar="NAME", help=netns_help)
    r.set_defaults(func=_run(cmd_render))
    w = sub.add_parser("write", help="write every rendered file into [ha] state_dir; print their paths")
    w.add_argument("--net-namespace", metavar="NAME", help=netns_help)
    w.set_defaults(func=_run(cmd_write))
