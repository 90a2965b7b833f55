"""The whole pipeline under hostile input: generated cases from tests/fuzz_pipeline.py.

The million-input run is `tests/fuzz_pipeline.py --runs 1000000 --kernel` (its figures are in the
README); here hypothesis drives the same generator, and a namespace run puts the rendered text
through the kernel's own checks.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel_lb.lab import objects as k
from tests import fuzz_pipeline as fp

BASE = fp.baseline()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_generated_hostile_inputs_keep_every_invariant(rng: random.Random) -> None:
    fp.check_one(fp.generate(rng), BASE)


@pytest.mark.parametrize("seed", range(40))
def test_every_mutation_class_is_generated_and_survives(seed: int) -> None:
    """Seeded cases cover each class the generator knows (identity, depth, lease keys, config)."""
    rng = random.Random(seed)
    for _ in range(25):
        fp.check_one(fp.generate(rng), BASE)


def test_the_invariants_catch_a_takeover() -> None:
    """A checker that cannot fail proves nothing: a value that really moves the good Service's port must."""
    values = fp.base_values()
    hijack = k.service("a-good", ports=[k.port(81, "http", name="http")], external_ips=[fp.LB])
    values[fp.GOOD_KEYS["service"]] = json.dumps(hijack).encode()
    with pytest.raises(fp.PipelineFinding, match="good Service changed"):
        fp.check_one(fp.Case(values), BASE)


def test_the_invariants_catch_an_unreported_identity_mismatch() -> None:
    case = fp.Case(
        fp.base_values(), [fp.Mutation("/registry/minions/node-nobody", (), "x", must_report=True)]
    )
    with pytest.raises(fp.PipelineFinding, match="not reported"):
        fp.check_one(case, BASE)


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's checks run in a network namespace (root)")
def test_rendered_text_passes_the_kernels_check() -> None:
    check = fp.KernelCheck(budget=400)
    try:
        rng = random.Random(2026)
        for _ in range(600):
            check(fp.check_one(fp.generate(rng), BASE))
        assert check.checked >= 30  # distinct texts really went to iptables-restore and nft
    finally:
        check.close()


@pytest.mark.parametrize("timeout", [0, -5, 86401, 2**32, 2**64 + 1])
def test_an_affinity_timeout_out_of_range_is_reported_and_the_default_used(timeout: int) -> None:
    """Found by the pipeline fuzz: 2**64 seconds reached the rules, and the kernel refused the whole sync."""
    values = fp.base_values()
    svc = k.service("fuzz", ports=[k.port(8080, name="web")], external_ips=[fp.LB], affinity_timeout=600)
    svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = timeout
    values[fp.VICTIM_KEYS["service"]] = json.dumps(svc).encode()
    result = fp.check_one(fp.Case(values), BASE)
    (victim,) = [f for f in result.plan.frontends if f.service == "default/fuzz"]
    assert victim.affinity is not None and 1 <= victim.affinity.timeout <= 86400
    if timeout != 0:  # 0 means "unset" in the protobuf and JSON forms alike
        assert any("timeoutSeconds" in p.reason for p in result.plan.problems if p.key.endswith("/fuzz"))
