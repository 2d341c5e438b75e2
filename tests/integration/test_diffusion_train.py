"""End-to-end reward backprop on the tiny pre-trained denoisers of the shipped CPU recipes: AlignProp raises
redness through LoRA only, Direct-Align/SRPO raises it through the relative CLIP-style reward; runs resume exactly,
stop on a signal with a checkpoint, and follow the run-directory rules.

The first test of each scheduler pre-trains its tiny UNet (≈ 40 s on one free core; cached under $RLTUNE_CACHE,
default ~/.cache/rltune, keyed by the config hash)."""

from __future__ import annotations

import signal

import pytest
import torch

from rltune.config.load import load_recipe
from rltune.logging import read_metrics
from rltune.modifiers.pipeline import ModifierError
from rltune.trainer import RunDirError, build_trainer
from tests.conftest import ROOT

ALIGNPROP = ROOT / "recipes" / "diffusion-tiny-alignprop.yaml"
DIRECT = ROOT / "recipes" / "diffusion-tiny-direct-align.yaml"


def _trainer(path, tmp_path, *over, **kw):
    r = load_recipe(path, [f"run.output_dir={tmp_path / 'run'}", "run.threads=1", "logging.console=false", *over])
    return build_trainer(r, ROOT, **kw)


def _eval(run_dir, key="eval/reward/redness"):
    rows = [m for m in read_metrics(run_dir) if key in m]
    return rows[0][key], rows[-1][key]


def test_alignprop_raises_reward_and_trains_lora_only(tmp_path):
    t = _trainer(ALIGNPROP, tmp_path, "run.steps=30", "run.eval_interval=null")
    before = {n: p.detach().clone() for n, p in t.model.denoiser.named_parameters()}
    t.fit()
    first, last = _eval(t.run_dir)
    assert last > first + 0.5, (first, last)              # redness ∈ [−2, 2]; spec §2.5: 0.209 -> 1.939
    after = dict(t.model.denoiser.named_parameters())
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and any(not torch.equal(before[n], after[n]) for n in lora_b)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    m = read_metrics(t.run_dir)[-1]
    for key in ("time/rollout", "time/reward", "time/update", "loss/alignprop/loss", "mod/alignprop/grad_steps",
                "train/grad_norm", "reward/redness/mean"):
        assert key in m, key
    assert (t.run_dir / "final" / "denoiser_trained.safetensors").is_file()


def test_direct_align_srpo_raises_reward(tmp_path):
    t = _trainer(DIRECT, tmp_path, "run.steps=40", "run.eval_interval=null")
    before = [p.detach().clone() for _, p in t.model.trainable()]
    t.fit()
    first, last = _eval(t.run_dir)
    assert last > first + 0.8, (first, last)              # held-out redness (weight 0); spec §3.5: 0.176 -> 1.784
    m = read_metrics(t.run_dir)
    assert all("mod/direct_align/score_inversion" in r for r in m[1:])
    assert sum(not torch.equal(a, b) for a, (_, b) in zip(before, t.model.trainable())) > len(before) // 2


def test_resume_is_exact_and_signal_checkpoints(tmp_path):
    straight = _trainer(ALIGNPROP, tmp_path / "a", "run.steps=4", "run.eval_interval=null")
    straight.fit()
    part = _trainer(ALIGNPROP, tmp_path / "b", "run.steps=4", "run.eval_interval=null")
    step = part.train_step

    def interrupted():
        out = step()
        if part.step == 1:                                 # after the 2nd step: as if Ctrl-C arrived
            signal.raise_signal(signal.SIGINT)
        return out

    part.train_step = interrupted
    part.fit()
    assert part.stopped_by == "SIGINT" and part.step == 2
    assert (part.ckpt_root / "step_000002").is_dir() and not (part.run_dir / "final").exists()
    with pytest.raises(RunDirError, match="already holds a run"):
        _trainer(ALIGNPROP, tmp_path / "b", "run.steps=4")
    resumed = _trainer(ALIGNPROP, tmp_path / "b", "run.steps=4", "run.eval_interval=null", resume=True)
    assert resumed.step == 2
    resumed.fit()
    for (n, a), (_, b) in zip(straight.model.trainable(), resumed.model.trainable()):
        assert torch.equal(a, b), n
    assert [r["step"] for r in read_metrics(resumed.run_dir) if "reward/mean" in r] == [1, 2, 3, 4]


