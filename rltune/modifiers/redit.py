"""ReDit: reward dithering (Wei et al., "ReDit: Reward Dithering for Improved LLM Policy Optimization",
arXiv 2506.18631, NeurIPS 2025); docs/modifiers.md, ReDit.

Discrete rule-based rewards (0/1 correctness) give flat groups with zero gradient and rare jumps with gradient
spikes. ReDit adds zero-mean noise to every response's scalar reward before the advantage estimator:

    r̃_i = r_i + ε_i,  ε_i ~ N(0, σ²) (Gaussian, default)  or  ε_i ~ U(−a, a), a = σ·√3 (same variance)

with σ = sigma·(reward_range[1] − reward_range[0]). One draw per response per step (never per token) from
``StepState.generator``, so a draw is fixed by (seed, step, rank). The raw reward stays untouched in the
context: the trainer keeps it for logging and filtering, and ADHint's difficulty uses it (docs/algorithms.md).

Paper-faithful as far as known: Gaussian, constant σ. [INFERRED]: the reward-range scaling of σ, the
``linear_decay``/``cosine_decay`` schedules (the paper ablates schedules but which ones is unconfirmed) and
``flat_group_scale`` (under GRPO's std division a flat group's advantage (ε−ε̄)/std(ε) has unit scale whatever
σ is; < 1 shrinks that noise, 1.0 = the paper).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

from rltune.algo.advantages import flat_group_frac, flat_groups
from rltune.modifiers.base import Modifier, RewardContext

__all__ = ["ReDit", "dither", "scheduled_sigma", "draw_noise"]

_SALT = 0x5ED17  # keeps ReDit's stream apart from other modifiers' draws at the same (seed, step, rank)


def dither(rewards: Tensor, eps: Tensor, group_id: Tensor | None = None, flat_group_scale: float = 1.0) -> Tensor:
    """r̃ = r + ε, with ε multiplied by ``flat_group_scale`` on rows of flat groups (needs ``group_id``).

    Shapes: rewards [N] (NaN = unscorable, stays NaN), eps [N], group_id [N] -> [N]. Pure; inputs untouched.
    """
    if eps.shape != rewards.shape:
        raise ValueError(f"eps {tuple(eps.shape)} must match rewards {tuple(rewards.shape)}")
    eps = eps.to(rewards.dtype)
    if flat_group_scale != 1.0:
        if group_id is None:
            raise ValueError("flat_group_scale != 1 needs group_id")
        eps = torch.where(flat_groups(rewards, group_id), eps * flat_group_scale, eps)
    return rewards + eps


def scheduled_sigma(sigma_abs: float, schedule: str, step: int, total_steps: int) -> float:
    """σ at ``step`` (0-based) of ``total_steps``: constant, or decayed towards 0 linearly / by half a cosine.
    [INFERRED] schedule shapes; with total_steps ≤ 0 every schedule is constant."""
    if schedule == "constant" or total_steps <= 0:
        return sigma_abs
    frac = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "linear_decay":
        return sigma_abs * (1.0 - frac)
    if schedule == "cosine_decay":
        return sigma_abs * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {schedule!r}")


def draw_noise(n: int, sigma: float, distribution: str, generator: torch.Generator) -> Tensor:
    """[n] float64 zero-mean noise with standard deviation ``sigma`` (uniform: half-width σ·√3)."""
    if distribution == "gaussian":
        return torch.randn(n, generator=generator, dtype=torch.float64) * sigma
    if distribution == "uniform":
        a = sigma * math.sqrt(3.0)
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * a
    raise ValueError(f"unknown distribution {distribution!r}")


class ReDit(Modifier):
    """Reward dithering (hook ``shape_rewards``).

    Args:
        sigma: noise std relative to the reward range (0.05 → σ = 0.05 for {0,1} rewards). 0 = off.
        distribution: ``"gaussian"`` (default, "often best" per the paper) or ``"uniform"`` (a = σ√3).
        reward_range: (min, max) of the raw reward; σ_abs = sigma·(max − min).
        schedule: ``"constant"`` (paper), ``"linear_decay"`` or ``"cosine_decay"`` over ``run.steps``.
        flat_group_scale: multiplies the noise of groups whose raw reward is constant (1.0 = paper).
    Metrics (mod/<name>/): ``sigma`` (absolute σ this step), ``noise_std`` (std of the noise added to
    scorable rows), ``flat_group_frac`` (fraction of groups with a constant raw reward).
    """

    def __init__(self, sigma: float = 0.05, distribution: Literal["gaussian", "uniform"] = "gaussian",
                 reward_range: Sequence[float] = (0.0, 1.0),
                 schedule: Literal["constant", "linear_decay", "cosine_decay"] = "constant",
                 flat_group_scale: float = 1.0):
        if sigma < 0 or flat_group_scale < 0:
            raise ValueError(f"sigma ({sigma}) and flat_group_scale ({flat_group_scale}) must be >= 0")
        if distribution not in ("gaussian", "uniform"):
            raise ValueError(f"distribution must be 'gaussian' or 'uniform', got {distribution!r}")
        if schedule not in ("constant", "linear_decay", "cosine_decay"):
            raise ValueError(f"schedule must be constant, linear_decay or cosine_decay, got {schedule!r}")
        lo, hi = (float(x) for x in reward_range)
        if not hi > lo:
            raise ValueError(f"reward_range must be (min, max) with max > min, got {tuple(reward_range)}")
        self.sigma, self.distribution, self.schedule = float(sigma), distribution, schedule
        self.reward_range, self.flat_group_scale = (lo, hi), float(flat_group_scale)
        self._metrics: dict[str, float] = {}

    def shape_rewards(self, rewards: Tensor, ctx: RewardContext) -> Tensor:
        st = ctx.state
        sigma = scheduled_sigma(self.sigma * (self.reward_range[1] - self.reward_range[0]), self.schedule,
                                st.step, st.total_steps)
        gid = ctx.batch.group_id
        flat = flat_groups(ctx.raw_rewards.double(), gid)
        self._metrics = {"sigma": sigma, "flat_group_frac": flat_group_frac(ctx.raw_rewards, gid)}
        if sigma == 0.0:
            self._metrics["noise_std"] = 0.0
            return rewards.clone()
        eps = draw_noise(rewards.shape[0], sigma, self.distribution, st.generator(_SALT))
        # Flatness is judged on the raw reward (docs/algorithms.md), even if an earlier modifier shaped `rewards`.
        eps = torch.where(flat, eps * self.flat_group_scale, eps)
        out = dither(rewards.double(), eps).to(rewards.dtype)
        ok = ~torch.isnan(rewards)
        self._metrics["noise_std"] = float(eps[ok].std()) if int(ok.sum()) > 1 else 0.0
        return out

    def on_step_end(self, metrics: dict[str, float], state) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

