"""What every `flannel-lb` verb shares: the exit codes, the error a verb stops with, and its config."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from flannel_lb import config as config_mod

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and the answer is "no" (not found, check failed, nothing applied)
EXIT_CONFIG = 2
EXIT_ETCD = 3


class CommandError(Exception):
    """Ends a verb with one message (printed without a traceback) and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """The config of `--config`, `$FLANNEL_LB_CONFIG` or the default path; a bad one ends the verb."""
    try:
        return config_mod.load(args.config or config_mod.default_path())
    except config_mod.ConfigError as e:
        raise CommandError(f"config error: {e}", EXIT_CONFIG) from None


@contextmanager
def rendering(section: str, state_dir: str) -> Iterator[None]:
    """Around a renderer of daemon configs (`ha`, `bgp`): a config it cannot render (ValueError) ends
    the verb as a config error, a state_dir it cannot write ends it naming the section and the path."""
    try:
        yield
    except ValueError as e:
        raise CommandError(str(e), EXIT_CONFIG) from None
    except OSError as e:
        raise CommandError(
            f"cannot write into [{section}] state_dir {state_dir}: {e.strerror or e}"
        ) from None
