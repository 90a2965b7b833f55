"""Conntrack limits: parsing the kernel's numbers, kube-proxy's sizing, and applying it safely.

The unit tests never touch the real /proc or /sys: every path is a file under tmp_path. The kernel
test runs the apply step inside a namespace of its own, with the hash table path pointed at a file,
and checks that the host's own values did not move.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.config import ConntrackConfig
from flannel_lb.daemon import conntrack_monitor
from flannel_lb.daemon.conntrack_monitor import Monitor
from flannel_lb.daemon.metrics import Metrics
from flannel_lb.kernel import conntrack_limits as ct
from flannel_lb.lab.netns import Namespaces
from tests.conftest import memory_agent

ROOT = Path(__file__).resolve().parent.parent

# /proc/net/stat/nf_conntrack of a 6.x kernel on 4 CPUs, after a SYN flood through a NAT rule:
# one row per CPU, every column hexadecimal (insert_failed, drop and early_drop are columns 10-12).
STAT_6X = "\n".join(
    [
        "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop"
        " early_drop icmp_error  expect_new expect_create expect_delete search_restart",
        "0003fe2a  0000001c 00000000 00000000 00000311 00000000 00000000 00000000 00000000 0000000a"
        " 000000ff 00000010 00000000  00000000 00000000 00000000 00000004",
        "0003fe2a  00000002 00000000 00000000 000002a0 00000000 00000000 00000000 00000000 00000001"
        " 00000001 00000000 00000000  00000000 00000000 00000000 00000000",
        "0003fe2a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000"
        " 00000000 0000000f 00000000  00000000 00000000 00000000 00000000",
        "0003fe2a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000"
        " 00000000 00000000 00000000  00000000 00000000 00000000 00000000",
        "",
    ]
)

# A 4.x kernel's layout (searched, delete_list where 6.x has clashres, chainlength), 2 CPUs.
STAT_4X = "\n".join(
    [
        "entries  searched found new invalid ignore delete delete_list insert insert_failed drop"
        " early_drop icmp_error  expect_new expect_create expect_delete search_restart",
        "00000025  00000000 00000000 00000000 00000001 0000003c 00000000 00000000 00000000 00000003"
        " 00000000 00000000 00000000  00000000 00000000 00000000 00000000",
        "00000025  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000"
        " 00000000 00000000 00000000  00000000 00000000 00000000 00000000",
        "",
    ]
)

DEFAULTS = ConntrackConfig()


def stats(count: int = 0, max_: int = 262144, established: int = 86400, close_wait: int = 3600) -> ct.Stats:
    return ct.Stats(count, max_, 65536, established, close_wait)


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_stat_sums_the_hex_columns_over_cpus() -> None:
    assert ct.parse_stat(STAT_6X) == ct.Counters(insert_failed=0xA + 1, drop=0xFF + 1, early_drop=0x10 + 0xF)


def test_parse_stat_finds_columns_by_name() -> None:
    assert ct.parse_stat(STAT_4X) == ct.Counters(insert_failed=3, drop=0, early_drop=0)
    shuffled = "early_drop entries drop insert_failed\n00000001 000000aa 00000002 00000003\n"
    assert ct.parse_stat(shuffled) == ct.Counters(insert_failed=3, drop=2, early_drop=1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("entries insert_failed drop\n00000001 00000000 00000000\n", "no early_drop column"),
        ("entries insert_failed drop early_drop\n00000001 0000zz00 0 0\n", "no hex insert_failed value"),
        ("entries insert_failed drop early_drop\n00000001 00000000\n", "no hex drop value"),
    ],
)
def test_parse_stat_rejects_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ct.parse_stat(text)


def test_read_stats_reads_each_file_through_the_reader(tmp_path: Path) -> None:
    files = {
        "nf_conntrack_count": "13958\n",
        "nf_conntrack_max": "262144\n",
        "nf_conntrack_buckets": "65536\n",
        "nf_conntrack_tcp_timeout_established": "432000\n",
        "nf_conntrack_tcp_timeout_close_wait": "60\n",
    }
    seen: list[str] = []

    def read(path: str) -> str:
        seen.append(path)
        return STAT_6X if path == "/stat" else files[path.removeprefix("/sys/")]

    got = ct.read_stats(read, "/sys", "/stat")
    assert got == ct.Stats(13958, 262144, 65536, 432000, 60, ct.parse_stat(STAT_6X))
    assert got.usage == pytest.approx(13958 / 262144)
    assert sorted(seen) == sorted(["/stat", *(f"/sys/{name}" for name in files)])


# --- kube-proxy's sizing and the plan ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ncpu", "want"), [(1, 131072), (2, 131072), (4, 131072), (8, 262144), (32, 1048576), (96, 1048576)]
)
def test_wanted_max_is_kube_proxys_formula(ncpu: int, want: int) -> None:
    assert ct.wanted_max(DEFAULTS, ncpu) == want


def test_max_per_core_zero_leaves_the_max_and_the_hash_table_alone() -> None:
    off = ConntrackConfig(max_per_core=0, min=10**6)
    assert ct.wanted_max(off, 64) == 0
    assert [c.name for c in ct.plan(off, stats(max_=1), hashsize=1, ncpu=64)] == []


configs = st.builds(
    ConntrackConfig,
    max_per_core=st.integers(0, 2**20),
    min=st.integers(0, 2**22),
    tcp_timeout_established=st.integers(0, 10**6),
    tcp_timeout_close_wait=st.integers(0, 10**6),
)
kernels = st.builds(
    ct.Stats,
    count=st.integers(0, 2**22),
    max=st.integers(1, 2**23),
    buckets=st.integers(1, 2**22),
    tcp_timeout_established=st.integers(1, 10**6),
    tcp_timeout_close_wait=st.integers(1, 10**6),
)


@given(configs, st.integers(1, 512))
def test_wanted_max_is_at_least_min_and_the_capped_scale(cfg: ConntrackConfig, ncpu: int) -> None:
    want = ct.wanted_max(cfg, ncpu)
    if cfg.max_per_core == 0:
        assert want == 0
    else:
        assert want in (cfg.min, min(cfg.max_per_core * ncpu, ct.MAX_SCALED))
        assert want >= cfg.min and want >= min(cfg.max_per_core * ncpu, ct.MAX_SCALED)


@given(configs, kernels, st.none() | st.integers(1, 2**22), st.integers(1, 512))
def test_plan_only_raises_the_table_and_converges(
    cfg: ConntrackConfig, now: ct.Stats, hashsize: int | None, ncpu: int
) -> None:
    changes = {c.name: c for c in ct.plan(cfg, now, hashsize, ncpu)}
    for name in (ct.MAX, ct.HASHSIZE):
        if name in changes:
            assert changes[name].target > changes[name].current  # never lowered
    if ct.HASHSIZE in changes:
        assert changes[ct.HASHSIZE].target == ct.wanted_max(cfg, ncpu) // 4
    for name, target in (
        (ct.ESTABLISHED, cfg.tcp_timeout_established),
        (ct.CLOSE_WAIT, cfg.tcp_timeout_close_wait),
    ):
        if name in changes:
            assert changes[name].target == target > 0
    # Once the changes are in the kernel, there is nothing left to do.
    after = ct.Stats(
        now.count,
        changes[ct.MAX].target if ct.MAX in changes else now.max,
        now.buckets,
        changes[ct.ESTABLISHED].target if ct.ESTABLISHED in changes else now.tcp_timeout_established,
        changes[ct.CLOSE_WAIT].target if ct.CLOSE_WAIT in changes else now.tcp_timeout_close_wait,
    )
    new_hash = changes[ct.HASHSIZE].target if ct.HASHSIZE in changes else hashsize
    assert ct.plan(cfg, after, new_hash, ncpu) == []


# --- what check says --------------------------------------------------------------------------------


def test_table_usage_warns_from_warn_usage_on() -> None:
    assert ct.assess_table(stats(count=196607), DEFAULTS, 2)[0] == "ok"  # just under 75 % of 262144
    status, detail = ct.assess_table(stats(count=196608), DEFAULTS, 2)
    assert status == "warn"
    assert detail.splitlines()[0] == "196608 of 262144 entries in use (75.0%); 65536 hash buckets"
    assert "the table is 75% full ([conntrack] warn_usage = 0.75)" in detail
    assert "sysctl -w net.netfilter.nf_conntrack_max=524288 and persist it in /etc/sysctl.d/" in detail


def test_table_below_kube_proxys_sizing_warns_and_says_where_to_set_it() -> None:
    status, detail = ct.assess_table(stats(max_=65536), DEFAULTS, 2)
    assert status == "warn"
    assert detail.splitlines()[1] == (
        "nf_conntrack_max = 65536 is below 131072, kube-proxy's sizing for 2 CPUs (max([conntrack] min"
        " = 131072, max_per_core = 32768 x 2)); set it on the host: sysctl -w"
        " net.netfilter.nf_conntrack_max=131072 and persist it in /etc/sysctl.d/ ([conntrack] manage ="
        " true raises it only when the agent runs in the host's network namespace)"
    )
    assert ct.assess_table(stats(max_=131072), DEFAULTS, 2) == (
        "ok",
        "0 of 131072 entries in use (0.0%); 65536 hash buckets;"
        " nf_conntrack_max >= 131072 (kube-proxy's sizing for 2 CPUs)",
    )


def test_counters_warn_with_the_fix_for_each_kind() -> None:
    assert ct.assess_counters(ct.Counters())[0] == "ok"
    status, detail = ct.assess_counters(ct.Counters(insert_failed=3))
    assert status == "warn" and "random_fully = true" in detail and "nf_conntrack_max" not in detail
    status, detail = ct.assess_counters(ct.Counters(early_drop=1))
    assert status == "warn" and "raise net.netfilter.nf_conntrack_max on the host" in detail
    assert "random_fully" not in detail
    assert ct.assess_counters(ct.parse_stat(STAT_6X))[1].splitlines()[0] == (
        "insert_failed 11, drop 256, early_drop 31 (summed over CPUs, since boot or the network"
        " namespace's creation)"
    )


def test_timeouts_far_above_the_configured_ones_warn_only_while_the_table_fills() -> None:
    # The kernel's defaults (5 days established, 60 s close_wait) in a table with room: no risk yet.
    assert ct.assess_timeouts(stats(established=432000, close_wait=60), DEFAULTS) == (
        "ok",
        "tcp timeouts: established 432000 s (configured 86400 s), close_wait 60 s (configured 3600 s);"
        " established is far above the configured value: harmless while the table has room (0.0% in"
        " use, [conntrack] warn_usage = 0.75)",
    )
    # The same timeouts once the table reaches warn_usage: dead entries now take new connections' room.
    status, detail = ct.assess_timeouts(stats(count=196608, established=432000, close_wait=60), DEFAULTS)
    assert status == "warn"
    assert detail.splitlines() == [
        "tcp timeouts: established 432000 s (configured 86400 s), close_wait 60 s (configured 3600 s)",
        "nf_conntrack_tcp_timeout_established = 432000 s is far above [conntrack] tcp_timeout_established"
        " = 86400 s while the table is 75% full: idle and dead connections keep their entries that long"
        " and new connections find no room. Set [conntrack] manage = true (the agent sets it at start in"
        " its network namespace), or sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400"
        " in the LB's network namespace and persist it in /etc/sysctl.d/",
    ]
    full = 196608
    assert ct.assess_timeouts(stats(count=full - 1, established=432000), DEFAULTS)[0] == "ok"
    assert ct.assess_timeouts(stats(count=full, established=2 * 86400), DEFAULTS)[0] == "ok"  # 2x is not far
    assert ct.assess_timeouts(stats(count=full, close_wait=2 * 3600 + 1), DEFAULTS)[0] == "warn"
    unset = ConntrackConfig(tcp_timeout_established=0)
    assert ct.assess_timeouts(stats(count=full, established=10**6), unset) == (
        "ok",
        "tcp timeouts: established 1000000 s (not configured), close_wait 3600 s (configured 3600 s)",
    )


def test_an_established_timeout_shorter_than_configured_warns_even_in_an_empty_table() -> None:
    status, detail = ct.assess_timeouts(stats(established=3600), DEFAULTS)
    assert status == "warn"
    assert detail.splitlines()[1] == (
        "nf_conntrack_tcp_timeout_established = 3600 s is shorter than [conntrack] tcp_timeout_established"
        " = 86400 s: a connection through the LB that idles longer than 3600 s loses its NAT state, and"
        " its next packet is reset or lost. Set [conntrack] manage = true (the agent sets it at start in"
        " its network namespace), or sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400"
        " in the LB's network namespace and persist it in /etc/sysctl.d/"
    )
    assert ct.assess_timeouts(stats(established=86399), DEFAULTS)[0] == "warn"
    assert ct.assess_timeouts(stats(established=86400), DEFAULTS)[0] == "ok"
    # A short close_wait only ends half-closed connections that idle: the kernel's 60 s is no risk.
    assert ct.assess_timeouts(stats(close_wait=60), DEFAULTS)[0] == "ok"
    assert ct.assess_timeouts(stats(established=60), ConntrackConfig(tcp_timeout_established=0))[0] == "ok"


@given(kernels, configs, st.floats(0.01, 1.0))
def test_timeouts_warn_only_on_a_short_established_or_a_long_timeout_in_a_filling_table(
    now: ct.Stats, cfg: ConntrackConfig, warn_usage: float
) -> None:
    import dataclasses

    cfg = dataclasses.replace(cfg, warn_usage=warn_usage)
    short = 0 < now.tcp_timeout_established < cfg.tcp_timeout_established
    long_ = any(
        target and current > ct.FAR_ABOVE * target
        for current, target in (
            (now.tcp_timeout_established, cfg.tcp_timeout_established),
            (now.tcp_timeout_close_wait, cfg.tcp_timeout_close_wait),
        )
    )
    status, _ = ct.assess_timeouts(now, cfg)
    assert (status == "warn") == (short or (long_ and now.usage >= warn_usage))


# --- applying, against files under tmp_path -----------------------------------------------------------


class FakeLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


@pytest.fixture
def fake_log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    log = FakeLog()
    monkeypatch.setattr(ct, "log", log)
    monkeypatch.setattr(conntrack_monitor, "log", log)  # the agent's sample logs there
    return log


def fake_kernel(tmp_path: Path, *, max_: int, hashsize: int, host: bool | None) -> ct.Paths:
    """A /proc/sys/net/netfilter, /proc/net/stat/nf_conntrack and hashsize made of plain files."""
    sysctl = tmp_path / "netfilter"
    sysctl.mkdir()
    for name, value in (
        ("nf_conntrack_count", 10),
        ("nf_conntrack_max", max_),
        ("nf_conntrack_buckets", hashsize),
        ("nf_conntrack_tcp_timeout_established", 432000),
        ("nf_conntrack_tcp_timeout_close_wait", 60),
    ):
        (sysctl / name).write_text(f"{value}\n")
    (tmp_path / "stat").write_text(STAT_4X)
    (tmp_path / "hashsize").write_text(f"{hashsize}\n")
    (tmp_path / "ns-self").write_text("")
    (tmp_path / "ns-other").write_text("")
    # Same file: "we are in the host's namespace"; another file: "we are not"; missing: "cannot tell".
    host_ns = {True: "ns-self", False: "ns-other", None: "ns-unreadable"}[host]
    return ct.Paths(
        sysctl_dir=str(sysctl),
        stat=str(tmp_path / "stat"),
        hashsize=str(tmp_path / "hashsize"),
        self_netns=str(tmp_path / "ns-self"),
        host_netns=str(tmp_path / host_ns),
    )


def value(paths: ct.Paths, name: str) -> int:
    path = paths.hashsize if name == ct.HASHSIZE else f"{paths.sysctl_dir}/{name}"
    return int(Path(path).read_text())


def test_apply_in_the_host_namespace_raises_max_and_hash_and_sets_timeouts(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path, max_=65536, hashsize=16384, host=True)
    out = ct.apply(DEFAULTS, paths, ncpu=8)
    assert [(c.name, c.current, c.target) for c in out.changed] == [
        (ct.MAX, 65536, 262144),
        (ct.HASHSIZE, 16384, 65536),
        (ct.ESTABLISHED, 432000, 86400),
        (ct.CLOSE_WAIT, 60, 3600),
    ]
    assert (out.skipped, out.failed) == ({}, {})
    assert [value(paths, n) for n in (ct.MAX, ct.HASHSIZE, ct.ESTABLISHED, ct.CLOSE_WAIT)] == [
        262144,
        65536,
        86400,
        3600,
    ]
    assert ct.apply(DEFAULTS, paths, ncpu=8).changed == []  # a second start changes nothing


def test_apply_never_lowers_a_bigger_table(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path, max_=2**21, hashsize=2**19, host=True)
    out = ct.apply(DEFAULTS, paths, ncpu=2)
    assert [c.name for c in out.changed] == [ct.ESTABLISHED, ct.CLOSE_WAIT]
    assert (value(paths, ct.MAX), value(paths, ct.HASHSIZE)) == (2**21, 2**19)


@pytest.mark.parametrize(
    ("host", "max_mode", "reason"),
    [
        (False, 0o644, "not the host's network namespace (the hash table is global)"),
        # /proc/1/ns/net unreadable: the kernel's read-only nf_conntrack_max says "not the host"
        (None, 0o444, "not the host's network namespace (the hash table is global)"),
    ],
)
def test_hash_table_is_left_alone_outside_the_host_namespace(
    tmp_path: Path, host: bool | None, max_mode: int, reason: str
) -> None:
    paths = fake_kernel(tmp_path, max_=65536, hashsize=16384, host=host)
    Path(paths.sysctl_dir, ct.MAX).chmod(max_mode)
    assert ct.in_host_netns(paths) is False
    out = ct.apply(DEFAULTS, paths, ncpu=8)
    assert out.skipped == {
        ct.HASHSIZE: f"{reason}; to set it on the host: sysctl -w net.netfilter.nf_conntrack_buckets=65536,"
        " or `options nf_conntrack hashsize=65536` in /etc/modprobe.d/"
    }
    assert value(paths, ct.HASHSIZE) == 16384
    assert ct.HASHSIZE not in [c.name for c in out.changed]


def test_host_netns_falls_back_on_the_kernels_read_only_max(tmp_path: Path) -> None:
    """Without /proc/1/ns/net (a unit without CAP_SYS_PTRACE), nf_conntrack_max's mode answers: the
    kernel makes it 0444 outside the init namespace. With neither, nobody can tell."""
    paths = fake_kernel(tmp_path, max_=65536, hashsize=16384, host=None)
    max_file = Path(paths.sysctl_dir, ct.MAX)
    assert ct.in_host_netns(paths) is True  # 0644, as in the host's namespace
    out = ct.apply(DEFAULTS, paths, ncpu=8)
    assert ct.HASHSIZE in [c.name for c in out.changed] and value(paths, ct.HASHSIZE) == 65536
    max_file.chmod(0o444)
    assert ct.in_host_netns(paths) is False
    max_file.unlink()
    assert ct.in_host_netns(paths) is None


def test_read_only_max_is_reported_once_and_the_rest_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_log: FakeLog
) -> None:
    paths = fake_kernel(tmp_path, max_=65536, hashsize=65536, host=False)
    real_open = open

    def kernel_open(path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path.endswith("/nf_conntrack_max") and "w" in mode:  # as in a non-init netns
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ct, "open", kernel_open, raising=False)
    out = ct.apply_at_start(ConntrackConfig(manage=True), paths)
    assert out is not None
    assert out.skipped == {
        ct.MAX: "read-only here (not the host's network namespace); set it on the host: sysctl -w"
        " net.netfilter.nf_conntrack_max=131072 and persist it in /etc/sysctl.d/ ([conntrack] manage ="
        " true raises it only when the agent runs in the host's network namespace)"
    }
    assert [c.name for c in out.changed] == [ct.ESTABLISHED, ct.CLOSE_WAIT]
    assert value(paths, ct.MAX) == 65536
    assert [level for level, _, _ in fake_log.events if level == "warning"] == ["warning"]
    assert fake_log.named("conntrack_max_not_settable") == [{"detail": out.skipped[ct.MAX]}]


def test_apply_at_start_is_opt_in_and_never_raises(tmp_path: Path, fake_log: FakeLog) -> None:
    broken = ct.Paths(sysctl_dir=str(tmp_path / "absent"), stat=str(tmp_path / "absent"))
    assert ct.apply_at_start(ConntrackConfig(manage=False), broken) is None
    assert fake_log.events == []
    assert ct.apply_at_start(ConntrackConfig(manage=True), broken) is None
    assert [e for _, e, _ in fake_log.events] == ["conntrack_limits_failed"]


# --- the agent's sample -----------------------------------------------------------------------------------


class FakeProc:
    def __init__(self) -> None:
        self.count, self.max, self.stat, self.error = 0, 1000, STAT_6X, None

    def __call__(self, path: str) -> str:
        if self.error is not None:
            raise self.error
        name = path.rsplit("/", 1)[-1]
        return {
            "nf_conntrack_count": str(self.count),
            "nf_conntrack_max": str(self.max),
            "nf_conntrack_buckets": "250",
            "nf_conntrack_tcp_timeout_established": "86400",
            "nf_conntrack_tcp_timeout_close_wait": "3600",
        }.get(name, self.stat)


def test_monitor_logs_each_crossing_once_and_fills_the_metrics(fake_log: FakeLog) -> None:
    proc, metrics = FakeProc(), Metrics()
    monitor = Monitor(metrics, read=proc)
    for count in (100, 749, 750, 900, 999, 740, 100, 800):
        proc.count = count
        assert monitor.sample(0.75) is not None
    assert [(level, event, kw["entries"]) for level, event, kw in fake_log.events] == [
        ("warning", "conntrack_table_filling", 750),
        ("info", "conntrack_table_ok", 740),
        ("warning", "conntrack_table_filling", 800),
    ]
    text = metrics.exposition().decode()
    for line in (
        "flannel_lb_conntrack_entries 800.0",
        "flannel_lb_conntrack_max 1000.0",
        "# TYPE flannel_lb_conntrack_insert_failed_total counter",
        "flannel_lb_conntrack_insert_failed_total 11.0",
        'flannel_lb_conntrack_drops_total{kind="drop"} 256.0',
        'flannel_lb_conntrack_drops_total{kind="early_drop"} 31.0',
    ):
        assert line in text.splitlines(), line


def test_monitor_survives_unreadable_stats_and_says_so_once(fake_log: FakeLog) -> None:
    proc, metrics = FakeProc(), Metrics()
    monitor = Monitor(metrics, read=proc)
    assert "flannel_lb_conntrack_insert_failed" not in metrics.exposition().decode()  # nothing read yet
    proc.error = FileNotFoundError("/proc/sys/net/netfilter/nf_conntrack_count")
    assert monitor.sample(0.75) is None
    assert monitor.sample(0.75) is None
    proc.error, proc.stat = None, "garbage"
    assert monitor.sample(0.75) is None
    proc.stat = STAT_4X
    assert monitor.sample(0.75) is not None
    assert [e for _, e, _ in fake_log.events] == ["conntrack_stats_unreadable"]


def test_agent_step_samples_and_keeps_going_when_reading_fails(fake_log: FakeLog) -> None:

    from flannel_lb import config

    cfg = config.parse({"lb": {"addresses": ["192.168.121.201"]}})
    agent = memory_agent(cfg)
    proc = FakeProc()
    agent.conntrack = Monitor(agent.metrics, read=proc)
    agent.have_snapshot = True
    agent.scheduler.skip_full()
    proc.error = OSError("boom")
    agent.step()  # must not raise
    proc.error, proc.count = None, 900
    agent.scheduler.netcheck_soon()
    agent.step()
    assert "flannel_lb_conntrack_entries 900.0" in agent.metrics.exposition().decode().splitlines()
    assert [e for _, e, _ in fake_log.events] == ["conntrack_stats_unreadable", "conntrack_table_filling"]


def test_sighup_applies_a_changed_conntrack_section(tmp_path: Path, fake_log: FakeLog) -> None:
    from flannel_lb import config

    path = tmp_path / "flannel-lb.toml"
    path.write_text('[lb]\naddresses = ["192.168.121.201"]\n')
    agent = memory_agent(config.load(str(path)))  # no sync here
    paths = fake_kernel(tmp_path, max_=1000, hashsize=250, host=False)
    agent.conntrack = Monitor(agent.metrics, paths=paths)
    agent.reload()  # [conntrack] unchanged: nothing is applied
    assert value(paths, ct.ESTABLISHED) == 432000 and "conntrack_limit_set" not in str(fake_log.events)
    path.write_text(path.read_text() + "[conntrack]\nmanage = true\ntcp_timeout_established = 7200\n")
    agent.reload()
    assert value(paths, ct.ESTABLISHED) == 7200
    assert value(paths, ct.HASHSIZE) == 250  # not the host's namespace: the hash table is left alone
    assert agent.cfg.conntrack.tcp_timeout_established == 7200


# --- the kernel: a namespace of our own -------------------------------------------------------------------

APPLY_IN_NETNS = """
import dataclasses, json, sys
from flannel_lb.kernel import conntrack_limits as ct
from flannel_lb.daemon import logs
from flannel_lb.config import ConntrackConfig
logs.setup(level="info", fmt="json")
settings = ConntrackConfig(manage=True, min=int(sys.argv[1]), tcp_timeout_established=7211,
                           tcp_timeout_close_wait=1811)
