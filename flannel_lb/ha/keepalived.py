"""keepalived.conf for the pair, rendered from `[ha]` (VRRPv3, unicast, one sync group).

Design input: ../shared/reference/ha-and-scale-out.md §1 (keepalived 2.2.7 on Debian 12):

* VRRPv3 with a sub-second advert interval (VRRPv2 rounds to whole seconds; the outages measured
  for both are in docs/ha.md). Unicast to the peer, so no multicast is needed on the segment.
* Both boxes start as BACKUP; the higher priority wins the election (no "address owner" priority 255).
* One `vrrp_sync_group` holds the instance, so everything later slices float with the VIPs (the shared
  overlay identity of §1b) changes state together; its state changes reach one hook through keepalived's
  notify FIFO, in order, and run conntrackd's primary/backup sequence (`render_notify_script`).
* `track_file`: the agent writes 0 (healthy) or 1 into `Paths.health_file`
  (`flannel_lb.daemon.ha_health`). Weight -253: a 1 takes the box's priority down to 1 (keepalived
  clamps to [1, 254]), below any healthy peer, which takes the addresses. Not weight 0 (FAULT): both
  boxes run the same plan with the same code, so a failure that hits one (iptables-restore refusing the
  rules) may hit both, and two boxes in FAULT serve nothing, where two lowered ones still elect a master
  that serves its last good rules (fail static). It starts at 1 ("not synced yet"): a box takes the
  addresses from a healthy peer only once its agent has said it can.
* `net_namespace` is a top-level keyword (core/global_parser.c), never inside global_defs.

Everything written into the file comes from validated config (addresses, interface names, a plain
absolute state_dir), so no value can break out of its line.
"""

from __future__ import annotations

from flannel_lb.config import HAConfig
from flannel_lb.ha.paths import Paths

INSTANCE = "flannel_lb_vip"
GROUP = "flannel_lb"
TRACK_FILE = "flannel_lb_agent"
TRACK_WEIGHT = -253  # 1 in the file: priority - 253, clamped to 1 (a larger value read: FAULT)
BINARY = "keepalived"

HEADER = "# Rendered by flannel-lb from the [ha] section of its config: edit that, not this file.\n"


