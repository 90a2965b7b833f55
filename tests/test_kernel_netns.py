"""The one command runner (kernel/netns.py): what its errors say, for the data plane and the doctor."""

from __future__ import annotations

import os
import shutil

import pytest

from flannel_lb.kernel.netns import RunError, in_netns, output, run


def test_output_returns_stdout_and_run_any_exit_status() -> None:
    assert output(["sh", "-c", "echo hello"]) == "hello\n"
    proc = run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_a_failure_names_the_command_its_status_and_stderr() -> None:
    with pytest.raises(RunError) as failed:
        output(["sh", "-c", "echo oops >&2; exit 3"])
    assert str(failed.value) == "`sh -c 'echo oops >&2; exit 3'` exited 3: oops"


def test_a_missing_tool_and_a_hung_one_are_named() -> None:
    with pytest.raises(RunError, match=r"^`flb-t-no-such-tool` is not installed$"):
        run(["flb-t-no-such-tool", "--version"])
    with pytest.raises(RunError, match=r"^`sleep infinity` gave no answer within 0.5 s$"):
        run(["sleep", "infinity"], timeout=0.5)


def test_in_a_namespace_the_error_shows_where_it_ran() -> None:
    assert in_netns(["iptables-save"], None) == ["iptables-save"]
    assert in_netns(["iptables-save"], "x") == ["ip", "netns", "exec", "x", "iptables-save"]
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    with pytest.raises(RunError) as failed:
        output(["true"], "flb-t-netns-absent")
    assert str(failed.value).startswith("`ip netns exec flb-t-netns-absent true` exited ")
    assert "flb-t-netns-absent" in str(failed.value).split(": ", 1)[1]  # ip's own words name it
