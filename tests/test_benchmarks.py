"""Smoke tests: each benchmark runs in its tiny mode and prints a table (no timing asserted)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` under bare pytest

from benchmarks import checkpoint, step_overhead, tree_walks


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        (checkpoint, ["--mb", "4", "--rounds", "1"]),
        (step_overhead, ["--depth", "2", "--rounds", "1", "--inner", "2"]),
        (tree_walks, ["--params", "20", "--rounds", "1", "--inner", "1"]),
    ],
    ids=["checkpoint", "step_overhead", "tree_walks"],
)
def test_benchmark_runs_and_prints_a_table(module, argv, capsys, tmp_path):
    if module is checkpoint:
        argv = [*argv, "--dir", str(tmp_path)]
    module.main(argv)
    out = capsys.readouterr().out
    assert out.startswith("### ")
    assert "|---|" in out
    if module is checkpoint:
        assert list(tmp_path.iterdir()) == []  # cleaned up after itself