def test_wiring_errors_are_named(tmp_path):
    with pytest.raises(ModifierError, match="alignprop"):
        _trainer(ALIGNPROP, tmp_path / "x", "model.diffusion.tiny.pretrain_steps=0", "modifiers=[]")
    with pytest.raises(ModifierError, match="not differentiable"):
        _trainer(ALIGNPROP, tmp_path / "y", "model.diffusion.tiny.pretrain_steps=0",
                 'rewards=[{"use": "jpeg_compressibility"}]')


def test_ddpo_policy_gradient_beside_alignprop(tmp_path):
    t = _trainer(ALIGNPROP, tmp_path, "run.steps=3", "run.eval_interval=null", "rollout.prompts_per_step=2",
                 "rollout.samples_per_prompt=2", "algo.ppo_epochs=2", 'modifiers=[{"use": "ddpo", "args": '
                 '{"timestep_fraction": 0.5, "stats_buffer": 4, "stats_min_count": 4}}, '
                 '{"use": "alignprop", "args": {"truncation": "fixed"}}]')
    t.fit()
    m = [r for r in read_metrics(t.run_dir) if "reward/mean" in r]
    assert len(m) == 3
    for r in m:
        # round(0.5 · 9): the last of the 10 DDIM steps (ᾱ_prev = 1) is deterministic and has no log-prob
        assert r["mod/ddpo/trained_steps"] == 4.0 and "loss/alignprop/loss" in r and "time/advantage" in r
        assert r["loss/total"] == pytest.approx(r["loss/ddpo/loss"] + r["loss/alignprop/loss"], abs=1e-6)
        # two inner epochs: the second update's ratio is off 1 (old policy = the sampler)
        assert r["train/optimizer_steps"] == 2.0 and r["mod/ddpo/ratio_dev"] > 0
    # 2 prompts × 2 images a step: the buffers (min count 4) are the prompts' own from the 2nd visit on
    assert m[0]["mod/ddpo/adv_from_prompt_stats_frac"] == 0.0
    # the tracker's buffers are in the checkpoint, as the run left them
    from rltune.train import checkpoint as ckpt

    saved = ckpt.load_state(t.ckpt_root / "step_000003")["modifiers"]["ddpo"]["stats"]
    assert saved == t.mods.state_dict()["ddpo"]["stats"] and sum(len(v) for v in saved["rewards"]) > 0
    with pytest.raises(ModifierError, match="per-prompt advantages"):
        _trainer(ALIGNPROP, tmp_path / "x", "algo.advantage=rloo", 'modifiers=[{"use": "ddpo"}]')


def test_diffusion_update_is_invariant_to_the_micro_batch_size(tmp_path):
    """2 mini-batches of 2 images, split into micro-batches of 1 or of 2: the same optimizer steps (DDPO's loss
    is a sum over rows divided by the mini-batch's row count; all timesteps, so no draw differs)."""
    params, norms = [], []
    for mb in (1, 2):
        t = _trainer(ALIGNPROP, tmp_path / f"mb{mb}", "run.steps=2", "run.eval_interval=null",
                     "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "algo.mini_batches=2",
                     f"train.micro_batch_size={mb}", 'modifiers=[{"use": "ddpo", "args": {"timestep_fraction": 1.0}}]')
        t.fit()
        m = [r for r in read_metrics(t.run_dir) if "reward/mean" in r]
        assert [r["train/optimizer_steps"] for r in m] == [2.0, 2.0]
        norms.append([r["train/grad_norm"] for r in m])  # before clipping: a wrongly scaled loss shows here
        params.append([p.detach().clone() for _, p in t.model.trainable()])
    assert len(params[0]) > 0 and norms[0] == pytest.approx(norms[1], rel=1e-5)
    for a, b in zip(*params):  # Adam divides by sqrt(v): a near-zero gradient's rounding moves its update by ~1% of lr
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
