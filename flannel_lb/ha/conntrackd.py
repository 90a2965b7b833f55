"""conntrackd.conf for the pair, rendered from `[ha]`: FTFW over UDP on the sync link.

Design input: ../shared/reference/ha-and-scale-out.md §1 and §1b (conntrackd 1.4.7 on Debian 12):

* FTFW is the reliable mode; the conntrack-tools manual prefers UDP on a dedicated link (`sync_interface`).
* `DisableExternalCache On`: replicated entries go straight into the backup's kernel table. That is what
  made server-push flows and a planned switchover + failback survive in §1b (20/20), and it leaves
  nothing to commit when keepalived's notify hook runs after the VIP is already up (keepalived#2254).
* The floating addresses are *not* under `Address Ignore` (Debian's example lists its VIPs there): every
  connection a DNAT load balancer carries is addressed to one of them, so ignoring them syncs nothing.
* The lock file and the UNIX socket live in state_dir, so two daemons on one host (the lab's two boxes)
  never share them, and neither touches the packaged /var/lock/conntrack.lock.
"""

from __future__ import annotations

from flannel_lb.config import HAConfig
from flannel_lb.ha.paths import Paths

PORT = 3780
BINARY = "conntrackd"
HEADER = "# Rendered by flannel-lb from the [ha] section of its config: edit that, not this file.\n"


def render(ha: HAConfig, hash_limit: int = 262144) -> str:
    """The complete conntrackd.conf for this box (hash_limit: about twice nf_conntrack_max)."""
    if not ha.enabled:
        raise ValueError("[ha] enabled is false: there is no pair to render")
    paths = Paths.of(ha)
    return (
        HEADER + "\n"
        "Sync {\n"
        "    Mode FTFW {\n"
        "        DisableExternalCache On\n"
        "        StartupResync On\n"
        "    }\n"
        "    UDP {\n"
        f"        IPv4_Destination_Address {ha.sync_peer}\n"
        f"        Port {PORT}\n"
        f"        Interface {ha.sync_interface}\n"
        "        SndSocketBuffer 1249280\n"
        "        RcvSocketBuffer 1249280\n"
        "        Checksum On\n"
        "    }\n"
        "}\n"
        "General {\n"
        "    HashSize 32768\n"
        f"    HashLimit {hash_limit}\n"
        f"    LogFile {paths.conntrackd_log}\n"
        "    Syslog Off\n"
        f"    LockFile {paths.conntrackd_lock}\n"
        "    UNIX {\n"
        f"        Path {paths.conntrackd_socket}\n"
        "    }\n"
        "    NetlinkBufferSize 2097152\n"
        "    NetlinkBufferSizeMaxGrowth 8388608\n"
        "    Filter From Userspace {\n"
        "        Protocol Accept {\n"
        "            TCP\n"
        "            SCTP\n"
        "            UDP\n"
        "        }\n"
        "        Address Ignore {\n"
        "            IPv4_address 127.0.0.0/8\n"
        f"            IPv4_address {ha.sync_peer}/32\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def command(ha: HAConfig, binary: str = BINARY) -> list[str]:
    """conntrackd in the foreground (no -d) with this pair's config."""
    return [binary, "-C", Paths.of(ha).conntrackd_conf]


def client(ha: HAConfig, *flags: str, binary: str = BINARY) -> list[str]:
    """A client call to the running daemon, e.g. client(ha, "-s") for its statistics."""
    return [binary, "-C", Paths.of(ha).conntrackd_conf, *flags]
