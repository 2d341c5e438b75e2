"""Off-policy correction for the gap between the rollout engine's policy and the trainer's: `tis` and `icepop`.

The rollout engine's log-probs (`rollout_logprobs`) and the trainer's recomputed ones (`old_logprobs`) differ
when the engine runs another kernel or precision (vLLM, bf16) or an older policy version (async rollouts with
`rollout.max_staleness` > 0). Both modifiers turn the ratio ρ = π_old / π_rollout (rltune/algo/offpolicy.py)
into token weights/masks of the policy loss, computed once per step for the whole batch:

- `tis` (truncated IS; Yao et al. 2025): weight min(ρ, cap), per token or per sequence;
- `icepop` (masked IS; arXiv 2510.18855): tokens with ρ outside [low, high] leave the loss (and its token
  count); the kept ones are weighted by ρ as in the paper's M(k) = k·1[low ≤ k ≤ high] (`reweight: false`
  keeps them at weight 1).

Both log the mismatch: ratio mean/min/max, the fraction truncated or masked, KL(π_rollout ‖ π_old) by the k1 and
k3 estimators, and the normalised effective sample size. With identical policies ρ ≡ 1 and both are no-ops.
Forced tokens (ADHint's `hint_mask`) were not sampled, so they carry ρ = 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rltune.algo import offpolicy
from rltune.modifiers.base import LossContext, Modifier, StepState, TokenWeights

__all__ = ["TIS", "IcePop"]


class _RolloutCorrection(Modifier):
    requires: ClassVar[frozenset[str]] = frozenset({"old_logprobs", "rollout_logprobs"})

    def __init__(self, level: offpolicy.Level = "token"):
        if level not in ("token", "sequence"):
            raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
        self.level = level
        self._stats: dict[str, float] = {}

    def _ratio(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.rollout_logprobs is None:
            raise ValueError("this policy family gives no rollout log-probs (LossContext.rollout_logprobs is None)")
        mask = ctx.response_mask
        if "hint_mask" in ctx.extras:
            mask = mask & ~ctx.extras["hint_mask"]
        ratio = offpolicy.importance_ratio(ctx.old_logprobs, ctx.rollout_logprobs, mask, self.level)
        self._stats = offpolicy.mismatch_stats(ctx.old_logprobs, ctx.rollout_logprobs, ratio, mask, self.level)
        return ratio, mask

    def on_step_end(self, metrics: dict[str, float], state: StepState) -> dict[str, float]:
        out, self._stats = self._stats, {}
        return out


class TIS(_RolloutCorrection):
    """Truncated importance sampling: the policy loss of each token is weighted by min(π_old / π_rollout, cap)."""

    def __init__(self, cap: float = 2.0, level: offpolicy.Level = "token"):
        super().__init__(level)
        if not cap > 0:
            raise ValueError(f"cap must be > 0, got {cap}")
        self.cap = float(cap)

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        ratio, mask = self._ratio(ctx)
        if mask.any():
            self._stats["truncated_frac"] = float((ratio[mask] > self.cap).float().mean())
        return TokenWeights(weight=offpolicy.truncate(ratio, self.cap).to(ctx.advantages.dtype))


class IcePop(_RolloutCorrection):
    """Masked importance sampling: tokens whose π_old / π_rollout is outside [low, high] are dropped."""

    def __init__(self, low: float = 0.5, high: float = 5.0, level: offpolicy.Level = "token", reweight: bool = True):
        super().__init__(level)
        if not 0 <= low < 1 < high:
            raise ValueError(f"need 0 <= low < 1 < high, got low={low}, high={high}")
        self.low, self.high, self.reweight = float(low), float(high), bool(reweight)

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        ratio, mask = self._ratio(ctx)
        keep = offpolicy.outside_mask(ratio, self.low, self.high)
        if mask.any():
            self._stats["masked_frac"] = float((~keep[mask]).float().mean())
        # Masked positions outside the response keep True: the response mask already removes them.
        weight = ratio.to(ctx.advantages.dtype) if self.reweight else None
        return TokenWeights(weight=weight, mask=keep | ~mask)
