"""The lab's topology as a picture: a text diagram for the README and an SVG, from the lab's own description.

Nothing here is typed in a second time. Hosts, NICs, addresses and networks come from `topology.plan`;
the flannel leases from `overlay.allocate_subnets`, as `Lab.up` assigns them; the pods' addresses from
the lab's own IPAM (`cluster.Cluster`); the sizes and the Service from `Lab`'s defaults. The README
block and `docs/lab-topology.svg` are generated, and tests/test_diagram.py fails when either drifts::

    python -m flannel_lb.lab.diagram                    # print the text diagram
    python -m flannel_lb.lab.diagram --svg docs/lab-topology.svg --readme README.md
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from flannel_lb.lab import overlay
from flannel_lb.lab.cluster import DEFAULT_CONTAINER_PORTS, Cluster, ServicePort
from flannel_lb.lab.lab import DEFAULT_SERVICE_PORTS, Lab, prefix_for
from flannel_lb.lab.overlay import SubnetLease
from flannel_lb.lab.pods import CNI_BRIDGE
from flannel_lb.lab.topology import (
    BRIDGES,
    ETCD_CLIENT_PORT,
    INFRA_NET,
    KUBE_NET,
    LB_INFRA_IP,
    SWITCH,
    Host,
    Nic,
    Topology,
    plan,
)

README_BEGIN = "<!-- lab-topology:begin -->"
README_END = "<!-- lab-topology:end -->"
SVG_PATH = "docs/lab-topology.svg"

Net = Literal["infra", "kube"]
NET_CIDR: dict[Net, ipaddress.IPv4Network] = {"infra": INFRA_NET, "kube": KUBE_NET}
NET_TITLE: dict[Net, str] = {"infra": "infra", "kube": "kubernetes"}


def _lab_default(name: str) -> object:
    """A `Lab()` default (nodes, pods per node, ...): the diagram shows the lab `lab up` builds."""
    return inspect.signature(Lab.__init__).parameters[name].default


# --- what the lab holds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabView:
    """Everything the pictures show, derived from the lab's modules (pure: nothing is created)."""

    topo: Topology
    leases: dict[str, SubnetLease]  # host -> its flannel lease (the LB and every node)
    pods: dict[str, list[str]]  # node -> pod IPs, in the order the lab's IPAM hands them out
    deployment: str
    service_ports: tuple[ServicePort, ...]
    vip: str = LB_INFRA_IP

    @property
    def example(self) -> tuple[str, str]:
        """(node, pod IP) a first request is DNATed to in the walk-through: the first pod there is."""
        for node in self.topo.nodes:
            if self.pods.get(node.name):
                return node.name, self.pods[node.name][0]
        raise ValueError("the lab has no pods to send a request to")


def describe(nodes: int | None = None, pods_per_node: int | None = None) -> LabView:
    """The lab `Lab(nodes=..., pods_per_node=...).up()` would build, without building anything.

    The picture is of the default backend, vxlan: the tunnels and the request's path are vxlan's.
    """
    n = nodes if nodes is not None else int(str(_lab_default("nodes")))
    per_node = pods_per_node if pods_per_node is not None else int(str(_lab_default("pods_per_node")))
    be = _lab_default("backend")
    if be != "vxlan":
        raise ValueError(f"the diagram draws the vxlan lab; Lab's default backend is now {be!r}")
    deployment = str(_lab_default("deployment")) or "nginx"
    topo = plan(n)
    # As Lab._build: the LB takes part in the overlay, then every node; subnets as the lab allocates them.
    flannel_hosts = [topo.host("loadbalancer"), *topo.nodes]
    subnets = overlay.allocate_subnets([h.name for h in flannel_hosts])
    leases: dict[str, SubnetLease] = {}
    for host in flannel_hosts:
        nic = host.kube_nic
        assert nic is not None
        leases[host.name] = SubnetLease(
            host=host.name,
            subnet=subnets[host.name],
            public_ip=nic.ip,
            ext_dev=nic.name,
            backend="vxlan",
            vtep_mac=overlay.vtep_mac(nic.ip),
        )
    # The lab's own scheduler and host-local IPAM place the deployment's pods.
    cluster = Cluster()
    for node in topo.nodes:
        kube_ip = node.kube_ip
        assert kube_ip is not None
        cluster.add_node(node.name, kube_ip, leases[node.name].subnet, "vxlan", None)
    cluster.add_deployment(deployment, per_node * n)
    cluster.reconcile_replicas()
    pods: dict[str, list[str]] = {node.name: [] for node in topo.nodes}
    for pod in cluster.pods.values():
        pods[pod.node].append(pod.ip)
    for ips in pods.values():
        ips.sort(key=ipaddress.IPv4Address)
    return LabView(topo, leases, pods, deployment, DEFAULT_SERVICE_PORTS)


