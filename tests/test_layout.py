"""The package layout is the pipeline: a module imports only from its own stage or the stages before it,
so the path of a file tells where it sits (README "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import flannel_lb

PACKAGE = Path(flannel_lb.__file__).parent

# Stages in pipeline order; a module may import from its own rank or a lower one.
RANK = {
    "untrusted": 0,  # bounded readers for hostile text: every stage reads some
    "source": 1,
    "decode": 2,
    "state": 3,
    "plan": 4,
    "text": 4,
    "config": 5,  # the config's types (it validates [policy] with plan's types)
    "verbs": 5,  # what every CLI verb shares (exit codes, CommandError, loading the config)
    "kernel": 6,
    "dataplane": 6,
    "parts": 7,
    "ha": 7,
    "bgp": 7,  # the scale-out: renders BIRD's config, puts the VIPs on an interface
    "daemon": 8,
    "doctor": 9,
    "lab": 10,  # beside the product: builds labs and runs the agent
    "cli": 11,  # the front door, `lab` verbs included
    "__main__": 12,
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flannel_lb"):
            if node.module == "flannel_lb":
                out |= {f"flannel_lb.{a.name}" for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("flannel_lb")}
    return out


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py")
        if "etcdrpc" not in p.parts  # generated gRPC messages
    }


def test_every_stage_has_a_rank() -> None:
    stages = {_stage(m) for m in _modules()} - {"__init__"}
    assert stages <= set(RANK), stages - set(RANK)


def test_no_module_imports_a_later_stage() -> None:
    upward = []
    for module, path in sorted(_modules().items()):
        mine = _stage(module)
        for target in sorted(_imports(path)):
            theirs = _stage(target)
            if theirs != mine and RANK.get(theirs, 99) > RANK.get(mine, -1):
                upward.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not upward, "\n".join(upward)
