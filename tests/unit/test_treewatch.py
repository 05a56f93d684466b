"""The live view of a forming tree: its compact rendering and its change lines."""

from __future__ import annotations

from typing import Any

from client.treewatch import changes, render
from msd.keyspace import SPACE, KeyRange

ROOT = "level0.testdomain.info"
CHILD = "dom00.level0.testdomain.info"


def _status(name: str, *, state: str, parent: str | None, count: int, start: int, end: int,
            switches: int) -> dict[str, Any]:
    return {"name": name, "state": state, "parent": parent, "count": count,
            "ranges": [KeyRange(start, end).to_json()], "route_switches": switches,
            "routes": []}


def test_render_shows_the_tree_in_order_and_who_has_not_started() -> None:
    statuses = {
        CHILD: _status(CHILD, state="joined", parent=ROOT, count=1, start=SPACE // 2,
                       end=SPACE, switches=1),
        ROOT: _status(ROOT, state="root", parent=None, count=2, start=0, end=SPACE // 2,
                      switches=1),
        "dom01.level0.testdomain.info": None,
    }
    text = render(statuses, header="start order 10,1,4")
    lines = text.splitlines()
    assert lines[0] == "start order 10,1,4"
    assert lines[2].strip().startswith(ROOT) and "root" in lines[2] and "50.00%" in lines[2]
    assert lines[3].startswith("    dom00.") and "joined" in lines[3]
    assert "not started" in lines[4]
    assert "2/3 domains in the tree, root counts 2, ranges tile" in lines[-1]


def test_changes_prints_a_line_only_for_domains_that_changed() -> None:
    before = {ROOT: _status(ROOT, state="root", parent=None, count=1, start=0, end=SPACE,
                            switches=0), CHILD: None}
    after = {ROOT: _status(ROOT, state="root", parent=None, count=1, start=0, end=SPACE,
                           switches=0),
             CHILD: _status(CHILD, state="joined", parent=ROOT, count=1, start=0, end=SPACE,
                            switches=1)}
    lines = changes(before, after, elapsed=1.5)
    assert lines == [f"[    1.50 s] {CHILD}: joined under {ROOT}, count 1, owns 100.00%, "
                     "switches 1"]
    assert changes(after, after, elapsed=2.0) == []