def _nic(host: Host, net: Net) -> Nic:
    return next(n for n in host.nics if n.net == net)


def _ports(view: LabView) -> str:
    return " ".join(f"{p.port}/{p.protocol}" for p in view.service_ports)


def _target_port(view: LabView) -> int:
    """The container port the first service port reaches (its targetPort is a port name in the lab)."""
    sp = view.service_ports[0]
    if isinstance(sp.target_port, int):
        return sp.target_port
    return next(cp.port for cp in DEFAULT_CONTAINER_PORTS if cp.name == sp.target_port)


def _short_ips(ips: Sequence[str]) -> str:
    """`10.246.92.2, .3`: the pods of one node share their first three octets."""
    if not ips:
        return "none"
    head, *rest = ips
    return ", ".join([head, *("." + ip.rsplit(".", 1)[1] for ip in rest)])


def box_lines(view: LabView, host: Host) -> list[str]:
    """What a host's box says: its role in the seed's story, then what the lab runs on it."""
    lease = view.leases.get(host.name)
    default = f"default via {host.default_via}" if host.default_via else "no default route"
    lines: list[str]
    if host.role == "client":
        nets = ", ".join(str(NET_CIDR[n.net]) for n in host.nics)
        lines = ["the seed's laptop", default, f"reaches {nets} only"]
    elif host.role == "loadbalancer":
        assert lease is not None
        lines = [
            f"flannel-lb: {view.deployment} on {view.vip}",
            f"  {_ports(view)}",
            "  DNAT -> pods, MASQUERADE",
            f"{overlay.vxlan_dev(lease.vni)} {lease.subnet_ip}/32",
            f"lease {lease.subnet}",
            default,
            f"ip_forward={int(host.forwarding)} rp_filter={host.rp_filter}",
        ]
    elif host.role == "master":
        lines = [f"etcd :{ETCD_CLIENT_PORT}", "registry + flannel leases", default]
    else:
        assert lease is not None
        lines = [
            f"{overlay.vxlan_dev(lease.vni)} {lease.subnet_ip}/32",
            f"{CNI_BRIDGE} {lease.gateway}/{lease.network.prefixlen}",
            f"pods {_short_ips(view.pods.get(host.name, []))}",
            default,
        ]
    return [host.name, *lines]


def overlay_lines(view: LabView) -> list[str]:
    """The leases table: which subnet each host holds and where its tunnel ends."""
    any_lease = next(iter(view.leases.values()))
    kind = f"vxlan VNI {any_lease.vni}, UDP {overlay.VXLAN_PORT}, MTU {overlay.VXLAN_MTU}"
    head = f"flannel overlay {overlay.NETWORK} ({kind}), leases in etcd under {overlay.SUBNETS_PREFIX}:"
    width = max(len(h) for h in view.leases)
    rows = []
    for host, lease in view.leases.items():
        rows.append(f"  {host:<{width}}  {lease.subnet:<15} VTEP {lease.vtep_mac} at {lease.public_ip}")
    return [head, *rows]


