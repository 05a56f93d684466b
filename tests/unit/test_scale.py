"""The scale experiment: random trees, the formulas, a seeded 100-domain run and the command."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from client.cli import main
from vdns.scale import ScaleSettings, format_report, scale
from vdns.trees import (
    MAX_FANOUT,
    DomainTree,
    TreeError,
    default_depth,
    dissertation_load,
    random_tree,
    tree_path_hops,
    uniform_load,
)

# A lower-case DNS name without a final dot, as the control-message codec requires.
DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
REQUIRED = {"domains", "converged", "virtual_convergence_s", "wall_s", "skew_max",
            "control_bytes_per_domain_per_heartbeat", "route_switches_mean", "hops_mean",
            "hops_predicted", "root_load", "root_load_predicted"}


def _subtree_counts(tree: DomainTree) -> list[int]:
    counts = [1] * len(tree)
    for index in range(len(tree) - 1, 0, -1):  # parents come before their children
        counts[tree.parents[index]] += counts[index]
    return counts


def _path(tree: DomainTree, a: int, b: int) -> set[int]:
    """The domains on the tree path from a to b, both included."""
    up_a, up_b = [a], [b]
    while up_a[-1] != 0:
        up_a.append(tree.parents[up_a[-1]])
    while up_b[-1] != 0:
        up_b.append(tree.parents[up_b[-1]])
    common = set(up_a) & set(up_b)
    return {d for d in up_a + up_b if d not in common} | {
        next(d for d in up_a if d in common)}


# --- random trees ---------------------------------------------------------------------------


def test_a_random_tree_is_seeded_bounded_and_named_like_dns() -> None:
    tree = random_tree(2000, fanout=4, depth=9, seed=3)
    assert tree == random_tree(2000, fanout=4, depth=9, seed=3)
    assert tree != random_tree(2000, fanout=4, depth=9, seed=4)
    assert len(set(tree.names)) == 2000 and tree.parents[0] == -1
    assert max(tree.fanouts()) <= 4 and tree.height <= 9
    for index in range(1, len(tree)):
        parent = tree.parent_name(index)
        assert parent is not None and tree.names[index].endswith("." + parent)
        assert tree.names[index].count(".") == parent.count(".") + 1
        assert tree.depths[index] == tree.depths[tree.parents[index]] + 1
        assert tree.parents[index] < index
        assert DNS_NAME.fullmatch(tree.names[index]) and len(tree.names[index]) <= 253


def test_the_default_depth_is_one_level_more_than_a_complete_tree_needs() -> None:
    assert default_depth(1000, 8) == 5  # 8**3 < 1000 <= 8**4
    assert default_depth(4096, 8) == 5  # exactly 8**4: no rounding up past it
    assert default_depth(1, 8) == 1
    assert random_tree(1000, fanout=8, seed=0).height <= 5


def test_trees_that_cannot_be_built_are_refused_with_the_reason() -> None:
    with pytest.raises(TreeError, match=r"--fanout 65: need 2\.\.64"):
        random_tree(100, fanout=MAX_FANOUT + 1)
    with pytest.raises(TreeError, match="do not fit"):
        random_tree(100, fanout=2, depth=5)  # at most 63 domains
    with pytest.raises(TreeError, match="--domains 0"):
        random_tree(0, fanout=8)


# --- the formulas, against every (origin, owner) pair of small trees ------------------------


@pytest.mark.parametrize("seed", range(5))
def test_the_formulas_equal_counting_every_origin_and_owner(seed: int) -> None:
    tree = random_tree(40, fanout=3, depth=6, seed=seed)
    n = len(tree)
    counts = _subtree_counts(tree)
    children: list[list[int]] = [[] for _ in range(n)]
    for index in range(1, n):
        children[tree.parents[index]].append(counts[index])
    pairs = [_path(tree, a, b) for a, b in itertools.product(range(n), repeat=2)]
    hops = sum(len(path) - 1 for path in pairs) / n**2
    assert tree_path_hops(counts[1:], n) == pytest.approx(hops, rel=1e-12)
    for domain in range(n):
        visited = sum(domain in path for path in pairs) / n**2
        assert uniform_load(children[domain], n) == pytest.approx(visited, rel=1e-12)
        assert dissertation_load(children[domain], n) == counts[domain] / n


# --- a run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hundred() -> dict[str, Any]:
    return scale(ScaleSettings(domains=100, fanout=4, seed=7, window=10, lookups=5_000))


def test_a_hundred_domains_converge_fair_and_route_along_the_tree(
    hundred: dict[str, Any],
) -> None:
    r = hundred
    assert set(r) >= REQUIRED
    assert r["converged"] is True and r["domains"] == 100
    assert isinstance(r["virtual_convergence_s"], float) and 0 < r["virtual_convergence_s"] < 30
    assert r["skew_max"] < 1e-30  # the exact split: within a few keys of 2**128 / N
    assert r["lookup_failures"] == 0
    assert r["hops_mean"] >= 1 and r["hops_max"] <= 2 * r["tree"]["height"]
    assert r["hops_mean"] == pytest.approx(r["hops_predicted"], rel=0.05)
    assert r["root_load_predicted"] == 1.0  # the root's subtree is the whole tree
    assert r["root_load"] == pytest.approx(r["root_load_model"], abs=0.03)
    assert r["route_switches_mean"] >= 1
    assert r["route_switches_in_window"] == 0  # converged: nothing moves any more


def test_control_bytes_are_counted_per_kind_and_per_level(hundred: dict[str, Any]) -> None:
    r = hundred
    by_kind = r["control_bytes_by_kind"]
    assert isinstance(by_kind, dict) and set(by_kind) == {"heartbeat", "count-report"}
    # Every domain reports once a heartbeat: a count report is well over 100 bytes.
    assert 100 < by_kind["count-report"] < r["control_bytes_per_domain_per_heartbeat"]
    assert sum(by_kind.values()) == pytest.approx(
        r["control_bytes_per_domain_per_heartbeat"], abs=0.2)
    levels = r["levels"]
    assert isinstance(levels, list) and sum(row["domains"] for row in levels) == 100
    root = levels[0]
    # The root hears one report from each child per heartbeat, nothing else.
    assert root["received_per_heartbeat"] == r["tree"]["root_children"]


def test_a_run_is_reproducible_from_its_seed(hundred: dict[str, Any]) -> None:
    again = scale(ScaleSettings(domains=100, fanout=4, seed=7, window=10, lookups=5_000))
    wall = {"wall_s", "wall_convergence_s"}
    assert {k: v for k, v in again.items() if k not in wall} == {
        k: v for k, v in hundred.items() if k not in wall}


def test_a_tree_given_too_little_time_is_reported_unconverged() -> None:
    r = scale(ScaleSettings(domains=60, fanout=2, seed=1, window=2, lookups=100,
                            max_virtual_s=1.0))
    assert r["converged"] is False and r["virtual_convergence_s"] is None
    assert "did not converge" in r["notes"][0]
    assert "converged               no" in format_report(r)


# --- the command ----------------------------------------------------------------------------


def test_the_command_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "scale", "--domains", "50", "--json", "--lookups", "500",
                 "--window", "3"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout: one object, nothing else
    assert set(result) >= REQUIRED and result["domains"] == 50 and result["converged"]
    assert "scale: a random tree of 50 domains" in captured.err  # progress on stderr


def test_the_command_prints_a_table_and_refuses_bad_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["experiment", "scale", "--domains", "30", "--lookups", "200",
                 "--window", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scale: 30 domains") and "hops per lookup" in out
    assert re.search(r"^\s+0\s+1\s", out, re.M)  # the root's row of the level table
    assert main(["experiment", "scale", "--fanout", "100"]) == 1
    assert "--fanout 100: need 2..64" in capsys.readouterr().err
