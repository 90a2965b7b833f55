"""A newcomer's first hour: the README's commands are the scripts CI runs, the scripts work as root
and tell a normal user without sudo what to do, and long work shows progress."""

from __future__ import annotations

import io
import os
import pwd
import re
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_lb.lab.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    """The commands of the README's "Two commands" code block (comments stripped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_commands_are_the_scripts_ci_runs() -> None:
    demo, test = _readme_commands()
    assert (demo, test) == ("scripts/demo.sh", "scripts/test.sh")
    for command in (demo, test):
        assert os.access(ROOT / command, os.X_OK), command
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert f"exec {test}" in ci


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=60))
def test_progress_plain_lines_end_with_the_total(steps: list[float]) -> None:
    clock, out = _Clock(), io.StringIO()
    with Progress("work", len(steps), stream=out, delay=2.0, interval=5.0, clock=clock) as p:
        for step in steps:
            clock.now += step
            p.advance()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    if clock.now < 2.0:
        assert text == ""  # quick work says nothing
        return
    lines = text.splitlines()
    assert lines[-1].startswith(f"work: {len(steps)}/{len(steps)} in ")
    # occasional: at most one line per interval, plus the first and the last
    assert len(lines) <= 2 + int(clock.now // 5.0) + 1


def test_progress_on_a_terminal_updates_one_line() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            clock = _Clock()
            with Progress("pods", 50, stream=tty, delay=1.0, clock=clock) as p:
                for _ in range(50):
                    clock.now += 0.2
                    p.advance()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:  # a pty hands its buffer over in pieces
            chunks.append(os.read(master, 65536))
        text = b"".join(chunks).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert text.count("\r") > 1  # redrawn in place
    assert text.rstrip("\r\n").count("\n") == 0  # one line, ended once at the close
    assert "pods: 50/50 in 10.0 s" in text


def test_a_user_without_sudo_is_told_what_to_do() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the script as another user")
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: pytest's tmp_path is root's only
        Path(tmp).chmod(0o755)
        bin_dir = Path(tmp)  # a PATH with the script's tools but no sudo
        for tool in ("bash", "id", "dirname", "basename"):
            (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
        _run_as_nobody(nobody, bin_dir)


def _run_as_nobody(nobody: pwd.struct_passwd, bin_dir: Path) -> None:
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "/usr/bin/env",
                f"PATH={bin_dir}",
                "bash",
                str(ROOT / script),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "needs root" in proc.stderr and "sudo is not installed" in proc.stderr
        assert "su -c" in proc.stderr


def test_as_root_goes_on_as_root_without_sudo() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = subprocess.run(
        [
            "/usr/bin/env",
            "PATH=/usr/bin:/bin",
            "bash",
            "-c",
            f'. {ROOT}/scripts/as-root.sh; as_root "$0"; echo went-on',
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "went-on", proc.stderr
