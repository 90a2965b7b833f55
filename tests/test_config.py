from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from flannel_lb import config
from flannel_lb.dataplane.plane import dataplane_options

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


HA = '[lb]\naddresses = ["192.168.121.201", "10.245.1.142"]\n[ha]\n'
HA_ON = HA + 'enabled = true\npeer = "10.245.1.143"\ninterface = "eth1"\n'


def test_ha_section_is_off_by_default_and_floats_the_lb_addresses(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[lb]\naddresses = ["192.168.121.201", "10.245.1.142"]\n'))
    assert cfg.ha.enabled is False
    assert cfg.ha.addresses == ("192.168.121.201", "10.245.1.142")
    assert cfg.ha.state_dir == "/run/flannel-lb/ha"
    on = config.load(write(tmp_path, HA_ON)).ha
    # the conntrackd link and peer default to the VRRP ones
    assert (on.sync_interface, on.sync_peer) == ("eth1", "10.245.1.143")
    assert (on.priority, on.virtual_router_id, on.advert_interval) == (100, 51, 0.1)


def test_ha_section_reads_every_key(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            HA_ON + 'priority = 150\nsync_interface = "eth2"\nsync_peer = "10.0.99.2"\n'
            'virtual_router_id = 7\nadvert_interval = 0.05\naddresses = ["192.168.121.201"]\n'
            'state_dir = "/run/flb-ha/"\n',
        )
    )
    assert cfg.ha == config.HAConfig(
        enabled=True,
        peer="10.245.1.143",
        priority=150,
        interface="eth1",
        sync_interface="eth2",
        sync_peer="10.0.99.2",
        virtual_router_id=7,
        advert_interval=0.05,
        addresses=("192.168.121.201",),
        state_dir="/run/flb-ha",
    )


def _uncommented_section(tmp_path: Path, section: str) -> tuple[config.Config, set[str]]:
    """The shipped example with one commented-out section switched on: the config, and its keys."""
    text = (REPO / "conf" / "flannel-lb.toml").read_text()
    start = text.index(f"# [{section}]\n")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(
        line.removeprefix("# ") if re.match(rf"# (\[{section}\]$|\w+ = )", line) else line
        for line in block.splitlines()
    )
    cfg = config.load(write(tmp_path, text.replace(block, uncommented)))
    return cfg, {line.split(" = ")[0] for line in uncommented.splitlines() if re.match(r"\w+ = ", line)}


def test_shipped_example_ha_section_loads_when_uncommented(tmp_path: Path) -> None:
    """Every key the example documents exists, and its example value is valid."""
    cfg, keys = _uncommented_section(tmp_path, "ha")
    assert keys == set(config.known_keys()["ha"])
    assert cfg.ha.enabled and cfg.ha.sync_interface == "eth2"


