"""Policy, KL and value losses and their aggregation : pure tensor functions.

Shapes: N = rows (responses), T = response positions. Per-token losses are [N,T]; ``response_mask``
is [N,T] bool or {0,1}. Loss functions return per-token losses; ``aggregate`` reduces them to a scalar.
Formulas and papers: docs/algorithms.md.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import torch
from torch import Tensor

from rltune.ops import masked_sum

__all__ = [
    "AggMode",
    "AggDenominators",
    "aggregate",
    "global_denominators",
    "ppo_clip_loss",
    "gspo_loss",
    "kl_penalty",
    "value_loss",
    "soft_overlong_penalty",
]

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ------------------------------------------------------------------------------------------ aggregation
class AggDenominators(TypedDict):
    """Global normalisers of one optimizer step; pass as ``aggregate(..., **denoms)``."""

    num_seqs: float         # rows with at least one loss token, over the whole step (all ranks)
    num_tokens: float       # loss tokens over the whole step (all ranks)


def global_denominators(response_mask: Tensor, mode: AggMode | None = None) -> AggDenominators:
    """Denominators of ``aggregate`` for the whole step; the trainer calls this once per optimizer step.

    Args:
        response_mask: [N,T] the loss mask of **every** row of the optimizer step (all micro-batches and
            all data-parallel ranks), after any modifier masks, i.e. exactly the masks later passed to
            ``aggregate``. Counts are additive, so ranks may instead all-reduce (sum) their own counts.
        mode: optional, only validated; both counts are returned and ``aggregate`` uses the one it needs.
    L_const of "seq-mean-token-sum-norm" is not a count: pass it to ``aggregate`` as ``scale_constant``.
    """
    if mode is not None and mode not in _MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(_MODES)}")
    m = response_mask != 0
    return AggDenominators(num_seqs=float(m.any(dim=-1).sum().item()), num_tokens=float(m.sum().item()))


def _safe(d: Tensor | float, like: Tensor) -> Tensor:
    """A denominator as a tensor; 0 becomes 1 (the numerator is then 0 too, and backward stays finite)."""
    d = torch.as_tensor(d, dtype=like.dtype, device=like.device)
    return torch.where(d > 0, d, torch.ones_like(d))


def aggregate(losses: Tensor, mask: Tensor, mode: AggMode, *, num_seqs: Tensor | float | None = None,
              num_tokens: Tensor | float | None = None, scale_constant: float | None = None) -> Tensor:
    """Reduce per-token losses [N,T] to a scalar (verl ``agg_loss``; docs/algorithms.md, Aggregation).

    M = mask, ℓ = losses, S = number of rows with at least one M token (fully masked rows do not count,
    as verl), L = ``scale_constant`` (default T):
      - "token-mean":              Σ M·ℓ / Σ M                      (verl default; TRL "bnpo"/"dapo")
      - "seq-mean-token-sum":      Σ_i Σ_t M·ℓ / S
      - "seq-mean-token-mean":     Σ_i (Σ_t M·ℓ / Σ_t M) / S        (original GRPO; TRL "grpo"; GSPO)
      - "seq-mean-token-sum-norm": Σ M·ℓ / (S·L)                    (Dr.GRPO; = TRL "dr_grpo" Σ/(B·L))
        verl's mode of the same name divides by L only, so verl's value is S times ours; with a fixed
        number of rows per step this is a constant factor, i.e. a learning-rate rescale.

    Micro-batch / data-parallel invariance: pass the step's global ``num_tokens`` and ``num_seqs``
    (``global_denominators``) and every micro-batch divides by them instead of its local counts, so the
    sum of the micro-batch losses equals the whole-batch loss and the accumulated gradient is the
    whole-batch gradient (no extra 1/grad_accum, unlike verl's local mode); keep ``scale_constant``
    fixed (the generation budget) rather than each micro-batch's padded T. Engines that *average*
    gradients over R ranks (DDP, ZeRO) need the loss multiplied by R, as verl's ``* dp_size``.
    """
    if losses.shape != mask.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and mask {tuple(mask.shape)} must both be [N,T]")
    m = mask.to(losses.dtype)
    if mode == "token-mean":
        return masked_sum(losses, m) / _safe(m.sum() if num_tokens is None else num_tokens, losses)
    if mode not in _MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(_MODES)}")
    row_tokens = m.sum(dim=-1)
    seqs = (row_tokens > 0).sum() if num_seqs is None else num_seqs
    row_sum = masked_sum(losses, m, dim=-1)
    if mode == "seq-mean-token-sum":
        per_row = row_sum
    elif mode == "seq-mean-token-mean":
        per_row = row_sum / _safe(row_tokens, losses)
    else:
        per_row = row_sum / float(scale_constant if scale_constant is not None else losses.shape[-1])
    return per_row.sum() / _safe(seqs, losses)


# ------------------------------------------------------------------------------------------ policy loss
def ppo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float = 0.2,
                  clip_high: float = 0.2, dual_clip_c: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token (Schulman et al., 1707.06347; verl `compute_policy_loss_vanilla`).

    ρ = exp(clamp(logπ − logπ_old, −20, 20)); ℓ = max(−Aρ, −A·clip(ρ, 1−ε_low, 1+ε_high)).
    Dual clip (Ye et al., 1912.09729), only when ``dual_clip_c`` (> 1) is set: for A < 0,
    ℓ = min(ℓ, −A·c), which bounds the loss of a very large ratio. TRL has no dual clip.
    Shapes: logprobs, old_logprobs, advantages [N,T] -> (pg_losses [N,T], clipped [N,T] bool).
    ``clipped`` marks tokens whose ratio gets no gradient (a clip or the dual clip is active).
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped_obj = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_obj)
    clipped = clipped_obj > unclipped
    if dual_clip_c is not None:
        bound = -advantages * dual_clip_c
        neg = advantages < 0
        clipped = clipped | (neg & (loss > bound))
        loss = torch.where(neg, torch.minimum(loss, bound), loss)
    return loss, clipped


def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """GSPO sequence-ratio clipped loss per token (Zheng et al., 2507.18071; verl `compute_policy_loss_gspo`).

    s_i = exp(mean_t over mask of (logπ − logπ_old)); the token view s_{i,t} = sg[s_i]·π_t/sg[π_t] has the
    value s_i and gradient s_i·∇logπ_t. The log ratio is clamped above at 10 (verl).
    ℓ = max(−A·s, −A·clip(s, 1−ε_low, 1+ε_high)). Aggregate with "seq-mean-token-mean" (verl forces it).
    Shapes: logprobs, old_logprobs, advantages, response_mask [N,T] -> (pg_losses [N,T], clipped [N,T]).
    Paper clip values: ε_low=3e-4, ε_high=4e-4.
    """
    m = response_mask.to(logprobs.dtype)
    seq_len = m.sum(dim=-1).clamp_min(1)
    seq_log_ratio = masked_sum(logprobs - old_logprobs, m, dim=-1) / seq_len
    log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach()[:, None]
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    unclipped = -advantages * ratio
    clipped_obj = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped_obj), clipped_obj > unclipped


# ------------------------------------------------------------------------------------------ KL and value
_KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def _kl_value(x: Tensor, kind: str) -> Tensor:
    if kind == "k1":
        return x
    if kind == "abs":
        return x.abs()
    if kind == "k2":
        return 0.5 * x.square()
    if kind == "k3":
        # verl clamps (`kl_penalty_forward`, low_var_kl): exp(±20) stays finite, and the estimate stays within ±10.
        neg = torch.clamp(-x, -20.0, 20.0)
        return torch.clamp(torch.exp(neg) - neg - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; valid: k1, k2, k3, abs (optionally with a '+' suffix)")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL(π_θ‖π_ref) estimate with x = logπ_θ − logπ_ref (Schulman 2020 "Approximating KL").

    kind: "k1" = x, "abs" = |x|, "k2" = ½x², "k3" = e^{−x} + x − 1 (verl clamps). A "+" suffix ("k3+")
    keeps the forward value but takes the gradient of k2 (straight-through, verl `kl_penalty`), since k2's
    gradient is the unbiased one. verl names "kl", "mse", "low_var_kl" are accepted too.
    Shapes: logprobs, ref_logprobs [N,T] -> [N,T].
    """
    straight = kind.endswith("+")
    base = kind[:-1] if straight else kind
    base = _KL_ALIASES.get(base, base)
    x = logprobs - ref_logprobs
    value = _kl_value(x, base)
    if not straight or base == "k2":
        return value
    k2 = 0.5 * x.square()
    return k2 - k2.detach() + value.detach()


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor,
               clip: float | None = 0.5, agg: AggMode = "token-mean", *,
               num_seqs: Tensor | float | None = None, num_tokens: Tensor | float | None = None,
               scale_constant: float | None = None) -> Tensor:
    """Clipped critic loss ½·agg(max((V−R)², (V_clip−R)²)), V_clip = clip(V, V_old ± clip) (verl `compute_value_loss`).

    Shapes: values (with grad), old_values, returns, response_mask [N,T] -> scalar. ``clip=None``
    disables clipping. The keyword denominators are passed to ``aggregate`` (micro-batch invariance).
    """
    err = (values - returns).square()
    if clip is not None:
        v_clip = torch.clamp(values, old_values - clip, old_values + clip)
        err = torch.maximum(err, (v_clip - returns).square())
    return 0.5 * aggregate(err, response_mask, agg, num_seqs=num_seqs, num_tokens=num_tokens,
                           scale_constant=scale_constant)


# ------------------------------------------------------------------------------------------ reward shaping
def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int, penalty_factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (Yu et al., 2503.14476 Eq. 13), an additive reward (hook H1).

    R = 0 for |y| ≤ L_max − L_cache, (L_max − L_cache − |y|)/L_cache up to L_max, −1 beyond; all times
    ``penalty_factor`` (verl DAPORewardManager; verl does not floor at −1, but it never sees |y| > L_max).
    Shapes: lengths [N] (response tokens) -> [N] float.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    n = lengths.to(torch.get_default_dtype() if not lengths.is_floating_point() else lengths.dtype)
    return ((max_len - cache_len - n) / cache_len).clamp(min=-1.0, max=0.0) * penalty_factor
