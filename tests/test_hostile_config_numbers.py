"""Hostile config numbers: TOML allows nan, inf and huge integers; no numeric key may take them.

Each numeric key's range lives in one place (`config.NUMBERS`); these tests prove, over generated values,
that every key refuses anything outside it with a message naming the file, the key and the range, and that
SIGHUP's reload goes through the same validation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel_lb import config
from tests.conftest import memory_agent

BASE = '[lb]\naddresses = ["192.168.121.201"]\n'
KEYS = sorted(config.NUMBERS)


def _toml(value: object) -> str:
    """The TOML spelling of a Python value (floats as TOML writes nan and inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _doc(section: str, key: str, value: str) -> str:
    if section == "lb":
        return f"{BASE}{key} = {value}\n"
    return f"{BASE}[{section}]\n{key} = {value}\n"


def _bad_values(spec: config.Range) -> st.SearchStrategy[object]:
    """Values the key must refuse: non-finite, outside the bounds, or of the wrong type."""
    lo_edge = st.floats(max_value=spec.lo, exclude_max=not spec.lo_open, allow_nan=False)
    hi_edge = st.floats(min_value=spec.hi, exclude_min=True, allow_nan=False)
    below = st.integers(max_value=math.ceil(spec.lo) - (0 if spec.lo_open else 1))
    above = st.integers(min_value=math.floor(spec.hi) + 1, max_value=2**200)
    wrong = st.one_of(st.booleans(), st.just("1"), st.just("[1]"))
    bad = [st.just(math.nan), st.just(math.inf), st.just(-math.inf), below, above, wrong]
    if spec.typ is float:
        bad += [lo_edge, hi_edge]
    else:
        bad.append(st.floats(allow_nan=False).filter(lambda f: not f.is_integer()))
    return st.one_of(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_key_refuses_non_finite_out_of_range_and_wrong_types(
    tmp_path: Path, data: st.DataObject
) -> None:
    section, key = data.draw(st.sampled_from(KEYS), label="key")
    spec = config.NUMBERS[(section, key)]
    value = data.draw(_bad_values(spec), label="value")
    spelled = value if isinstance(value, str) and value.startswith("[") else _toml(value)
    path = tmp_path / "flannel-lb.toml"
    path.write_text(_doc(section, key, str(spelled)))
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: [{section}] {key}: ")
    assert spec.describe() in message  # the allowed range is in the message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_key_takes_any_value_in_its_range(tmp_path: Path, data: st.DataObject) -> None:
    section, key = data.draw(st.sampled_from(KEYS), label="key")
    spec = config.NUMBERS[(section, key)]
    if spec.typ is float:
        value: float = data.draw(
            st.floats(min_value=spec.lo, max_value=spec.hi, exclude_min=spec.lo_open), label="value"
        )
    else:
        value = data.draw(st.integers(min_value=int(spec.lo), max_value=int(spec.hi)), label="value")
    path = tmp_path / "flannel-lb.toml"
    path.write_text(_doc(section, key, _toml(value)))
    got = getattr(getattr(config.load(path), section), key)
    assert got == value and type(got) is spec.typ and math.isfinite(got)


def test_every_numeric_field_of_the_config_has_a_range() -> None:
    """A numeric key added without a range would be read with no bounds: the schema must cover it."""
    numeric = set()
    for section in dataclasses.fields(config.Config):
        if section.name == "path":
            continue
        for key in dataclasses.fields(getattr(config.Config(), section.name)):
            if key.type in ("int", "float"):
                numeric.add((section.name, key.name))
    assert numeric == set(config.NUMBERS)


def test_reading_a_number_outside_the_schema_is_a_programming_error() -> None:
    section = config.Section("<config>", "etcd", {"timeout": 1.0})
    with pytest.raises(TypeError, match="number"):
        section.get("timeout", float, 5.0)


def test_sighup_refuses_a_non_finite_number_and_keeps_the_running_config(tmp_path: Path) -> None:
    path = tmp_path / "flannel-lb.toml"
    path.write_text(BASE + "[dataplane]\nfull_resync_interval = 10.0\n")
    agent = memory_agent(config.load(path))
    running = agent.cfg
    for bad in ("nan", "inf", "-1.0", "true", "1e999"):
        path.write_text(BASE + f"[dataplane]\nfull_resync_interval = {bad}\n")
        agent.reload()
        assert agent.cfg is running
    exposition = agent.metrics.exposition().decode()
    assert re.search(r'flannel_lb_config_reloads_total\{result="error"\} 5\.0', exposition), exposition
