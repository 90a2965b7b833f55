"""The shared overlay identity of an HA pair (docs/ha.md): its config, what it renders, the rules.

Pure: no root. The overlay in the kernel is `test_overlay_netns`; the pair under failover with real
keepalived, conntrackd and agents is `test_ha_failover`.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb import config
from flannel_lb.dataplane.iptables.rules import build_ruleset
from flannel_lb.dataplane.nftables.layout import hooked_chains, skeleton
from flannel_lb.dataplane.plane import dataplane_options
from flannel_lb.decode.flannel import parse_lease
from flannel_lb.ha import files, reservation
from flannel_lb.plan.model import Backend, Frontend, Plan
from tests.test_ha_render import NASTY, SAMPLE, line_shape

OVERLAY = 'overlay_subnet = "10.246.90.0/24"\noverlay_public_ip = "10.245.1.150"\n'


def _cfg(extra: str = OVERLAY) -> config.Config:
    return config.parse(tomllib.loads(SAMPLE + extra))


def test_the_reservation_is_a_lease_flannel_reads_back_as_the_pairs() -> None:
    cfg = _cfg()
    assert cfg.ha.overlay_address == "10.246.90.0" and cfg.ha.overlay_interface == "eth1"
    assert cfg.ha.vtep_mac == "0e:f1:0a:f5:01:96"  # derived from the PublicIP: the same on both boxes
    key = reservation.key(cfg)
    assert key == "/coreos.com/network/subnets/10.246.90.0-24"
    lease = parse_lease(key.rsplit("/", 1)[1], reservation.value(cfg, "vxlan", 1))
    assert (str(lease.subnet), str(lease.public_ip), lease.vtep_mac, lease.vni) == (
        "10.246.90.0/24",
        "10.245.1.150",
        cfg.ha.vtep_mac,
        1,
    )
    assert lease.expires is None  # no TTL: flannel never expires nor reassigns it
    assert "etcdctl put /coreos.com/network/subnets/10.246.90.0-24 " in reservation.instructions(cfg)
    with pytest.raises(ValueError, match="overlay_subnet"):
        reservation.instructions(_cfg(""))


def test_the_public_ip_floats_with_the_vips() -> None:
    text = files.render(_cfg(), "keepalived")
    block = text[text.index("virtual_ipaddress {") :]
    assert "10.245.1.150/32 dev eth1" in block and "192.168.121.201/32 dev eth1" in block
    assert "10.245.1.150" not in files.render(_cfg(""), "keepalived")
    moved = files.render(_cfg(OVERLAY + 'overlay_interface = "eth7"\n'), "keepalived")
    assert "10.245.1.150/32 dev eth7" in moved and "192.168.121.201/32 dev eth1" in moved
    mac = _cfg(OVERLAY + 'vtep_mac = "0E:00:00:00:00:07"\n')
    assert mac.ha.vtep_mac == "0e:00:00:00:00:07"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('overlay_subnet = "10.246.90.0/24"\n', r"both \(the reservation\) or neither"),
        ('overlay_public_ip = "10.245.1.150"\n', r"both \(the reservation\) or neither"),
        ('overlay_subnet = "10.246.90.0/31"\noverlay_public_ip = "10.245.1.150"\n', "/8 to /30"),
        ('overlay_subnet = "10.246.90.1/24"\noverlay_public_ip = "10.245.1.150"\n', "CIDR"),
        ('overlay_subnet = "10.246.90.0/24"\noverlay_public_ip = "192.168.121.201"\n', "already a VIP"),
        (OVERLAY + 'vtep_mac = "01:00:5e:00:00:01"\n', "unicast MAC"),
    ],
)
def test_a_half_or_wrong_identity_is_refused_naming_the_key(extra: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        _cfg(extra)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["overlay_subnet", "overlay_public_ip", "overlay_interface", "vtep_mac"]), value=NASTY
)
def test_no_overlay_value_can_add_a_line_or_a_block(key: str, value: str) -> None:
    doc: dict[str, Any] = tomllib.loads(SAMPLE + OVERLAY)
    doc["ha"][key] = value
    try:
        cfg = config.parse(doc)
    except config.ConfigError as e:
        assert "[ha] overlay_" in str(e) or f"[ha] {key}:" in str(e)
        return
    baseline = _cfg()
    for kind in files.KINDS:
        assert line_shape(files.render(cfg, kind)) == line_shape(files.render(baseline, kind)), (key, value)


def _plan() -> Plan:
    return Plan(
        1, (Frontend("192.168.121.201", 80, "TCP", "a/web", backends=(Backend("10.246.1.2", 8080),)),)
    )


def test_both_writers_leave_from_the_pairs_address_and_drop_new_connections_to_it() -> None:
    opts = dataplane_options(_cfg())
    assert opts.snat_pool == ("10.246.90.0",) and opts.shared_address == "10.246.90.0"
    rs = build_ruleset(_plan(), opts)
    post = rs.get("nat", "FLB-POSTROUTING")
    reject = rs.get("filter", "FLB-REJECT")
    assert post is not None and reject is not None
    assert [r.target[:3] for r in post.rules] == [("SNAT", "--to-source", "10.246.90.0")]
    assert reject.rules[0].matches == ("-d", "10.246.90.0/32") and reject.rules[0].target == ("DROP",)
    refuse = next(c for c in hooked_chains(opts) if c.name == "refuse-input")
    assert refuse.rules[0] == "ct state new ip daddr 10.246.90.0 drop"
    assert "snat ip to 10.246.90.0" in skeleton(opts)
    plain = dataplane_options(_cfg(""))
    assert plain.shared_address is None and not plain.snat_pool  # each box MASQUERADEs to its own address