def path_lines(view: LabView) -> list[str]:
    """A request's walk through the lab, step by step (the numbers match the SVG's markers)."""
    topo = view.topo
    client, lb = topo.host("client"), topo.host("loadbalancer")
    node, pod = view.example
    lb_lease, node_lease = view.leases["loadbalancer"], view.leases[node]
    client_ip, port = _nic(client, "infra").ip, view.service_ports[0].port
    lb_infra, lb_kube = _nic(lb, "infra"), _nic(lb, "kube")
    node_ip = topo.host(node).kube_ip
    dev = overlay.vxlan_dev(lb_lease.vni)
    target = _target_port(view)
    return [
        f"A request: curl http://{view.vip}/ on the client",
        f"  1. {client_ip} -> {view.vip}:{port} over {BRIDGES['infra']},"
        f" into the loadbalancer's {lb_infra.name}",
        f"  2. loadbalancer, nat PREROUTING: flannel-lb DNATs it to a ready pod, e.g. {pod}:{target}",
        f"  3. route {node_lease.subnet} via {node_lease.subnet_ip} dev {dev} onlink,",
        f"     and nat POSTROUTING: flannel-lb MASQUERADEs it to {lb_lease.subnet_ip}, its {dev} address",
        f"  4. {dev} wraps it in VXLAN: UDP {lb_kube.ip} -> {node_ip}:{overlay.VXLAN_PORT}"
        f" over {BRIDGES['kube']}",
        f"  5. {node} unwraps it on {dev} and forwards it through {CNI_BRIDGE} {node_lease.gateway} to {pod}",
        f"  6. the pod answers {lb_lease.subnet_ip}, so the reply comes back through the tunnel and the",
        f"     loadbalancer undoes both NATs: {client_ip} hears from {view.vip}",
    ]


def header_lines(view: LabView) -> list[str]:
    """Where the boxes live: the lab's namespaces, not the host."""
    prefix, n = prefix_for("NAME"), len(view.topo.nodes)
    return [
        f"flannel-lb lab up ({n} node{'s' if n != 1 else ''}, vxlan). Every box is a network namespace,",
        f"{prefix}<box>; both bridges live in {prefix}{SWITCH}. The host's own network is untouched.",
    ]


def note_lines(view: LabView) -> list[str]:
    """The one address in the picture that exists nowhere, and why it matters (the seed's timeout)."""
    gateways = sorted({h.default_via for h in view.topo.nodes if h.default_via})
    return [
        f"The nodes' default gateway {', '.join(gateways)} exists nowhere: a pod's reply that skipped the",
        "LB's MASQUERADE is lost there, which is the seed's \"DNAT alone times out\".",
    ]


# --- layout, in character cells (shared by both renderers) -----------------------------------------------


@dataclass(slots=True)
class Box:
    host: Host
    x: int
    y: int
    w: int
    lines: list[str]

    @property
    def h(self) -> int:
        return len(self.lines) + 2

    @property
    def bottom(self) -> int:
        return self.y + self.h - 1

    @property
    def right(self) -> int:
        return self.x + self.w - 1

    @property
    def link_x(self) -> int:
        return self.x + 3


@dataclass(slots=True)
class Link:
    """A cable from a box's border to a bus, labelled with the NIC at the box's end."""

    x: int
    y0: int  # the box border cell
    y1: int  # the bus row
    label: str
    net: Net


@dataclass(slots=True)
class Bus:
    net: Net
    y: int
    x0: int
    x1: int
    label: str


@dataclass(slots=True)
class Layout:
    boxes: dict[str, Box] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    buses: dict[Net, Bus] = field(default_factory=dict)
    width: int = 0
    height: int = 0


GAP = 2  # columns between the boxes of the bottom row


