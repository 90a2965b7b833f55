"""The state file's header and saved frontends are input: any bytes give a valid Header, and the boot
plan keeps only frontends the current config allows."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.plan.bootplan import Header, boot_plan, read_header
from flannel_lb.plan.model import Frontend
from tests.test_plan import LB, SETTINGS


@given(st.binary(max_size=300))
def test_any_header_bytes_give_a_valid_header(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.jsonl"
        path.write_bytes(raw)
        h = read_header(path)
    assert h.saved is None or isinstance(h.saved, float)
    assert isinstance(h.revision, int) and h.revision >= 0
    assert h.overlay_udp_port is None or 0 < h.overlay_udp_port < 65536


addresses = st.sampled_from([LB, "10.0.0.1", "8.8.8.8"])
frontends = st.builds(
    Frontend,
    address=addresses,
    port=st.integers(1, 65535),
    protocol=st.sampled_from(["TCP", "UDP"]),
    service=st.sampled_from(["default/web", "kube-system/dns", "other/x"]),
    kind=st.sampled_from(["external", "cluster-ip", "bogus"]),
)


@given(st.dictionaries(st.sampled_from(["default/web", "kube-system/dns"]), st.lists(frontends, max_size=5)))
def test_boot_plan_keeps_only_allowed_frontends(saved: dict[str, list[Frontend]]) -> None:
    plan = boot_plan({k: tuple(v) for k, v in saved.items()}, Header(revision=7), SETTINGS)
    for f in plan.frontends:
        assert f.kind == "external" and f.address in SETTINGS.addresses
        assert f in saved[f.service]
    assert len({f.key for f in plan.frontends}) == len(plan.frontends)
