"""`flannel-lb`: the command line. Each command is a thin shell over the library; no logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flannel_lb import config as config_mod
from flannel_lb.text import printable
from flannel_lb.verbs import EXIT_CONFIG, EXIT_ETCD, EXIT_FAILED, EXIT_OK, CommandError, load_config


def _etcd_error(e: Exception, args: argparse.Namespace) -> CommandError:
    """An unreachable etcd, with the config key to fix and, when a lab is up, how to use it instead."""
    path = args.config or config_mod.default_path()
    lines = [str(e), f"  fix: list your etcd's client URLs in `[etcd] endpoints` in {path}"]
    root = Path("/run/flannel-lb-lab")
    labs = sorted(p.parent.name for p in root.glob("*/flannel-lb.toml")) if root.is_dir() else []
    for name in labs:
        opt = "" if name == "lab" else f"--lab {name} "
        lines.append(f"  a lab is up: flannel-lb lab exec {opt}-- {args.command}")
    return CommandError("\n".join(lines), EXIT_ETCD)


def _json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN/Infinity), ASCII-only so a lone surrogate from etcd prints as `\\udc80`."""
    return json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False, ensure_ascii=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(_json(obj, indent=2) + "\n")


# --- decode -----------------------------------------------------------------------------------------


def cmd_decode(args: argparse.Namespace) -> int:
    from flannel_lb.decode.values import decode_any

    try:
        raw = sys.stdin.buffer.read() if args.file in (None, "-") else Path(args.file).read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {args.file}: {e.strerror or e}", EXIT_CONFIG) from None
    try:
        emit_json(decode_any(raw, key=args.key))
    except ValueError as e:
        where = "standard input" if args.file in (None, "-") else args.file
        raise CommandError(f"cannot decode {where}: {e}") from None
    return EXIT_OK


# --- plan / explain --------------------------------------------------------------------------------


def _live_planner(cfg: config_mod.Config, args: argparse.Namespace, *, netcheck: bool = True) -> Any:
    """A planner over one fresh etcd snapshot, with this host's kernel paths checked (as the agent does)."""
    from flannel_lb import parts
    from flannel_lb.kernel.netcheck import NetChecker
    from flannel_lb.plan.planner import Planner
    from flannel_lb.source.records import EtcdUnavailable

    state = parts.new_state(cfg)
    try:
        snap = parts.source(cfg).snapshot(retry_budget=cfg.etcd.retry_budget)
    except EtcdUnavailable as e:
        raise _etcd_error(e, args) from None
    parts.apply_update(state, snap)
    planner = Planner(state, parts.plan_settings(cfg))
    if netcheck:
        checker = NetChecker()
        try:
            planner.set_path_faults(
                checker.check(state.leases(), state.network_config, parts.lease_hint(cfg, state))
            )
        finally:
            checker.close()
    return planner


def cmd_plan(args: argparse.Namespace) -> int:
    from flannel_lb.plan import report

    cfg = load_config(args)
    if not args.watch:
        plan = _live_planner(cfg, args, netcheck=not args.no_netcheck).plan()
        if args.json:
            emit_json(plan.to_json())
        else:
            print(report.plan_table(plan))
        return EXIT_OK
    return _watch_plans(
        cfg,
        not args.no_netcheck,
        lambda plan: print(
            _json(plan.to_json()) if args.json else report.plan_table(plan) + "\n", flush=True
        ),
    )


def _watch_plans(cfg: config_mod.Config, netcheck: bool, show: Callable[[Any], None]) -> int:
    """Print the plan after the first snapshot and after every change, until interrupted."""
    from flannel_lb import parts
    from flannel_lb.kernel.netcheck import NetChecker
    from flannel_lb.plan.planner import Planner
    from flannel_lb.source.records import Status

    state = parts.new_state(cfg)
    planner = Planner(state, parts.plan_settings(cfg))
    checker = NetChecker() if netcheck else None
    src = parts.source(cfg)
    stop = threading.Event()
    last: dict[str, Any] | None = None
    try:
        for update in src.stream(stop):
            if isinstance(update, Status):
                if not update.connected:
                    print(printable(f"etcd: {update.reason}"), file=sys.stderr, flush=True)
                continue
            change: Any = parts.apply_update(state, update)
            if checker is not None:
                own = parts.lease_hint(cfg, state)
                if planner.set_path_faults(checker.check(state.leases(), state.network_config, own)):
                    change = None
            plan = planner.plan(change)
            body = plan.to_json()
            body.pop("revision")
            if body != last:
                show(plan)
                last = body
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if checker is not None:
            checker.close()
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from flannel_lb.plan import report

    ns, sep, name = args.service.partition("/")
    if not sep or not ns or not name:
        raise CommandError(f"expected NAMESPACE/NAME, got {args.service!r}", EXIT_CONFIG)
    planner = _live_planner(load_config(args), args, netcheck=not args.no_netcheck)
    plan = planner.plan()
    story = report.explain(planner.state, plan, (ns, name), planner.settings, planner.admission())
    if story is None:
        raise CommandError(f"no Service {ns}/{name} in etcd at revision {planner.state.revision}")
    if args.json:
        emit_json(story)
    else:
        print(report.explain_text(story))
    return EXIT_OK


# --- data plane: render / diff / cleanup / sync / run ---------------------------------------------


def _plane_and_plan(args: argparse.Namespace) -> tuple[Any, Any]:
    """The configured data plane, set up as the agent's next sync would be, and a fresh plan."""
    from flannel_lb.dataplane.plane import dataplane_options, make_dataplane

    cfg = load_config(args)
    planner = _live_planner(cfg, args)
    plane = make_dataplane(cfg)
    plane.options = dataplane_options(cfg, planner.state.network_config)
    return plane, planner.plan()


