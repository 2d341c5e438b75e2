"""bench/evidence_report.py: paired 95% t-intervals, steps to target, and the docs table from a tiny fake JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from evidence_report import END, START, first_reach, paired_ci, render_table, summarize, write_docs  # noqa: E402

FAKE = {"command": "python bench/evidence.py --quick", "methods": {
    "redit": {"quick": True, "setting": "chain 3x2", "metric": "held-out acc", "baseline": "grpo", "comparisons": [
        {"arm": "redit", "n": 3, "mean_diff": 0.02, "ci95": [-0.01, 0.05],
         "steps_to_target": {"grpo": [40, 30, 40], "redit": [20, None, 30]}}]},
    "var": {"quick": True, "setting": "var-tiny", "metric": "held-out reward", "baseline": "vanilla", "comparisons": [
        {"arm": "mask", "n": 2, "mean_diff": -0.125, "ci95": [-0.2, -0.05],
         "steps_to_target": {"vanilla": [None, None], "mask": [None, None]}}]}}}


def test_paired_ci_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, t_{0.975,2} = 4.303 -> half-width 4.303 / sqrt(3) = 2.4843
    m, ci = paired_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx([2 - 2.48434, 2 + 2.48434], abs=1e-4)
    assert paired_ci([0.5]) == (0.5, None)


def test_first_reach():
    assert first_reach([(0, 0.1), (10, 0.5), (20, 0.4)], 0.45) == 10
    assert first_reach([(0, 0.1)], 0.2) is None


def test_render_table_text():
    t = render_table(FAKE).splitlines()
    assert t[0] == START and t[-1] == END
    assert "**the quick run**" in t[2]
    assert t[7] == ("| redit (quick) | chain 3x2 | held-out acc | 3 | redit vs grpo | +0.020 [-0.010, +0.050] | "
                    "no effect measured | 40 (3/3); 25 (2/3) |")
    assert "| arm vs reference |" in t[5]
    assert t[8] == ("| var (quick) | var-tiny | held-out reward | 2 | mask vs vanilla | -0.125 [-0.200, -0.050] | "
                    "worse than vanilla | — (0/2); — (0/2) |")


def test_write_docs_inserts_then_replaces(tmp_path):
    doc = tmp_path / "modifiers.md"
    doc.write_text("# Modifiers\n\n## Writing your own\ntext\n")
    write_docs(FAKE, doc)
    first = doc.read_text()
    assert first.index("## Evidence") < first.index(START) < first.index("## Writing your own")
    FAKE["methods"]["redit"]["comparisons"][0]["mean_diff"] = 0.5
    write_docs(FAKE, doc)
    second = doc.read_text()
    assert second.count(START) == 1 and "| +0.500 [-0.010, +0.050] |" in second and "+0.020" not in second


def test_a_baseline_that_does_not_rise_gives_no_steps_to_target():
    """Target = the baseline's final value on the same seed: seed 0's baseline falls (0.3 -> 0.2), so neither
    arm 'reaches' it at step 0; seed 1's rises (0.1 -> 0.4) and the method gets there first."""
    from types import SimpleNamespace

    s = SimpleNamespace(arms={"grpo": [], "redit": []}, pairs=None, target=None, desc="d", recipe="r", paper="p",
                        metric="m")
    curves = {("grpo", 0): [(0, 0.3), (10, 0.25), (20, 0.2)], ("redit", 0): [(0, 0.3), (10, 0.3), (20, 0.35)],
              ("grpo", 1): [(0, 0.1), (10, 0.2), (20, 0.4)], ("redit", 1): [(0, 0.1), (10, 0.45), (20, 0.5)]}
    runs = [{"arm": a, "seed": sd, "final": c[-1][1], "curve": c, "steps": 20, "wall_s": 1.0}
            for (a, sd), c in curves.items()]
    c = summarize("redit", s, [0, 1], runs, quick=True)["comparisons"][0]
    st = c["steps_to_target"]
    assert st["baseline_did_not_rise"] == [0] and st["grpo"] == [None, 20] and st["redit"] == [None, 10]
    assert c["per_seed_diff"] == pytest.approx([0.15, 0.1])
    row = render_table({"methods": {"redit": {"setting": "d", "metric": "m", "baseline": "grpo",
                                              "comparisons": [c]}}}).splitlines()[7]
    assert row.endswith("| 20 (1/1; 1 n/a: baseline did not rise); 10 (1/1; 1 n/a: baseline did not rise) |")
