"""The one data-plane interface the agent, the CLI and the doctor use, and the one place that picks it.

`[dataplane] writer` chooses (`make_dataplane`): the iptables writers program a `RuleSet`
(`iptables.rules.build_ruleset`); the nftables writer programs its own table from the plan
(`nftables.layout`). Both remember what they applied, adopt what a previous agent left, and send
only what changed.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from flannel_lb import config as config_mod
from flannel_lb.dataplane.iptables.render import render
from flannel_lb.dataplane.iptables.restore import diff_rulesets
from flannel_lb.dataplane.iptables.rules import RuleBuilder, RuleSet, has_forward_jump, settle_forward
from flannel_lb.dataplane.iptables.sync_state import SyncResult, SyncState
from flannel_lb.dataplane.options import Options, overlay_udp_port
from flannel_lb.decode.model import NetworkConfig
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

    def sync(self, plan: Plan, *, verify: bool = False) -> SyncReport:
        """Make the kernel hold `plan` in one atomic step (verify: against a fresh read-back)."""
        ...

    def render(self, plan: Plan, *, full: bool = False) -> str:
        """The exact text the next sync would send ("" if nothing); full: the whole owned state."""
        ...

    def diff(self, plan: Plan) -> str:
        """How the kernel's owned state differs from `plan`, newline-terminated lines ("" when in step)."""
        ...

    def cleanup(self) -> str:
        """Remove everything flannel-lb owns in the kernel, nothing else; says what went."""
        ...

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        """New connections dropped per (address, port, protocol) for coming from outside the frontend's
        loadBalancerSourceRanges, as the kernel counts them."""
        ...

    def close(self) -> None: ...


def dataplane_options(cfg: config_mod.Config, network: NetworkConfig | None = None) -> Options:
    """The data plane's options from the config, and flannel's overlay port from its network config."""
    d, ha = cfg.dataplane, cfg.ha
    shared = ha.overlay_address if ha.enabled and ha.shared_overlay else None
    return Options(
        prefix=d.chain_prefix,
        masquerade=d.masquerade,
        random_fully=d.random_fully,
        # a pair sharing one overlay identity: connections leave from the pair's address, which floats
        snat_pool=(shared,) if shared else d.snat_addresses,
        shared_address=shared,
        overlay_udp_port=overlay_udp_port(network.backend_type, network.port) if network else None,
        forward_accept="auto" if d.forward_accept == "auto" else "always",
        balance="maglev" if d.balance == "maglev" else "random",
    )


def make_dataplane(cfg: config_mod.Config, netns: str | None = None) -> DataPlane:
    """The configured data plane: `writer = "nft"` programs an nftables table, the others iptables."""
    if cfg.dataplane.writer == "nft":
        from flannel_lb.dataplane.nftables.writer import NftWriter

        return NftWriter(dataplane_options(cfg), netns=netns)
    return IptablesPlane(make_writer(cfg, netns), dataplane_options(cfg))


def make_writer(cfg: config_mod.Config, netns: str | None = None) -> SyncState:
    """The iptables RuleSet writer (`restore` or `libiptc`)."""
    d = cfg.dataplane
    if d.writer == "libiptc":
        from flannel_lb.dataplane.iptables.libiptc import LibiptcWriter

        return LibiptcWriter(prefix=d.chain_prefix, backend=d.iptables_backend, netns=netns)
    from flannel_lb.dataplane.iptables.restore import RestoreWriter

    return RestoreWriter(prefix=d.chain_prefix, backend=d.iptables_backend, netns=netns)


class IptablesPlane:
    """A RuleSet writer (iptables-restore or libiptc) fed by a `RuleBuilder` (build_ruleset, memoised).

    With `forward_accept = "auto"` the FORWARD -> FLB-FORWARD jump is decided by `settle_forward` right
    after each of the writer's read-backs (adopt, verify, full), and kept as decided by the syncs in
    between; `diff` applies the same rule to its own read-back. A FORWARD that turns to DROP later is
    noticed by the next verifying sync.
    """

    def __init__(self, writer: SyncState, options: Options) -> None:
        self.writer = writer
        self.options = options  # the agent replaces it on a config reload: the builder then starts over
        self.builder = RuleBuilder()
        self.skipped: tuple[tuple[str, str], ...] = ()  # what the last sync's rule set could not express
        self.forward_filtered: bool | None = None  # None: not read back yet; True: sticks (logged once)
        self._forward_jump = True  # as last settled; unknown: assumed needed
        writer.settle = self._settle

    def _build(self, plan: Plan) -> RuleSet:
        return self.builder.build(plan, self.options, forward_filtered=self._forward_jump)

    def sync(self, plan: Plan, *, verify: bool = False) -> SyncResult:
        # verify: the periodic resync reads the kernel back and rewrites only what drifted
        desired = self._build(plan)
        if desired.skipped != self.skipped:
            known = set(self.skipped)
            new = [f"{what}: {why}" for what, why in desired.skipped if (what, why) not in known]
            if new:  # logged once, when they appear (the plan's own problems are reported by the agent)
                log.warning("rules_skipped", count=len(desired.skipped), new=new[:20])
        self.skipped = desired.skipped
        return self.writer.sync(desired, verify=verify)

    def _settle(self, desired: RuleSet, kernel: RuleSet) -> RuleSet:
        """After a read-back: the FORWARD jump as the kernel requires it (`settle_forward`)."""
        if kernel.forward_filtered:
            if self.forward_filtered is False:
                log.warning("forward_filtered", detail="FORWARD can drop flows now: installing the accept")
            self.forward_filtered = True
        elif kernel.forward_filtered is False and self.forward_filtered is None:
            self.forward_filtered = False
        settled = settle_forward(desired, kernel)
        self._forward_jump = has_forward_jump(settled)
        return settled

    def render(self, plan: Plan, *, full: bool = False) -> str:
        desired = self._build(plan)
        return render(desired, None, full=True) if full else self.writer.render(desired)

    def diff(self, plan: Plan) -> str:
        desired = self._build(plan)
        return diff_rulesets(self.writer.read_owned(), desired)

    def cleanup(self) -> str:
        changes = self.writer.cleanup()
        removed, jumps = len(changes.delete), len(changes.del_jumps)
        return f"removed {removed} chains and {jumps} jumps owned by flannel-lb ({self.writer.prefix}*)"

    def source_range_drops(self) -> dict[tuple[str, int, str], int]:
        return self.writer.source_range_drops()

    def close(self) -> None:
        self.writer.close()
