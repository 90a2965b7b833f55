"""Issue 10, class 6: names with control, format and separator characters or lone surrogates, through the plan
and explain text and the CLI's JSON: printable, one line per entry, strict JSON."""

from __future__ import annotations

import io
import json
import unicodedata
from contextlib import redirect_stdout
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb import cli
from flannel_lb.lab import objects as k
from flannel_lb.plan import report
from flannel_lb.plan.compute import PlanSettings, admission_for, compute_plan
from flannel_lb.state.cluster import ClusterState
from flannel_lb.text import printable

LB = "192.168.121.201"
SETTINGS = PlanSettings(addresses=frozenset({LB}))
NOW = 1_800_000_000.0
UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs")
NETWORK = {"Network": "10.246.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}

# Mostly the hostile categories, so nearly every example holds some; '/' would change the etcd key's shape.
hostile = st.text(
    st.one_of(
        st.characters(categories=UNSAFE),
        st.sampled_from("\n\r\t\x00\x1b\u2028\u2029\u202e\u200b\ufeff\udc80\ud800"),
        st.characters(exclude_characters="/"),
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: "/" not in s)


def _values(svc: str, port_name: str, node: str) -> dict[str, bytes]:
    objects: dict[str, dict[str, Any]] = {
        f"/registry/services/specs/default/{svc}": k.service(
            svc, ports=[k.port(80, 8080, name=port_name)], external_ips=[LB], affinity_timeout=30
        ),
        f"/registry/endpointslices/default/{svc}-1": k.endpoint_slice(
            f"{svc}-1",
            svc,
            [k.endpoint("10.246.1.2", node), k.endpoint("10.246.1.3", node, ready=False)],
            [(port_name, 8080, "TCP")],
        ),
    }
    values = {key: json.dumps(doc).encode("utf-8", "surrogatepass") for key, doc in objects.items()}
    values["/coreos.com/network/config"] = json.dumps(NETWORK).encode()
    lease = {
        "PublicIP": "10.245.1.3",
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "aa:00:00:00:00:01"},
    }
    values["/coreos.com/network/subnets/10.246.1.0-24"] = json.dumps(lease).encode()
    # A value that does not decode, under a key holding the hostile name: its problem reason echoes both.
    values[f"/registry/services/specs/bad/{svc}"] = b"\x00" + svc.encode("utf-8", "surrogatepass")
    return values


def _texts(values: dict[str, bytes], svc: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    state = ClusterState()
    state.replace(((key, value, None) for key, value in values.items()), revision=10)
    plan = compute_plan(state, SETTINGS, now=NOW)
    story = report.explain(state, plan, ("default", svc), SETTINGS, admission_for(state, NOW))
    assert story is not None
    return report.plan_table(plan), report.explain_text(story), plan.to_json(), story


def _assert_printable(text: str) -> None:
    text.encode("utf-8")  # raises on a lone surrogate
    assert not [c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE]


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in --json output")

    return json.loads(text, parse_constant=refuse)


@settings(max_examples=150, deadline=None)
@given(svc=hostile, port_name=hostile, node=hostile)
def test_hostile_names_print_one_line_per_entry(svc: str, port_name: str, node: str) -> None:
    table, text, plan_json, story = _texts(_values(svc, port_name, node), svc)
    clean_table, clean_text, _, _ = _texts(_values("svc", "http", "node-1"), "svc")
    for out, clean in ((table, clean_table), (text, clean_text)):
        _assert_printable(out)
        assert out.count("\n") == clean.count("\n")
    assert f"({printable(port_name)})" in table
    for obj in (plan_json, story):
        out = io.StringIO()
        with redirect_stdout(out):
            cli.emit_json(obj)
        emitted = out.getvalue()
        emitted.encode("ascii")
        assert _strict(emitted) == json.loads(json.dumps(obj))


@given(st.text(st.characters(), max_size=40))
def test_printable_escapes_exactly_the_unsafe_characters(s: str) -> None:
    out = printable(s)
    _assert_printable(out)
    if not any(unicodedata.category(c) in UNSAFE for c in s):
        assert out == s


def test_emit_refuses_nan() -> None:
    try:
        cli.emit_json({"timeout": float("nan")})
    except ValueError:
        return
    raise AssertionError("NaN emitted as JSON")


@given(st.text(st.characters(), max_size=300))
def test_rule_comments_cannot_break_the_restore_text(name: str) -> None:
    """A name reaches iptables only through clean_comment: a whitelist without quotes or newlines."""
    from flannel_lb.dataplane.iptables.rules import MAX_COMMENT, clean_comment

    out = clean_comment(name)
    assert len(out) <= MAX_COMMENT
    assert out.isascii() and out.isprintable() and not set(out) & set("\"'\\\n\r")


@given(name=hostile, detail=hostile)
def test_check_report_escapes_echoed_names(name: str, detail: str) -> None:
    from flannel_lb.doctor import CheckResult, format_report

    # "\n" is how a detail breaks its lines; every other line boundary (\r, \x85, \u2028) must not.
    results = [CheckResult("lease", "warn", f"lease {name}: {detail}".replace("\n", " ") + "\nsecond line")]
    out = format_report(results, "/etc/flannel-lb/flannel-lb.toml")
    _assert_printable(out)
    assert out.count("\n") == format_report([CheckResult("lease", "warn", "x\ny")], "c").count("\n")
