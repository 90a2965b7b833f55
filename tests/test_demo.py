"""The README's demo command, as a new user runs it (the lab, the agent, traffic), end to end."""

from __future__ import annotations

import glob
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from flannel_lb.lab.netns import list_namespaces
from tests.test_lab import missing_tools

pytestmark = [pytest.mark.netns, pytest.mark.etcd]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    if missing_tools():
        pytest.skip(missing_tools() or "")
    name = "d" + secrets.token_hex(3)
    proc = subprocess.run(
        [sys.executable, "-m", "flannel_lb", "lab", "demo", "--name", name, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert not [n for n in list_namespaces() if n.startswith(f"flb-lab-{name}-")], "the demo left namespaces"
    assert not glob.glob(f"/tmp/flannel-lb-demo-{name}-*"), "the demo left its files behind"
    assert not Path(f"/run/flannel-lb-lab/{name}").exists(), "the demo left its lab's state"
    return proc


def test_demo_spreads_requests_and_follows_scaling() -> None:
    proc = demo()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "40/40 answered" in out and "60/60 answered" in out and "50/50 answered" in out
    assert "gets no new connections: yes" in out


def test_demo_without_masquerade_reproduces_the_seed_failure() -> None:
    proc = demo("--no-masquerade")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0/3 answered, 3 failed" in proc.stdout
    assert "20/20 answered" in proc.stdout
