"""The examples stay runnable: every examples/*/recipe.yaml validates, the two recipe examples train, and the
Python-API script runs end to end (each for a step or two, in a temporary run directory)."""

import json
import math
import subprocess
import sys

import pytest

from rltune.config.load import load_recipe
from rltune.logging import read_metrics
from rltune.trainer import Trainer
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "examples").glob("*/recipe.yaml"))


def test_every_example_recipe_validates():
    assert {p.parent.name for p in RECIPES} >= {"custom_reward", "local_jsonl"}
    rel = [str(p.relative_to(ROOT)) for p in RECIPES]
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "validate", *rel], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in rel:
        assert f"ok   {p}" in r.stdout, r.stdout


@pytest.mark.parametrize("example, steps", [("local_jsonl", 2), ("custom_reward", 1)])
def test_example_recipe_trains(example, steps, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes' data and reward paths are relative to the repository root
    r = load_recipe(ROOT / "examples" / example / "recipe.yaml",
                    [f"run.steps={steps}", f"run.output_dir={tmp_path / 'run'}", "logging.console=false"])
    Trainer(r).fit()
    rows = read_metrics(tmp_path / "run")
    train = [m for m in rows if "loss/total" in m]
    assert [m["step"] for m in train] == list(range(1, steps + 1))
    assert all(math.isfinite(m["loss/total"]) for m in train)
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]  # held-out set wired (test.jsonl / eval_size)
    for spec in r.rewards:
        assert f"reward/{spec.metric_name}/mean" in train[-1], spec.metric_name
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_python_api_example_runs(tmp_path):
    out = tmp_path / "api"
    p = subprocess.run([sys.executable, "examples/python_api.py", "--steps", "2", "--output-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("{")))
    assert {"reward/mean", "eval/accuracy"} <= set(metrics)
    assert [m["step"] for m in read_metrics(out) if "loss/total" in m] == [1, 2]
    assert (out / "final" / "config.json").is_file()
