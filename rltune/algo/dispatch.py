"""Name → function tables for the advantage estimators (hook H2) and policy losses (hook H5).

The trainer calls ``estimate(recipe.algo.advantage, ...)`` and ``policy_loss(recipe.algo.policy_loss, ...)``
and never branches on a name. The tables are plain dicts filled at definition time (no import-time
registration); the recipe schema's ``Literal`` choices are checked against them by a unit test.

KL in the reward (``token_rewards``), rltune's choice, which is what verl does (its outcome estimators read
``token_level_rewards.sum(-1)``, ray_trainer.apply_kl_penalty):
  - outcome estimators (group_norm, group_mean, rloo, reinforce_pp_baseline) take the sequence reward
    r_i + Σ_t token_rewards[i,t] (e.g. r_i − β·Σ_t kl_t) before their group statistics;
  - token estimators (reinforce_pp, gae) place r_i on the last response token and add token_rewards per
    token (r_t − β·kl_t) before the discounted sums.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rltune.algo.advantages import (
    Scale,
    gae,
    group_norm,
    outcome_to_token_rewards,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from rltune.algo.losses import gspo_loss, ppo_clip_loss

__all__ = ["ESTIMATORS", "NEEDS_VALUES", "estimate", "POLICY_LOSSES", "policy_loss"]

# Uniform estimator signature: (rewards [N], group_id [N], response_mask [N,T], token_rewards [N,T] | None,
# values [N,T] | None, gamma, lam, scale, eps) -> (advantages [N,T], returns [N,T] | None)
Estimator = Callable[..., tuple[Tensor, Tensor | None]]


def _sequence_rewards(rewards: Tensor, response_mask: Tensor, token_rewards: Tensor | None) -> Tensor:
    """[N] outcome reward plus the row's summed per-token rewards (0 outside the mask)."""
    r = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    if token_rewards is None:
        return r
    m = response_mask != 0
    return r + torch.where(m, token_rewards, torch.zeros_like(token_rewards)).sum(dim=-1).to(r.dtype)


def _token_rewards(rewards: Tensor, response_mask: Tensor, token_rewards: Tensor | None) -> Tensor:
    """[N,T] outcome reward on the last valid token, plus per-token rewards on the mask."""
    tr = outcome_to_token_rewards(rewards, response_mask)
    if token_rewards is None:
        return tr
    m = response_mask != 0
    return tr + torch.where(m, token_rewards, torch.zeros_like(token_rewards)).to(tr.dtype)


def _group_norm(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return group_norm(_sequence_rewards(rewards, mask, token_rewards), group_id, mask, scale=scale, eps=eps), None


def _group_mean(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return group_norm(_sequence_rewards(rewards, mask, token_rewards), group_id, mask, scale="none"), None


def _rloo(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return rloo(_sequence_rewards(rewards, mask, token_rewards), group_id, mask), None


def _reinforce_pp(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return reinforce_pp(_token_rewards(rewards, mask, token_rewards), mask, gamma=gamma), None


def _reinforce_pp_baseline(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return reinforce_pp_baseline(_sequence_rewards(rewards, mask, token_rewards), group_id, mask), None


def _gae(rewards, group_id, mask, token_rewards, values, gamma, lam, scale, eps):
    return gae(_token_rewards(rewards, mask, token_rewards), values, mask, gamma=gamma, lam=lam)


ESTIMATORS: dict[str, Estimator] = {
    "group_norm": _group_norm,                        # GRPO (DeepSeekMath, 2402.03300)
    "group_mean": _group_mean,                        # Dr.GRPO (2503.20783): no std division
    "rloo": _rloo,                                    # RLOO (2402.14740)
    "reinforce_pp": _reinforce_pp,                    # REINFORCE++ (2501.03262): batch-whitened returns
    "reinforce_pp_baseline": _reinforce_pp_baseline,  # REINFORCE++-baseline: group mean, batch whitening
    "gae": _gae,                                      # PPO with a critic (1506.02438, 1707.06347)
}
NEEDS_VALUES = frozenset({"gae"})


def estimate(name: str, rewards: Tensor, group_id: Tensor, response_mask: Tensor, *, values: Tensor | None = None,
             token_rewards: Tensor | None = None, gamma: float = 1.0, lam: float = 1.0, scale: Scale = "group",
             eps: float = 1e-6) -> tuple[Tensor, Tensor | None]:
    """Advantages [N,T] (and value targets [N,T] for critic estimators, else None) by estimator name.

    Args:
        rewards [N] outcome rewards (NaN = unscorable row), group_id [N], response_mask [N,T].
        values [N,T]: the critic's value of the state before each response token; required by "gae".
        token_rewards [N,T]: extra per-token rewards, e.g. −β·kl_t for KL in the reward (module docstring).
        gamma, lam: discount and GAE λ (reinforce_pp uses gamma; gae both). scale, eps: group_norm only.
    """
    fn = ESTIMATORS.get(name)
    if fn is None:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {', '.join(ESTIMATORS)}")
    if name in NEEDS_VALUES and values is None:
        raise ValueError(f"advantage estimator {name!r} needs values [N,T] from a critic")
    if values is not None and values.shape != response_mask.shape:
        raise ValueError(f"values {tuple(values.shape)} must match response_mask {tuple(response_mask.shape)}")
    if token_rewards is not None and token_rewards.shape != response_mask.shape:
        raise ValueError(f"token_rewards {tuple(token_rewards.shape)} must match response_mask "
                         f"{tuple(response_mask.shape)}")
    return fn(rewards, group_id, response_mask, token_rewards, values, gamma, lam, scale, eps)


# ------------------------------------------------------------------------------------------ policy losses
# Uniform loss signature: (logprobs, old_logprobs, advantages, response_mask [N,T], clip_low, clip_high,
# dual_clip_c) -> (pg_losses [N,T], clipped [N,T] bool)
def _ppo_clip(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, dual_clip_c):
    return ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low, clip_high, dual_clip_c)


def _gspo(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, dual_clip_c):
    return gspo_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "ppo_clip": _ppo_clip,   # token ratio, clip-higher and optional dual clip (PPO, DAPO)
    "gspo": _gspo,           # sequence ratio (GSPO, 2507.18071)
}


def policy_loss(name: str, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.2,
                dual_clip_c: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-token policy loss and clip indicator by name; all tensors [n,T] (logprobs with grad)."""
    fn = POLICY_LOSSES.get(name)
    if fn is None:
        raise ValueError(f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)}")
    return fn(logprobs, old_logprobs, advantages, response_mask, clip_low, clip_high, dual_clip_c)
