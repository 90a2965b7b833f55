"""PackedValues behaves as a dict of bytes through puts, pops and compactions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.state.packed import PackedValues

KEYS = st.sampled_from([f"/registry/services/endpoints/default/svc-{i}" for i in range(6)])
OPS = st.lists(st.tuples(st.booleans(), KEYS, st.binary(max_size=40)), max_size=80)


@given(OPS)
def test_matches_a_dict(ops: list[tuple[bool, str, bytes]]) -> None:
    packed, model = PackedValues(compact_above=16), dict[str, bytes]()
    for is_put, key, value in ops:
        if is_put:
            packed.put(key, value)
            model[key] = value
        else:
            assert packed.pop(key) == model.pop(key, None)
        assert set(packed) == set(model) and len(packed) == len(model)
        assert all(k in packed for k in model)
    # Dead bytes are reclaimed: the buffer never holds much more than twice the live values.
    assert packed.nbytes <= max(16, 2 * sum(map(len, model.values()))) + 40
    assert {k: packed.pop(k) for k in list(model)} == model


def test_compaction_keeps_values_and_drops_garbage() -> None:
    packed = PackedValues(compact_above=100)
    for round_ in range(50):
        packed.put("a", bytes([round_]) * 30)
        packed.put("b", b"kept")
    assert packed.nbytes < 250  # 50 rounds wrote 1,700 bytes
    assert packed.pop("a") == bytes([49]) * 30 and packed.pop("b") == b"kept"
    assert packed.pop("a") is None and len(packed) == 0
