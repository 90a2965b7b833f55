"""The lab's topology pictures: generated from the lab's description, and the committed copies in step."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from flannel_lb.lab import diagram
from flannel_lb.lab.topology import plan

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SVG = ROOT / diagram.SVG_PATH
REDRAW = "python -m flannel_lb.lab.diagram --svg docs/lab-topology.svg --readme README.md"
SVG_NS = "{http://www.w3.org/2000/svg}"


def _readme_block() -> str:
    text = README.read_text()
    match = re.search(
        re.escape(diagram.README_BEGIN) + r".*?" + re.escape(diagram.README_END), text, re.DOTALL
    )
    assert match, f"README.md has no {diagram.README_BEGIN} ... {diagram.README_END} block"
    return match.group(0)


def _svg_texts(svg: str) -> str:
    root = ET.fromstring(svg)
    return "\n".join(el.text or "" for el in root.iter(f"{SVG_NS}text"))


def _expected_strings(view: diagram.LabView) -> list[str]:
    """Every host's name and every address the lab gives it (NICs, leases, pods)."""
    out = []
    for host in view.topo.hosts:
        out.append(host.name)
        out += [nic.address for nic in host.nics]
    out += [lease.subnet for lease in view.leases.values()]
    out += [ips[0] for ips in view.pods.values()]
    return out


def test_readme_block_is_what_the_generator_draws_now() -> None:
    expected = diagram.readme_block(diagram.render_text())
    assert _readme_block() == expected, f"README's lab picture is stale: run `{REDRAW}`"


def test_committed_svg_is_what_the_generator_draws_now() -> None:
    assert SVG.read_text() == diagram.render_svg(), f"{diagram.SVG_PATH} is stale: run `{REDRAW}`"


def test_svg_is_well_formed_and_names_every_host_and_address() -> None:
    svg = SVG.read_text()
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    texts = _svg_texts(svg)
    for s in _expected_strings(diagram.describe()):
        assert s in texts, f"{s} missing from the SVG"


def test_text_names_every_host_and_address() -> None:
    text = diagram.render_text()
    for s in _expected_strings(diagram.describe()):
        assert s in text, f"{s} missing from the text diagram"


def test_the_view_is_the_lab_the_seed_describes() -> None:
    view = diagram.describe()
    assert [h.name for h in view.topo.hosts] == [h.name for h in plan(2).hosts]
    assert view.vip == "192.168.121.201"
    # The seed's leases: the LB got 10.246.90.0/24 and the nginx pod lived in 10.246.92.0/24.
    assert view.leases["loadbalancer"].subnet == "10.246.90.0/24"
    assert view.leases["node-1"].subnet == "10.246.92.0/24"
    assert view.example == ("node-1", "10.246.92.2")
    assert "MASQUERADEs it to 10.246.90.0" in diagram.render_text(view)  # the address the seed's nginx logged


def test_drawing_is_deterministic() -> None:
    """Pod names are random in the lab; nothing random may reach the pictures."""
    assert diagram.render_text() == diagram.render_text()
    assert diagram.render_svg() == diagram.render_svg()


@pytest.mark.parametrize("nodes", [1, 2, 3, 6])
def test_every_size_keeps_labels_whole_and_boxes_closed(nodes: int) -> None:
    view = diagram.describe(nodes=nodes)
    picture = diagram.render_picture(diagram.layout(view))
    text = "\n".join(picture)
    for host in view.topo.hosts:
        for nic in host.nics:
            assert f"{nic.name} {nic.address}" in text
    for bus in diagram.layout(view).buses.values():
        assert bus.label in text, f"bus label {bus.label!r} overwritten"
    # Every box row starts and ends with a border: nothing was drawn over a box.
    lay = diagram.layout(view)
    for box in lay.boxes.values():
        for y in range(box.y, box.bottom + 1):
            row = picture[y].ljust(lay.width)
            assert row[box.x] in "┌│└" and row[box.right] in "┐│┘", f"{box.host.name} row {y}: {row!r}"
    ET.fromstring(diagram.render_svg(view))


def test_update_readme_replaces_only_the_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{diagram.README_BEGIN}\nold\n{diagram.README_END}\n\nafter\n")
    assert diagram.update_readme(readme, "new picture\n")
    assert readme.read_text() == (
        f"# x\n\nbefore\n\n{diagram.readme_block('new picture' + chr(10))}\n\nafter\n"
    )
    assert not diagram.update_readme(readme, "new picture\n")  # unchanged the second time
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- lab-topology:begin -->"):
        diagram.update_readme(readme, "x\n")


def test_main_writes_the_svg_and_prints_the_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lab.svg"
    assert diagram.main(["--svg", str(out)]) == 0
    assert out.read_text() == diagram.render_svg()
    assert diagram.main([]) == 0
    assert capsys.readouterr().out == diagram.render_text()


def test_main_refuses_a_lab_size_the_lab_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert diagram.main(["--nodes", "0"]) == 2
    assert "nodes must be 1.." in capsys.readouterr().err
