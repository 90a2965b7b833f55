"""The object converters' shortcuts give exactly what their careful paths give.

`decode.objects` converts the common shapes on fast paths (canonical IPv4 strings kept as they are,
plain endpoint dicts without per-field paths, interned strings, shared port lists) and falls back to
the careful code, with its warnings and errors, for everything else. These properties pin that down,
and check that `decode_used` feeds the converters the same objects `decode_value` does.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb.decode import objects
from flannel_lb.decode.kube import decode_used, decode_value, encode_protobuf
from flannel_lb.decode.model import Endpoint
from flannel_lb.lab import objects as k
from tests.test_decode_kube import FIXTURES, NO_FIXTURES_REASON, fixture_params

CONVERTERS = {
    "Service": objects.service,
    "Endpoints": objects.endpoints,
    "EndpointSlice": objects.endpoint_slice,
    "Node": objects.node,
}


def _convert(obj: dict[str, Any]) -> tuple[Any, list[str]] | str:
    try:
        converted = CONVERTERS[obj["kind"]](obj)
    except objects.ObjectError as e:
        return f"ObjectError: {e}"
    return converted.obj, converted.warnings


@pytest.mark.parametrize("path", fixture_params())
def test_fixtures_convert_alike_from_every_decoding(path: Path | None) -> None:
    assert path is not None
    data = path.read_bytes()
    full = _convert(decode_value(data))
    assert _convert(decode_used(data)) == full
    assert _convert(decode_value(path.with_suffix(".json").read_bytes())) == full
    assert not isinstance(full, str)


def test_fixtures_are_there() -> None:
    if not FIXTURES:
        pytest.skip(NO_FIXTURES_REASON)
    assert len(FIXTURES) >= 10


# --- addresses -----------------------------------------------------------------------------------

_octets = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "010", "0x1", " 1", "1 ", "", "٣", "1e2", "+1", "-1", "256", "1_0"]),
)
_addresses = st.one_of(
    st.lists(_octets, min_size=1, max_size=5).map(".".join),
    st.text(alphabet="0123456789.:/ %abcdefx", max_size=20),
    st.ip_addresses(v=4).map(str),
)


def _ipaddress_says(v: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError:
        return None


@settings(max_examples=2000)
@given(_addresses)
def test_the_ipv4_shortcut_accepts_exactly_the_canonical_addresses(v: str) -> None:
    canonical = _ipaddress_says(v)
    assert bool(objects.is_canonical_ipv4(v)) == (canonical is not None)
    if canonical is not None:
        assert canonical == v  # so keeping the input string is keeping the normal form


@settings(max_examples=500)
@given(st.lists(st.one_of(_addresses, st.integers(), st.none()), max_size=4))
def test_external_ips_are_what_ipaddress_says(values: list[Any]) -> None:
    svc = k.service("web")
    svc["spec"]["externalIPs"] = values
    converted = objects.service(svc)
    got = converted.obj.external_ips  # type: ignore[union-attr]
    assert got == tuple(c for v in values if isinstance(v, str) and (c := _ipaddress_says(v)) is not None)
    assert len(converted.warnings) == len(values) - len(got)


# --- endpoints -----------------------------------------------------------------------------------

_odd = st.one_of(st.none(), st.integers(-1, 2), st.booleans(), st.just([]), st.just({}), st.text(max_size=3))
_names = st.sampled_from(["", "node-1", "n2", "web-0"])
_strings = st.one_of(_names, _names, _names, _odd)


@st.composite
def _slice_endpoints(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_odd)
    e: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        good = st.sampled_from(["10.246.1.2", "10.246.1.3", "fd00::1"])
        e["addresses"] = draw(
            st.one_of(*[st.lists(good, max_size=2)] * 3, st.lists(_addresses, max_size=2), _odd)
        )
    if draw(st.booleans()):
        cond = draw(
            st.dictionaries(
                st.sampled_from(["ready", "serving", "terminating", "other"]),
                st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
            )
        )
        e["conditions"] = cond if draw(st.integers(0, 9)) else draw(_odd)
    for key in ("nodeName", "hostname"):
        if draw(st.booleans()):
            e[key] = draw(_strings)
    if draw(st.integers(0, 5)) == 0:
        e["topology"] = draw(st.one_of(st.just({"kubernetes.io/hostname": "n9"}), _odd))
    if draw(st.booleans()):
        e["targetRef"] = {"kind": "Pod", "name": "web-0"}
    return e


def _both_paths(convert: Any, obj: dict[str, Any]) -> tuple[Any, Any]:
    """The converter's answer with its shortcuts and without (the careful reference)."""

    def answer(shortcuts: bool) -> Any:
        try:
            converted = convert(obj, shortcuts=shortcuts)
        except objects.ObjectError as e:
            return f"ObjectError: {e}"
        return converted.obj, converted.warnings

    return answer(True), answer(False)


