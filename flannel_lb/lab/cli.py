"""`flannel-lb lab ...`: drive the network-namespace lab from a shell (each verb is its own process)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flannel_lb import config as config_mod
from flannel_lb.kernel.netns import in_netns
from flannel_lb.lab import diagram
from flannel_lb.lab.demo import run_demo
from flannel_lb.lab.lab import DEFAULT_NAME, Lab, LabError
from flannel_lb.lab.lbagent import LB_HOST
from flannel_lb.lab.overlay import BACKENDS
from flannel_lb.plan.report import counted

DEMO_NAME = "demo"


def _name(args: argparse.Namespace, default: str = DEFAULT_NAME) -> str:
    """`--lab NAME`, given before or after the verb."""
    return getattr(args, "lab", None) or default


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(_name(args))


def _prog() -> str:
    """How to call this flannel-lb again: bare when PATH finds this same one, else by its path."""
    me = Path(sys.argv[0])
    if me.name != "flannel-lb":
        return f"{sys.executable} -m flannel_lb"
    found = shutil.which("flannel-lb")
    if found and Path(found).resolve() == me.resolve():
        return "flannel-lb"
    return sys.argv[0]


def _lab_cmd(name: str) -> str:
    """The start of every `lab` command for this lab, as the user would type it."""
    return f"{_prog()} lab" + ("" if name == DEFAULT_NAME else f" --lab {name}")


def _print(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _run(fn: Any, args: argparse.Namespace) -> int:
    try:
        return int(fn(args))
    except LabError as e:
        print(f"flannel-lb lab: {e}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    lab = Lab(
        _name(args),
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        backend=args.backend,
        media=args.media,
        deployment=args.deployment,
        expose=not args.no_expose,
        lb_overlay=not args.no_lb_overlay,
    )
    t0 = time.monotonic()
    status = lab.up()
    lab.close()
    if args.json:
        _print(status)
    else:
        took = time.monotonic() - t0
        print(f"lab {lab.name!r} up in {took:.1f}s: etcd {lab.etcd_url} in {lab.namespace('master')}")
        _print_pods(status)
        _print_next(lab, status)
    return 0


def _print_next(lab: Lab, status: dict[str, Any]) -> None:
    """What to try next: the verbs run inside the LB's namespace, the only place etcd and the rules are."""
    cmd = _lab_cmd(lab.name)
    exposed = [s["ref"] for s in status.get("services", []) if s["external_ips"]]
    verbs = ["plan", *(f"explain {ref}" for ref in exposed[:1]), "render", "diff", "check", "sync --once"]
    print()
    print(f"The agent's config for this lab: {lab.config_file} (its state file stays in that directory).")
    print(f"flannel-lb's verbs must run in the LB's namespace {lab.namespace(LB_HOST)}: try")
    lines = [(f"{cmd} exec -- {verb}", "") for verb in verbs] + [
        (f"{cmd} shell", f"a shell there, with ${config_mod.ENV_VAR} set"),
        (f"{cmd} down", "remove the lab and everything it wrote"),
    ]
    width = max(len(c) for c, _ in lines)
    for command, why in lines:
        print(f"  {command:<{width}}  # {why}" if why else f"  {command}")


def _print_pods(status: dict[str, Any]) -> None:
    for pod in status.get("pods", []):
        flags = "ready" if pod["ready"] else "terminating" if pod["terminating"] else "not-ready"
        print(f"  {pod['name']:<34} {pod['node']:<8} {pod['ip']:<15} {flags}")
    for svc in status.get("services", []):
        external = ",".join(svc["external_ips"]) or "-"
        print(f"  svc {svc['ref']:<30} {svc['cluster_ip']:<15} {external}  {' '.join(svc['ports'])}")


