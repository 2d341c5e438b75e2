"""DDPO: the policy-gradient path for diffusion policies (Black et al., arXiv 2305.13301), as a modifier.

A DDIM chain with eta > 0 is a sequence of Gaussian transitions x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), so each
denoising step is an "action" with a log-probability. With advantages A [N,T] from the trainer's estimator
(group_norm over the G images of a prompt: DDPO's per-prompt normalisation), the loss is PPO's clipped
surrogate per step (rltune.algo.ppo_clip_loss), averaged over the trained steps. It sits next to the
reward-backprop modifiers: `modifiers: [{use: ddpo}, {use: alignprop}]` adds both losses.

On-policy, one update per rollout: the old log-prob is the current one detached (ratio 1, gradient A·∇logp), as
the text trainer does for a single update. Flow (ODE) rollouts have no transition density: use scheduler ddim
with eta > 0 (Flow-GRPO's SDE sampler is not implemented).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rltune.algo import ppo_clip_loss
from rltune.models.diffusion import ddim_step
from rltune.modifiers.base import Modifier

__all__ = ["DDPO", "ddim_logprob", "ddim_std"]

_SALT = 0xDD90


def ddim_std(a_t: float | Tensor, a_prev: float | Tensor, eta: float) -> Tensor:
    """σ of a DDIM step: η√((1−ᾱ_prev)/(1−ᾱ_t))√(1−ᾱ_t/ᾱ_prev). 0 for the last step when ᾱ_prev = 1
    (set_alpha_to_one): that step is deterministic and has no log-prob."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=torch.float32), torch.as_tensor(a_prev, dtype=torch.float32)
    return eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()


def ddim_logprob(x_prev: Tensor, x: Tensor, eps: Tensor, a_t: float | Tensor, a_prev: float | Tensor,
                 eta: float) -> Tensor:
    """log N(x_prev; μ, σ²I) of one DDIM step (eq. 12 mean, σ = η√((1−ᾱ_prev)/(1−ᾱ_t))√(1−ᾱ_t/ᾱ_prev)), averaged
    over the C·H·W elements as DDPO does. x_prev, x, eps: [N,C,H,W] -> [N]."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=x.dtype), torch.as_tensor(a_prev, dtype=x.dtype)
    mean = ddim_step(x, eps, a_t, a_prev, eta, torch.zeros_like(x))
    std = ddim_std(a_t, a_prev, eta).to(x.dtype)
    lp = -((x_prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


class DDPO(Modifier):
    """DDPO-IS (PPO clip per denoising step). Defaults are the DDPO paper's: clip 1e-4, advantages clipped to ±5,
    every stochastic timestep trained (`timestep_fraction` < 1 trains a random subset, drawn per step and
    micro-batch; a deterministic last step, ᾱ_prev = 1, has no density and is skipped)."""

    requires = frozenset({"images"})

    def __init__(self, clip_range: float = 1e-4, adv_clip: float = 5.0, timestep_fraction: float = 1.0,
                 coef: float = 1.0):
        if not 0 < timestep_fraction <= 1:
            raise ValueError(f"ddpo timestep_fraction must be in (0, 1], got {timestep_fraction}")
        self.clip_range, self.adv_clip, self.fraction, self.coef = clip_range, adv_clip, timestep_fraction, coef
        self._metrics: dict[str, float] = {}

    def extra_loss(self, ctx: Any) -> dict[str, Tensor]:
        from rltune.visual.diffusion_context import DiffusionLossContext

        if not isinstance(ctx, DiffusionLossContext):
            raise TypeError(f"{type(self).__name__} runs in the diffusion trainer only (got {type(ctx).__name__}); "
                            "`rltune validate` refuses it for other model.kind values")
        pol, ro = ctx.policy, ctx.rollout
        if pol.kind != "ddim" or ro.step_noise is None or ctx.advantages is None:
            raise ValueError("ddpo needs a stochastic DDIM rollout (model.diffusion.scheduler: ddim, eta > 0) and "
                             "advantages from the trainer")
        stochastic = [i for i in range(pol.num_steps) if ddim_std(pol.alphas[i], pol.alphas_prev[i], ro.eta) > 0]
        g = ctx.state.generator(_SALT + int(ctx.rows[0]))
        pick = torch.randperm(len(stochastic), generator=g)[: max(1, round(self.fraction * len(stochastic)))]
        steps = sorted(stochastic[j] for j in pick.tolist())
        adv = ctx.advantages.to(ro.latents.device).clamp(-self.adv_clip, self.adv_clip)     # [n,T]
        total, clipped = 0.0, 0.0
        for i in steps:
            eps = pol.predict(ro.latents[i], pol.timesteps[i], ro.cond, ro.uncond)          # with grad
            lp = ddim_logprob(ro.latents[i + 1], ro.latents[i], eps, pol.alphas[i], pol.alphas_prev[i], ro.eta)
            loss, clip = ppo_clip_loss(lp[:, None], lp.detach()[:, None], adv[:, i:i + 1], self.clip_range,
                                       self.clip_range)
            total = total + loss.sum() / ctx.total_rows / len(steps)
            clipped += float(clip.float().mean()) / len(steps)
        self._metrics = {"clip_frac": clipped, "trained_steps": float(len(steps))}
        return {"loss": total * self.coef}

    def on_step_end(self, metrics: dict[str, float], state: Any) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out
