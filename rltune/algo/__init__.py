"""The algorithm core: advantage estimators and losses as pure tensor functions (shapes in each docstring;
no config objects, no Ray or DeepSpeed), tested loop == vectorized."""

from rltune.algo.advantages import (
    dynamic_sampling_keep,
    flat_group_frac,
    flat_groups,
    gae,
    group_mean,
    group_norm,
    outcome_to_token_rewards,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
    singleton_groups,
)
from rltune.algo.dispatch import ESTIMATORS, NEEDS_VALUES, POLICY_LOSSES, estimate, policy_loss
from rltune.algo.kl_control import KLController
from rltune.algo.losses import (
    AggDenominators,
    AggMode,
    aggregate,
    global_denominators,
    gspo_loss,
    kl_penalty,
    ppo_clip_loss,
    soft_overlong_penalty,
    value_loss,
)

__all__ = [
    "ESTIMATORS",
    "KLController",
    "NEEDS_VALUES",
    "POLICY_LOSSES",
    "AggDenominators",
    "AggMode",
    "aggregate",
    "dynamic_sampling_keep",
    "flat_group_frac",
    "flat_groups",
    "estimate",
    "gae",
    "global_denominators",
    "group_mean",
    "group_norm",
    "gspo_loss",
    "kl_penalty",
    "outcome_to_token_rewards",
    "policy_loss",
    "ppo_clip_loss",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "rloo",
    "singleton_groups",
    "soft_overlong_penalty",
    "value_loss",
]
