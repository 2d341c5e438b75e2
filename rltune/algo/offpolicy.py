"""Rollout/trainer mismatch: importance ratios between the policy the trainer computes and the one that sampled.

The rollout engine samples with log-probs `rollout_logprobs` (vLLM, bf16 weights, a stale policy in async runs)
while the loss is built from the trainer's `old_logprobs` of the same tokens. The ratio
ρ = π_old / π_rollout corrects the gradient for that gap:

- truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you
  off-policy RL training"): weight each token's loss by min(ρ, C);
- masked importance sampling (IcePop; Ling Team, arXiv 2510.18855): drop tokens whose ρ lies outside
  [low, high] from the loss instead of reweighting them.

`level="sequence"` uses one ratio per row, exp(Σ_t log ρ_t) over the row's tokens, broadcast to its tokens.
Everything here is a pure function of tensors; shapes in the docstrings (N rows, T response positions).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Level = Literal["token", "sequence"]

__all__ = ["Level", "importance_ratio", "truncate", "outside_mask", "mismatch_stats"]

# exp() of a log-ratio beyond this is treated as this: a single wild token must not overflow float32 to inf.
_MAX_LOG_RATIO = 20.0


def importance_ratio(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: Level = "token") -> Tensor:
    """ρ = π_old / π_rollout per token [N,T] (1 where `mask` is False).

    old_logprobs, rollout_logprobs: [N,T] float; mask: [N,T] bool (tokens that count).
    level "sequence": ρ_i = exp(Σ_t mask·(old − rollout)), the same for every token of row i.
    """
    if old_logprobs.shape != rollout_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"shapes differ: old {tuple(old_logprobs.shape)}, rollout {tuple(rollout_logprobs.shape)}, "
                         f"mask {tuple(mask.shape)}")
    log_ratio = torch.where(mask, old_logprobs.float() - rollout_logprobs.float(), 0.0)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    return torch.where(mask, ratio, 1.0)


def truncate(ratio: Tensor, cap: float) -> Tensor:
    """TIS weight min(ρ, C), [N,T] -> [N,T]."""
    return ratio.clamp(max=cap)


def outside_mask(ratio: Tensor, low: float, high: float) -> Tensor:
    """[N,T] bool: True where ρ stays inside [low, high] (the tokens IcePop keeps)."""
    return (ratio >= low) & (ratio <= high)


def mismatch_stats(old_logprobs: Tensor, rollout_logprobs: Tensor, ratio: Tensor, mask: Tensor,
                   level: Level = "token") -> dict[str, float]:
    """How far the trainer's policy is from the sampling one, over the tokens in `mask` (all [N,T]).

    kl_k1 = E_rollout[log π_rollout − log π_old] and kl_k3 = E_rollout[ρ − 1 − log ρ] (Schulman's estimators of
    KL(π_rollout ‖ π_old); the samples come from the rollout policy). `ess` is the normalised effective sample
    size (Σρ)² / (n·Σρ²) ∈ (0, 1] over tokens, or over rows at sequence level; 1 = no mismatch.
    """
    if not mask.any():
        return {}
    lr = (old_logprobs.float() - rollout_logprobs.float())[mask].clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    r_tok = lr.exp()
    rows = mask.any(-1)
    # At sequence level every token of a row carries the row's ratio: one weight per row.
    w = ratio.masked_fill(~mask, float("-inf")).amax(-1)[rows] if level == "sequence" else ratio[mask]
    w = w.double()
    return {
        "ratio_mean": float(ratio[mask].mean()),
        "ratio_min": float(ratio[mask].min()),
        "ratio_max": float(ratio[mask].max()),
        "kl_k1": float((-lr).mean()),
        "kl_k3": float((r_tok - 1 - lr).mean()),
        "ess": float(w.sum() ** 2 / (w.numel() * (w * w).sum())),
    }
