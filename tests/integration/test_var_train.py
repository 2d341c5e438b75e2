"""The VAR trainer end to end on the tiny toy (CPU, seconds): the reward rises, every trained parameter moves,
checkpoints resume exactly, SIGTERM checkpoints, VMR alternates prefix/suffix rollouts, and the CLI runs it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from rltune.config.load import load_recipe
from rltune.config.schema import Recipe
from rltune.logging import read_metrics
from rltune.models.var import build_var_policy
from rltune.trainer import RunDirError, build_trainer
from rltune.visual.var_trainer import VarTrainer
from tests.conftest import ROOT

RECIPE = ROOT / "recipes/var-tiny.yaml"


def _recipe(tmp_path, name="run", **over) -> Recipe:
    d = load_recipe(RECIPE).model_dump(mode="json")
    d["run"] |= {"name": name, "output_dir": str(tmp_path / "${name}"), "threads": 1, "eval_interval": None,
                 **over.pop("run", {})}
    d["logging"] |= {"console": False}
    for k, v in over.items():
        d[k] = v
    return Recipe.model_validate(d)


def test_tiny_var_learns_and_moves_every_parameter(tmp_path):
    r = _recipe(tmp_path, run={"steps": 40})
    t = build_trainer(r, ROOT)
    assert isinstance(t, VarTrainer)
    start = build_var_policy(r.model.var, seed=r.run.seed).state_dict()
    last = t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "reward/mean" in m]
    rew = [m["reward/mean"] for m in rows]
    assert len(rew) == 40 and sum(rew[-10:]) / 10 > sum(rew[:10]) / 10 + 0.3, rew
    for name, p in t.model.named_parameters():
        assert not torch.equal(p.detach().cpu(), start[name]), f"{name} did not change"
    assert torch.equal(t.model.codebook.cpu(), start["codebook"])         # the frozen codebook stays
    for key in ("time/rollout", "time/reward", "time/advantage", "time/update", "mod/var_mask/coverage",
                "algo/scale_weight/0", "loss/policy", "train/grad_norm"):
        assert key in last, key
    # PANW+MP moves the loss weight to the coarse scales: scale 0 (1 token of 85) gets far more than 1/85
    assert last["algo/scale_weight/0"] > 0.3
    assert (t.run_dir / "final" / "model.safetensors").is_file() and (t.run_dir / "checkpoints" / "latest").is_file()
    assert t.best is not None and t.stopped_by is None
    with pytest.raises(RunDirError, match="already holds a run"):
        VarTrainer(r, ROOT)


def test_resume_is_exact_and_sigterm_checkpoints(tmp_path):
    full = VarTrainer(_recipe(tmp_path, "full", run={"steps": 4}), ROOT)
    full.fit()
    part = VarTrainer(_recipe(tmp_path, "part", run={"steps": 4}), ROOT)
    orig = part.train_step

    def step_then_signal():
        out = orig()
        if part.step == 1:            # during the 2nd step: the loop finishes it, checkpoints and returns
            signal.raise_signal(signal.SIGTERM)
        return out

    part.train_step = step_then_signal
    part.fit()
    assert part.stopped_by == "SIGTERM" and part.step == 2
    resumed = VarTrainer(_recipe(tmp_path, "part", run={"steps": 4}), ROOT, resume=True)
    assert resumed.step == 2
    resumed.fit()
    a = {m["step"]: m["reward/mean"] for m in read_metrics(full.run_dir) if "reward/mean" in m}
    b = {m["step"]: m["reward/mean"] for m in read_metrics(resumed.run_dir) if "reward/mean" in m}
    assert a == b and sorted(b) == [1, 2, 3, 4]
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n


def test_vmr_alternates_prefix_and_suffix_rollouts(tmp_path):
    mods = [{"use": "var_mask", "args": {"source": "boxes", "alpha": 0.7}},
            {"use": "var_vmr", "args": {"split": 2, "k": 2, "prefix_steps": 3, "suffix_steps": 1}}]
    t = VarTrainer(_recipe(tmp_path, run={"steps": 5}, modifiers=mods), ROOT)
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "rollout/stage" in m]
    assert [m["rollout/stage"] for m in rows] == [1, 1, 1, 2, 1]            # prefix ×3, suffix, prefix
    assert [m["rollout/rows"] for m in rows] == [64, 64, 64, 32, 64]        # B·G·K on prefix steps, B·G on suffix
    for m in rows:
        w = [m[f"algo/scale_weight/{s}"] for s in range(4)]
        if m["rollout/stage"] == 1:   # prefix steps train scales < 2 only, suffix steps scales ≥ 2 only
            assert w[2] == w[3] == 0 and w[0] > 0
            assert m["mod/var_vmr/value_gap"] >= 0
        else:
            assert w[0] == w[1] == 0 and w[3] > 0


def test_cli_validates_and_trains(tmp_path):
    v = subprocess.run([sys.executable, "-m", "rltune.cli", "validate", "recipes/var-tiny.yaml",
                        "recipes/var-d16-mp.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.count("ok") == 2, v.stdout + v.stderr
    out = tmp_path / "cli"
    t = subprocess.run([sys.executable, "-m", "rltune.cli", "train", "recipes/var-tiny.yaml", "run.steps=3",
                        f"run.output_dir={out}", "logging.console=false"], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert t.returncode == 0, t.stdout + t.stderr
    assert len([m for m in read_metrics(out) if "reward/mean" in m]) == 3 and (out / "final" / "model.safetensors").is_file()


def test_bench_ordering_on_two_seeds(tmp_path):
    """Spec §1.8 item 5: the mean reward over 80 steps orders vanilla < +PANW < +PANW+MP (bench/var_mp.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import var_mp

    auc = {v: [] for v in var_mp.ORDER}
    for seed in range(2):
        for v in var_mp.ORDER:
            curve, _, _ = var_mp.run(v, seed, 80, tmp_path, 1)
            auc[v].append(sum(curve) / len(curve))
    for s in range(2):
        assert auc["vanilla"][s] < auc["reweight"][s] < auc["reweight+mask"][s], auc


def test_shared_update_counts_optimizer_steps_and_honours_loss_scale_constant(tmp_path):
    """VAR runs the text trainer's run_update: 2 epochs × 2 mini-batches are 4 optimizer steps (the old VAR loop
    divided the count by the mini-batches and logged 1.0), and algo.loss_scale_constant scales the loss."""
    algo = {"ppo_epochs": 2, "mini_batches": 2, "loss_agg": "seq-mean-token-sum-norm"}
    last = build_trainer(_recipe(tmp_path, "a", run={"steps": 1}, algo=algo), ROOT).fit()
    assert last["train/optimizer_steps"] == 4.0 and "train/skipped_step" not in last
    half = build_trainer(_recipe(tmp_path, "b", run={"steps": 1}, algo=algo | {"loss_scale_constant": 170}),
                         ROOT).fit()
    # T = 1 + 4 + 16 + 64 = 85 tokens per row: a constant of 170 halves the first mini-batch's loss
    assert half["loss/policy"] == pytest.approx(last["loss/policy"] / 2, rel=0.2)


def test_six_steps_match_the_numbers_of_the_var_trainers_own_step(tmp_path):
    """VAR runs the one Trainer.train_step (rltune/trainer.py) with the VAR family; before that it had a step of its
    own. 6 steps with 2 epochs × 2 mini-batches and a KL term, pinned to what the old step gave (torch 2.x, CPU,
    one thread): the parameter sum and the logged loss/KL of each step."""
    algo = {"ppo_epochs": 2, "mini_batches": 2, "kl_coef": 0.05}
    t = build_trainer(_recipe(tmp_path, run={"steps": 6}, algo=algo), ROOT)
    t.fit()
    total = float(sum(p.detach().double().sum() for p in t.model.parameters() if p.requires_grad))
    assert total == pytest.approx(0.27277786954073235, abs=1e-6)
    rows = [m for m in read_metrics(t.run_dir) if "loss/policy" in m]
    assert [m["loss/policy"] for m in rows] == pytest.approx(
        [-0.009179096195079728, -0.009483928096425898, -0.00888139402274657, -0.00741407654303039,
         -0.0067159749231957555, -0.009084970069884513], abs=1e-6)
    assert rows[-1]["algo/kl"] == pytest.approx(0.028848598711192608, abs=1e-6)
    assert rows[-1]["train/optimizer_steps"] == 4.0 and rows[-1]["algo/kl_coef"] == 0.05