def _status(args: argparse.Namespace) -> int:
    lab = _lab(args)
    status = lab.status()
    lab.close()
    if args.json:
        _print(status)
        return 0 if status["up"] else 1
    if not status["up"]:
        print(f"lab {lab.name!r} is down")
        return 1
    etcd = status["etcd"]
    print(
        f"lab {lab.name!r} ({status['backend']}, {status['media']}): etcd {etcd['url']} pid {etcd['pid']} "
        f"{'alive' if etcd['alive'] else 'DEAD'} revision {etcd['revision']}"
    )
    for host in status["hosts"]:
        print(f"  {host['name']:<13} {' '.join(host['addresses'])}  ns {host['namespace']}")
    for lease in status["leases"]:
        print(f"  lease {lease['subnet']:<16} {lease['host']:<13} {lease['public_ip']} {lease['vtep_mac']}")
    _print_pods(status)
    return 0


def _down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    removed = lab.down()
    print(f"lab {lab.name!r} removed: {counted(len(removed), 'namespace')} and {lab.state_dir}")
    return 0


def _in_lb(lab: Lab, argv: list[str]) -> int:
    """Replace this process by `argv` in the lab's LB namespace, with the lab's config in the environment."""
    if not lab.is_up() or not lab.config_file.exists():
        raise LabError(f"lab {lab.name!r} is not up; start it with `{_lab_cmd(lab.name)} up`")
    env = {
        **os.environ,
        config_mod.ENV_VAR: str(lab.config_file),
        # this flannel-lb first on PATH, so `flannel-lb VERB` in a lab shell is the one that made the lab
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    sys.stdout.flush()
    os.execvpe("ip", in_netns(argv, lab.namespace(LB_HOST)), env)
    return 1  # not reached


def _exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else list(args.argv)
    if not argv:
        raise LabError("exec needs a flannel-lb verb, e.g. `lab exec -- plan`")
    return _in_lb(_lab(args), [sys.executable, "-m", "flannel_lb", *argv])


def _shell(args: argparse.Namespace) -> int:
    lab = _lab(args)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else list(args.argv)
    shell = os.environ.get("SHELL") or "/bin/sh"
    if not argv and sys.stdin.isatty():
        print(
            f"a shell in {lab.namespace(LB_HOST)} with {config_mod.ENV_VAR}={lab.config_file};"
            " try `flannel-lb plan`; `exit` leaves it",
            file=sys.stderr,
        )
    return _in_lb(lab, [shell, *argv])


def _with_lab(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        lab = _lab(args)
        try:
            out = fn(lab, args)
        finally:
            lab.close()
        if out is not None:
            _print(out)
        return 0

    return run


def register_lab_commands(subparsers: Any) -> None:
    """Add the `lab` verbs (up, status, down, diagram, exec, shell, demo, scale, kill-pod, set-ready,
    drain, expose, source-ranges, rollout) to a parent.

    Each leaf sets `func(args) -> int` (exit code), like the other flannel-lb commands.
    """
    lab_help = f"lab name (default {DEFAULT_NAME}; {DEMO_NAME} for `demo`)"
    lab = subparsers.add_parser("lab", help="the network-namespace lab (needs root)")
    lab.add_argument("--lab", default=None, metavar="NAME", help=lab_help)
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="VERB")

    def leaf(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        # also after the verb (`lab exec --lab x -- plan`); SUPPRESS keeps a --lab given before it
        p.add_argument("--lab", default=argparse.SUPPRESS, metavar="NAME", help=lab_help)
        p.set_defaults(func=lambda args: _run(fn, args))
        return p

    p = leaf("up", _up, "build the lab: namespaces, etcd, flannel overlay, pods, service")
    p.add_argument("--nodes", type=int, default=2, help="Kubernetes nodes (default %(default)s)")
    p.add_argument(
        "--pods-per-node",
        type=int,
        default=2,
        metavar="N",
        help="the first deployment's replicas per node (default %(default)s)",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="vxlan", help="flannel backend (default %(default)s)"
    )
    p.add_argument(
        "--media",
        choices=("auto", "protobuf", "json"),
        default="auto",
        help="how Kubernetes objects are stored (default auto: protobuf when the encoder is available)",
    )
    p.add_argument(
        "--deployment", default="nginx", help="first deployment's name ('' for none; default %(default)s)"
    )
    p.add_argument("--no-expose", action="store_true", help="do not expose the first deployment")
    p.add_argument("--no-lb-overlay", action="store_true", help="leave flannel.1 and the lease off the LB")
    p.add_argument("--json", action="store_true", help="print the lab's status as JSON instead")

    p = leaf("status", _status, "what runs where")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    leaf("down", _down, "remove the lab (namespaces, processes, state dir); safe after a crash")

    p = leaf("diagram", diagram.run, "the lab's topology as text (--svg FILE also draws it as SVG)")
    diagram.add_arguments(p)

    p = leaf(
        "exec",
        _exec,
        "run a flannel-lb verb in the lab's LB namespace with the lab's config: lab exec -- plan",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- VERB ARGS", help="e.g. -- sync --once")

    p = leaf("shell", _shell, f"a shell in the lab's LB namespace, with ${config_mod.ENV_VAR} set")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGS", help="passed to the shell")

    p = leaf(
        "demo",
        lambda a: run_demo(no_masquerade=a.no_masquerade, keep=a.keep, name=_name(a, DEMO_NAME)),
        "the whole story in a minute: lab up, the agent, curl through the LB, scale, tear down",
    )
    p.add_argument("--no-masquerade", action="store_true", help="reproduce the seed's DNAT-only failure")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards (`flannel-lb lab down`)")
    p.add_argument("--name", dest="lab", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old spelling

    p = leaf("scale", _with_lab(lambda lab, a: lab.scale(a.deployment, a.replicas)), "kubectl scale")
    p.add_argument("deployment")
    p.add_argument("replicas", type=int)

    p = leaf(
        "kill-pod", _with_lab(lambda lab, a: lab.kill_pod(a.pod, graceful=not a.now)), "kubectl delete pod"
    )
    p.add_argument("pod")
    p.add_argument("--now", action="store_true", help="no terminating phase: the pod vanishes at once")

    p = leaf("set-ready", _with_lab(lambda lab, a: lab.set_ready(a.pod, a.ready == "true")), "flip readiness")
    p.add_argument("pod")
    p.add_argument("ready", choices=("true", "false"))

    p = leaf(
        "drain",
        _with_lab(lambda lab, a: lab.drain_node(a.node, lease_ttl=a.lease_ttl)),
        "cordon + evict a node and drop its flannel lease",
    )
    p.add_argument("node")
    p.add_argument(
        "--lease-ttl",
        type=int,
        metavar="SECONDS",
        help="let the lease expire after SECONDS instead of revoking it now",
    )

    p = leaf(
        "expose",
        _with_lab(
            lambda lab, a: lab.expose(
                a.deployment,
                a.external_ip,
                a.port or ["http:80:http"],
                name=a.name,
                session_affinity=a.session_affinity,
                source_ranges=a.source_range,
            )
        ),
        "kubectl expose deployment --external-ip",
    )
    p.add_argument("deployment")
    p.add_argument("--external-ip", action="append", default=[], metavar="IP")
    p.add_argument(
        "--port",
        action="append",
        metavar="[NAME:]PORT[:TARGET][/PROTO]",
        help="repeatable (default http:80:http)",
    )
    p.add_argument("--name", help="service name (default: the deployment's)")
    p.add_argument("--session-affinity", choices=("None", "ClientIP"), default="None")
    p.add_argument(
        "--source-range",
        action="append",
        default=[],
        metavar="CIDR",
        help="loadBalancerSourceRanges: only these clients get through (repeatable)",
    )

    p = leaf(
        "rollout",
        _with_lab(
            lambda lab, a: (
                lab.rollout_under_load(a.deployment, a.load, grace=a.grace)
                if a.load
                else lab.rollout(a.deployment, grace=a.grace)
            )
        ),
        "kubectl rollout restart: one pod at a time, the old one terminating for --grace seconds",
    )
    p.add_argument("deployment")
    p.add_argument(
        "--grace", type=float, default=1.0, metavar="SECONDS", help="terminationGracePeriodSeconds"
    )
    p.add_argument(
        "--load", metavar="HOST:PORT", help="requests from the client meanwhile; report the failed"
    )

    p = leaf(
        "source-ranges",
        _with_lab(lambda lab, a: lab.set_source_ranges(a.service, a.cidr)),
        "set a Service's loadBalancerSourceRanges (none: open to every client)",
    )
    p.add_argument("service")
    p.add_argument("cidr", nargs="*")