def test_shipped_example_health_section_loads_when_uncommented(tmp_path: Path) -> None:
    cfg, keys = _uncommented_section(tmp_path, "health")
    assert keys == set(config.known_keys()["health"])
    assert cfg.health.enabled and (cfg.health.rise, cfg.health.fall) == (2, 3)
    assert not config.parse({"lb": {"addresses": ["192.168.121.201"]}}).health.enabled  # off by default


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("enabled = 1", r"\[ha\] enabled: expected true or false, got 1"),
        ('peer = "10.245.1.300"', r"\[ha\] peer: not an IPv4 address"),
        ('peer = "192.168.121.201"', r"\[ha\] peer: 192.168.121.201 is a floating address"),
        ("priority = 255", r"\[ha\] priority: must be from 1 to 254, got 255"),
        ("priority = 0", r"\[ha\] priority: must be from 1 to 254"),
        ('interface = "eth1\\nvrrp_script x"', r"\[ha\] interface: an interface name"),
        ('interface = "a-much-too-long-ifname"', r"\[ha\] interface: an interface name"),
        ('sync_interface = "eth 2"', r"\[ha\] sync_interface: an interface name"),
        ('sync_peer = "::1"', r"\[ha\] sync_peer: not an IPv4 address"),
        ('sync_peer = "10.245.1.142"', r"\[ha\] sync_peer: 10.245.1.142 is a floating address"),
        ("virtual_router_id = 256", r"\[ha\] virtual_router_id: must be from 1 to 255"),
        ("virtual_router_id = 1.5", r"\[ha\] virtual_router_id: expected an integer"),
        ("advert_interval = 0.001", r"\[ha\] advert_interval: must be from 0.01 to 40.95 seconds"),
        ("advert_interval = nan", r"\[ha\] advert_interval: must be from 0.01 to 40.95 seconds"),
        ("advert_interval = 41", r"\[ha\] advert_interval: must be from 0.01 to 40.95 seconds"),
        ("addresses = []", r"\[ha\] addresses: must not be empty"),
        ('addresses = ["1.2.3.4", "x"]', r"\[ha\] addresses: item 2 \('x'\): not an IPv4 address"),
        ('addresses = ["1.2.3.4", "1.2.3.4"]', r"\[ha\] addresses: 1.2.3.4 is listed twice"),
        ('state_dir = "run/ha"', r"\[ha\] state_dir: an absolute path"),
        ('state_dir = "/run/ha\\nGeneral {"', r"\[ha\] state_dir: an absolute path"),
        ('state_dir = "/run/ha dir"', r"\[ha\] state_dir: an absolute path"),
        ('state_dir = "/run/../etc"', r"\[ha\] state_dir: must not contain '..'"),
        (f'state_dir = "/{"d" * 100}"', r"\[ha\] state_dir: at most 92 characters"),
        ('state_dir = "//"', r"\[ha\] state_dir: a directory of its own"),
        ("peers = 1", r'\[ha\] peers: unknown key; did you mean "peer"'),
    ],
)
def test_ha_errors_name_the_section_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    key = extra.split(" = ")[0]
    ha_lines = HA_ON.removeprefix(HA).splitlines()
    base = HA + "".join(line + "\n" for line in ha_lines if not line.startswith(key + " "))
    path = write(tmp_path, base + extra + "\n")
    with pytest.raises(config.ConfigError, match=message) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: [ha] ")


@pytest.mark.parametrize("missing", ["peer", "interface"])
def test_ha_enabled_needs_a_peer_and_an_interface(tmp_path: Path, missing: str) -> None:
    text = "".join(line + "\n" for line in HA_ON.splitlines() if not line.startswith(missing))
    with pytest.raises(config.ConfigError, match=rf"\[ha\] {missing}: required with enabled = true"):
        config.load(write(tmp_path, text))
    # a disabled pair may leave them out: the section is checked but not required
    assert config.load(write(tmp_path, text.replace("enabled = true", "enabled = false"))).ha.enabled is False


def test_balance_defaults_to_random_and_maglev_needs_the_nft_writer(tmp_path: Path) -> None:
    base = '[lb]\naddresses = ["10.0.0.1"]\n'
    assert config.load(write(tmp_path, base)).dataplane.balance == "random"
    cfg = config.load(write(tmp_path, base + '[dataplane]\nwriter = "nft"\nbalance = "maglev"\n'))
    assert cfg.dataplane.balance == "maglev"
    assert dataplane_options(cfg).balance == "maglev"
    for writer in ("restore", "libiptc"):
        text = base + f'[dataplane]\nwriter = "{writer}"\nbalance = "maglev"\n'
        with pytest.raises(config.ConfigError, match=rf'balance: "maglev" needs writer = "nft".*{writer}'):
            config.load(write(tmp_path, text))
    with pytest.raises(config.ConfigError, match=r"\[dataplane\] balance: .*random.*maglev"):
        config.load(write(tmp_path, base + '[dataplane]\nwriter = "nft"\nbalance = "hash"\n'))


BGP = '[lb]\naddresses = ["192.168.121.201", "10.245.1.142"]\n[bgp]\n'
BGP_ON = BGP + 'enabled = true\nasn = 65001\nneighbors = [{ address = "10.245.1.1", asn = 65000 }]\n'


