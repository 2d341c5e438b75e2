"""DDPO (policy gradient over DDIM steps): the step log-prob against torch.distributions and the closed form from
the recorded noise; the on-policy clipped surrogate's value and gradient direction."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_helpers import tiny_policy

from rltune.modifiers.base import StepState
from rltune.modifiers.ddpo import DDPO, ddim_logprob, ddim_std
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


def _ctx(pol, adv, step=0):
    ro = pol.rollout(["a", "b"], torch.Generator().manual_seed(step))
    return DiffusionLossContext(torch.arange(2), ro, pol, None, (), torch.zeros(2), StepState(step=step, seed=0),
                                total_rows=2, advantages=adv)


def test_on_policy_surrogate_value_and_gradient_sign():
    pol = tiny_policy("ddim", steps=3, eta=1.0)
    adv = torch.tensor([[9.0, 2.0, 7.0], [-1.0, 0.5, -0.5]])       # 9 is clipped to adv_clip = 5
    mod = DDPO()
    loss = mod.extra_loss(_ctx(pol, adv))["loss"]
    # ratio 1: −mean(A) over rows and the 2 stochastic steps (the last one, ᾱ_prev = 1, is deterministic)
    assert loss.item() == pytest.approx(-(5 + 2 - 1 + 0.5) / 2 / 2, abs=1e-6)
    assert mod.on_step_end({}, None) == {"clip_frac": 0.0, "trained_steps": 2.0}
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
