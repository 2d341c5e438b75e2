"""VMR, Value as Middle Return (Sun et al., "VAR RL Done Right", arXiv 2601.02256, Def. 1, Eq. 4–5 and 10, §4.1;
docs/var.md, VMR): an intermediate reward at a split scale m, with prefix/suffix alternation.

The scale sequence is split at m. A *prefix* step trains scales < m with the soft value of the intermediate state
as its only reward, estimated from K on-policy completions of each prefix:
    V_m(s_m) = η · log( (1/K) Σ_k exp(R^(k)/η) )          (→ mean R as η→∞, → max R as η→0)
and the prefix advantage is V_m group-normalised over the G prefixes of a prompt. A *suffix* step samples one
prefix per prompt, G completions from it, and trains scales ≥ m on the terminal reward (group = that prefix).
Steps alternate `prefix_steps` : `suffix_steps` (the paper's 3:1 "fine-grained" alternation).

How it reaches the sampler: `on_prompts` attaches the step's typed plan (`PromptBatch.plan`, a
rltune.visual.var_plan.RolloutPlan) that the VAR trainer's sampler follows; the trainer's loss mask then covers the stage's scales only (the
temporal gate), and marks rows of one prefix with extras["prefix_id"]. The group key of the suffix stage (the
prefix) and per-token ratios are this project's choices (docs/var.md, VMR); K completions get no gradient: in a prefix
step only the first row of each prefix carries the (identical) prefix tokens into the loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from rltune.algo import group_norm
from rltune.data.batch import PromptBatch
from rltune.modifiers.base import AdvantageContext, LossContext, Modifier, PromptContext, StepState, TokenWeights
from rltune.visual.var_plan import RolloutPlan

__all__ = ["soft_value", "prefix_values", "prefix_advantages", "vmr_stage", "first_of_prefix", "VMR"]

Stage = Literal["prefix", "suffix"]


def soft_value(rewards: Tensor, eta: float = 1.0) -> Tensor:
    """V = η·(logsumexp(R/η) − log K) over the last dim, in float64 (stable for large R/η; docs/var.md).
    rewards [..., K] -> [...]."""
    r = rewards.double()
    return eta * (torch.logsumexp(r / eta, dim=-1) - math.log(r.shape[-1]))


def prefix_values(rewards: Tensor, prefix_id: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Soft value of every prefix from its completions' rewards, vectorized (NaN rewards are left out; a prefix
    with none gets NaN). rewards [N], prefix_id [N] -> (values [P] float64, inverse [N] long row -> prefix,
    first [P] long: the first row of each prefix)."""
    uniq, inv = torch.unique(prefix_id, return_inverse=True)
    P, N = uniq.numel(), rewards.shape[0]
    r = rewards.double() / eta
    ok = ~torch.isnan(r)
    neg = torch.full((P,), -math.inf, dtype=torch.float64)
    top = neg.scatter_reduce(0, inv, torch.where(ok, r, -math.inf), "amax")            # per-prefix max
    top_safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    s = torch.zeros(P, dtype=torch.float64).index_add_(0, inv, torch.where(ok, torch.exp(r - top_safe[inv]), 0.0))
    k = torch.zeros(P, dtype=torch.float64).index_add_(0, inv, ok.double())
    v = eta * (top_safe + torch.log(s) - torch.log(k))
    v = torch.where(k > 0, v, torch.full_like(v, math.nan))
    first = torch.full((P,), N, dtype=torch.long).scatter_reduce(0, inv, torch.arange(N), "amin")
    return v, inv, first


