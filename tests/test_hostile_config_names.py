"""A misspelt key or section is reported as unknown, with the key it likely meant, before anything else."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb import config

PATH = "/etc/flannel-lb/test.toml"
KNOWN = {
    "etcd": (
        "endpoints",
        "ca_file",
        "cert_file",
        "key_file",
        "username",
        "password",
        "timeout",
        "retry_budget",
    ),
    "flannel": ("prefix", "etcd_api", "subnet_manager", "network", "annotation_prefix"),
    "kubernetes": ("prefix",),
    "lb": ("addresses", "cluster_ips", "state_file"),
    "policy": ("namespaces", "annotation", "ports"),
    "dataplane": (
        "writer",
        "iptables_backend",
        "chain_prefix",
        "masquerade",
        "random_fully",
        "snat_addresses",
        "min_sync_interval",
        "full_resync_interval",
        "conntrack_cleanup",
        "manage_ip_forward",
        "forward_accept",
    ),
    "conntrack": (
        "manage",
        "max_per_core",
        "min",
        "tcp_timeout_established",
        "tcp_timeout_close_wait",
        "warn_usage",
    ),
    "metrics": ("listen",),
    "log": ("level", "format"),
}
ALL_KEYS = [(section, key) for section, keys in KNOWN.items() for key in keys]
_LETTERS = string.ascii_lowercase + "_"


@st.composite
def one_edit(draw: st.DrawFn, word: str) -> str:
    """`word` with one character inserted, deleted or replaced (never `word` itself)."""
    i = draw(st.integers(0, len(word)))
    c = draw(st.sampled_from(_LETTERS))
    op = draw(st.sampled_from(("insert", "delete", "replace")))
    if op == "insert" or i == len(word):
        out = word[:i] + c + word[i:]
    elif op == "delete" and len(word) > 1:
        out = word[:i] + word[i + 1 :]
    else:
        out = word[:i] + c + word[i + 1 :]
    if out == word:
        out = word[:i] + word[i:] + "x"
    return out


def _error(doc: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse(doc, PATH)
    return str(info.value)


@pytest.mark.parametrize(("section", "key"), ALL_KEYS)
def test_every_known_key_is_read(section: str, key: str) -> None:
    """The key list the check uses is the one the parser reads: a wrong type is reported under the key."""
    doc: dict[str, Any] = {"lb": {"addresses": ["10.0.0.1"]}}
    doc.setdefault(section, {})[key] = object()
    assert f"{PATH}: [{section}] {key}: expected" in _error(doc)


@given(data=st.data(), pick=st.sampled_from(ALL_KEYS))
def test_a_one_edit_misspelling_names_the_key_it_meant(data: st.DataObject, pick: tuple[str, str]) -> None:
    section, key = pick
    wrong = data.draw(one_edit(key))
    if wrong in KNOWN[section]:
        return  # the edit produced another real key
    # The required key itself misspelt must not be reported as missing.
    doc: dict[str, Any] = {"lb": {} if key == "addresses" else {"addresses": ["10.0.0.1"]}}
    doc.setdefault(section, {})[wrong] = "x"
    message = _error(doc)
    assert message.startswith(f"{PATH}: [{section}] {wrong}: unknown key; did you mean ")
    assert f'"{key}"' in message.split("did you mean ", 1)[1].split("?", 1)[0]


@given(data=st.data(), section=st.sampled_from(sorted(KNOWN)))
def test_a_one_edit_misspelt_section_names_the_section_it_meant(data: st.DataObject, section: str) -> None:
    wrong = data.draw(one_edit(section))
    if wrong in KNOWN:
        return
    message = _error({"lb": {"addresses": ["10.0.0.1"]}, wrong: {"x": 1}})
    assert message.startswith(f"{PATH}: [{wrong}]: unknown section; did you mean ")
    assert f"[{section}]" in message.split("did you mean ", 1)[1]


def test_the_issue_case_reads_as_a_misspelling() -> None:
    message = _error({"lb": {"adresses": ["10.0.0.1"]}})
    assert message == (
        f'{PATH}: [lb] adresses: unknown key; did you mean "addresses"?'
        " (known: addresses, cluster_ips, state_file)"
    )


def test_a_section_key_at_top_level_names_its_section() -> None:
    message = _error({"endpoints": ["http://127.0.0.1:2379"], "lb": {"addresses": ["10.0.0.1"]}})
    assert message == (
        f"{PATH}: endpoints: unknown top-level key, settings belong in a section;"
        " did you mean [etcd] endpoints?"
    )


def test_an_unknown_key_wins_over_a_bad_value_elsewhere() -> None:
    message = _error({"etcd": {"timeout": "soon"}, "lb": {"addresses": ["10.0.0.1"], "stat_file": ""}})
    assert "[lb] stat_file: unknown key" in message
