"""Fuzz the whole pipeline: hostile etcd values -> cluster state -> plan -> rules -> the kernel's check.

One input is a small, valid cluster (a Service `default/a-good` that must never change, and a victim
`default/fuzz` with its own slice, node and lease) in which 1-3 fields of the victim's objects, the
victim lease's key or the flannel network config are replaced by hostile values: type confusion,
Unicode digits and control characters, lone surrogates, extremes, deep nesting, duplicates and
identity mismatches. Each mutated value is written as JSON or protobuf, as kube-apiserver would.

Invariants, checked for every input (`check_one` raises `PipelineFinding` when one breaks):
- no exception escapes decode, cluster state, plan, the reports or either rule renderer;
- the good Service keeps exactly its frontends and backends and its iptables chains and nftables
  elements, unless a reported conflict lost it a port (a legitimate older claim) or the mutated
  input is one the good Service depends on (the network config, or a lease whose subnet may
  overlap its pods'), where backends may only shrink;
- a value whose metadata names another object than its key, or that nests deeper than any real
  object, is reported under its key;
- every problem names a key that was written, and its reason is bounded;
- `plan`/`explain` text is printable on any terminal (no control characters but newlines, encodes
  to UTF-8) and `--json` is strict JSON (no NaN).
With `--kernel`, every distinct rule text (up to `--kernel-budget`) also goes through
`iptables-restore --test` and `nft -c -f` in a scratch network namespace.

    .venv/bin/python tests/fuzz_pipeline.py --runs 1000000 --workers 2 --kernel   # as root

The normal test run drives the same inputs through hypothesis (tests/test_hostile_pipeline.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import random
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flannel_lb.dataplane.iptables.render import render
from flannel_lb.dataplane.iptables.rules import RuleSet, build_ruleset
from flannel_lb.dataplane.nftables import layout as nft_layout
from flannel_lb.dataplane.nftables.writer import NftWriter
from flannel_lb.dataplane.options import Options
from flannel_lb.decode.kube import encode_protobuf
from flannel_lb.lab import objects as k
from flannel_lb.plan import report
from flannel_lb.plan.compute import PlanSettings, admission_for, compute_plan
from flannel_lb.plan.model import Frontend, Plan
from flannel_lb.state.cluster import MAX_REASON, ClusterState

LB = "192.168.121.201"
SETTINGS = PlanSettings(addresses=frozenset({LB}))
NOW = 1_800_000_000.0
OPTIONS = Options(prefix="FLB-", overlay_udp_port=8472)
MAGLEV_OPTIONS = dataclasses.replace(OPTIONS, balance="maglev")

CONFIG_KEY = "/coreos.com/network/config"
SUBNETS = "/coreos.com/network/subnets/"
GOOD_LEASE_KEY = SUBNETS + "10.246.1.0-24"
VICTIM_LEASE_KEY = SUBNETS + "10.246.9.0-24"
GOOD_KEYS = {
    "service": "/registry/services/specs/default/a-good",
    "slice": "/registry/endpointslices/default/a-good-1",
    "node": "/registry/minions/node-good",
}
VICTIM_KEYS = {
    "service": "/registry/services/specs/default/fuzz",
    "slice": "/registry/endpointslices/default/fuzz-1",
    "node": "/registry/minions/node-fuzz",
}
NETWORK: dict[str, Any] = {"Network": "10.246.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}


def _good_objects() -> dict[str, dict[str, Any]]:
    return {
        GOOD_KEYS["service"]: k.service(
            "a-good",
            ports=[k.port(80, "http", name="http"), k.port(53, protocol="UDP", name="dns")],
            external_ips=[LB],
            created="2000-01-01T00:00:00Z",
        ),
        GOOD_KEYS["slice"]: k.endpoint_slice(
            "a-good-1",
            "a-good",
            [k.endpoint("10.246.1.2", "node-good", pod="good-1"), k.endpoint("10.246.1.3", "node-good")],
            [("http", 8080, "TCP"), ("dns", 53, "UDP")],
        ),
        GOOD_KEYS["node"]: k.node("node-good", "10.246.1.0/24", "10.245.1.3"),
    }


def _victim_objects() -> dict[str, dict[str, Any]]:
    return {
        VICTIM_KEYS["service"]: k.service(
            "fuzz",
            ports=[k.port(8080, "web", name="web"), k.port(5353, 53, protocol="UDP")],
            external_ips=[LB],
            affinity_timeout=600,
            created="2020-01-01T00:00:00Z",
            source_ranges=["192.168.121.0/24", " 10.0.0.7/8", "2001:db8::/32"],
        ),
        VICTIM_KEYS["slice"]: k.endpoint_slice(
            "fuzz-1",
            "fuzz",
            [k.endpoint("10.246.9.2", "node-fuzz", pod="web-1"), k.endpoint("10.246.9.3", ready=False)],
            [("web", 8080, "TCP"), ("", 53, "UDP")],
        ),
        VICTIM_KEYS["node"]: k.node("node-fuzz", "10.246.9.0/24", "10.245.1.4"),
    }


def _lease(public_ip: str, mac: str) -> dict[str, Any]:
    return json.loads(k.lease(public_ip, mac))


# --- hostile values ---------------------------------------------------------------------------------

_UNICODE_DIGITS = tuple(
    c for c in map(chr, range(0x80, 0x10000)) if unicodedata.category(c) == "Nd" or c.isdigit()
)
DEEP = "\x00deep\x00"  # replaced, in the JSON text, by nesting too deep for any real object
_SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    65536,
    2**31,
    2**63,
    2**64 + 1,
    -(2**63) - 1,
    1e308,
    -0.0,
    float("nan"),
    float("inf"),
    "",
    " ",
    "0x50",
    "1e2",
    "80\n",
    " 80",
    "+80",
    "80.0",
    "\x00",
    "\x1b[2J\x1b[31mred",
    "a\n-A FLB-SERVICES -j ACCEPT",
    "x\r\ny: z",
    "\u202egnp.exe",
    "\u2028line",
    "\udc80",
    "\ud800x",
    "\ufeffBOM",
    "x" * 5000,
    "255.255.255.255",
    "0.0.0.0",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "10.246.9.0",
    "10.246.9.255",
    "10.246.1.2",  # the good Service's pod: the victim may point at it, good must not change
    LB,
    "10.245.1.4",
    "::1",
    "010.246.009.002",
    "1.2.3",
    "1.2.3.4.5",
    "TCP",
    "udp",
    "SCTP",
    "ClientIP",
    "k8s:enc:aescbc:v1:key1:",
    "kube-system",
    "..",
    "a/b",
)
_CONTAINERS: tuple[Any, ...] = ([], {}, [None], {"": None}, [[[[1]]]], {"a": {"b": {"c": {}}}}, DEEP)
# The good Service's identity: written into the victim's metadata, it must be reported and ignored.
_IDENTITIES = (("name", "a-good"), ("namespace", "kube-system"), ("name", ""), ("namespace", ""))


def _hostile(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.15:
        n = rng.randint(1, 5)
        return "".join(rng.choice(_UNICODE_DIGITS) for _ in range(n))
    if roll < 0.25:
        return rng.choice(_CONTAINERS)
    if roll < 0.3:
        return rng.randint(-(2**70), 2**70)
    return rng.choice(_SCALARS)


@dataclass
class Mutation:
    key: str
    path: tuple[Any, ...]
    op: str
    must_report: bool = False  # the mutated key must appear among the plan's problems

    def __str__(self) -> str:
        return f"{self.op} at {self.key}{''.join(f'[{p!r}]' for p in self.path)}"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_paths(value, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


def mutate_doc(doc: dict[str, Any], key: str, rng: random.Random) -> Mutation:
    """Change `doc` in place at one random field; return what was done."""
    if rng.random() < 0.08 and isinstance(doc.get("metadata"), dict):
        field_name, value = rng.choice(_IDENTITIES)
        cluster_scoped = doc.get("kind") == "Node"
        if doc["metadata"].get(field_name) != value and not (cluster_scoped and field_name == "namespace"):
            doc["metadata"][field_name] = value
            return Mutation(key, ("metadata", field_name), f"identity {value!r}", must_report=True)
    paths = [p for p in _paths(doc) if p]
    path = rng.choice(paths)
    parent, last = _parent(doc, path), path[-1]
    roll = rng.random()
    if roll < 0.6:
        value = _hostile(rng)
        parent[last] = copy.deepcopy(value)
        return Mutation(key, path, f"set {value!r:.40}", must_report=value == DEEP)
    if roll < 0.75:
        del parent[last]
        return Mutation(key, path, "delete")
    if roll < 0.9 and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
        return Mutation(key, path, "duplicate")
    parent[last] = [parent[last]] if rng.random() < 0.5 else {"x": parent[last]}
    return Mutation(key, path, "wrap")


def encode_doc(doc: Any, rng: random.Random, *, kube: bool) -> bytes:
    """The bytes etcd would hold: protobuf in the `k8s\\0` envelope when it can be, else JSON."""
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)  # NaN/Infinity: Python's json reads them
    if DEEP in text or "\\u0000deep\\u0000" in text:
        depth = rng.choice((5_000, 200_000))
        nested = "[" * depth + "]" * depth
        text = text.replace(json.dumps(DEEP, ensure_ascii=False), nested).replace(json.dumps(DEEP), nested)
        return text.encode("utf-8", "surrogatepass")
    if kube and rng.random() < 0.5:
        try:
            return encode_protobuf(doc)
        except Exception:  # a type the protobuf schema cannot carry: JSON still can
            pass
    return text.encode("utf-8", "surrogatepass")


_LEASE_KEY_SUFFIXES = (
    "10.246.9.0-24\n",
    "10.246.9.0-24x",
    "10.246.9.0-24 ",
    "\u0661\u0660.246.9.0-24",
    "10.246.9.0-\u0662\u0664",
    "10.246.0.0-16",
    "10.246.9.0-23",
    "10.246.9.128-25",
    "10.246.9.0-32",
    "10.246.9.0-0",
    "0.0.0.0-0",
    "255.255.255.255-32",
    "255.255.255.0-24",
    "10.246.9.0-33",
    "10.246.9.0--1",
    "10.246.9.0-24&fd00::-64",
)


@dataclass
class Case:
    """One generated input: the values to write, and what was mutated."""

    values: dict[str, bytes]
    mutations: list[Mutation] = field(default_factory=list)
    config_changed: bool = False
    lease_key_changed: bool = False


@functools.cache
def _base_values() -> dict[str, bytes]:
    values = {key: encode_protobuf(doc) for key, doc in {**_good_objects(), **_victim_objects()}.items()}
    values[CONFIG_KEY] = json.dumps(NETWORK).encode()
    values[GOOD_LEASE_KEY] = json.dumps(_lease("10.245.1.3", "aa:00:00:00:00:01")).encode()
    values[VICTIM_LEASE_KEY] = json.dumps(_lease("10.245.1.4", "aa:00:00:00:00:02")).encode()
    return values


def base_values() -> dict[str, bytes]:
    """The valid cluster's values (a fresh dict each call; encoded once)."""
    return dict(_base_values())