def prefix_advantages(rewards: Tensor, prefix_id: Tensor, group_id: Tensor, eta: float = 1.0,
                      eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Prefix-stage advantage of every row: V_m of its prefix, group-normalised over the prompt's prefixes
    (each prefix counted once; groups with < 2 valid prefixes get 0, as group_norm).
    rewards, prefix_id, group_id [N] -> (advantages [N] float64, values [N] float64)."""
    v, inv, first = prefix_values(rewards, prefix_id, eta)
    adv = group_norm(v, group_id[first], torch.ones(v.shape[0], 1, dtype=torch.bool), eps=eps)[:, 0]
    return adv[inv], v[inv]


def vmr_stage(step: int, prefix_steps: int = 3, suffix_steps: int = 1) -> Stage:
    """The stage of a step in the repeating pattern prefix×prefix_steps, suffix×suffix_steps (paper §4.1: 3:1)."""
    return "prefix" if step % (prefix_steps + suffix_steps) < prefix_steps else "suffix"


def first_of_prefix(prefix_id: Tensor) -> Tensor:
    """[N] bool: True on the first row of each prefix."""
    _, _, first = prefix_values(torch.zeros(prefix_id.shape[0]), prefix_id)
    keep = torch.zeros(prefix_id.shape[0], dtype=torch.bool)
    keep[first] = True
    return keep


class VMR(Modifier):
    """Intermediate reward at scale `split` with prefix/suffix alternation (hooks on_prompts, shape_advantages,
    token_weights). Only the VAR trainer follows the plan it writes.

    Args:
        split: m, the first scale of the suffix (the prefix is scales < m; the paper's m_256 is 12 of 18 scales).
        k: completions per prefix for V_m (paper K = 2). eta: soft-value temperature η (paper 1).
        prefix_steps, suffix_steps: the alternation (paper 3:1).
    Metrics: stage (1 = prefix, 0 = suffix), value_mean and value_gap (mean V_m − mean R, ≥ 0) on prefix steps.
    """

    requires = frozenset({"var_layout"})   # only the VAR trainer follows the rollout plan

    def __init__(self, split: int = 2, k: int = 2, eta: float = 1.0, prefix_steps: int = 3, suffix_steps: int = 1):
        if split < 1:
            raise ValueError(f"split must be ≥ 1 (the prefix needs at least one scale), got {split}")
        if k < 1 or eta <= 0 or prefix_steps < 0 or suffix_steps < 0 or prefix_steps + suffix_steps == 0:
            raise ValueError("need k ≥ 1, eta > 0, prefix_steps, suffix_steps ≥ 0 and not both 0")
        self.split, self.k, self.eta = split, k, eta
        self.prefix_steps, self.suffix_steps = prefix_steps, suffix_steps
        self._metrics: dict[str, float] = {}

    def stage(self, state: StepState) -> Stage:
        return vmr_stage(state.step, self.prefix_steps, self.suffix_steps)

    def on_prompts(self, prompts: PromptBatch, ctx: PromptContext) -> PromptBatch:
        stage = self.stage(ctx.state)
        plan = RolloutPlan(stage, self.split, self.k if stage == "prefix" else 1)
        return PromptBatch(prompts=list(prompts.prompts), meta=dict(prompts.meta), hints=prompts.hints, plan=plan)

    def shape_advantages(self, advantages: Tensor, ctx: AdvantageContext) -> Tensor:
        self._metrics = {"stage": float(self.stage(ctx.state) == "prefix")}
        if self.stage(ctx.state) != "prefix":
            return advantages            # suffix: the estimator's group-normalised terminal reward
        if "prefix_id" not in ctx.extras:
            raise ValueError("VMR's prefix step needs extras['prefix_id'] from the VAR trainer's prefix rollouts")
        adv, v = prefix_advantages(ctx.rewards, ctx.extras["prefix_id"], ctx.group_id, self.eta)
        self._metrics |= {"value_mean": float(torch.nanmean(v)),
                          "value_gap": float(torch.nanmean(v) - torch.nanmean(ctx.rewards.double()))}
        return (adv[:, None] * ctx.response_mask).to(advantages.dtype)

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        if self.stage(ctx.state) != "prefix" or "prefix_id" not in ctx.extras:
            return None
        keep = first_of_prefix(ctx.extras["prefix_id"])
        return TokenWeights(mask=keep[:, None].expand_as(ctx.response_mask).clone())

    def on_step_end(self, metrics: dict[str, float], state) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out
