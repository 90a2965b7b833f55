"""What the agent drives: a data plane that turns a Plan into kernel state, with iptables or nftables.

`dataplane.writer` chooses it. The iptables writers program a `RuleSet` (`rules.build_ruleset`); the
nftables writer programs its own table from the plan (`nft_layout`). Both remember what they applied,
adopt what a previous agent left, and send only what changed.
"""

from __future__ import annotations

from typing import Protocol

from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.rules import build_ruleset
from flannel_lb.dataplane.writer import SyncResult, Writer
from flannel_lb.desired import Plan


class SyncReport(Protocol):
    """What one sync did."""

    @property
    def mode(self) -> str: ...

    @property
    def text(self) -> str: ...  # the transaction sent to the kernel ("" when nothing changed)

    @property
    def seconds(self) -> float: ...

    @property
    def applied(self) -> bool: ...

    def summary(self) -> dict[str, int]: ...


class DataPlane(Protocol):
    options: Options

    def sync(self, plan: Plan, *, verify: bool = False) -> SyncReport: ...

    def render(self, plan: Plan) -> str: ...

    def cleanup(self) -> str: ...

    def close(self) -> None: ...


class IptablesPlane:
    """`build_ruleset` feeding a RuleSet writer (iptables-restore or libiptc)."""

    def __init__(self, writer: Writer, options: Options) -> None:
        self.writer = writer
        self.options = options

    def sync(self, plan: Plan, *, verify: bool = False) -> SyncResult:
        # verify: the periodic resync reads the kernel back and rewrites only what drifted
        return self.writer.sync(build_ruleset(plan, self.options), verify=verify)

    def render(self, plan: Plan) -> str:
        return self.writer.render(build_ruleset(plan, self.options))

    def cleanup(self) -> str:
        changes = self.writer.cleanup()
        removed, jumps = len(changes.delete), len(changes.del_jumps)
        return f"removed {removed} chains and {jumps} jumps owned by flannel-lb ({self.writer.prefix}*)"

    def close(self) -> None:
        self.writer.close()
