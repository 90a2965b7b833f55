"""The lab as a newcomer drives it: `lab up` says what next, `lab exec`/`lab shell` run in the LB's
namespace with the lab's config, and the lab's state never lands on the host (all gone after down)."""

from __future__ import annotations

import glob
import os
import secrets
import select
import subprocess
import sys
from pathlib import Path

import pytest

from flannel_lb.lab.lab import DEFAULT_NAME, STATE_ROOT
from flannel_lb.lab.netns import list_namespaces
from tests.test_lab import needs_lab

_HOST_STATE = Path("/var/lib/flannel-lb")


def _entries(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


@needs_lab
def test_exec_shell_and_down_leave_nothing_on_the_host() -> None:
    name = "c" + secrets.token_hex(3)
    cli = [sys.executable, "-m", "flannel_lb", "lab", "--lab", name]
    host_before = _entries(_HOST_STATE)
    demo_before = set(glob.glob(f"/tmp/flannel-lb-demo-{name}-*"))
    try:
        up = subprocess.run([*cli, "up", "--pods-per-node", "1"], capture_output=True, text=True, timeout=90)
        assert up.returncode == 0, up.stderr
        config = STATE_ROOT / name / "flannel-lb.toml"
        assert str(config) in up.stdout
        for verb in ("plan", "explain default/nginx", "sync --once", "diff", "check"):
            assert f"lab --lab {name} exec -- {verb}" in up.stdout, up.stdout
        assert f"lab --lab {name} down" in up.stdout

        sync = subprocess.run(
            [*cli[:-2], "exec", "--lab", name, "--", "sync", "--once"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sync.returncode == 0, sync.stderr
        assert (STATE_ROOT / name / "last-good.jsonl").is_file()  # the lab's own state file
        plan = subprocess.run([*cli, "exec", "--", "plan"], capture_output=True, text=True, timeout=60)
        assert plan.returncode == 0 and "192.168.121.201:80/TCP" in plan.stdout, plan.stderr
        # run on the host by mistake: the lab's etcd is not reachable there, and the error says where it is
        on_host = config.with_name("on-host.toml")
        on_host.write_text(
            '[etcd]\nendpoints = ["http://127.0.0.1:9"]\nretry_budget = 0.5\n[lb]\naddresses = ["10.0.0.1"]\n'
        )
        astray = subprocess.run(
            [sys.executable, "-m", "flannel_lb", "--config", str(on_host), "render"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (
            astray.returncode == 3
            and f"a lab is up: flannel-lb lab exec --lab {name} -- render" in astray.stderr
        )
        shell = subprocess.run(
            [*cli, "shell", "--", "-c", "echo $FLANNEL_LB_CONFIG; ip -o -4 addr show dev eth0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shell.returncode == 0, shell.stderr
        assert str(config) in shell.stdout and "192.168.121.201/24" in shell.stdout
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [n for n in list_namespaces() if n.startswith(f"flb-lab-{name}-")]
    assert not (STATE_ROOT / name).exists()
    assert name not in _entries(STATE_ROOT)  # the root itself goes with the last lab
    assert _entries(_HOST_STATE) <= host_before
    assert set(glob.glob(f"/tmp/flannel-lb-demo-{name}-*")) == demo_before == set()
    gone = subprocess.run([*cli, "exec", "--", "plan"], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "is not up" in gone.stderr


def _with_stderr_on_a_terminal(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run argv as a person at a prompt sees it: stderr is a pty."""
    master, slave = os.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60)
        chunks = []
        while select.select([master], [], [], 0.5)[0]:
            chunks.append(os.read(master, 65536))
    finally:
        os.close(master)
        os.close(slave)
    return done, b"".join(chunks).decode(errors="replace")


@needs_lab
def test_the_readme_walk_through_under_the_default_name() -> None:
    """README "The lab" verbatim: `lab up` with no name, the verbs through `lab exec`, `lab down`."""
    if (STATE_ROOT / DEFAULT_NAME).exists():
        pytest.skip(f"a lab named {DEFAULT_NAME!r} is up on this host: this test would take its name")
    cli = [sys.executable, "-m", "flannel_lb", "lab"]

    def verb(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, "exec", "--", *argv], capture_output=True, text=True, timeout=60)

    try:
        up = subprocess.run([*cli, "up"], capture_output=True, text=True, timeout=90)
        assert up.returncode == 0, up.stderr
        assert "flannel-lb lab exec -- plan" in up.stdout or " lab exec -- plan" in up.stdout
        pending = verb("diff")
        assert pending.returncode == 1 and pending.stdout.endswith("\n"), pending
        once, terminal = _with_stderr_on_a_terminal([*cli, "exec", "--", "sync", "--once"])
        assert once.returncode == 0 and "sync: " in once.stdout, terminal
        assert '{"' not in terminal  # no JSON log lines for a person; the summary says what happened
        in_step = verb("diff")
        assert in_step.returncode == 0 and "nothing to change" in in_step.stdout, in_step
        assert verb("explain", "default/nginx").returncode == 0
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not (STATE_ROOT / DEFAULT_NAME).exists()