def generate(rng: random.Random) -> Case:
    """A valid cluster with 1-3 hostile changes to the victim's inputs (or the network config)."""
    case = Case(base_values())
    docs: dict[str, Any] = dict(_victim_objects())
    docs[VICTIM_LEASE_KEY] = _lease("10.245.1.4", "aa:00:00:00:00:02")
    touched: set[str] = set()
    lease_key = VICTIM_LEASE_KEY
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.06:
            docs[CONFIG_KEY] = docs.get(CONFIG_KEY, copy.deepcopy(NETWORK))
            case.mutations.append(mutate_doc(docs[CONFIG_KEY], CONFIG_KEY, rng))
            touched.add(CONFIG_KEY)
            case.config_changed = True
        elif roll < 0.14:
            lease_key = SUBNETS + rng.choice(_LEASE_KEY_SUFFIXES)
            case.mutations.append(Mutation(lease_key, (), "lease key"))
            case.lease_key_changed = True
        else:
            key = rng.choice([*VICTIM_KEYS.values(), VICTIM_LEASE_KEY])
            case.mutations.append(mutate_doc(docs[key], key, rng))
            touched.add(key)
    for key in touched:
        case.values[key] = encode_doc(docs[key], rng, kube=key.startswith("/registry/"))
    for m in case.mutations:
        if m.must_report and m.op.startswith("set") and DEEP not in json.dumps(docs.get(m.key)):
            m.must_report = False  # a later mutation removed the deep value again
    if lease_key != VICTIM_LEASE_KEY:
        case.values[lease_key] = case.values.pop(VICTIM_LEASE_KEY)
        for m in case.mutations:
            if m.key == VICTIM_LEASE_KEY:
                m.key = lease_key  # the value's problems are reported under the key it was written to
    return case


