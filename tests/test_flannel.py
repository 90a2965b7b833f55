from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.decode import flannel
from flannel_lb.decode.model import Node

NET = ipaddress.IPv4Network


def test_network_config_defaults_as_flannel_applies_them() -> None:
    cfg = flannel.parse_network_config(b'{"Network": "10.246.0.0/16"}')
    assert cfg.network == NET("10.246.0.0/16")
    assert cfg.subnet_len == 24
    assert str(cfg.subnet_min) == "10.246.1.0"  # the first subnet is skipped
    assert str(cfg.subnet_max) == "10.246.255.0"
    assert cfg.backend_type == "udp"  # flannel's code (not its docs) defaults to udp


def test_wireguard_backend_port_is_its_listen_port() -> None:
    wg = flannel.parse_network_config(
        b'{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": 51000, "Port": 1}}'
    )
    assert (wg.backend_type, wg.port) == ("wireguard", 51000)
    default = flannel.parse_network_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}}')
    assert default.port == 0  # flannel's default (51820) is applied where the port is used
    with pytest.raises(flannel.FlannelError, match="ListenPort must be an integer"):
        flannel.parse_network_config(
            b'{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": "x"}}'
        )


def test_small_network_subnet_len_is_prefix_plus_two() -> None:
    assert flannel.parse_network_config(b'{"Network": "10.0.0.0/24"}').subnet_len == 26


def test_network_config_fields_match_case_insensitively() -> None:
    cfg = flannel.parse_network_config(
        b'{"network": "10.5.0.0/16", "subnetlen": 25, "backend": {"type": "vxlan", "vni": 4, "port": 4789}}'
    )
    assert (cfg.subnet_len, cfg.backend_type, cfg.vni, cfg.port) == (25, "vxlan", 4, 4789)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{}", "has no Network"),
        (b'{"Network": "10.0.0.0/33"}', "not an IPv4 network"),
        (b'{"Network": "10.0.0.0/16", "SubnetLen": "24"}', "SubnetLen must be an integer"),
        (b'{"Network": "10.0.0.0/16", "SubnetLen": 8}', "does not fit inside Network"),
        (b'{"Network": "10.0.0.0/16", "Backend": "vxlan"}', "Backend must be an object"),
    ],
)
def test_bad_network_config_says_why(value: bytes, message: str) -> None:
    with pytest.raises(flannel.FlannelError, match=message):
        flannel.parse_network_config(value)


def test_lease_keys_ipv4_and_dual_stack() -> None:
    assert flannel.parse_subnet_key("10.246.90.0-24") == (NET("10.246.90.0/24"), None)
    v4, v6 = flannel.parse_subnet_key("10.12.13.0-24&fd00:12:13::-56")
    assert v4 == NET("10.12.13.0/24")
    assert v6 == ipaddress.IPv6Network("fd00:12:13::/56")


@pytest.mark.parametrize(
    "name", ["10.246.90.0", "10.246.90.0_24", "10.246.90.1-24", "x-24", "10.246.90.0-40"]
)
def test_bad_lease_keys(name: str) -> None:
    with pytest.raises(flannel.FlannelError, match="lease key"):
        flannel.parse_subnet_key(name)


def test_vxlan_lease_as_flannel_writes_it() -> None:
    lease = flannel.parse_lease(
        "10.246.92.0-24",
        b'{"PublicIP":"10.245.1.3","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"C6:D2:32:6F:8F:44"}}',
        key="/coreos.com/network/subnets/10.246.92.0-24",
    )
    assert lease.subnet == NET("10.246.92.0/24")
    assert str(lease.public_ip) == "10.245.1.3"
    assert (lease.backend_type, lease.vni, lease.vtep_mac) == ("vxlan", 1, "c6:d2:32:6f:8f:44")
    assert lease.expires is None


def test_old_leases_of_every_backend() -> None:
    udp = flannel.parse_lease("10.246.90.0-24", b'{"PublicIP":"192.168.121.201"}')  # udp omits BackendType
    assert udp.backend_type == "udp"
    old_vxlan = flannel.parse_lease(
        "10.246.1.0-24",
        b'{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}',
    )
    assert old_vxlan.vni is None  # before flannel 0.14 the VNI was not in the lease
    hostgw = flannel.parse_lease("10.246.2.0-24", b'{"PublicIP":"10.245.1.4","BackendType":"host-gw"}')
    assert hostgw.backend_type == "host-gw"
    wg = flannel.parse_lease(
        "10.246.3.0-24",
        b'{"PublicIP":"10.245.1.5","BackendType":"wireguard","BackendData":{"PublicKey":"abc=","Port":51820}}',
    )
    assert (wg.wg_public_key, wg.port) == ("abc=", 51820)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b'{"PublicIP":"10.245.1.300"}', "PublicIP"),
        (b'{"BackendType":"vxlan"}', "PublicIP"),
        (b'{"PublicIP":"10.245.1.3","BackendType":"vxlan","BackendData":{"VtepMAC":"zz"}}', "VtepMAC"),
        (b'{"PublicIP":"10.245.1.3","BackendData":[1]}', "BackendData must be an object"),
        (b"not json", "not valid JSON"),
    ],
)
def test_bad_lease_values(value: bytes, message: str) -> None:
    with pytest.raises(flannel.FlannelError, match=message):
        flannel.parse_lease("10.246.92.0-24", value)


def test_kube_subnet_manager_lease_from_node_annotations() -> None:
    node = Node(
        name="node-1",
        pod_cidrs=("10.244.1.0/24", "fd00::/64"),
        annotations={
            "flannel.alpha.coreos.com/public-ip": "10.245.1.3",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}',
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        },
    )
    lease = flannel.lease_from_node(node)
    assert lease is not None
    assert (lease.subnet, str(lease.public_ip), lease.vtep_mac, lease.node) == (
        NET("10.244.1.0/24"),
        "10.245.1.3",
        "aa:bb:cc:dd:ee:ff",
        "node-1",
    )


def test_node_not_yet_claimed_by_flanneld_has_no_lease() -> None:
    assert flannel.lease_from_node(Node(name="n", pod_cidrs=("10.244.1.0/24",))) is None
    assert (
        flannel.lease_from_node(Node(name="n", annotations={"flannel.alpha.coreos.com/public-ip": "1.2.3.4"}))
        is None
    )


@given(st.binary(max_size=200))
def test_arbitrary_lease_values_fail_cleanly(value: bytes) -> None:
    with contextlib.suppress(flannel.FlannelError):
        flannel.parse_lease("10.246.92.0-24", value)


@given(st.text(max_size=60))
def test_arbitrary_lease_keys_fail_cleanly(name: str) -> None:
    with contextlib.suppress(flannel.FlannelError):
        flannel.parse_subnet_key(name)
