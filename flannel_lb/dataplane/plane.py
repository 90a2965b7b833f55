"""What the agent drives: a data plane that turns a Plan into kernel state, with iptables or nftables.

`dataplane.writer` chooses it. The iptables writers program a `RuleSet` (`rules.build_ruleset`); the
nftables writer programs its own table from the plan (`nft_layout`). Both remember what they applied,
adopt what a previous agent left, and send only what changed.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from flannel_lb.dataplane.iptables.rules import FILTER, RuleBuilder, RuleSet, with_forward_jump
from flannel_lb.dataplane.options import Options
from flannel_lb.dataplane.writer import SyncResult, SyncState, Writer
from flannel_lb.plan.model import Plan

log = structlog.get_logger("flannel_lb.dataplane")


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
    """A RuleSet writer (iptables-restore or libiptc) fed by a `RuleBuilder` (build_ruleset, memoised).

    With `forward_accept = "auto"` the FORWARD -> FLB-FORWARD jump follows what the writer's read-backs
    (adopt, verify, full) see of filter FORWARD, decided right after each read-back: left out while
    FORWARD accepts everything anyway, installed while that is unknown and, for good, once FORWARD could
    drop flannel-lb's flows. A FORWARD that turns to DROP later is noticed by the next verifying sync.
    """

    def __init__(self, writer: Writer, options: Options) -> None:
        self.writer = writer
        self.options = options  # the agent replaces it on a config reload: the builder then starts over
        self.builder = RuleBuilder()
        self.skipped: tuple[tuple[str, str], ...] = ()  # what the last sync's rule set could not express
        self.forward_filtered: bool | None = None  # None: not read back yet (assumed True)
        if isinstance(writer, SyncState):
            writer.settle = self._settle

    def sync(self, plan: Plan, *, verify: bool = False) -> SyncResult:
        # verify: the periodic resync reads the kernel back and rewrites only what drifted
        desired = self.builder.build(plan, self.options, forward_filtered=self.forward_filtered is not False)
        if desired.skipped != self.skipped:
            known = set(self.skipped)
            new = [f"{what}: {why}" for what, why in desired.skipped if (what, why) not in known]
            if new:  # logged once, when they appear (the plan's own problems are reported by the agent)
                log.warning("rules_skipped", count=len(desired.skipped), new=new[:20])
        self.skipped = desired.skipped
        return self.writer.sync(desired, verify=verify)

    def _settle(self, desired: RuleSet) -> RuleSet:
        """After a read-back: the FORWARD jump as the kernel's FORWARD chain requires it."""
        seen = getattr(self.writer, "forward_filtered", None)
        if seen:
            if self.forward_filtered is False:
                log.warning("forward_filtered", detail="FORWARD can drop flows now: installing the accept")
            self.forward_filtered = True  # for good: never race a firewall that comes and goes
        elif seen is False and self.forward_filtered is None:
            self.forward_filtered = False
        want = self.options.forward_accept == "always" or self.forward_filtered is not False
        have = any(j.table == FILTER and j.chain == "FORWARD" for j in desired.jumps)
        return desired if want == have else with_forward_jump(desired, want)

    def render(self, plan: Plan) -> str:
        filtered = self.forward_filtered is not False
        return self.writer.render(self.builder.build(plan, self.options, forward_filtered=filtered))

    def cleanup(self) -> str:
        changes = self.writer.cleanup()
        removed, jumps = len(changes.delete), len(changes.del_jumps)
        return f"removed {removed} chains and {jumps} jumps owned by flannel-lb ({self.writer.prefix}*)"

    def close(self) -> None:
        self.writer.close()