def layout(view: LabView) -> Layout:
    """Client on top, the infra net, the LB, the kubernetes net, then master and nodes side by side."""
    topo = view.topo
    out = Layout()

    def make(host: Host, x: int, y: int, labels: Sequence[str]) -> Box:
        lines = box_lines(view, host)
        w = max(len(s) for s in [*lines, *(lbl + "  " for lbl in labels)]) + 4
        box = Box(host, x, y, w, lines)
        out.boxes[host.name] = box
        return box

    bottom_hosts = [h for h in topo.hosts if h.role in ("master", "node")]
    # Rows: client box, label, infra bus, label, LB box, label, kube bus, label, bottom row of boxes.
    client_host, lb_host = topo.host("client"), topo.host("loadbalancer")
    client_h = len(box_lines(view, client_host)) + 2
    lb_h = len(box_lines(view, lb_host)) + 2
    infra_y = client_h + 1
    lb_y = infra_y + 2
    kube_y = lb_y + lb_h + 1
    row_y = kube_y + 2

    x = 0
    for host in bottom_hosts:
        box = make(host, x, row_y, [_nic(host, "kube").address])
        x += box.w + GAP
    # The LB's cable lands on the kubernetes net between the cables of master and node-1.
    first, second = (out.boxes[h.name] for h in bottom_hosts[:2])
    lb = make(lb_host, (first.link_x + second.link_x) // 2 - 3, lb_y, [n.address for n in lb_host.nics])
    client = make(client_host, lb.x, 0, [_nic(client_host, "infra").address])

    out.links.append(Link(client.link_x, client.bottom, infra_y, _label(client_host, "infra"), "infra"))
    out.links.append(Link(lb.link_x, lb.y, infra_y, _label(lb_host, "infra"), "infra"))
    out.links.append(Link(lb.link_x, lb.bottom, kube_y, _label(lb_host, "kube"), "kube"))
    for host in bottom_hosts:
        box = out.boxes[host.name]
        out.links.append(Link(box.link_x, box.y, kube_y, _label(host, "kube"), "kube"))

    # Both buses run under every box. A bus's name sits right-aligned on the row above it, so the bus
    # is long enough to keep it clear of the cable labels there, which start at the cables on the left.
    rows: tuple[tuple[Net, int], ...] = (("infra", infra_y), ("kube", kube_y))
    names = {net: f"{NET_TITLE[net]} {NET_CIDR[net]} ({BRIDGES[net]})" for net, _ in rows}
    right = max(b.right for b in out.boxes.values())
    for link in out.links:
        if link.y0 < link.y1:  # a label on the row above its bus
            right = max(right, link.x + 2 + len(link.label) + 2 + len(names[link.net]))
    for net, y in rows:
        out.buses[net] = Bus(net, y, 0, right, names[net])
    out.width = right + 1
    out.height = max(b.bottom for b in out.boxes.values()) + 1
    return out


def _label(host: Host, net: Net) -> str:
    nic = _nic(host, net)
    return f"{nic.name} {nic.address}"


# --- text -----------------------------------------------------------------------------------------------

_JOIN = {(True, False): "╧", (False, True): "╤", (True, True): "╪"}


def render_picture(lay: Layout) -> list[str]:
    """The boxes, buses and cables on a character grid."""
    grid = [[" "] * lay.width for _ in range(lay.height)]

    def put(x: int, y: int, text: str) -> None:
        for i, ch in enumerate(text):
            grid[y][x + i] = ch

    for bus in lay.buses.values():
        put(bus.x0, bus.y, "═" * (bus.x1 - bus.x0 + 1))
        put(bus.x1 - len(bus.label) + 1, bus.y - 1, bus.label)
    for box in lay.boxes.values():
        put(box.x, box.y, "┌" + "─" * (box.w - 2) + "┐")
        for i, line in enumerate(box.lines):
            put(box.x, box.y + 1 + i, "│ " + line.ljust(box.w - 4) + " │")
        put(box.x, box.bottom, "└" + "─" * (box.w - 2) + "┘")
    joins: dict[tuple[int, int], tuple[bool, bool]] = {}
    for link in lay.links:
        above = link.y0 < link.y1  # the box sits above the bus
        lo, hi = sorted((link.y0, link.y1))
        for y in range(lo + 1, hi):
            grid[y][link.x] = "│"
        label_y = link.y1 - 1 if above else link.y1 + 1
        put(link.x + 2, label_y, link.label)
        grid[link.y0][link.x] = "┬" if above else "┴"
        up, down = joins.get((link.x, link.y1), (False, False))
        joins[(link.x, link.y1)] = (up or above, down or not above)
    for (x, y), key in joins.items():
        grid[y][x] = _JOIN[key]
    return ["".join(row).rstrip() for row in grid]


def render_text(view: LabView | None = None) -> str:
    """The README's diagram: header, picture, overlay leases and a request's path."""
    view = view or describe()
    lines = [*header_lines(view), "", *render_picture(layout(view)), ""]
    lines += [*note_lines(view), "", *overlay_lines(view), "", *path_lines(view)]
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """What goes between the README markers (a fenced block, so GitHub keeps the alignment)."""
    return f"{README_BEGIN}\n```text\n{text}```\n{README_END}"


def update_readme(path: Path, text: str) -> bool:
    """Replace the block between the markers; True if the file changed. The markers must exist."""
    old = path.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(old):
        raise ValueError(f"{path}: no {README_BEGIN} ... {README_END} block")
    new = pattern.sub(lambda _: readme_block(text), old, count=1)
    if new != old:
        path.write_text(new)
    return new != old


# --- SVG ------------------------------------------------------------------------------------------------

CW, CH = 8, 18  # one character cell in pixels (13 px DejaVu Sans Mono advances 7.8 px)
MARGIN = 24
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
NET_COLOUR: dict[Net, str] = {"infra": "#2b6cb0", "kube": "#2f855a"}
ROLE_FILL = {"client": "#edf2f7", "loadbalancer": "#fefcbf", "master": "#e9d8fd", "node": "#c6f6d5"}
OVERLAY_COLOUR = "#dd6b20"
PATH_COLOUR = "#c53030"
INK, GREY = "#2d3748", "#4a5568"
Attr = str | float


def _fmt(v: Attr) -> str:
    """Numbers with at most one decimal: the output is byte-for-byte reproducible (the test compares it)."""
    if isinstance(v, str):
        return v
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _line_row(box: Box, prefix: str) -> int:
    """The grid row of the first line in `box` that starts with `prefix` (the title row if none does)."""
    for i, line in enumerate(box.lines):
        if line.lstrip().startswith(prefix):
            return box.y + 1 + i
    return box.y + 1


class _Picture:
    """The text picture's layout drawn with shapes: cell (col, row) maps to pixels, text stays monospace."""

    def __init__(self, view: LabView) -> None:
        self.view = view
        self.lay = layout(view)
        self.parts: list[str] = []
        self.top = MARGIN + 3 * CH  # below the title and the two header lines

    # cell -> pixel
    def px(self, col: float) -> float:
        return MARGIN + col * CW

    def py(self, row: float) -> float:
        return self.top + row * CH

    def mid_x(self, col: float) -> float:
        return self.px(col) + CW / 2

    def mid_y(self, row: float) -> float:
        return self.py(row) + CH / 2

    def baseline(self, row: float) -> float:
        return self.py(row) + CH * 0.72

    def add(self, tag: str, text: str | None = None, **attrs: Attr) -> None:
        """One element; `stroke_width=2` becomes `stroke-width="2"`."""
        rendered = " ".join(f"{k.replace('_', '-')}={quoteattr(_fmt(v))}" for k, v in attrs.items())
        if text is None:
            self.parts.append(f"<{tag} {rendered}/>")
        else:
            self.parts.append(f"<{tag} {rendered}>{escape(text)}</{tag}>")

    def text(self, text: str, col: float, row: float, **attrs: Attr) -> None:
        self.add("text", text, x=self.px(col), y=self.baseline(row), **attrs)

    def draw(self) -> str:
        view, lay = self.view, self.lay
        overlay_text, path_text = overlay_lines(view), path_lines(view)
        legend = [
            "",
            "Red: the request walked through below. Dashed orange: the tunnels flannel keeps from the LB.",
            "",
            *note_lines(view),
            "",
            *overlay_text,
            "",
            *path_text,
        ]
        head = header_lines(view)
        legend_top = lay.height + 1
        picture = lay.width + 2 + max(len(b.label) for b in lay.buses.values())
        width = self.px(max(picture, *(len(s) for s in [*head, *legend]))) + MARGIN
        height = self.py(legend_top + len(legend)) + MARGIN

        self.add("rect", x=0, y=0, width=width, height=height, fill="#ffffff")
        self.add("text", "The flannel-lb lab", x=MARGIN, y=MARGIN + 14, font_size=18, font_weight="bold")
        for i, line in enumerate(head):
            self.add("text", line, x=MARGIN, y=MARGIN + 14 + (i + 1) * CH, font_size=12, fill=GREY)
        self._buses()
        self._links()
        self._boxes()
        self._tunnels()
        self._request()
        for i, line in enumerate(legend):
            if line:
                bold: dict[str, Attr] = (
                    {"font_weight": "bold"} if line in (overlay_text[0], path_text[0]) else {}
                )
                self.text(line, 0, legend_top + i, **bold)

        body = "\n  ".join(self.parts)
        size = f'width="{_fmt(width)}" height="{_fmt(height)}" viewBox="0 0 {_fmt(width)} {_fmt(height)}"'
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" {size} font-family={quoteattr(FONT)} font-size="13"'
            ' xml:space="preserve">\n'
            "  <title>flannel-lb lab topology (generated by python -m flannel_lb.lab.diagram)</title>\n"
            "  <defs>\n"
            '    <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"'
            f' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{PATH_COLOUR}"/></marker>\n'
            "  </defs>\n"
            f"  {body}\n"
            "</svg>\n"
        )

    def _buses(self) -> None:
        for bus in self.lay.buses.values():
            y, colour = self.mid_y(bus.y), NET_COLOUR[bus.net]
            self.add(
                "line",
                x1=self.mid_x(bus.x0),
                y1=y,
                x2=self.mid_x(bus.x1),
                y2=y,
                stroke=colour,
                stroke_width=6,
            )
            # Beside the bus's end, not above it as in the text: the overlay's tunnels cross up there.
            self.text(bus.label, bus.x1 + 2, bus.y, fill=colour, font_weight="bold")

    def _links(self) -> None:
        for link in self.lay.links:
            x = self.mid_x(link.x)
            self.add(
                "line",
                x1=x,
                y1=self.mid_y(link.y0),
                x2=x,
                y2=self.mid_y(link.y1),
                stroke=GREY,
                stroke_width=2,
            )
            above = link.y0 < link.y1
            self.text(link.label, link.x + 2, link.y1 - 1 if above else link.y1 + 1, fill=INK)

    def _boxes(self) -> None:
        for box in self.lay.boxes.values():
            self.add(
                "rect",
                x=self.mid_x(box.x),
                y=self.mid_y(box.y),
                width=(box.w - 1) * CW,
                height=(box.h - 1) * CH,
                rx=6,
                fill=ROLE_FILL[box.host.role],
                stroke=INK,
                stroke_width=1.5,
            )
            for i, line in enumerate(box.lines):
                title: dict[str, Attr] = {"font_weight": "bold", "font_size": 14} if i == 0 else {}
                self.text(line, box.x + 2, box.y + 1 + i, **title)

    def _device(self) -> str:
        return overlay.vxlan_dev(self.view.leases["loadbalancer"].vni)

    def _tunnels(self) -> None:
        """Dashed tunnels from the LB's flannel device to every node's (the routes flannel installs)."""
        lb, lease, dev = self.lay.boxes["loadbalancer"], self.view.leases["loadbalancer"], self._device()
        x0, y0 = self.mid_x(lb.right), self.mid_y(_line_row(lb, dev))
        for node in self.view.topo.nodes:
            box = self.lay.boxes[node.name]
            x1, y1 = self.mid_x(box.right - 3), self.mid_y(box.y)
            # A cubic Bezier: leave the LB sideways, arrive at the node from above.
            points = [(x0, y0), (x0 + 60, y0), (x1, y1 - 70), (x1, y1)]
            p0, *rest = (f"{_fmt(x)},{_fmt(y)}" for x, y in points)
            d = f"M{p0} C{' '.join(rest)}"
            self.add("path", d=d, fill="none", stroke=OVERLAY_COLOUR, stroke_width=2, stroke_dasharray="7 4")
        label = f"{dev} overlay {overlay.NETWORK} (VNI {lease.vni})"
        self.add(
            "text",
            label,
            x=self.px(lb.right + 2),
            y=self.mid_y(lb.y + 1),
            fill=OVERLAY_COLOUR,
            font_weight="bold",
        )

    def _request(self) -> None:
        """The red route of path_lines' steps 1-5, beside the cables it follows, with numbered markers."""
        lay = self.lay
        client, lb = lay.boxes["client"], lay.boxes["loadbalancer"]
        node = lay.boxes[self.view.example[0]]
        kube_y = self.mid_y(lay.buses["kube"].y)
        xc = self.mid_x(client.link_x) - 9  # beside the cable, on the side away from its label
        xn = self.mid_x(node.link_x) - 9
        ride = kube_y - 9  # along the bus, just above it
        for points in (
            [(xc, self.mid_y(client.bottom)), (xc, self.mid_y(lb.y))],
            [(xc, self.mid_y(lb.bottom)), (xc, ride), (xn, ride), (xn, self.mid_y(node.y))],
        ):
            d = "M" + " L".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)
            self.add("path", d=d, fill="none", stroke=PATH_COLOUR, stroke_width=2.5, marker_end="url(#arrow)")
        inside = self.mid_x(lb.right) - 12
        markers = [
            (xc - 13, (self.mid_y(client.bottom) + self.mid_y(lay.buses["infra"].y)) / 2),
            (inside, self.mid_y(_line_row(lb, "DNAT"))),
            (inside, self.mid_y(_line_row(lb, self._device()))),
            ((xc + xn) / 2, kube_y + 14),
            (self.mid_x(node.right) - 12, self.mid_y(_line_row(node, "pods"))),
        ]
        for n, (x, y) in enumerate(markers, 1):
            self.add("circle", cx=x, cy=y, r=9, fill=PATH_COLOUR)
            self.add(
                "text",
                str(n),
                x=x,
                y=y + 4.5,
                fill="#ffffff",
                font_size=12,
                font_weight="bold",
                text_anchor="middle",
            )


