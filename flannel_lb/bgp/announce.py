"""Announce or withdraw the VIPs by putting their /32s on `[bgp] interface` or taking them off.

BIRD's `protocol direct` on that interface turns each address into a route, and the export filter sends
exactly the configured /32s to every neighbour (bird.py): the addresses are the announcement.

flannel-lb marks the addresses it adds with the label `INTERFACE:flb` (`ip addr ... label`), so that it
never touches an address it did not add, also after a restart: an address someone else put there (any
other label, any prefix length) is left alone, announced or not, and it is never removed. `lo` is the
default interface (no dummy module on this kernel); the addresses are /32s, so they add no route to
anything but themselves.

Every call is idempotent: `announce()` makes the set of flannel-lb's addresses on the interface equal to
the configured one (it also removes a labelled address the config no longer lists), `withdraw()` removes
every labelled one. Both return what they changed. Commands go through kernel/netns.py's runner, in a
named network namespace when asked.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flannel_lb.config import BGPConfig
from flannel_lb.kernel.netns import RunError, output, run
from flannel_lb.untrusted import load_json

LABEL = "flb"


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    prefixlen: int
    label: str


@dataclass(frozen=True, slots=True)
class Announcer:
    interface: str
    addresses: tuple[str, ...]
    netns: str | None = None

    @classmethod
    def of(cls, bgp: BGPConfig, netns: str | None = None) -> Announcer:
        return cls(bgp.interface, bgp.addresses, netns)

    @property
    def label(self) -> str:
        """What marks flannel-lb's addresses (IFNAMSIZ: config keeps the interface name to 11 characters)."""
        return f"{self.interface}:{LABEL}"

    def present(self) -> list[Address]:
        """Every IPv4 address on the interface; RunError when the interface does not exist."""
        text = output(["ip", "-j", "-4", "addr", "show", "dev", self.interface], self.netns, timeout=30)
        out = []
        for link in load_json(text) or []:
            for info in link.get("addr_info", []) if isinstance(link, dict) else []:
                if not isinstance(info, dict) or info.get("family") != "inet":
                    continue
                local, plen, label = info.get("local"), info.get("prefixlen"), info.get("label", "")
                if isinstance(local, str) and isinstance(plen, int) and isinstance(label, str):
                    out.append(Address(str(ipaddress.IPv4Address(local)), plen, label))
        return out

    def announced(self) -> list[str]:
        """The addresses flannel-lb put on the interface (its label, /32), in the kernel's order."""
        return [a.local for a in self.present() if self._ours(a)]

    def foreign(self) -> list[str]:
        """Configured addresses someone else put on the interface: announced, but never touched here."""
        return [a.local for a in self.present() if a.local in self.addresses and not self._ours(a)]

    def announce(self) -> list[str]:
        """Add each configured /32 that is not on the interface yet, remove labelled ones no longer
        configured; the changes made, as "+ADDR" / "-ADDR"."""
        present = self.present()
        on = {a.local for a in present}
        changes = [f"-{a}" for a in self._remove([a.local for a in present if self._ours(a)], keep=True)]
        for address in self.addresses:
            if address not in on and self._ip("add", address):
                changes.append(f"+{address}")
        return changes

    def withdraw(self) -> list[str]:
        """Remove every address flannel-lb put on the interface; the ones removed."""
        return self._remove(self.announced(), keep=False)

    def _ours(self, a: Address) -> bool:
        return a.label == self.label and a.prefixlen == 32

    def _remove(self, ours: list[str], *, keep: bool) -> list[str]:
        return [a for a in ours if not (keep and a in self.addresses) and self._ip("del", a)]

    def _ip(self, verb: str, address: str) -> bool:
        """`ip addr add|del ADDR/32 dev IF label IF:flb`; False when it was already so (a racing caller)."""
        argv = ["ip", "addr", verb, f"{address}/32", "dev", self.interface, "label", self.label]
        proc = run(argv, self.netns, timeout=30)
        if proc.returncode == 0:
            return True
        already = "File exists" if verb == "add" else "Cannot assign requested address"
        if already in proc.stderr:
            return False
        raise RunError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
