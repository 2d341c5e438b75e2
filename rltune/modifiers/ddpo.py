"""DDPO: the policy-gradient path for diffusion policies (Black et al., arXiv 2305.13301), as a modifier.

A DDIM chain with eta > 0 is a sequence of Gaussian transitions x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), so each
denoising step is an "action" with a log-probability. The loss is PPO's clipped surrogate per step
(rltune.algo.ppo_clip_loss), averaged over the trained steps. It sits next to the reward-backprop modifiers:
`modifiers: [{use: ddpo}, {use: alignprop}]` adds both losses.

As in the paper's code (ddpo-pytorch): the old policy is the sampler, whose per-step log-probs the rollout records
while sampling (`Rollout.logprobs`), so with `algo.ppo_epochs` / `algo.mini_batches` > 1 the ratio moves away from 1
after the first update and the clip binds. Advantages come from per-prompt statistics: each prompt keeps a buffer
of its last `stats_buffer` rewards (across steps); with at least `stats_min_count` of them A = (r − mean)/(std +
1e-6) over the buffer, below that over the whole batch (DDPO's fallback; np.std, ddof 0). `per_prompt_stats:
false` takes the trainer's estimator (`algo.advantage`) instead. Flow (ODE) rollouts have no transition density:
use scheduler ddim with eta > 0 (Flow-GRPO's SDE sampler is not implemented).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from rltune.algo import ppo_clip_loss
from rltune.models.diffusion import ddim_logprob, ddim_std
from rltune.modifiers.base import Modifier

__all__ = ["DDPO", "PerPromptStats", "ddim_logprob", "ddim_std"]

_SALT = 0xDD90


class PerPromptStats:
    """DDPO's per-prompt reward statistics (arXiv 2305.13301 §5; ddpo-pytorch stat_tracking.py semantics).

    `update(prompts [N], rewards [N])` appends each prompt's rewards to its buffer (the last `buffer` values,
    kept across steps), then returns advantages [N] float64: (r − mean)/(std + eps) over the prompt's buffer when it
    holds ≥ `min_count` values, else over the whole batch. NaN rewards (unscorable) are not recorded and get 0."""

    def __init__(self, buffer: int = 16, min_count: int = 16, eps: float = 1e-6):
        self.buffer, self.min_count, self.eps = buffer, min_count, eps
        self.stats: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: Tensor) -> tuple[Tensor, float]:
        """-> (advantages [N] float64, fraction of rows normalised by their prompt's own buffer)."""
        r = rewards.detach().double().cpu()
        ok = ~torch.isnan(r)
        out = torch.zeros_like(r)
        if not ok.any():
            return out, 0.0
        batch_mean, batch_std = r[ok].mean(), r[ok].std(unbiased=False)
        own = 0
        for p in dict.fromkeys(prompts):   # first-appearance order: deterministic
            rows = torch.tensor([i for i, q in enumerate(prompts) if q == p and bool(ok[i])], dtype=torch.long)
            buf = self.stats.setdefault(p, deque(maxlen=self.buffer))
            buf.extend(r[rows].tolist())
            if len(buf) >= self.min_count:
                vals = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = vals.mean(), vals.std(unbiased=False)
                own += len(rows)
            else:
                mean, std = batch_mean, batch_std
            out[rows] = (r[rows] - mean) / (std + self.eps)
        return out, own / int(ok.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"prompts": list(self.stats), "rewards": [list(v) for v in self.stats.values()]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.stats = {p: deque((float(x) for x in v), maxlen=self.buffer) for p, v in zip(sd["prompts"], sd["rewards"])}


class DDPO(Modifier):
    """DDPO-IS (PPO clip per denoising step). Defaults are the DDPO paper's: clip 1e-4, advantages clipped to ±5,
    every stochastic timestep trained (`timestep_fraction` < 1 trains a random subset, drawn per step, inner epoch
    and micro-batch; a deterministic last step, ᾱ_prev = 1, has no density and is skipped), per-prompt stat
    tracking with a buffer of 16 and a minimum count of 16."""

    requires = frozenset({"images"})

    def __init__(self, clip_range: float = 1e-4, adv_clip: float = 5.0, timestep_fraction: float = 1.0,
                 coef: float = 1.0, per_prompt_stats: bool = True, stats_buffer: int = 16,
                 stats_min_count: int = 16):
        if not 0 < timestep_fraction <= 1:
            raise ValueError(f"ddpo timestep_fraction must be in (0, 1], got {timestep_fraction}")
        if stats_buffer < 1 or not 1 <= stats_min_count <= stats_buffer:
            raise ValueError(f"ddpo needs 1 <= stats_min_count <= stats_buffer, got {stats_min_count}, {stats_buffer}"
                             " (DDPO: 16, 16)")
        self.clip_range, self.adv_clip, self.fraction, self.coef = clip_range, adv_clip, timestep_fraction, coef
        self.tracker = PerPromptStats(stats_buffer, stats_min_count) if per_prompt_stats else None
        self._metrics: dict[str, float] = {}
        self._sums: dict[str, float] = {}

    @classmethod
    def check_recipe(cls, recipe: Any, args: dict[str, Any]) -> None:
        """Per-prompt statistics replace the trainer's estimator: refuse estimator keys that would be ignored."""
        from rltune.families import set_keys

        if not args.get("per_prompt_stats", True):
            return
        moved = [k for k, _, _ in set_keys(recipe.algo, "algo.") if k in ("algo.advantage", "algo.scale_rewards",
                                                                          "algo.std_eps")]
        if moved:
            raise ValueError(f"{', '.join(moved)} would be ignored: ddpo computes DDPO's per-prompt advantages itself "
                             "(per_prompt_stats: true, the default). Remove them, or set `args: {per_prompt_stats: "
                             "false}` on ddpo to use the trainer's estimator")

    def shape_advantages(self, advantages: Tensor, ctx: Any) -> Tensor:
        """[N,T] -> [N,T]: the per-prompt advantage of each image on every denoising step (or unchanged)."""
        if self.tracker is None:
            return advantages
        adv, own = self.tracker.update(list(ctx.prompts), ctx.raw_rewards)
        self._metrics |= {"adv_from_prompt_stats_frac": own, "tracked_prompts": float(len(self.tracker.stats))}
        return adv.to(advantages)[:, None].expand_as(advantages).clone()

    def extra_loss(self, ctx: Any) -> dict[str, Tensor]:
        from rltune.visual.diffusion_context import DiffusionLossContext

        if not isinstance(ctx, DiffusionLossContext):
            raise TypeError(f"{type(self).__name__} runs in the diffusion trainer only (got {type(ctx).__name__}); "
                            "`rltune validate` refuses it for other model.kind values")
        pol, ro = ctx.policy, ctx.rollout
        if pol.kind != "ddim" or ro.step_noise is None or ro.logprobs is None or ctx.advantages is None:
            raise ValueError("ddpo needs a stochastic DDIM rollout (model.diffusion.scheduler: ddim, eta > 0) with its "
                             "sampling log-probs, and advantages from the trainer")
        stochastic = [i for i in range(pol.num_steps) if ddim_std(pol.alphas[i], pol.alphas_prev[i], ro.eta) > 0]
        g = ctx.state.generator(_SALT + 7919 * ctx.epoch + int(ctx.rows[0]))
        pick = torch.randperm(len(stochastic), generator=g)[: max(1, round(self.fraction * len(stochastic)))]
        steps = sorted(stochastic[j] for j in pick.tolist())
        adv = ctx.advantages.to(ro.latents.device).clamp(-self.adv_clip, self.adv_clip)     # [n,T]
        old = ro.logprobs.to(ro.latents.device)                                              # [T,n] sampling time
        total = 0.0
        for i in steps:
            eps = pol.predict(ro.latents[i], pol.timesteps[i], ro.cond, ro.uncond)          # with grad
            lp = ddim_logprob(ro.latents[i + 1], ro.latents[i], eps, pol.alphas[i], pol.alphas_prev[i], ro.eta)
            loss, clip = ppo_clip_loss(lp[:, None], old[i][:, None], adv[:, i:i + 1], self.clip_range,
                                       self.clip_range)
            total = total + loss.sum() / ctx.total_rows / len(steps)
            log_ratio = (lp.detach() - old[i]).double()
            self._add(clip_frac=float(clip.float().sum()), ratio_dev=float((log_ratio.exp() - 1).abs().sum()),
                      approx_kl=float((0.5 * log_ratio**2).sum()), n=float(lp.numel()))
        self._metrics["trained_steps"] = float(len(steps))
        return {"loss": total * self.coef}

    def _add(self, **kv: float) -> None:
        for k, v in kv.items():
            self._sums[k] = self._sums.get(k, 0.0) + v

    def on_step_end(self, metrics: dict[str, float], state: Any) -> dict[str, float]:
        """clip_frac, ratio_dev (mean |ratio − 1|) and approx_kl (mean ½(log ratio)²) over every trained
        (image, step) of the step's updates; 0 on the first update of a rollout, moving after it."""
        s, n = self._sums, max(1.0, self._sums.get("n", 0.0))
        out = self._metrics | {k: s[k] / n for k in ("clip_frac", "ratio_dev", "approx_kl") if k in s}
        self._metrics, self._sums = {}, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.tracker.state_dict()} if self.tracker is not None else {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if self.tracker is not None and "stats" in sd:
            self.tracker.load_state_dict(sd["stats"])