@settings(max_examples=1500)
@given(_slice_endpoints(), st.sampled_from(["IPv4", "IPv6", "FQDN"]))
def test_plain_slice_endpoints_convert_as_the_careful_path_does(e: Any, address_type: str) -> None:
    sl = k.endpoint_slice("s-1", "s", [], [("web", 8080, "TCP")])
    sl["addressType"] = address_type
    sl["endpoints"] = [e]
    fast, careful = _both_paths(objects.endpoint_slice, sl)
    assert fast == careful
    if not isinstance(fast, str):
        assert all(isinstance(ep, Endpoint) for group in fast[0] for ep in group.endpoints)


@settings(max_examples=1500)
@given(
    st.one_of(
        _odd,
        st.fixed_dictionaries(
            {},
            optional={
                "ip": st.one_of(_addresses, st.just("10.246.1.2"), _odd),
                "nodeName": _strings,
                "hostname": _strings,
                "targetRef": st.just({"name": "web-0"}),
            },
        ),
    ),
    st.booleans(),
)
def test_plain_endpoints_addresses_convert_as_the_careful_path_does(a: Any, ready: bool) -> None:
    eps = k.endpoints("s", [])
    eps["subsets"] = [
        {"addresses" if ready else "notReadyAddresses": [a], "ports": k.endpoints_ports([("", 8080, "TCP")])}
    ]
    fast, careful = _both_paths(objects.endpoints, eps)
    assert fast == careful


def test_whole_objects_with_odd_endpoints_keep_their_warnings_and_order() -> None:
    sl = k.endpoint_slice(
        "s-1",
        "s",
        [k.endpoint("10.246.1.2", "n1"), k.endpoint("010.246.1.3", "n1"), k.endpoint("10.246.1.4")],
        [("web", 8080, "TCP"), ("bad", 0, "TCP")],
    )
    sl["endpoints"].append({"addresses": ["10.246.1.5"], "topology": {"kubernetes.io/hostname": "n7"}})
    converted = objects.endpoint_slice(sl)
    (group,) = converted.obj  # type: ignore[misc]
    assert [(e.addresses, e.node_name) for e in group.endpoints] == [
        (("10.246.1.2",), "n1"),
        ((), "n1"),
        (("10.246.1.4",), ""),
        (("10.246.1.5",), "n7"),
    ]
    assert converted.warnings == [
        "endpoints[1].addresses: '010.246.1.3' is not an IPv4 address; ignored",
        "ports[1]: port 0 is not in 1-65535; ignored",
    ]
    bad = {**sl, "endpoints": [*sl["endpoints"], {"addresses": ["10.246.1.6"], "nodeName": 7}]}
    with pytest.raises(objects.ObjectError, match=r"endpoints\[4\].nodeName must be a string, got int"):
        objects.endpoint_slice(bad)


# --- what the records share ----------------------------------------------------------------------


def test_repeated_strings_and_port_lists_are_shared() -> None:
    def slice_for(i: int) -> Any:
        value = encode_protobuf(
            k.endpoint_slice(
                f"s{i}-1",
                f"s{i}",
                [k.endpoint(f"10.246.1.{i}", "node-1"), k.endpoint(f"10.246.2.{i}", "node-2")],
                [("http", 8080, "TCP")],
                namespace="team-a",
            )
        )
        (group,) = objects.endpoint_slice(decode_used(value)).obj  # type: ignore[misc]
        return group

    a, b = slice_for(1), slice_for(2)
    assert a.namespace is b.namespace and a.address_type is b.address_type
    assert a.ports is b.ports
    assert a.endpoints[0].node_name is b.endpoints[0].node_name
    svc = [
        objects.service(
            decode_used(encode_protobuf(k.service(f"s{i}", namespace="team-a", external_ips=["10.0.0.9"])))
        ).obj
        for i in (1, 2)
    ]
    assert svc[0].external_ips[0] is svc[1].external_ips[0]  # type: ignore[union-attr]
    assert svc[0].namespace is a.namespace  # type: ignore[union-attr]


def test_kubectl_last_applied_configuration_is_not_kept() -> None:
    obj = k.service("web", external_ips=["10.0.0.9"])
    applied = json.dumps(obj)
    obj["metadata"]["annotations"] = {objects.LAST_APPLIED: applied, "lb.example.com/expose": "true"}
    for value in (encode_protobuf(obj), json.dumps(obj).encode()):
        svc = objects.service(decode_used(value)).obj
        assert dict(svc.annotations) == {"lb.example.com/expose": "true"}  # type: ignore[union-attr]
