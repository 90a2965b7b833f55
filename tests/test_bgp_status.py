"""birdc's tables parsed for `check` and the metrics (bgp/status.py): BIRD 2.0.12's real output, and
output no BIRD would print (it is read as hostile). The same against a running BIRD is in
tests/test_bgp_bird.py."""

from __future__ import annotations

from flannel_lb import config
from flannel_lb.bgp import status

PROTOCOLS = (  # BIRD 2.0.12, one session up
    "BIRD 2.0.12 ready.\n"
    "Name       Proto      Table      State  Since         Info\n"
    "device1    Device     ---        up     03:18:03.639  \n"
    "flannel_lb_direct Direct     ---        up     03:18:03.639  \n"
    "flannel_lb_bfd BFD        ---        up     03:18:03.639  \n"
    "flannel_lb_peer1 BGP        ---        up     03:18:07.525  Established   \n"
    "flannel_lb_peer2 BGP        ---        start  03:18:08.485  Active        Socket: Connection closed\n"
)
BFD = (
    "BIRD 2.0.12 ready.\n"
    "flannel_lb_bfd:\n"
    "IP address                Interface  State      Since         Interval  Timeout\n"
    "10.80.0.1                 eth0       Up         03:18:04.388    0.100    0.300\n"
    "10.80.0.2                 eth0       Down       03:18:08.485    1.000    0.000\n"
)


def _bgp(neighbors: int = 2) -> config.BGPConfig:
    return config.parse(
        {
            "lb": {"addresses": ["10.81.0.100"]},
            "bgp": {
                "enabled": True,
                "asn": 65001,
                "neighbors": [{"address": f"10.80.0.{i}", "asn": 65000} for i in range(1, neighbors + 1)],
            },
        }
    ).bgp


def test_birds_tables_become_one_session_per_neighbour() -> None:
    found = status.sessions(_bgp(3), status.parse_protocols(PROTOCOLS), status.parse_bfd(BFD))
    assert [status.healthy(s, True) for s in found] == [True, False, False]
    assert [status.describe(s, True) for s in found] == [
        "flannel_lb_peer1 10.80.0.1 AS65000: BGP up Established since 03:18:07.525; BFD Up on eth0",
        "flannel_lb_peer2 10.80.0.2 AS65000: BGP start Active Socket: Connection closed since 03:18:08.485;"
        " BFD Down on eth0",
        "flannel_lb_peer3 10.80.0.3 AS65000: BGP not in BIRD's protocols; BFD no session",
    ]
    assert status.describe(found[0], False) == (
        "flannel_lb_peer1 10.80.0.1 AS65000: BGP up Established since 03:18:07.525"
    )


def test_what_no_bird_prints_is_skipped_cut_or_escaped() -> None:
    hostile = (
        "flannel_lb_peer1 BGP --- up 00:00 Established\x1b[2J\u202e" + "A" * 10_000 + "\n"
        "x BGP\n"  # too short
        "BGP BGP BGP BGP\n"
        "\x00\x01\x02\n"
        * 5000
        + "flannel_lb_peer2 BGP --- up 00:00 Established\n"  # past MAX_LINES: never read
    )
    parsed = status.parse_protocols(hostile)
    assert set(parsed) == {"flannel_lb_peer1", "BGP"}
    info = parsed["flannel_lb_peer1"].info
    assert info.startswith("Established?[2J?A") and len(info) <= status.MAX_FIELD and info.isascii()
    assert not parsed["flannel_lb_peer1"].established  # "Established" must be a word of its own
    bfd = status.parse_bfd(
        "10.80.0.1 eth0\n999.1.1.1 eth0 Up\n10.80.0.01 eth0 Up\n::1 eth0 Up\n10.80.0.1 e\x00 Up\n"
    )
    assert list(bfd) == ["10.80.0.1"] and bfd["10.80.0.1"].interface == "e?"


def test_a_session_is_the_neighbours_by_protocol_name_never_by_what_bird_echoes() -> None:
    fake = "flannel_lb_peer9 BGP --- up 00:00 Established\nflannel_lb_peer1x BGP --- up 00:00 Established\n"
    found = status.sessions(_bgp(1), status.parse_protocols(fake), {})
    assert found[0].bgp is None and not status.healthy(found[0], False)