def test_bgp_section_is_off_by_default_and_announces_the_lb_addresses_from_lo(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[lb]\naddresses = ["192.168.121.201", "10.245.1.142"]\n'))
    assert cfg.bgp.enabled is False
    assert cfg.bgp.addresses == ("192.168.121.201", "10.245.1.142")
    assert (cfg.bgp.interface, cfg.bgp.state_dir) == ("lo", "/run/flannel-lb/bgp")
    on = config.load(write(tmp_path, BGP_ON)).bgp
    assert on.router_id == "192.168.121.201"  # the first [lb] address
    assert on.neighbors == (config.BGPNeighbor("10.245.1.1", 65000),)
    assert (on.bfd, on.bfd_interval_ms, on.bfd_multiplier, on.hold_time) == (True, 100, 3, 9)
    assert on.communities == ()


def test_bgp_section_reads_every_key_and_neighbors_as_tables(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            BGP.replace("[bgp]\n", "")
            + '[bgp]\nenabled = true\nasn = 4200000000\nrouter_id = "10.245.1.142"\nbfd = false\n'
            "bfd_interval_ms = 50\nbfd_multiplier = 5\nhold_time = 30\n"
            'communities = ["65001:100", "4200000000:1:2", "0065001:007"]\ninterface = "vip0"\n'
            'addresses = ["192.168.121.201"]\nstate_dir = "/run/flb-bgp/"\n'
            '[[bgp.neighbors]]\naddress = "10.245.1.1"\nasn = 65000\n'
            '[[bgp.neighbors]]\naddress = "10.245.2.1"\nasn = 65002\n',
        )
    )
    assert cfg.bgp == config.BGPConfig(
        enabled=True,
        asn=4200000000,
        router_id="10.245.1.142",
        neighbors=(config.BGPNeighbor("10.245.1.1", 65000), config.BGPNeighbor("10.245.2.1", 65002)),
        bfd=False,
        bfd_interval_ms=50,
        bfd_multiplier=5,
        hold_time=30,
        communities=("65001:100", "4200000000:1:2", "65001:7"),  # leading zeros dropped
        interface="vip0",
        addresses=("192.168.121.201",),
        state_dir="/run/flb-bgp",
    )


