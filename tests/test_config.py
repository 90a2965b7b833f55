from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from flannel_lb import config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "flannel-lb.toml"
    p.write_text(text)
    return p


def test_shipped_example_config_loads_and_matches_the_seed_lab() -> None:
    cfg = config.load(REPO / "conf" / "flannel-lb.toml")
    assert cfg.etcd.endpoints == ("http://10.245.1.2:4379",)
    assert cfg.flannel.prefix == "/coreos.com/network"
    assert cfg.kubernetes.prefix == "/registry"
    assert "192.168.121.201" in cfg.lb.addresses


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[lb]\naddresses = ["192.168.121.201"]\n'))
    assert cfg.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.flannel.etcd_api == "v3"
    assert cfg.dataplane.writer == "restore"
    assert cfg.dataplane.min_sync_interval < 0.1


def test_kube_subnet_manager_needs_the_network(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"\[flannel\] network: required"):
        config.load(write(tmp_path, '[lb]\naddresses = ["10.0.0.1"]\n[flannel]\nsubnet_manager = "kube"\n'))
    cfg = config.load(
        write(
            tmp_path,
            '[lb]\naddresses = ["10.0.0.1"]\n[flannel]\nsubnet_manager = "kube"\nnetwork = "10.244.0.0/16"\n',
        )
    )
    assert cfg.flannel.network == ipaddress.IPv4Network("10.244.0.0/16")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lb]\n", r"\[lb\] addresses: required, but missing"),
        (
            '[lb]\naddresses = ["1.2.3.4"]\nstate_file = "last-good.jsonl"\n',
            r"\[lb\] state_file: .*an absolute path",
        ),
        ('[lb]\naddresses = "1.2.3.4"\n', r"\[lb\] addresses: expected a list, got '1.2.3.4'"),
        (
            '[lb]\naddresses = ["1.2.3.400"]\n',
            r"\[lb\] addresses: item 1 \('1.2.3.400'\): not an IPv4 address",
        ),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[etcd]\nendpoints = ["10.245.1.2:4379"]\n',
            r"\[etcd\] endpoints: item 1",
        ),
        ('[lb]\naddresses = ["1.2.3.4"]\n[etcd]\nendpoints = ["http://h:99999"]\n', r"port is not a number"),
        ('[lb]\naddresses = ["1.2.3.4"]\n[etcd]\nendpoints = []\n', r"\[etcd\] endpoints: must not be empty"),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[flannel]\netcd_api = "v4"\n',
            r'etcd_api: expected one of "v3", "v2"',
        ),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[flannel]\nprefix = "coreos.com"\n',
            r"prefix: an etcd key prefix starts",
        ),
        ('masquerade = true\n[lb]\naddresses = ["1.2.3.4"]\n', r"masquerade: unknown top-level key"),
        ('[lb]\naddresses = ["1.2.3.4"]\n[masquerade]\non = true\n', r"\[masquerade\]: unknown section"),
        ('[lb]\naddresses = ["1.2.3.4"]\nadresses = 1\n', r"\[lb\] adresses: unknown key"),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[etcd]\nca_file = "/nonexistent/ca.pem"\n',
            r"ca_file: no such file",
        ),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[dataplane]\nmasquerade = "yes"\n',
            r"masquerade: expected true or false",
        ),
        (
            '[lb]\naddresses = ["1.2.3.4"]\n[metrics]\nlisten = "localhost:x"\n',
            r'listen: expected "host:port"',
        ),
        ("[lb\n", r"not valid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError, match=message) as info:
        config.load(path)
    assert str(info.value).startswith(str(path))


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(config.ConfigError, match="cert_file and key_file: set both or neither"):
        config.load(write(tmp_path, f'[lb]\naddresses = ["1.2.3.4"]\n[etcd]\ncert_file = "{cert}"\n'))


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"no such file.*FLANNEL_LB_CONFIG"):
        config.load(tmp_path / "nope.toml")


def test_default_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.default_path() == "/etc/flannel-lb/flannel-lb.toml"
    monkeypatch.setenv(config.ENV_VAR, "/tmp/x.toml")
    assert config.default_path() == "/tmp/x.toml"


def test_policy_section(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            '[lb]\naddresses = ["192.168.121.201"]\n[policy]\nnamespaces = ["default", "web-*"]\n'
            'annotation = "flannel-lb.io/expose"\n[policy.ports]\n'
            '"192.168.121.201" = ["80", "8000-8100", 443]\n',
        )
    )
    assert cfg.policy.namespaces == ("default", "web-*")
    assert cfg.policy.ports == {"192.168.121.201": ((80, 80), (8000, 8100), (443, 443))}
    for bad, message in (
        ('"192.168.121.201" = ["80-70"]', "ports run from 1 to 65535, low to high"),
        ('"lb" = ["80"]', 'keys are LB addresses or "\\*"'),
        ('"*" = "80"', "expected a list"),
        ('"*" = ["http"]', "is not a port or a range"),
    ):
        with pytest.raises(config.ConfigError, match=r"\[policy\] ports: .*" + message):
            config.load(write(tmp_path, f'[lb]\naddresses = ["10.0.0.1"]\n[policy.ports]\n{bad}\n'))


def test_conntrack_section_defaults_are_kube_proxys_and_opt_in(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[lb]\naddresses = ["10.0.0.1"]\n'))
    assert cfg.conntrack == config.ConntrackConfig(
        manage=False,
        max_per_core=32768,
        min=131072,
        tcp_timeout_established=86400,
        tcp_timeout_close_wait=3600,
        warn_usage=0.75,
    )
    shipped = config.load(REPO / "conf" / "flannel-lb.toml")
    assert shipped.conntrack.manage is False  # the example documents the section but keeps it opt-in


def test_conntrack_section_is_read_and_validated(tmp_path: Path) -> None:
    base = '[lb]\naddresses = ["10.0.0.1"]\n[conntrack]\n'
    cfg = config.load(
        write(
            tmp_path,
            base + "manage = true\nmax_per_core = 0\nmin = 0\ntcp_timeout_established = 7200\n"
            "tcp_timeout_close_wait = 60\nwarn_usage = 1\n",
        )
    )
    assert cfg.conntrack == config.ConntrackConfig(True, 0, 0, 7200, 60, 1.0)
    for bad, message in (
        ("manage = 1", r"\[conntrack\] manage: expected true or false, got 1"),
        ("min = -1", r"\[conntrack\] min: must be from 0 to 2147483647"),
        ("max_per_core = 2147483648", r"\[conntrack\] max_per_core: must be from 0 to 2147483647"),
        ("tcp_timeout_established = 1.5", r"\[conntrack\] tcp_timeout_established: expected an integer"),
        ('tcp_timeout_close_wait = "1h"', r"\[conntrack\] tcp_timeout_close_wait: expected an integer"),
        ("warn_usage = 0", r"\[conntrack\] warn_usage: must be a fraction greater than 0 and at most 1"),
        ("warn_usage = 75", r"\[conntrack\] warn_usage: must be a fraction"),
        ("hashsize = 65536", r"\[conntrack\] hashsize: unknown key \(known: manage, max_per_core, min,"),
    ):
        with pytest.raises(config.ConfigError, match=message):
            config.load(write(tmp_path, base + bad + "\n"))
