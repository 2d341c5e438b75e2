"""Advantage estimators: pure tensor functions, no config objects.

Shapes: N = rows (responses), T = response positions. ``rewards``/``group_id`` are [N]; ``response_mask``
is [N,T] bool or {0,1}; every [N,T] output is 0 outside the mask. Formulas and papers: docs/algorithms.md.

rltune's choices where verl and TRL differ (docs/algorithms.md, "Choices where verl and TRL differ"):
- A row whose group has fewer than two scorable rewards gets advantage 0 (TRL); verl keeps the raw
  reward. ``singleton_groups`` counts such groups so the trainer can warn.
- A NaN reward marks an unscorable sample (TRL): it is left out of every statistic and gets advantage 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rltune.ops import group_stats, masked_var, masked_whiten

__all__ = [
    "group_norm",
    "group_mean",
    "singleton_groups",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "gae",
    "outcome_to_token_rewards",
    "dynamic_sampling_keep",
    "flat_groups",
    "flat_group_frac",
]

Scale = Literal["group", "batch", "none"]


def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _check_rows(rewards: Tensor, group_id: Tensor, response_mask: Tensor) -> None:
    n = rewards.shape[0]
    if rewards.ndim != 1 or group_id.shape != (n,) or response_mask.ndim != 2 or response_mask.shape[0] != n:
        raise ValueError(f"want rewards [N], group_id [N], response_mask [N,T]; got {tuple(rewards.shape)}, "
                         f"{tuple(group_id.shape)}, {tuple(response_mask.shape)}")


def _broadcast(per_row: Tensor, response_mask: Tensor) -> Tensor:
    """[N] -> [N,T]: the row's value on each of its mask tokens, 0 elsewhere."""
    return per_row[:, None] * response_mask.to(per_row.dtype)


