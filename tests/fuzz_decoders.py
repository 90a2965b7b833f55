"""Fuzz flannel-lb's input path: every byte string etcd could hand over must be decoded or refused cleanly.

Targets (the first input byte picks one, the rest is its input):
  0 `decode_value` (both with and without managedFields) and `decode_used`: a dict, or DecodeError;
    when the full decode succeeds, the converters give the same result from either
  1 `parse_network_config`: a NetworkConfig, or FlannelError
  2 `parse_lease` (key name and value split at the first newline): a Lease, or FlannelError
  3 the object converters (`objects.service/endpoint_slice/endpoints/node`) on any JSON document: a
    Converted, or ObjectError
  4 `ClusterState.put` under a service, slice, endpoints, node, lease or config key, then `compute_plan`:
    never raises, and every problem's reason stays short
  5 a valid protobuf Service/EndpointSlice/Node with the input as an edit script (overwrite, insert,
    truncate): `decode_value` and the converters must refuse or accept it, nothing else

Any other exception is a crash; libFuzzer's -timeout and -rss_limit_mb catch hangs and memory blow-ups.

    .venv/bin/python tests/fuzz_decoders.py --runs 1000000            # atheris if installed
    .venv/bin/python tests/fuzz_decoders.py --engine hypothesis --runs 100000

atheris is not a project dependency (`pip install atheris`); without it the hypothesis engine runs the
same targets. The normal test run exercises the targets through `fuzz_one` in tests/test_bad_input.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.` and `flannel_lb`

try:  # as a script with atheris: instrument the project's modules for coverage feedback
    if __name__ != "__main__":
        raise ImportError("imported as a module: no instrumentation")
    import atheris

    with atheris.instrument_imports(include=["flannel_lb"]):
        from flannel_lb.decode import flannel, objects
        from flannel_lb.decode.kube import DecodeError, decode_used, decode_value, encode_protobuf
        from flannel_lb.plan.compute import PlanSettings, compute_plan
        from flannel_lb.state.cluster import MAX_REASON, ClusterState
    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False
    from flannel_lb.decode import flannel, objects
    from flannel_lb.decode.kube import DecodeError, decode_used, decode_value, encode_protobuf
    from flannel_lb.plan.compute import PlanSettings, compute_plan
    from flannel_lb.state.cluster import MAX_REASON, ClusterState

from flannel_lb.lab import objects as k

LB = "192.168.121.201"
SETTINGS = PlanSettings(addresses=frozenset({LB}))
NOW = 1_800_000_000.0
NETWORK = b'{"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan"}}'
KEYS = (
    "/registry/services/specs/default/fuzz",
    "/registry/endpointslices/default/fuzz-1",
    "/registry/services/endpoints/default/legacy",  # a Service without slices: its Endpoints are decoded
    "/registry/minions/node-fuzz",
    "/coreos.com/network/subnets/10.246.9.0-24",
    "/coreos.com/network/config",
)
CONVERTERS: tuple[Callable[[Any], objects.Converted], ...] = (
    objects.service,
    objects.endpoint_slice,
    objects.endpoints,
    objects.node,
)

OWN_CONVERTER: dict[Any, Callable[[Any], objects.Converted]] = {
    "Service": objects.service,
    "EndpointSlice": objects.endpoint_slice,
    "Endpoints": objects.endpoints,
    "Node": objects.node,
}

SEEDS: tuple[bytes, ...] = (
    encode_protobuf(
        k.service(
            "fuzz", ports=[k.port(80, "http", name="http"), k.port(53, protocol="UDP")], external_ips=[LB]
        )
    ),
    encode_protobuf(
        k.endpoint_slice(
            "fuzz-1",
            "fuzz",
            [k.endpoint("10.246.9.2", "node-1", pod="web-1"), k.endpoint("10.246.9.3", ready=False)],
            [("http", 8080, "TCP")],
        )
    ),
    encode_protobuf(k.node("node-1", "10.246.9.0/24", "10.245.1.3", flannel={"backend-type": "vxlan"})),
    encode_protobuf(
        k.endpoints("fuzz", [k.endpoints_subset([("10.246.9.2", "node-1")], [("http", 8080, "TCP")])])
    ),
)

outcomes: Counter[str] = Counter()


def _state() -> ClusterState:
    state = ClusterState()
    state.put("/coreos.com/network/config", NETWORK)
    state.put("/coreos.com/network/subnets/10.246.9.0-24", k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    state.put(KEYS[0], SEEDS[0])
    state.put(KEYS[1], SEEDS[1])
    return state


def _decode(value: bytes) -> None:
    try:
        used = decode_used(value)  # skips what it does not read: may accept what the full decode refuses
    except DecodeError:
        used = None
    try:
        obj = decode_value(value)
        decode_value(value, managed_fields=False)
    except DecodeError:
        outcomes["decode:refused"] += 1
        return
    assert isinstance(obj, dict) and isinstance(used, dict)
    outcomes["decode:ok"] += 1
    _convert(obj)
    convert = OWN_CONVERTER.get(obj.get("kind"))  # (another kind's converter reads other fields)
    if convert is not None:
        assert _outcome(convert, used) == _outcome(convert, obj)


def _outcome(convert: Callable[[Any], objects.Converted], obj: Any) -> Any:
    try:
        converted = convert(obj)
    except objects.ObjectError as e:
        return str(e)
    return converted.obj, converted.warnings


def _convert(obj: Any) -> None:
    for convert in CONVERTERS:
        try:
            converted = convert(obj)
        except objects.ObjectError:
            outcomes["convert:refused"] += 1
            continue
        assert isinstance(converted.warnings, list)
        outcomes["convert:ok"] += 1


def _edit(seed: bytes, script: bytes) -> bytes:
    """Apply `script` as (op, position, byte) triples to `seed`."""
    out = bytearray(seed)
    for i in range(0, len(script) - 2, 3):
        op, pos, byte = script[i], script[i + 1], script[i + 2]
        if not out:
            break
        at = (pos * len(out)) // 256
        if op % 4 == 0:
            out[at] = byte
        elif op % 4 == 1:
            out.insert(at, byte)
        elif op % 4 == 2:
            del out[at:]
        else:
            out[at] ^= 1 << (byte % 8)
    return bytes(out)


def fuzz_one(data: bytes) -> None:
    """One input: raises only on a bug (an exception other than the documented refusal, or a bad result)."""
    outcomes["inputs"] += 1
    if not data:
        return
    target, rest = data[0] % 6, data[1:]
    if target == 0:
        _decode(rest)
    elif target == 1:
        try:
            flannel.parse_network_config(rest)
            outcomes["network:ok"] += 1
        except flannel.FlannelError:
            outcomes["network:refused"] += 1
    elif target == 2:
        name, _, value = rest.partition(b"\n")
        try:
            flannel.parse_lease(name.decode("utf-8", "surrogateescape"), value)
            outcomes["lease:ok"] += 1
        except flannel.FlannelError:
            outcomes["lease:refused"] += 1
    elif target == 3:
        try:
            doc = json.loads(rest)
        except (ValueError, RecursionError):
            outcomes["json:invalid"] += 1
            return
        if not isinstance(doc, dict):  # decode_value only ever hands the converters an object
            outcomes["json:not-an-object"] += 1
            return
        _convert(doc)
    elif target == 4:
        if not rest:
            return
        state = _state()
        key = KEYS[rest[0] % len(KEYS)]
        state.put(key, rest[1:])
        plan = compute_plan(state, SETTINGS, now=NOW)
        for p in plan.problems:
            assert len(p.reason) <= MAX_REASON + 40, (p.key, len(p.reason))
        for f in plan.frontends:
            assert all(b.ip.startswith("10.246.9.") for b in f.backends), f
        outcomes["state:problems" if plan.problems else "state:clean"] += 1
    else:
        if not rest:
            return
        _decode(_edit(SEEDS[rest[0] % len(SEEDS)], rest[1:]))


def _report(started: float, runs: int) -> None:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    took = time.monotonic() - started
    print(
        json.dumps(
            {
                "inputs": runs,
                "seconds": round(took, 1),
                "per_second": round(runs / took) if took else None,
                "peak_rss_mb": round(rss_mb, 1),
                "outcomes": dict(sorted(outcomes.items())),
            }
        ),
        flush=True,
    )


def run_atheris(runs: int, extra: list[str]) -> None:
    started = time.monotonic()

    def one(data: bytes) -> None:
        fuzz_one(data)
        n = outcomes["inputs"]
        if n % 100_000 == 0 or n == runs:
            _report(started, n)

    work = Path(tempfile.mkdtemp(prefix="flb-fuzz-"))  # libFuzzer grows the corpus: keep it out of the tree
    corpus = work / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"decode-{i}").write_bytes(b"\x00" + seed)
        (corpus / f"state-{i}").write_bytes(b"\x04" + bytes([i]) + seed)
    (corpus / "network").write_bytes(b"\x01" + NETWORK)
    (corpus / "lease").write_bytes(b"\x02" + b"10.246.9.0-24\n" + k.lease("10.245.1.3", "aa:00:00:00:00:01"))
    (corpus / "json").write_bytes(b"\x03" + json.dumps(k.service("fuzz", external_ips=[LB])).encode())
    args = [sys.argv[0], f"-runs={runs}", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]
    args.append(f"-artifact_prefix={work}/")  # a crashing input is written there
    print(f"corpus and crash artifacts in {work}", flush=True)
    atheris.Setup([*args, *extra, str(corpus)], one)
    atheris.Fuzz()


def run_hypothesis(runs: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    started = time.monotonic()
    seeds = st.sampled_from([bytes([t]) + s for t in (0, 4) for s in SEEDS])
    inputs = st.one_of(
        st.binary(max_size=2048),
        st.tuples(seeds, st.binary(max_size=64)).map(lambda p: p[0][: len(p[0]) // 2] + p[1]),
        st.tuples(st.integers(0, 5), st.binary(max_size=96)).map(lambda p: bytes([5, p[0]]) + p[1]),
    )

    @settings(
        max_examples=runs,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def loop(data: bytes) -> None:
        fuzz_one(data)
        if outcomes["inputs"] % 100_000 == 0:
            _report(started, outcomes["inputs"])

    loop()
    _report(started, outcomes["inputs"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    args, extra = p.parse_known_args()
    engine = args.engine if args.engine != "auto" else ("atheris" if HAVE_ATHERIS else "hypothesis")
    if engine == "atheris":
        if not HAVE_ATHERIS:
            p.error("atheris is not installed (pip install atheris)")
        run_atheris(args.runs, extra)
    else:
        run_hypothesis(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
