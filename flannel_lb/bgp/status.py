"""What BIRD says about this box's sessions: `birdc show protocols` and `show bfd sessions`, parsed.

For `flannel-lb check` (doctor.py) and the agent's metrics (daemon/tier.py). birdc's output is a table
for people, not an API, so it is read as hostile: at most MAX_LINES lines of at most MAX_LINE
characters, only rows whose shape is known (a BGP row is `NAME BGP TABLE STATE SINCE INFO`, a BFD row
starts with an IPv4 address), everything else skipped; a field is kept only if it is printable ASCII,
and cut. Sessions are matched to `[bgp] neighbors` by protocol name (`flannel_lb_peerN`, rendered by
bird.py), never by what BIRD echoes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flannel_lb.bgp import bird
from flannel_lb.config import BGPConfig
from flannel_lb.kernel.netns import RunError, run

MAX_LINES = 1000
MAX_LINE = 500
MAX_FIELD = 60
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    state: str  # BIRD's protocol state: up, down, start, ...
    since: str
    info: str  # for BGP: Established, Active, Connect, ... and any error text

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.split()[:1] == ["Established"]


@dataclass(frozen=True, slots=True)
class BFDSession:
    address: str
    interface: str
    state: str  # Up, Down, Init, AdminDown


@dataclass(frozen=True, slots=True)
class Session:
    """One configured neighbour as BIRD sees it (None: BIRD did not list it)."""

    index: int
    address: str
    asn: int
    bgp: Protocol | None
    bfd: BFDSession | None


def _field(text: str) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean[:MAX_FIELD]


def _lines(text: str) -> list[str]:
    return [line[:MAX_LINE] for line in text.splitlines()[:MAX_LINES]]


def parse_protocols(text: str) -> dict[str, Protocol]:
    """`show protocols` rows of BGP protocols, by name."""
    out: dict[str, Protocol] = {}
    for line in _lines(text):
        words = line.split()
        if len(words) < 4 or words[1] != "BGP":
            continue
        name, _, _, state, *rest = words
        since = rest[0] if rest else ""
        out[_field(name)] = Protocol(_field(name), _field(state), _field(since), _field(" ".join(rest[1:])))
    return out


def parse_bfd(text: str) -> dict[str, BFDSession]:
    """`show bfd sessions` rows, by the neighbour's address."""
    out: dict[str, BFDSession] = {}
    for line in _lines(text):
        words = line.split()
        if len(words) < 3:
            continue
        try:
            address = str(ipaddress.IPv4Address(words[0]))
        except ValueError:
            continue
        out[address] = BFDSession(address, _field(words[1]), _field(words[2]))
    return out


def sessions(bgp: BGPConfig, protocols: dict[str, Protocol], bfd: dict[str, BFDSession]) -> list[Session]:
    return [
        Session(i, n.address, n.asn, protocols.get(bird.protocol_name(i)), bfd.get(n.address))
        for i, n in enumerate(bgp.neighbors, 1)
    ]


def _birdc(bgp: BGPConfig, netns: str | None, *words: str, timeout: float = TIMEOUT) -> str:
    argv = bird.client(bgp, *words)
    try:
        proc = run(argv, netns, timeout=timeout)
    except UnicodeDecodeError:
        raise RunError(f"`{' '.join(argv)}`: the answer is not text") from None
    if proc.returncode != 0 or "Unable to connect" in proc.stdout:
        reason = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
        raise RunError(f"`{' '.join(argv)}`: {_field(reason[-1] if reason else '')}")
    return proc.stdout


def query(bgp: BGPConfig, netns: str | None = None, timeout: float = TIMEOUT) -> list[Session]:
    """Ask the running BIRD (its control socket in state_dir); RunError when it does not answer."""
    protocols = parse_protocols(_birdc(bgp, netns, "show", "protocols", timeout=timeout))
    bfd = parse_bfd(_birdc(bgp, netns, "show", "bfd", "sessions", timeout=timeout)) if bgp.bfd else {}
    return sessions(bgp, protocols, bfd)


def describe(s: Session, bfd_wanted: bool) -> str:
    """One line for `check`."""
    where = f"{bird.protocol_name(s.index)} {s.address} AS{s.asn}"
    bgp = (
        "not in BIRD's protocols"
        if s.bgp is None
        else f"{s.bgp.state} {s.bgp.info or '-'} since {s.bgp.since}"
    )
    if not bfd_wanted:
        return f"{where}: BGP {bgp}"
    bfd = "no session" if s.bfd is None else f"{s.bfd.state} on {s.bfd.interface}"
    return f"{where}: BGP {bgp}; BFD {bfd}"


def healthy(s: Session, bfd_wanted: bool) -> bool:
    return (
        s.bgp is not None
        and s.bgp.established
        and (not bfd_wanted or (s.bfd is not None and s.bfd.state == "Up"))
    )