def test_shipped_example_bgp_section_loads_when_uncommented(tmp_path: Path) -> None:
    """Every key the example documents exists, and its example value is valid."""
    text = (REPO / "conf" / "flannel-lb.toml").read_text()
    start = text.index("# [bgp]\n")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(
        line.removeprefix("# ") if re.match(r"# (\[bgp\]$|\w+ = )", line) else line
        for line in block.splitlines()
    )
    cfg = config.load(write(tmp_path, text.replace(block, uncommented)))
    keys = {line.split(" = ")[0] for line in uncommented.splitlines() if re.match(r"\w+ = ", line)}
    assert keys == set(config.known_keys()["bgp"])
    assert cfg.bgp.enabled and cfg.bgp.neighbors == (config.BGPNeighbor("10.245.1.1", 65000),)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("enabled = 1", r"\[bgp\] enabled: expected true or false, got 1"),
        ("asn = 0", r"\[bgp\] asn: must be from 1 to 4294967295, got 0"),
        ("asn = 4294967296", r"\[bgp\] asn: must be from 1 to 4294967295"),
        ('asn = "65001"', r"\[bgp\] asn: expected an integer"),
        ('router_id = "10.245.1.300"', r"\[bgp\] router_id: not an IPv4 address"),
        ('router_id = "1.2.3.4;\\nprotocol x"', r"\[bgp\] router_id: not an IPv4 address"),
        ("neighbors = []", r"\[bgp\] neighbors: must not be empty"),
        ('neighbors = ["10.245.1.1"]', r"\[bgp\] neighbors: item 1 \('10.245.1.1'\): expected a table"),
        ("neighbors = [{ asn = 1 }]", r"\[bgp\] neighbors: item 1 .*address: required, but missing"),
        ('neighbors = [{ address = "10.0.0.1" }]', r"\[bgp\] neighbors: item 1 .*asn: required"),
        (
            'neighbors = [{ address = "10.0.0.1", asn = 1, as = 2 }]',
            r'\[bgp\] neighbors: item 1 .*as: unknown key; did you mean "asn"',
        ),
        ('neighbors = [{ address = "::1", asn = 1 }]', r"\[bgp\] neighbors: item 1 .*address: not an IPv4"),
        ('neighbors = [{ address = "10.0.0.1", asn = 0 }]', r"\[bgp\] neighbors: item 1 .*must be an AS"),
        ('neighbors = [{ address = "10.0.0.1", asn = true }]', r"\[bgp\] neighbors: item 1 .*asn: must be"),
        (
            'neighbors = [{ address = "10.0.0.1", asn = 1 }, { address = "10.0.0.1", asn = 2 }]',
            r"\[bgp\] neighbors: 10.0.0.1 is listed twice",
        ),
        (
            'neighbors = [{ address = "10.245.1.142", asn = 1 }]',
            r"\[bgp\] neighbors: 10.245.1.142 is an announced address",
        ),
        ("bfd = 1", r"\[bgp\] bfd: expected true or false"),
        ("bfd_interval_ms = 5", r"\[bgp\] bfd_interval_ms: must be from 10 to 10000 ms, got 5"),
        ("bfd_interval_ms = 0.5", r"\[bgp\] bfd_interval_ms: expected an integer"),
        ("bfd_multiplier = 1", r"\[bgp\] bfd_multiplier: must be from 2 to 255"),
        ("bfd_multiplier = 256", r"\[bgp\] bfd_multiplier: must be from 2 to 255"),
        ("hold_time = 0", r"\[bgp\] hold_time: must be from 3 to 65535 seconds"),
        ("hold_time = inf", r"\[bgp\] hold_time: expected an integer"),
        ('communities = ["65001"]', r"\[bgp\] communities: item 1 \('65001'\): expected \"ASN:VALUE\""),
        ('communities = ["65536:1"]', r"\[bgp\] communities: item 1 .*expected \"ASN:VALUE\""),
        ('communities = ["1:2:4294967296"]', r"\[bgp\] communities: item 1 .*large community"),
        ('communities = ["1:-2"]', r"\[bgp\] communities: item 1"),
        ('communities = ["1:2));\\nprotocol x"]', r"\[bgp\] communities: item 1"),
        ("communities = [1]", r"\[bgp\] communities: item 1 \(1\)"),
        ('interface = "lo\\" ; x"', r"\[bgp\] interface: an interface name"),
        ('interface = "twelve-chars"', r"\[bgp\] interface: an interface name of at most 11 characters"),
        ('addresses = ["1.2.3.4", "1.2.3.4"]', r"\[bgp\] addresses: 1.2.3.4 is listed twice"),
        ("addresses = []", r"\[bgp\] addresses: must not be empty"),
        ('state_dir = "run/bgp"', r"\[bgp\] state_dir: an absolute path"),
        ('state_dir = "/run/../etc"', r"\[bgp\] state_dir: must not contain '..'"),
        ("neighbours = 1", r'\[bgp\] neighbours: unknown key; did you mean "neighbors"'),
        ("drain_timeout = nan", r"\[bgp\] drain_timeout: must be from 0 to 86400 seconds, got nan"),
        ("drain_timeout = -1", r"\[bgp\] drain_timeout: must be from 0 to 86400 seconds"),
        ("drain_timeout = 1e9", r"\[bgp\] drain_timeout: must be from 0 to 86400 seconds"),
        ("drain_timeout = true", r"\[bgp\] drain_timeout: expected a number"),
        ('drain_timeout = "60"', r"\[bgp\] drain_timeout: expected a number"),
        ('drain_on_sigterm = "yes"', r"\[bgp\] drain_on_sigterm: expected true or false"),
        ('peers = ["10.245.1.300"]', r"\[bgp\] peers: item 1 .*not an IPv4 address"),
        ('peers = "10.245.1.143"', r"\[bgp\] peers: expected a list"),
        ('peers = ["10.245.1.143", "10.245.1.143"]', r"\[bgp\] peers: 10.245.1.143 is listed twice"),
        ('peers = ["10.245.1.142"]', r"\[bgp\] peers: 10.245.1.142 is an announced address"),
        ('peers = ["10.245.1.1"]', r"\[bgp\] peers: 10.245.1.1 is a neighbour"),
    ],
)
def test_bgp_errors_name_the_section_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    key = extra.split(" = ")[0]
    bgp_lines = BGP_ON.removeprefix(BGP).splitlines()
    base = BGP + "".join(line + "\n" for line in bgp_lines if not line.startswith(key + " "))
    path = write(tmp_path, base + extra + "\n")
    with pytest.raises(config.ConfigError, match=message) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: [bgp] ")


@pytest.mark.parametrize("missing", ["asn", "neighbors"])
def test_bgp_enabled_needs_an_asn_and_a_neighbor(tmp_path: Path, missing: str) -> None:
    text = "".join(line + "\n" for line in BGP_ON.splitlines() if not line.startswith(missing))
    with pytest.raises(config.ConfigError, match=rf"\[bgp\] {missing}: required with enabled = true"):
        config.load(write(tmp_path, text))
    disabled = config.load(write(tmp_path, text.replace("enabled = true", "enabled = false")))
    assert disabled.bgp.enabled is False