# --- the pipeline and its invariants -----------------------------------------------------------------


class PipelineFinding(AssertionError):
    pass


@dataclass
class Result:
    plan: Plan
    iptables_text: str
    nft_text: str
    nft_maglev_text: str = ""  # the same plan with `balance = "maglev"` (Maglev tables, jhash)


def run_pipeline(values: dict[str, bytes]) -> tuple[ClusterState, Result]:
    state = ClusterState()
    state.replace(((key, value, None) for key, value in values.items()), revision=10)
    plan = compute_plan(state, SETTINGS, now=NOW)
    rules = build_ruleset(plan, OPTIONS)
    nft = NftWriter(OPTIONS)
    nft_text = nft.next_sync(plan, full=True)[1]
    maglev_text = NftWriter(MAGLEV_OPTIONS).next_sync(plan, full=True)[1]
    return state, Result(plan, render(rules, None, full=True), nft_text, maglev_text)


def _good_frontends(plan: Plan) -> tuple[Frontend, ...]:
    return tuple(f for f in plan.frontends if f.service == "default/a-good")


def _owned_chains(rules: RuleSet, frontends: tuple[Frontend, ...]) -> dict[str, Any]:
    only = build_ruleset(Plan(revision=0, frontends=frontends), OPTIONS)
    skeleton = {c.name for c in build_ruleset(Plan(revision=0), OPTIONS).chains}
    return {c.name: c.key() for c in only.chains if c.name not in skeleton and c.name.startswith("FLB-FE-")}


