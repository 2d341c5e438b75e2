"""Interrupted-and-resumed runs log exactly what an uninterrupted run logs (same seed)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rltune.logging import read_metrics
from rltune.train import checkpoint as ckpt
from rltune.trainer import RunDirError, Trainer
from tests.conftest import ROOT, TINY, merge
from tests.helpers.stopping import StopAfter

COMPARED = ("reward/mean", "loss/total", "loss/policy", "train/grad_norm", "algo/entropy", "eval/accuracy",
            "rollout/response_len", "rollout/weight_version")


def _values(run_dir):
    return [{k: m.get(k) for k in ("step", *COMPARED)} for m in read_metrics(run_dir)]


@pytest.mark.parametrize("stops", [(1,), (2, 3)])
def test_resume_is_exact(tiny_recipe, tmp_path, stops):
    over = {"run": {"steps": 4, "eval_interval": 2}, "data": {"shuffle": True}}
    whole = tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "whole")}}))
    Trainer(whole).fit()

    parts = tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "parts")}}))
    StopAfter(parts, stop_at=stops[0]).fit()
    for k in stops[1:]:
        StopAfter(parts, resume=True, stop_at=k).fit()
    Trainer(parts, resume=True).fit()
    assert _values(tmp_path / "whole") == _values(tmp_path / "parts")


def test_resume_without_checkpoint_and_existing_run(tiny_recipe):
    r = tiny_recipe(run={"steps": 1})
    with pytest.raises(RunDirError, match="no valid checkpoint"):
        Trainer(r, resume=True)
    Trainer(r).fit()
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        Trainer(r)
    Trainer(r, overwrite=True)  # allowed


def test_corrupt_latest_checkpoint_falls_back(tiny_recipe):
    r = tiny_recipe(run={"steps": 2, "save_interval": 1, "keep_last": 3})
    t = Trainer(r)
    t.fit()
    root = t.ckpt_root
    assert ckpt.find_latest(root).name == "step_000002"
    state = root / "step_000002" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-10])  # a torn write
    assert ckpt.find_latest(root).name == "step_000001"
    # a leftover temp folder from a writer killed mid-save is ignored and cleaned up
    (root / ".tmp-step_000003-99999").mkdir()
    assert ckpt.find_latest(root).name == "step_000001"
    resumed = Trainer(r, resume=True)
    assert resumed.step == 1


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    raw = merge(TINY, {"run": {"steps": 500, "output_dir": str(tmp_path / "run")}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "rltune.cli", "train", str(recipe)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "Resume with" in out and "--resume" in out
    latest = ckpt.find_latest(tmp_path / "run" / "checkpoints")
    assert latest is not None and 0 < ckpt.load_state(latest)["step"] < 500
    # and `--resume` with nothing to resume exits non-zero with the reason
    shutil.rmtree(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(recipe), "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no valid checkpoint" in r.stderr


def test_resume_applies_the_recipes_learning_rate(tiny_recipe):
    """After a divergence the fix is a lower lr and `--resume`: the recipe's lr wins over the checkpoint's."""
    Trainer(tiny_recipe(run={"steps": 1})).fit()
    t = Trainer(tiny_recipe(run={"steps": 2}, train={"lr": 1e-5}), resume=True, allow_changes=True)
    assert t.engine.lr == 1e-5
    assert all(g["lr"] == 1e-5 for g in t.engine.optimizer.param_groups)