out = ct.apply_at_start(settings, ct.Paths(hashsize=sys.argv[2]))
print(json.dumps(dataclasses.asdict(out)))
"""

KNOBS = (
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/proc/sys/net/netfilter/nf_conntrack_buckets",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    ct.HASHSIZE_PATH,
)


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds a network namespace")
    if shutil.which("ip") is None or not os.path.exists(KNOBS[0]):
        pytest.skip("needs `ip` and a loaded nf_conntrack")
    with Namespaces() as spaces:
        spaces.add("lb")
        yield spaces


def host_values() -> dict[str, str]:
    return {path: Path(path).read_text().strip() for path in KNOBS}


@pytest.mark.netns
def test_apply_in_a_namespace_sets_its_timeouts_and_leaves_the_host_alone(
    ns: Namespaces, tmp_path: Path
) -> None:
    # The kernel makes nf_conntrack_max read-only outside the host's namespace; if this one were not,
    # a write here would change the host's table, so there is nothing safe to test.
    if ns.run("lb", ["stat", "-c", "%a", KNOBS[0]]).stdout.strip() != "444":
        pytest.skip("nf_conntrack_max is writable in a child namespace on this kernel")
    before = host_values()
    hashsize = int(before[ct.HASHSIZE_PATH])
    # A floor big enough that both the max and (at max/4) the hash table would have to grow.
    floor = 4 * hashsize + 4096
    fake_hash = tmp_path / "hashsize"
    fake_hash.write_text(f"{hashsize}\n")
    proc = ns.run(
        "lb",
        ["env", f"PYTHONPATH={ROOT}", sys.executable, "-c", APPLY_IN_NETNS, str(floor), str(fake_hash)],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])

    # The timeouts belong to the namespace: set there ...
    inside = [ns.run("lb", ["cat", path]).stdout.strip() for path in (KNOBS[2], KNOBS[3])]
    assert inside == ["7211", "1811"]
    assert [c["name"] for c in out["changed"]] == [ct.ESTABLISHED, ct.CLOSE_WAIT]
    # ... and nowhere else: the host's values, max and hash table included, did not move.
    assert host_values() == before
    # The max could not be raised from here, and the log says where to set it.
    assert out["skipped"][ct.MAX].startswith("read-only here (not the host's network namespace")
    assert f"sysctl -w net.netfilter.nf_conntrack_max={floor}" in out["skipped"][ct.MAX]
    warnings = [json.loads(line) for line in proc.stderr.splitlines() if "conntrack_max_not_settable" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    # The hash table was not even tried: not the host's namespace (or no way to tell).
    assert out["skipped"][ct.HASHSIZE].startswith(("not the host's network namespace", "cannot tell"))
    assert fake_hash.read_text() == f"{hashsize}\n"
    assert out["failed"] == {}
    # Run again: nothing left to change, the same refusal.
    again = ns.run(
        "lb",
        ["env", f"PYTHONPATH={ROOT}", sys.executable, "-c", APPLY_IN_NETNS, str(floor), str(fake_hash)],
    )
    assert json.loads(again.stdout.splitlines()[-1])["changed"] == []
    assert host_values() == before


def test_host_netns_detection_reads_this_process() -> None:
    # Whatever the answer here, comparing a namespace file with itself must say "the same".
    own = ct.Paths(host_netns="/proc/self/ns/net")
    assert ct.in_host_netns(own) is True
