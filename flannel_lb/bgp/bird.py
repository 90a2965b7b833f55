"""bird.conf for one box, rendered from `[bgp]` (BIRD 2.0.12 on Debian 12, package bird2).

Design input: ../shared/reference/ha-and-scale-out.md §2:

* BIRD is controlled by the addresses on a local interface: `protocol direct` on `[bgp] interface` turns
  each VIP /32 flannel-lb puts there into a route, and every BGP session exports exactly those /32s (the
  filter below). Taking a VIP off withdraws it (the reference measured 10 ms for that planned withdraw).
  No birdc round trip and no config reload are needed to announce or withdraw, and a dead agent cannot
  leave BIRD announcing something it was told to announce: the address is the state.
* BFD on every session (`bfd on`), with flannel-lb's timers for every interface: BIRD's defaults are rx
  10 / tx 100 ms x5 (proto/bfd/bfd.h; the reference measured 445 ms to lose a dead box), 100 ms x3 was
  measured at 265 ms. The BGP hold time is only the fallback (9 s hold: 9.1 s).
* Nothing is imported: this box takes no routes from the router, so BGP cannot change its forwarding.
* The control socket and the pid file are not config keywords in BIRD 2.0.12: they are on the command
  line (`command`), both in state_dir, so two boxes on one host (the tests' namespaces) never share one.

Everything written into the file is a validated number, IPv4 address, community or interface name, so no
config value can break out of its line (tests/test_bgp_render.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flannel_lb.config import BGPConfig

BINARY = "bird"
CLIENT = "birdc"
HEADER = "# Rendered by flannel-lb from the [bgp] section of its config: edit that, not this file.\n"
VIPS = "FLANNEL_LB_VIPS"  # the set of announced /32s (a BIRD constant; symbols share one scope)
DIRECT = "flannel_lb_direct"
FILTER = "flannel_lb_export"
BFD = "flannel_lb_bfd"


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: str

    @classmethod
    def of(cls, bgp: BGPConfig) -> Paths:
        return cls(bgp.state_dir)

    def _in(self, name: str) -> str:
        return f"{self.state_dir.rstrip('/')}/{name}"

    @property
    def conf(self) -> str:
        return self._in("bird.conf")

    @property
    def socket(self) -> str:
        return self._in("bird.ctl")

    @property
    def pid(self) -> str:
        return self._in("bird.pid")


def protocol_name(index: int) -> str:
    """The BGP protocol of the index-th neighbour (1-based): names never come from config values."""
    return f"flannel_lb_peer{index}"


def _community(text: str) -> str:
    parts = text.split(":")
    if len(parts) == 2:
        return f"bgp_community.add(({parts[0]}, {parts[1]}));"
    return f"bgp_large_community.add(({', '.join(parts)}));"


def render(bgp: BGPConfig) -> str:
    """The complete bird.conf for this box."""
    if not bgp.enabled:
        raise ValueError("[bgp] enabled is false: there is nothing to announce")
    vips = ", ".join(f"{address}/32" for address in bgp.addresses)
    out = [
        HEADER,
        "\n",
        f"router id {bgp.router_id};\n",
        "log stderr { info, remote, warning, error, auth, fatal, bug };\n\n",
        "# what this box may announce; it does while flannel-lb keeps them on the interface below\n",
        f"define {VIPS} = [ {vips} ];\n\n",
        "protocol device {\n}\n\n",
        f"protocol direct {DIRECT} {{\n",
        "    ipv4 {\n",
        f"        import where net ~ {VIPS};\n",
        "    };\n",
        f'    interface "{bgp.interface}";\n',
        "}\n\n",
        f"filter {FILTER} {{\n",
        f"    if source = RTS_DEVICE && net ~ {VIPS} then {{\n",
        *(f"        {_community(c)}\n" for c in bgp.communities),
        "        accept;\n",
        "    }\n",
        "    reject;\n",
        "}\n\n",
    ]
    if bgp.bfd:
        out += [
            f"protocol bfd {BFD} {{\n",
            '    interface "*" {\n',
            f"        interval {bgp.bfd_interval_ms} ms;\n",
            f"        multiplier {bgp.bfd_multiplier};\n",
            "    };\n",
            "}\n\n",
        ]
    for i, n in enumerate(bgp.neighbors, 1):
        out += [
            f"protocol bgp {protocol_name(i)} {{\n",
            f"    local as {bgp.asn};\n",
            f"    neighbor {n.address} as {n.asn};\n",
            f"    hold time {bgp.hold_time};\n",
            f"    bfd {'on' if bgp.bfd else 'off'};\n",
            "    ipv4 {\n",
            "        import none;\n",
            f"        export filter {FILTER};\n",
            "    };\n",
            "}\n\n",
        ]
    return "".join(out).rstrip("\n") + "\n"


def command(bgp: BGPConfig, binary: str = BINARY) -> list[str]:
    """BIRD in the foreground with this box's config; its control socket and pid file in state_dir."""
    paths = Paths.of(bgp)
    return [binary, "-f", "-c", paths.conf, "-s", paths.socket, "-P", paths.pid]


def client(bgp: BGPConfig, *words: str, binary: str = CLIENT) -> list[str]:
    """A birdc call to the running daemon, e.g. client(bgp, "show", "protocols")."""
    return [binary, "-s", Paths.of(bgp).socket, *words]


def write(bgp: BGPConfig) -> str:
    """Render bird.conf into state_dir (created 0755), atomically; its path."""
    text = render(bgp)
    path = Paths.of(bgp).conf
    Path(bgp.state_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o644)  # whatever the umask
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
