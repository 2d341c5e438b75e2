"""DDPO (policy gradient over DDIM steps): the step log-prob against torch.distributions and the closed form from
the recorded noise; the sampling-time log-probs as the old policy (the ratio moves after an update, the clip
binds); the clipped surrogate's value and gradient direction; per-prompt statistics (hand-computed) and their
checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_helpers import tiny_policy

from rltune.modifiers.base import StepState
from rltune.modifiers.ddpo import DDPO, PerPromptStats, ddim_logprob, ddim_std
from rltune.visual.diffusion_context import DiffusionLossContext


def test_logprob_matches_normal_and_recorded_noise():
    pol = tiny_policy("ddim", steps=4, eta=1.0)
    ro = pol.rollout(["a", "b"], torch.Generator().manual_seed(0))
    assert ddim_std(pol.alphas[3], pol.alphas_prev[3], 1.0) == 0     # tiny schedule: ᾱ_prev = 1 at the end
    for i in range(3):
        x, xp = ro.latents[i], ro.latents[i + 1]
        eps = pol.predict(x, pol.timesteps[i], None, grad=False)
        a_t, a_p = pol.alphas[i], pol.alphas_prev[i]
        lp = ddim_logprob(xp, x, eps, a_t, a_p, 1.0)
        std = ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).sqrt()
        mean = xp - std * ro.step_noise[i]                       # the rollout drew x_prev = mean + σ z
        ref = torch.distributions.Normal(mean, std).log_prob(xp).flatten(1).mean(1)
        assert torch.allclose(lp, ref, atol=1e-4)
        closed = -(ro.step_noise[i] ** 2).flatten(1).mean(1) / 2 - std.log() - 0.5 * math.log(2 * math.pi)
        assert torch.allclose(lp, closed, atol=1e-4)


def _ctx(pol, adv, step=0, ro=None, epoch=0):
    ro = ro if ro is not None else pol.rollout(["a", "b"], torch.Generator().manual_seed(step))
    return DiffusionLossContext(torch.arange(2), ro, pol, None, (), torch.zeros(2), StepState(step=step, seed=0),
                                total_rows=2, advantages=adv, epoch=epoch)


def test_on_policy_surrogate_value_and_gradient_sign():
    pol = tiny_policy("ddim", steps=3, eta=1.0)
    adv = torch.tensor([[9.0, 2.0, 7.0], [-1.0, 0.5, -0.5]])       # 9 is clipped to adv_clip = 5
    mod = DDPO()
    loss = mod.extra_loss(_ctx(pol, adv))["loss"]
    # ratio 1: −mean(A) over rows and the 2 stochastic steps (the last one, ᾱ_prev = 1, is deterministic)
    assert loss.item() == pytest.approx(-(5 + 2 - 1 + 0.5) / 2 / 2, abs=1e-6)
    m = mod.on_step_end({}, None)
    assert m["clip_frac"] == 0.0 and m["trained_steps"] == 2.0 and m["ratio_dev"] < 1e-5 and m["approx_kl"] < 1e-10
    grads = []
    for sign in (1.0, -1.0):
        for _, p in pol.trainable():
            p.grad = None
        DDPO().extra_loss(_ctx(pol, sign * adv))["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in pol.trainable() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], -grads[1], atol=1e-7)


def test_timestep_fraction_and_wrong_rollouts():
    pol = tiny_policy("ddim", steps=4, eta=1.0)
    mod = DDPO(timestep_fraction=0.5)
    mod.extra_loss(_ctx(pol, torch.ones(2, 4)))
    assert mod.on_step_end({}, None)["trained_steps"] == 2.0      # round(0.5 · 3 stochastic steps)
    with pytest.raises(ValueError, match="stochastic DDIM"):
        DDPO().extra_loss(_ctx(tiny_policy("flow", steps=2), torch.ones(2, 2)))


def test_rollout_records_the_sampling_logprobs():
    pol = tiny_policy("ddim", steps=4, eta=1.0)
    ro = pol.rollout(["a", "b", "c"], torch.Generator().manual_seed(1))
    assert ro.logprobs.shape == (4, 3) and ro.rows(torch.tensor([2, 0])).logprobs.shape == (4, 2)
    for i in range(3):   # x_prev = μ + σ z, so log N(x_prev; μ, σ²) = −z²/2 − log σ − ½ log 2π per element
        std = ddim_std(pol.alphas[i], pol.alphas_prev[i], 1.0)
        closed = -(ro.step_noise[i] ** 2).flatten(1).mean(1) / 2 - std.log() - 0.5 * math.log(2 * math.pi)
        assert torch.allclose(ro.logprobs[i], closed, atol=1e-4)
    assert ro.logprobs[3].abs().max() == 0                                  # deterministic last step: no density
    assert pol.rollout(["a"], torch.Generator().manual_seed(1), eta=0.0).logprobs is None


def test_old_policy_is_the_sampler_ratio_moves_and_clip_binds():
    # Two inner updates on one rollout. The first sees ratio 1 (same weights as the sampler); after an optimizer
    # step the ratio moves and, with DDPO's clip 1e-4, the clip binds. With the old log-prob taken as the current
    # one detached (the previous behaviour) the ratio stayed exactly 1 and clip_frac 0 at every update.
    pol = tiny_policy("ddim", steps=3, eta=1.0)
    opt = torch.optim.SGD([p for _, p in pol.trainable()], lr=1e-2)
    ro = pol.rollout(["a", "b"], torch.Generator().manual_seed(0))
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mod, seen = DDPO(), []
    for epoch in range(2):
        opt.zero_grad()
        mod.extra_loss(_ctx(pol, adv, ro=ro, epoch=epoch))["loss"].backward()
        opt.step()
        seen.append(mod.on_step_end({}, None))
    assert seen[0]["ratio_dev"] < 1e-5 and seen[0]["clip_frac"] == 0.0
    # clip_frac: the (image, step) pairs left without gradient (A > 0 with ratio > 1 + ε, or A < 0 below 1 − ε)
    assert seen[1]["ratio_dev"] > 1e-3 and seen[1]["clip_frac"] >= 0.25 and seen[1]["approx_kl"] > 0
    wide = DDPO(clip_range=10.0)
    wide.extra_loss(_ctx(pol, adv, ro=ro, epoch=1))
    assert wide.on_step_end({}, None)["clip_frac"] == 0.0


def test_per_prompt_stats_hand_computed():
    t = PerPromptStats(buffer=4, min_count=3)
    # step 1: buffers a [1,3], b [5,7] are below min_count -> batch mean 4, std √5 (ddof 0)
    adv, own = t.update(["a", "a", "b", "b"], torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert adv.tolist() == pytest.approx([-1.341640, -0.447214, 0.447214, 1.341640], abs=1e-6) and own == 0.0
    # step 2: a [1,3,2,6]: mean 3, std √3.5; b [5,7,5,5]: mean 5.5, std √0.75
    adv, own = t.update(["a", "a", "b", "b"], torch.tensor([2.0, 6.0, 5.0, 5.0]))
    assert adv.tolist() == pytest.approx([-0.534522, 1.603567, -0.577350, -0.577350], abs=1e-6) and own == 1.0
    # step 3: a keeps its last 4 [3,2,6,4]: mean 3.75, std √2.1875; c (one value) falls back to the batch [4, 0];
    # the NaN row is neither recorded nor trained (A = 0)
    sd = t.state_dict()
    adv, own = t.update(["a", "c", "c"], torch.tensor([4.0, 0.0, float("nan")]))
    assert adv.tolist() == pytest.approx([0.169031, -1.0, 0.0], abs=1e-6) and own == 0.5
    assert list(t.stats["a"]) == [3.0, 2.0, 6.0, 4.0] and list(t.stats["c"]) == [0.0]
    # restored from its state (as on resume), the tracker gives the same numbers
    t2 = PerPromptStats(buffer=4, min_count=3)
    t2.load_state_dict(sd)
    assert t2.update(["a", "c", "c"], torch.tensor([4.0, 0.0, float("nan")]))[0].tolist() == adv.tolist()


def test_ddpo_advantages_and_checkpointed_tracker(tmp_path):
    from rltune.train.state_io import load_state, save_state
    from rltune.visual.diffusion_context import DiffusionAdvantageContext

    def ctx(prompts, r):
        return DiffusionAdvantageContext(prompts, torch.tensor(r), torch.arange(len(r)), StepState(step=0, seed=0))

    mod = DDPO(stats_buffer=4, stats_min_count=3)
    inc = torch.zeros(4, 5)
    out = mod.shape_advantages(inc, ctx(["a", "a", "b", "b"], [1.0, 3.0, 5.0, 7.0]))
    assert out.shape == (4, 5) and out[:, 3].tolist() == pytest.approx([-1.341640, -0.447214, 0.447214, 1.341640],
                                                                         abs=1e-6)
    save_state({"modifiers": {"ddpo": mod.state_dict()}}, tmp_path)   # the checkpoint's safe format
    resumed = DDPO(stats_buffer=4, stats_min_count=3)
    resumed.load_state_dict(load_state(tmp_path)["modifiers"]["ddpo"])
    step2 = ctx(["a", "a", "b", "b"], [2.0, 6.0, 5.0, 5.0])
    a, b = mod.shape_advantages(inc, step2), resumed.shape_advantages(inc, step2)
    assert torch.equal(a, b) and a[:, 0].tolist() == pytest.approx([-0.534522, 1.603567, -0.577350, -0.577350],
                                                                   abs=1e-6)
    assert DDPO(per_prompt_stats=False).shape_advantages(inc + 2, step2).eq(2).all()   # the trainer's estimator
    with pytest.raises(ValueError, match="stats_min_count"):
        DDPO(stats_buffer=4, stats_min_count=8)
