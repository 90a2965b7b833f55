"""BIRD's config rendered from `[bgp]`, and the `flannel-lb bgp` verbs; no root.

The daemon itself runs these files in tests/test_bgp_bird.py; here: the exact text, that every [bgp] key
reaches it, that BIRD's own parser accepts it, and that no config value can add a line.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel_lb import config
from flannel_lb.bgp import bird

SAMPLE = """\
[lb]
addresses = ["192.168.121.201", "10.245.1.142"]
[bgp]
enabled = true
asn = 65001
router_id = "10.245.1.10"
bfd_interval_ms = 100
bfd_multiplier = 3
hold_time = 9
communities = ["65001:100"]
interface = "lo"
state_dir = "/run/flb-bgp"
[[bgp.neighbors]]
address = "10.245.1.1"
asn = 65000
[[bgp.neighbors]]
address = "10.245.2.1"
asn = 65000
"""

BIRD_CONF = """\
# Rendered by flannel-lb from the [bgp] section of its config: edit that, not this file.

router id 10.245.1.10;
log stderr { info, remote, warning, error, auth, fatal, bug };

# what this box may announce; it does while flannel-lb keeps them on the interface below
define FLANNEL_LB_VIPS = [ 192.168.121.201/32, 10.245.1.142/32 ];

protocol device {
}

protocol direct flannel_lb_direct {
    ipv4 {
        import where net ~ FLANNEL_LB_VIPS;
    };
    interface "lo";
}

filter flannel_lb_export {
    if source = RTS_DEVICE && net ~ FLANNEL_LB_VIPS then {
        bgp_community.add((65001, 100));
        accept;
    }
    reject;
}

protocol bfd flannel_lb_bfd {
    interface "*" {
        interval 100 ms;
        multiplier 3;
    };
}

protocol bgp flannel_lb_peer1 {
    local as 65001;
    neighbor 10.245.1.1 as 65000;
    hold time 9;
    bfd on;
    ipv4 {
        import none;
        export filter flannel_lb_export;
    };
}