def _namespace(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        raise ValueError(f"net_namespace: {name!r} is not a plain namespace name (letters, digits, . _ -)")
    return name


def advert_int(ha: HAConfig) -> str:
    """The interval as VRRPv3 sends it: whole centiseconds (0.125 goes out as 0.12)."""
    return f"{max(0.01, round(ha.advert_interval, 2)):.2f}"


def render(ha: HAConfig, *, net_namespace: str | None = None) -> str:
    """The complete keepalived.conf for this box of the pair."""
    if not ha.enabled:
        raise ValueError("[ha] enabled is false: there is no pair to render")
    paths = Paths.of(ha)
    out = [HEADER, "\n"]
    if net_namespace is not None:
        out.append(f"net_namespace {_namespace(net_namespace)}\n\n")
    out.append(
        "global_defs {\n"
        "    vrrp_version 3\n"
        "    # the notify hook runs conntrackd as root; refuse it if anyone else could rewrite it\n"
        "    script_user root\n"
        "    enable_script_security\n"
        "    # one reader gets every state change in order (separate notify_* scripts run concurrently)\n"
        f"    vrrp_notify_fifo {paths.notify_fifo}\n"
        f"    vrrp_notify_fifo_script {paths.notify_script}\n"
        "}\n\n"
        f"track_file {TRACK_FILE} {{\n"
        f'    file "{paths.health_file}"\n'
        f"    weight {TRACK_WEIGHT}\n"
        "    init_file 1\n"
        "}\n\n"
        f"vrrp_sync_group {GROUP} {{\n"
        "    group {\n"
        f"        {INSTANCE}\n"
        "    }\n"
        "    track_file {\n"
        f"        {TRACK_FILE}\n"
        "    }\n"
        "}\n\n"
        f"vrrp_instance {INSTANCE} {{\n"
        "    state BACKUP\n"
        f"    interface {ha.interface}\n"
        f"    virtual_router_id {ha.virtual_router_id}\n"
        f"    priority {ha.priority}\n"
        f"    advert_int {advert_int(ha)}\n"
        "    unicast_peer {\n"
        f"        {ha.peer}\n"
        "    }\n"
        "    check_unicast_src\n"
        "    virtual_ipaddress {\n"
    )
    out.extend(f"        {address}/32 dev {ha.interface}\n" for address in ha.addresses)
    if ha.shared_overlay:  # the reservation's PublicIP: the nodes' vxlan/host-gw traffic follows the VIPs
        out.append(f"        {ha.overlay_public_ip}/32 dev {ha.overlay_interface}\n")
    out.append("    }\n}\n")
    return "".join(out)


def render_notify_script(ha: HAConfig, conntrackd: str = "/usr/sbin/conntrackd") -> str:
    """keepalived's notify hook: conntrackd's primary/backup sequence, in the order of conntrack-tools'
    doc/sync/primary-backup.sh (Debian: /usr/share/doc/conntrackd/examples/sync/primary-backup.sh).

    keepalived runs it as `vrrp_notify_fifo_script`: one process reading the sync group's state changes
    from a FIFO, in order. Separate notify_master/notify_backup scripts run concurrently: a box that is
    master for a moment at start-up then had its backup steps interleaved with its primary ones, and
    conntrackd ended in the wrong state (seen in tests/test_ha_vrrp.py). `notify.sh primary|backup|fault`
    runs one sequence by hand.

    keepalived reports a state *after* adding the addresses (acassen/keepalived#2254): clients can arrive
    before `-c` has committed anything. conntrackd.conf therefore sets `DisableExternalCache On`: the
    backup injects each replicated entry into its kernel table as it arrives, so there is nothing left to
    commit at takeover and `-c` finds an empty external cache. Each step's result goes to notify.log.
    """
    paths = Paths.of(ha)
    return (
        "#!/bin/sh\n"
        "# Rendered by flannel-lb from the [ha] section of its config: keepalived's notify hook.\n"
        "# keepalived runs it with its notify FIFO as the argument; by hand: notify.sh primary|backup|fault\n"
        f"conf={paths.conntrackd_conf}\n"
        f"log={paths.notify_log}\n"
        "step() {\n"
        f'    {conntrackd} -C "$conf" "$@" >/dev/null 2>&1\n'
        "    rc=$?\n"
        '    echo "$(date +%s.%N) $state conntrackd $* exit $rc" >>"$log"\n'
        "}\n"
        "run() {\n"
        '    state="$1"\n'
        '    case "$state" in\n'
        "    primary)\n"
        "        step -c  # commit the external cache to the kernel (empty: DisableExternalCache On)\n"
        "        step -f  # flush the internal and external caches\n"
        "        step -R  # resync the internal cache with the kernel table\n"
        "        step -B  # bulk update to the backup\n"
        "        ;;\n"
        "    backup)\n"
        "        step -t  # shorten the kernel's timers: zombie entries go after PurgeTimeout\n"
        "        step -n  # ask the master for a full resync\n"
        "        ;;\n"
        "    fault)\n"
        "        step -t\n"
        "        ;;\n"
        "    esac\n"
        "}\n"
        'case "$1" in\n'
        "primary | backup | fault)\n"
        '    run "$1"\n'
        "    ;;\n"
        "*)\n"
        '    if [ ! -p "$1" ]; then\n'
        '        echo "usage: $0 primary|backup|fault, or keepalived\'s notify FIFO" >&2\n'
        "        exit 2\n"
        "    fi\n"
        f'    # lines like: GROUP "{GROUP}" MASTER 150 (INSTANCE lines too: the group is what counts)\n'
        "    while read -r kind name event _; do\n"
        f'        [ "$kind $name" = \'GROUP "{GROUP}"\' ] || continue\n'
        '        case "$event" in\n'
        "        MASTER) run primary ;;\n"
        "        BACKUP) run backup ;;\n"
        "        FAULT) run fault ;;\n"
        "        esac\n"
        '    done <"$1"\n'
        "    ;;\n"
        "esac\n"
        "exit 0\n"
    )


def command(ha: HAConfig, binary: str = BINARY) -> list[str]:
    """keepalived in the foreground, VRRP only, logging to stderr, its pid files in state_dir."""
    paths = Paths.of(ha)
    return [
        binary,
        "--vrrp",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        f"--use-file={paths.keepalived_conf}",
        f"--pid={paths.keepalived_pid}",
        f"--vrrp_pid={paths.vrrp_pid}",
    ]