def group_norm(rewards: Tensor, group_id: Tensor, response_mask: Tensor, scale: Scale = "group",
               eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage A_i = (r_i − mean_g)/(std_g + eps), broadcast to tokens (DeepSeekMath, 2402.03300).

    Args:
        rewards [N] (NaN = unscorable), group_id [N], response_mask [N,T].
        scale: "group" divides by the group's unbiased std (verl/TRL default); "batch" keeps the group
            mean but divides by the unbiased std of all scorable rewards in the batch (TRL
            ``scale_rewards="batch"``); "none" only centres (Dr.GRPO, 2503.20783).
        eps: added to the std (verl 1e-6; TRL uses 1e-4).
    Returns:
        advantages [N,T]; rows with NaN reward or in a group with < 2 scorable rewards are 0.
    """
    _check_rows(rewards, group_id, response_mask)
    r = _float(rewards)
    mean, std, count = group_stats(r, group_id)
    ok = ~torch.isnan(r) & (count > 1)
    centered = r - mean
    if scale == "group":
        adv = centered / (std + eps)
    elif scale == "batch":
        adv = centered / (masked_var(r, ~torch.isnan(r)).sqrt() + eps)
    elif scale == "none":
        adv = centered
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return _broadcast(torch.where(ok, adv, torch.zeros_like(adv)), response_mask)


def group_mean(rewards: Tensor, group_id: Tensor, response_mask: Tensor) -> Tensor:
    """Dr.GRPO advantage A_i = r_i − mean_g (no std division; 2503.20783). Alias of group_norm(scale="none").

    Shapes: rewards [N], group_id [N], response_mask [N,T] -> [N,T].
    """
    return group_norm(rewards, group_id, response_mask, scale="none")


def singleton_groups(group_id: Tensor, rewards: Tensor | None = None) -> int:
    """Number of groups with fewer than two members (or, given ``rewards`` [N], fewer than two non-NaN
    rewards). Their rows get advantage 0 from the group estimators; the trainer warns when this is > 0.
    """
    uniq, inv = torch.unique(group_id, return_inverse=True)
    scorable = torch.ones_like(inv) if rewards is None else (~torch.isnan(_float(rewards))).long()
    per_group = torch.zeros(uniq.numel(), dtype=torch.long, device=inv.device).index_add_(0, inv, scorable)
    return int((per_group < 2).sum().item())


def rloo(rewards: Tensor, group_id: Tensor, response_mask: Tensor) -> Tensor:
    """RLOO: A_i = r_i − mean_{j≠i} r_j over the scorable members of i's group (Ahmadian et al., 2402.14740).

    Shapes: rewards [N] (NaN = unscorable), group_id [N], response_mask [N,T] -> advantages [N,T].
    Rows with NaN reward or without another scorable member are 0 (verl keeps the raw score; docs/algorithms.md).
    """
    _check_rows(rewards, group_id, response_mask)
    r = _float(rewards)
    mean, _, count = group_stats(r, group_id)
    n = count.to(r.dtype)
    ok = ~torch.isnan(r) & (count > 1)
    loo_mean = (mean * n - r) / (n - 1).clamp_min(1)
    adv = torch.where(ok, r - loo_mean, torch.zeros_like(r))
    return _broadcast(adv, response_mask)


def reinforce_pp(token_rewards: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++: discounted returns, whitened over all valid tokens of the batch (Hu, 2501.03262).

    G_t = r_t + γ·G_{t+1} over the positions with mask 1; a position with mask 0 (a multi-turn observation token,
    or padding) takes no reward and no discount step and carries the running return through, as `gae` does, so an
    earlier turn's tokens see the later turns' rewards. verl
    (`compute_reinforce_plus_plus_outcome_advantage`) instead zeroes the return after a mask-0
    position, which cuts a multi-turn episode at its first observation; both agree on single-turn rows, whose
    mask-0 positions are trailing padding.
    Shapes: token_rewards [N,T] (NaN anywhere in a row = unscorable row), response_mask [N,T]
    -> advantages [N,T]. Unscorable rows are excluded from the whitening statistics and are 0.
    """
    tr = _float(token_rewards)
    m = response_mask.to(tr.dtype)
    bad = torch.isnan(tr)
    row_ok = ~bad.any(dim=-1)
    tr = torch.where(bad, torch.zeros_like(tr), tr)
    returns = torch.empty_like(tr)
    running = torch.zeros_like(tr[:, 0])
    # A sequential scan over T, as verl; a closed form via cumprod of γ·mask underflows for long T.
    for t in range(tr.shape[1] - 1, -1, -1):
        running = torch.where(m[:, t] > 0, tr[:, t] + gamma * running, running)
        returns[:, t] = running
    return masked_whiten(returns, m * row_ok[:, None].to(m.dtype))


def reinforce_pp_baseline(rewards: Tensor, group_id: Tensor, response_mask: Tensor) -> Tensor:
    """REINFORCE++-baseline: r_i − mean_g broadcast to tokens, then whitened over all batch tokens
    (verl `compute_reinforce_plus_plus_baseline_outcome_advantage`;
    Hu, 2501.03262). Longer responses weigh more in the whitening statistics.

    Shapes: rewards [N] (NaN = unscorable), group_id [N], response_mask [N,T] -> advantages [N,T].
    Rows with NaN reward or in a group with < 2 scorable rewards are excluded from the whitening and 0
    (verl keeps a singleton's raw score and whitens it with the rest).
    """
    _check_rows(rewards, group_id, response_mask)
    r = _float(rewards)
    mean, _, count = group_stats(r, group_id)
    ok = ~torch.isnan(r) & (count > 1)
    centered = torch.where(ok, r - mean, torch.zeros_like(r))
    m = response_mask.to(r.dtype)
    return masked_whiten(_broadcast(centered, m), m * ok[:, None].to(r.dtype))


def gae(token_rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al., 1506.02438) with verl's masking
    (`compute_gae_advantage_return`).

    δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1}. Positions with mask 0 (e.g. tool observations)
    carry the next value and the running A through unchanged. returns = A + V (raw A); then A is
    whitened over all valid tokens.
    Shapes: token_rewards [N,T] (NaN anywhere in a row = unscorable row), values [N,T],
    response_mask [N,T] -> (advantages [N,T], returns [N,T]), both 0 outside the mask. An unscorable
    row gets A = 0 and returns = V (a zero value target), and is left out of the whitening statistics.
    """
    if token_rewards.shape != values.shape or values.shape != response_mask.shape:
        raise ValueError(f"token_rewards {tuple(token_rewards.shape)}, values {tuple(values.shape)} and "
                         f"response_mask {tuple(response_mask.shape)} must all be [N,T]")
    tr = _float(token_rewards)
    m = response_mask.to(tr.dtype)
    valid = m != 0
    bad = torch.isnan(tr)
    row_ok = ~bad.any(dim=-1)
    tr = torch.where(bad, torch.zeros_like(tr), tr)
    v = torch.where(valid, values.to(tr.dtype), torch.zeros_like(tr))  # padding values may be garbage
    next_value = torch.zeros_like(tr[:, 0])
    last_adv = torch.zeros_like(tr[:, 0])
    raw = torch.empty_like(tr)
    for t in range(tr.shape[1] - 1, -1, -1):
        delta = tr[:, t] + gamma * next_value - v[:, t]
        adv_t = delta + gamma * lam * last_adv
        next_value = torch.where(valid[:, t], v[:, t], next_value)
        last_adv = torch.where(valid[:, t], adv_t, last_adv)
        raw[:, t] = last_adv
    row_w = row_ok[:, None].to(tr.dtype)
    raw = raw * row_w
    returns = (raw + v) * m
    return masked_whiten(raw, m * row_w), returns


def outcome_to_token_rewards(rewards: Tensor, response_mask: Tensor) -> Tensor:
    """Place each row's scalar reward on its last valid token (verl DAPORewardManager; docs/algorithms.md).

    Shapes: rewards [N], response_mask [N,T] -> token_rewards [N,T]. NaN is kept (the token estimators
    treat the row as unscorable); a row without valid tokens is all 0.
    """
    r = _float(rewards)
    m = response_mask != 0
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).amax(dim=-1)   # -1 when the row is empty
    has = last >= 0
    src = torch.where(has, r, torch.zeros_like(r))
    out = torch.zeros(m.shape, dtype=r.dtype, device=r.device)
    return out.scatter(1, last.clamp_min(0)[:, None], src[:, None])


def flat_groups(rewards: Tensor, group_id: Tensor) -> Tensor:
    """[N] bool: the row's group has a constant reward over its scorable (non-NaN) rows, so group-relative
    advantages give it no signal. A group with no scorable row counts as flat. Exact comparison (max == min, no
    tolerance), so [0.1]*3 is flat despite float rounding. Shapes: rewards [N], group_id [N] -> [N] bool."""
    r = _float(rewards)
    uniq, inv = torch.unique(group_id, return_inverse=True)
    ok = ~torch.isnan(r)
    inf = torch.full_like(r, float("inf"))
    hi = torch.full((uniq.numel(),), -float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(
        0, inv, torch.where(ok, r, -inf), reduce="amax")
    lo = torch.full((uniq.numel(),), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(
        0, inv, torch.where(ok, r, inf), reduce="amin")
    return ~(hi > lo)[inv]  # hi < lo: no scorable row in the group


def flat_group_frac(rewards: Tensor, group_id: Tensor) -> float:
    """Fraction of the groups that are flat (see flat_groups); 0.0 for an empty batch."""
    uniq, inv = torch.unique(group_id, return_inverse=True)
    per_group = torch.zeros(uniq.numel(), dtype=torch.bool, device=group_id.device).scatter_(
        0, inv, flat_groups(rewards, group_id))
    return float(per_group.double().mean()) if uniq.numel() else 0.0


def dynamic_sampling_keep(raw_rewards: Tensor, group_id: Tensor) -> tuple[Tensor, list[int]]:
    """DAPO dynamic sampling filter (Yu et al., 2503.14476 §3.2): keep a group only if its rewards differ.

    Pass the **raw** (unshaped) metric (docs/concepts.md, "Raw and shaped rewards"). NaN rewards are ignored; a
    group needs two scorable rewards that differ (not flat_groups). verl also keeps single-sample groups; we drop
    them since they get advantage 0 here anyway.
    Shapes: raw_rewards [N], group_id [N] -> (keep [N] bool per row, sorted list of kept group ids).
    """
    keep = ~flat_groups(raw_rewards, group_id)
    return keep, torch.unique(group_id[keep]).tolist()