@dataclass
class Baseline:
    frontends: tuple[Frontend, ...]
    chains: dict[str, Any]
    elements: set[tuple[str, str, str]]


def baseline() -> Baseline:
    _, result = run_pipeline(base_values())
    good = _good_frontends(result.plan)
    if len(good) != 2 or not all(f.backends for f in good):
        raise RuntimeError(f"the fuzz's base cluster does not serve the good Service: {good}")
    rules = build_ruleset(result.plan, OPTIONS)
    return Baseline(good, _owned_chains(rules, good), _elements(good))


def _elements(frontends: tuple[Frontend, ...]) -> set[tuple[str, str, str]]:
    return {el for f in frontends for el in nft_layout.frontend_entries(f, OPTIONS).elements}


def _printable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PipelineFinding(f"{what} cannot be printed: {e}") from None
    if text.replace("\n", "").isprintable():
        return  # isprintable() is False for every category below (and a few harmless ones)
    bad = {c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")}
    if bad:
        raise PipelineFinding(f"{what} holds raw control characters {sorted(map(repr, bad))[:5]}")


def check_one(case: Case, base: Baseline) -> Result:
    """Run one case through the pipeline and check every invariant (raises PipelineFinding)."""
    try:
        state, result = run_pipeline(case.values)
        plan = result.plan
        table = report.plan_table(plan)
        admission = admission_for(state, NOW)
        stories = [report.explain(state, plan, ref, SETTINGS, admission) for ref in state.services]
        texts = [report.explain_text(s) for s in stories if s is not None]
        blob = json.dumps({"plan": plan.to_json(), "stories": stories}, allow_nan=False)
    except PipelineFinding:
        raise
    except Exception as e:  # anything else escaping the pipeline is the bug this fuzz looks for
        raise PipelineFinding(f"{type(e).__name__}: {e}") from e
    blob.encode("utf-8")
    _printable(table, "plan text")
    for text in texts:
        _printable(text, "explain text")

    written = set(case.values)
    for p in plan.problems:
        if p.key not in written:
            raise PipelineFinding(f"problem for a key nobody wrote: {p.key!r}")
        if len(p.reason) > MAX_REASON + 200:
            raise PipelineFinding(f"unbounded reason ({len(p.reason)} chars) for {p.key}")
    reported = {p.key for p in plan.problems}
    for m in case.mutations:
        if m.must_report and m.key not in reported:
            raise PipelineFinding(f"not reported: {m}")

    good = _good_frontends(plan)
    lost = {(c.address, c.port, c.protocol) for c in plan.conflicts if c.loser == "default/a-good"}
    expected = tuple(f for f in base.frontends if f.key not in lost)
    # A network config or a lease that covers the good Service's pods may take backends away
    # (an overlapping lease makes the overlap untrusted), never add or redirect them.
    if case.config_changed or case.lease_key_changed:
        if [f.key for f in good] != [f.key for f in expected] or any(
            not set(g.backends) <= set(e.backends) for g, e in zip(good, expected, strict=True)
        ):
            raise PipelineFinding(f"a config or lease change gave the good Service new backends: {good}")
        return result
    if good != expected:
        raise PipelineFinding(f"the good Service changed: {good} (expected {expected})")
    if not lost:
        rules = build_ruleset(plan, OPTIONS)
        chains = {c.name: c.key() for c in rules.chains}
        for name, rules_key in base.chains.items():
            if chains.get(name) != rules_key:
                raise PipelineFinding(f"the good Service's chain {name} changed or vanished")
        nft_elements = NftWriter(OPTIONS).builder.build(plan).elements()
        if not base.elements <= nft_elements:
            raise PipelineFinding("the good Service's nftables elements changed")
    return result


# --- the kernel's check --------------------------------------------------------------------------------


class KernelCheck:
    """`iptables-restore --test` and `nft -c` in a scratch namespace, once per distinct text."""

    def __init__(self, budget: int) -> None:
        from flannel_lb.lab.netns import Namespaces

        self.budget = budget
        self.checked = 0
        self.seen: set[bytes] = set()
        self.ns = Namespaces()
        self.ns.add("fz")

    def close(self) -> None:
        self.ns.close()

    def __call__(self, result: Result) -> None:
        for argv, text in (
            (["iptables-restore", "--test", "--noflush", "-w"], result.iptables_text),
            (["nft", "-c", "-f", "-"], result.nft_text),
            (["nft", "-c", "-f", "-"], result.nft_maglev_text),
        ):
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in self.seen or self.checked >= self.budget:
                continue
            self.seen.add(digest)
            self.checked += 1
            proc = self.ns.run("fz", argv, input=text, check=False, timeout=60)
            if proc.returncode != 0:
                raise PipelineFinding(f"{argv[0]} refused the rendered text: {proc.stderr.strip()[:300]}")


# --- the runner --------------------------------------------------------------------------------------


def _worker(args: tuple[int, int, bool, int]) -> dict[str, Any]:
    seed, runs, kernel, budget = args
    rng = random.Random(seed)
    base = baseline()
    check = KernelCheck(budget) if kernel else None
    outcomes: Counter[str] = Counter()
    findings: list[str] = []
    try:
        for i in range(runs):
            case_seed = rng.getrandbits(64)
            case = generate(random.Random(case_seed))
            try:
                result = check_one(case, base)
                if check is not None:
                    check(result)
            except PipelineFinding as e:
                outcomes["findings"] += 1
                outcomes[f"finding: {str(e).split(':')[0][:60]}"] += 1
                if len(findings) < 20 or (len(findings) < 60 and "not reported" not in str(e)):
                    findings.append(f"case seed {case_seed}: {e} [{'; '.join(map(str, case.mutations))}]")
                continue
            outcomes["inputs"] += 1
            outcomes["with_problems" if result.plan.problems else "clean"] += 1
            if i and i % 50_000 == 0:
                print(json.dumps({"worker_seed": seed, "done": i}), flush=True)
    finally:
        if check is not None:
            outcomes["kernel_checked"] = check.checked
            check.close()
    return {"outcomes": dict(outcomes), "findings": findings}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--kernel", action="store_true", help="also run the kernel's checks (root)")
    p.add_argument("--kernel-budget", type=int, default=20_000, help="distinct texts checked per worker")
    args = p.parse_args()
    started = time.monotonic()
    share = math.ceil(args.runs / args.workers)
    jobs = [(args.seed + w, share, args.kernel, args.kernel_budget) for w in range(args.workers)]
    with multiprocessing.Pool(args.workers) as pool:
        results = pool.map(_worker, jobs)
    total: Counter[str] = Counter()
    findings: list[str] = []
    for r in results:
        total.update(r["outcomes"])
        findings += r["findings"]
    took = time.monotonic() - started
    print(
        json.dumps(
            {
                "seconds": round(took),
                "per_second": round(args.runs / took),
                **total,
                "first_findings": findings,
            },
            indent=1,
        )
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