def render_svg(view: LabView | None = None) -> str:
    """The same layout as the text picture, drawn with shapes, plus the overlay's tunnels and the request."""
    return _Picture(view or describe()).draw()


# --- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flannel_lb.lab.diagram",
        description="Draw the lab's topology from its own description (text on stdout, or files).",
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, for this module's own parser and for a `flannel-lb lab diagram` verb."""
    p.add_argument(
        "--svg", metavar="FILE", help=f"also write the SVG picture to FILE (the README's: {SVG_PATH})"
    )
    p.add_argument(
        "--readme", metavar="FILE", help=f"rewrite the block between {README_BEGIN} and its end marker"
    )
    p.add_argument(
        "--nodes", type=int, default=None, help=f"worker nodes (default: the lab's, {_lab_default('nodes')})"
    )


def run(args: argparse.Namespace) -> int:
    """Print or write the pictures; returns an exit code (a `func` for the lab CLI too)."""
    try:
        view = describe(nodes=args.nodes)
    except ValueError as e:  # e.g. --nodes outside the lab's 1..MAX_NODES
        print(f"diagram: {e}", file=sys.stderr)
        return 2
    text = render_text(view)
    if args.svg:
        Path(args.svg).write_text(render_svg(view))
        print(f"wrote {args.svg}", file=sys.stderr)
    if args.readme:
        changed = update_readme(Path(args.readme), text)
        print(f"{'updated' if changed else 'unchanged'} {args.readme}", file=sys.stderr)
    if not args.svg and not args.readme:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
