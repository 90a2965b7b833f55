"""`flannel-lb lab ...`: drive the network-namespace lab from a shell (each verb is its own process)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from flannel_lb.lab import diagram
from flannel_lb.lab.demo import run_demo
from flannel_lb.lab.lab import DEFAULT_NAME, Lab, LabError
from flannel_lb.lab.overlay import BACKENDS


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(args.lab)


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
        args.lab,
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
        print(f"lab {lab.name} up in {took:.1f}s: etcd {lab.etcd_url} in {lab.namespace('master')}")
        _print_pods(status)
    return 0


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
        print(f"lab {lab.name} is down")
        return 1
    etcd = status["etcd"]
    print(
        f"lab {lab.name} ({status['backend']}, {status['media']}): etcd {etcd['url']} pid {etcd['pid']} "
        f"{'alive' if etcd['alive'] else 'DEAD'} revision {etcd['revision']}"
    )
    for host in status["hosts"]:
        print(f"  {host['name']:<13} {' '.join(host['addresses'])}  ns {host['namespace']}")
    for lease in status["leases"]:
        print(f"  lease {lease['subnet']:<16} {lease['host']:<13} {lease['public_ip']} {lease['vtep_mac']}")
    _print_pods(status)
    return 0


def _down(args: argparse.Namespace) -> int:
    removed = _lab(args).down()
    print(f"lab {args.lab} down ({len(removed)} namespaces removed)")
    return 0


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
    """Add `lab up|status|down|scale|kill-pod|set-ready|drain|expose` to a parent's subparsers.

    Each leaf sets `func(args) -> int` (exit code), like the other flannel-lb commands.
    """
    lab = subparsers.add_parser("lab", help="the network-namespace lab (needs root)")
    lab.add_argument("--lab", default=DEFAULT_NAME, metavar="NAME", help=f"lab name (default {DEFAULT_NAME})")
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="VERB")

    def leaf(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.set_defaults(func=lambda args: _run(fn, args))
        return p

    p = leaf("up", _up, "build the lab: namespaces, etcd, flannel overlay, pods, service")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--pods-per-node", type=int, default=2)
    p.add_argument("--backend", choices=BACKENDS, default="vxlan")
    p.add_argument(
        "--media",
        choices=("auto", "protobuf", "json"),
        default="auto",
        help="how Kubernetes objects are stored (auto: protobuf when the encoder is available)",
    )
    p.add_argument("--deployment", default="nginx", help="first deployment's name ('' for none)")
    p.add_argument("--no-expose", action="store_true", help="do not expose the first deployment")
    p.add_argument("--no-lb-overlay", action="store_true", help="leave flannel.1 and the lease off the LB")
    p.add_argument("--json", action="store_true")

    p = leaf("status", _status, "what runs where")
    p.add_argument("--json", action="store_true")

    leaf("down", _down, "remove the lab (namespaces, processes, state dir); safe after a crash")

    p = leaf("diagram", diagram.run, "the lab's topology as text (--svg FILE also draws it as SVG)")
    diagram.add_arguments(p)

    p = leaf(
        "demo",
        lambda a: run_demo(no_masquerade=a.no_masquerade, keep=a.keep, name=a.name),
        "the whole story in a minute: lab up, the agent, curl through the LB, scale, tear down",
    )
    p.add_argument("--no-masquerade", action="store_true", help="reproduce the seed's DNAT-only failure")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards (`flannel-lb lab down`)")
    p.add_argument("--name", default="demo", help="the demo lab's name (default demo)")

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