def cmd_render(args: argparse.Namespace) -> int:
    plane, plan = _plane_and_plan(args)
    try:
        text = plane.render(plan, full=args.all)
    finally:
        plane.close()
    sys.stdout.write(
        text or "# the kernel already holds exactly these rules: the next sync changes nothing\n"
    )
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    plane, plan = _plane_and_plan(args)
    try:
        text = plane.diff(plan)
    finally:
        plane.close()
    sys.stdout.write(text or "# in step with the kernel: nothing to change\n")
    return EXIT_FAILED if text else EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from flannel_lb.bgp.redirect import TABLE, Redirect
    from flannel_lb.dataplane.plane import make_dataplane

    cfg = load_config(args)
    plane = make_dataplane(cfg)
    try:
        print(plane.cleanup())
    finally:
        plane.close()
    redirect = Redirect.of(cfg.bgp) if cfg.bgp.enabled else None
    if redirect is not None:  # [bgp] peers: the second-chance table is flannel-lb's too
        gone = redirect.remove()
        print(f"{'removed' if gone else 'no'} nftables table ip {TABLE} (second chance, [bgp] peers)")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from flannel_lb.daemon import logs
    from flannel_lb.daemon.agent import Agent
    from flannel_lb.kernel.netcheck import NetChecker
    from flannel_lb.source.records import EtcdUnavailable

    cfg = load_config(args)
    if sys.stderr.isatty():  # a person at a prompt: the summary line says it all, warnings still show
        logs.setup(logs.at_least(cfg.log.level, "warning"), "console")
    else:
        logs.setup(cfg.log.level, cfg.log.format)
    agent = Agent(cfg, checker=NetChecker())
    try:
        result = agent.sync_once(retry_budget=cfg.etcd.retry_budget)
        took = agent.last_sync_seconds
    except EtcdUnavailable as e:
        raise _etcd_error(e, args) from None
    except RuntimeError as e:
        raise CommandError(str(e)) from None
    finally:
        agent.close()
    summary = ", ".join(f"{k} {v}" for k, v in result.summary().items() if v) or "nothing to change"
    print(f"{result.mode} sync: {summary} ({took * 1000:.1f} ms: plan, rules and conntrack cleanup)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from flannel_lb.daemon import logs
    from flannel_lb.daemon.agent import Agent, install_signal_handlers
    from flannel_lb.daemon.metrics import MetricsServer
    from flannel_lb.kernel.netcheck import NetChecker

    cfg = load_config(args)
    logs.setup(cfg.log.level, cfg.log.format, stream=sys.stdout)
    agent = Agent(cfg, checker=NetChecker())
    stop = threading.Event()
    install_signal_handlers(agent, stop)
    server = None
    if cfg.metrics.listen:
        server = MetricsServer(cfg.metrics.listen, agent.metrics, agent.health)
        server.start()
    try:
        agent.run(stop)
    finally:
        if server is not None:
            server.stop()
    return EXIT_OK


# --- the parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flannel-lb",
        description="External load balancer for flannel-backed Kubernetes clusters, driven from etcd.",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("decode", help="decode one raw etcd value (Kubernetes protobuf/JSON, flannel JSON)")
    d.add_argument(
        "file", nargs="?", metavar="FILE|-", help="the value, as `etcdctl get --print-value-only` prints it"
    )
    d.add_argument("--key", help="the etcd key it came from (gives a lease its subnet)")
    d.set_defaults(func=cmd_decode)

    pl = sub.add_parser("plan", help="what the load balancer should serve, read live from etcd")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.add_argument(
        "--watch", action="store_true", help="keep watching etcd; print the plan whenever it changes"
    )
    pl.add_argument(
        "--no-netcheck", action="store_true", help="skip checking this host's paths to the leases"
    )
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("explain", help="why a Service is (not) exposed and why each endpoint is in or out")
    ex.add_argument("service", metavar="NAMESPACE/NAME")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.add_argument(
        "--no-netcheck", action="store_true", help="skip checking this host's paths to the leases"
    )
    ex.set_defaults(func=cmd_explain)

    r = sub.add_parser("render", help="the exact iptables-restore text the next sync would apply")
    r.add_argument("--all", action="store_true", help="every owned chain, whatever the kernel holds")
    r.set_defaults(func=cmd_render)

    df = sub.add_parser("diff", help="what the next sync would change in the kernel (exit 1 if anything)")
    df.set_defaults(func=cmd_diff)

    cl = sub.add_parser("cleanup", help="remove every chain and jump flannel-lb owns, nothing else")
    cl.set_defaults(func=cmd_cleanup)

    sy = sub.add_parser("sync", help="one snapshot and one sync, then exit")
    sy.add_argument("--once", action="store_true", required=True, help="(required) sync once and exit")
    sy.set_defaults(func=cmd_sync)

    ru = sub.add_parser("run", help="the agent: watch etcd and keep the rules in step (systemd Type=notify)")
    ru.set_defaults(func=cmd_run)

    from flannel_lb.bgp.cli import register_commands as register_bgp
    from flannel_lb.doctor import register_commands as register_doctor
    from flannel_lb.ha.cli import register_commands as register_ha
    from flannel_lb.lab.cli import register_lab_commands

    register_doctor(sub)
    register_ha(sub)
    register_bgp(sub)
    register_lab_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from flannel_lb.daemon import logs

    logs.setup(level="warning", fmt="console")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CommandError as e:
        print(
            "\n".join(printable(line) for line in f"flannel-lb {args.command}: {e}".split("\n")),
            file=sys.stderr,
        )
        return e.code
    except BrokenPipeError:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