protocol bgp flannel_lb_peer2 {
    local as 65001;
    neighbor 10.245.2.1 as 65000;
    hold time 9;
    bfd on;
    ipv4 {
        import none;
        export filter flannel_lb_export;
    };
}
"""


def parse(text: str = SAMPLE) -> config.Config:
    return config.parse(tomllib.loads(text))


def test_bird_conf_announces_the_vips_from_lo_over_bgp_with_bfd_and_imports_nothing() -> None:
    assert bird.render(parse().bgp) == BIRD_CONF


def test_daemon_command_keeps_its_socket_and_pid_file_in_state_dir() -> None:
    bgp = parse().bgp
    assert bird.command(bgp) == [
        "bird",
        "-f",
        "-c",
        "/run/flb-bgp/bird.conf",
        "-s",
        "/run/flb-bgp/bird.ctl",
        "-P",
        "/run/flb-bgp/bird.pid",
    ]
    assert bird.client(bgp, "show", "protocols") == [
        "birdc",
        "-s",
        "/run/flb-bgp/bird.ctl",
        "show",
        "protocols",
    ]


def test_a_disabled_section_renders_nothing() -> None:
    with pytest.raises(ValueError, match=r"\[bgp\] enabled is false"):
        bird.render(parse(SAMPLE.replace("enabled = true", "enabled = false")).bgp)


def test_without_bfd_no_bfd_protocol_and_every_session_says_bfd_off() -> None:
    text = bird.render(parse(SAMPLE.replace("[bgp]\n", "[bgp]\nbfd = false\n")).bgp)
    assert "protocol bfd" not in text
    assert text.count("    bfd off;\n") == 2 and "bfd on" not in text


# --- every key reaches the output --------------------------------------------------------------------

# (key, another valid TOML value, a line it must put into bird.conf)
CHANGES = [
    ("asn", "4200000000", "    local as 4200000000;\n"),
    ("router_id", '"10.245.1.99"', "router id 10.245.1.99;\n"),
    ("neighbors", '[{ address = "10.9.9.9", asn = 64999 }]', "    neighbor 10.9.9.9 as 64999;\n"),
    ("bfd", "false", "    bfd off;\n"),
    ("bfd_interval_ms", "50", "        interval 50 ms;\n"),
    ("bfd_multiplier", "5", "        multiplier 5;\n"),
    ("hold_time", "30", "    hold time 30;\n"),
    ("communities", '["1:2", "3:4:5"]', "        bgp_large_community.add((3, 4, 5));\n"),
    ("communities", '["1:2", "3:4:5"]', "        bgp_community.add((1, 2));\n"),
    ("interface", '"vip0"', '    interface "vip0";\n'),
    ("addresses", '["192.168.121.9"]', "define FLANNEL_LB_VIPS = [ 192.168.121.9/32 ];\n"),
]


def _with(key: str, value: str) -> str:
    """SAMPLE with [bgp] `key` set to `value` (a TOML spelling); neighbours replace the tables."""
    doc = tomllib.loads(SAMPLE)
    doc["bgp"][key] = tomllib.loads(f"v = {value}")["v"]
    head = SAMPLE.split("[bgp]\n")[0]
    lines = [f"{k} = {_toml(v)}\n" for k, v in doc["bgp"].items()]
    return head + "[bgp]\n" + "".join(lines)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return str(v)


@pytest.mark.parametrize(("key", "value", "line"), CHANGES)
def test_every_bgp_key_reaches_bird_conf(key: str, value: str, line: str) -> None:
    assert parse(_with(key, value)).bgp != parse().bgp
    assert line not in bird.render(parse().bgp)
    assert line in bird.render(parse(_with(key, value)).bgp)


def test_state_dir_reaches_the_command_line() -> None:  # BIRD 2.0.12 has no config keyword for either
    assert "/var/lib/bgp/bird.ctl" in bird.command(parse(_with("state_dir", '"/var/lib/bgp"')).bgp)


def test_the_changes_cover_every_bgp_key() -> None:
    covered = {key for key, _, _ in CHANGES} | {"enabled", "state_dir"}  # both: tests above
    covered |= {"peers", "drain_on_sigterm", "drain_timeout"}  # the agent's, not BIRD's: test_bgp_drain*.py
    assert covered == set(config.known_keys()["bgp"])


# --- BIRD's own parser -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("bird") is None, reason="`bird` is not installed (scripts/setup.sh: bird2)")
@pytest.mark.parametrize("variant", [SAMPLE, _with("bfd", "false"), _with("communities", '["1:2", "3:4:5"]')])
def test_bird_parses_the_rendered_file(tmp_path: Path, variant: str) -> None:
    """`bird -p` reads the file as the daemon will and exits; it does read our keywords (the misspelt one)."""
    conf = tmp_path / "bird.conf"
    conf.write_text(bird.render(parse(variant).bgp))
    proc = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    conf.write_text(conf.read_text().replace("hold time", "hold tyme"))
    proc = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "syntax error" in proc.stderr


# --- hostile values ----------------------------------------------------------------------------------

NASTY = st.text(alphabet=st.sampled_from([*"ab1.:/_- \n\r\t{}[]();\"'#!\\$`", "\x00", "\u2028"]), max_size=20)
STRING_KEYS = ("router_id", "interface", "state_dir")


def _line_shape(text: str) -> list[tuple[int, str]]:
    """Each line's indent and first word: what a value must change to inject a line or a block."""
    return [(len(line) - len(line.lstrip()), "".join(line.split()[:1])) for line in text.splitlines()]


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from((*STRING_KEYS, "addresses", "communities", "neighbor address", "neighbor asn")),
    value=NASTY,
)
def test_no_config_value_can_add_a_line_or_a_block(key: str, value: str) -> None:
    doc = tomllib.loads(SAMPLE)
    if key.startswith("neighbor "):
        doc["bgp"]["neighbors"][0][key.split()[1]] = value
        name = "neighbors"
    else:
        doc["bgp"][key] = [value] if key in ("addresses", "communities") else value
        name = key
    try:
        cfg = config.parse(doc)
    except config.ConfigError as e:
        assert f"[bgp] {name}:" in str(e)
        return
    baseline = config.parse(tomllib.loads(SAMPLE))
    rendered = bird.render(cfg.bgp)
    assert _line_shape(rendered) == _line_shape(bird.render(baseline.bgp)), (key, value)
    assert all(" " not in arg and "\n" not in arg for arg in bird.command(cfg.bgp))


# --- the CLI verbs -----------------------------------------------------------------------------------


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel_lb", "--config", str(config_path), "bgp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bgp_render_prints_bird_conf(tmp_path: Path) -> None:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(SAMPLE)
    proc = cli(path, "render")
    assert (proc.returncode, proc.stdout) == (0, BIRD_CONF), proc.stderr


def test_cli_bgp_render_refuses_a_disabled_section_and_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(SAMPLE.replace("enabled = true", "enabled = false"))
    proc = cli(path, "render")
    assert proc.returncode == 2 and "[bgp] enabled is false" in proc.stderr and proc.stdout == ""
    path.write_text(SAMPLE.replace("asn = 65001", "asn = 0"))
    proc = cli(path, "render")
    assert proc.returncode == 2 and "[bgp] asn: must be from 1 to 4294967295" in proc.stderr


def test_cli_bgp_write_puts_bird_conf_in_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "bgp"
    path = tmp_path / "flannel-lb.toml"
    path.write_text(SAMPLE.replace('"/run/flb-bgp"', f'"{state_dir}"'))
    old = os.umask(0o000)
    try:
        proc = cli(path, "write")
    finally:
        os.umask(old)
    assert (proc.returncode, proc.stdout) == (0, f"{state_dir}/bird.conf\n"), proc.stderr
    assert (state_dir / "bird.conf").read_text() == BIRD_CONF
    assert stat.S_IMODE((state_dir / "bird.conf").stat().st_mode) == 0o644
    assert not list(state_dir.glob("*.tmp"))


def test_cli_bgp_write_says_why_when_state_dir_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = tmp_path / "flannel-lb.toml"
    path.write_text(SAMPLE.replace('"/run/flb-bgp"', f'"{blocker}/bgp"'))
    proc = cli(path, "write")
    assert (
        proc.returncode == 1
        and f"cannot write into [bgp] state_dir {blocker}/bgp: Not a directory" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
