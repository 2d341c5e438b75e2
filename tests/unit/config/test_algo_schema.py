"""Invalid algorithm combinations fail at recipe load and say what to change."""

import warnings

import pytest

from rltune.config.load import RecipeError, recipe_from_dict
from tests.conftest import TINY, merge


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"algo": {"advantage": "gae"}}, ["advantage=gae needs a value model", "`critic:`", "group_norm, group_mean"]),
        ({"critic": {"lr": 1e-5}}, ["only used by algo.advantage=gae", "got group_norm"]),
        ({"algo": {"advantage": "gae"}, "critic": {"path": "x", "tiny": {}}}, ["at most one of critic.path"]),
        ({"algo": {"policy_loss": "gspo", "mini_batches": 2}}, ["policy_loss=gspo", "seq-mean-token-mean"]),
        ({"algo": {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "dual_clip_c": 3.0}},
         ["dual_clip_c applies to policy_loss=ppo_clip"]),
        ({"algo": {"kl_controller": "adaptive", "kl_coef": 0.1}}, ["adaptive needs algo.kl_target"]),
        ({"algo": {"kl_controller": "adaptive", "kl_target": 0.1}}, ["set kl_coef > 0"]),
        ({"algo": {"kl_target": 0.1, "kl_coef": 0.1}}, ["kl_target is only used by kl_controller: adaptive"]),
        ({"algo": {"kl_placement": "reward", "kl_estimator": "k3+", "kl_coef": 0.1}}, ["k3+", "use k3"]),
        ({"algo": {"kl_estimator": "k4"}}, ["algo.kl_estimator", "'k3+'"]),
        ({"algo": {"advantage": "grpo"}}, ["algo.advantage", "'group_norm'", "'gae'"]),
        ({"algo": {"mini_batches": 3}}, ["algo.mini_batches=3 must divide", "16", "try 2"]),
        ({"algo": {"mini_batches": 4}, "train": {"micro_batch_size": 3}}, ["micro_batch_size=3 must divide"]),
        ({"algo": {"mini_batches": 2}, "train": {"micro_batch_size": 4}, "rollout": {"prompts_per_step": 3}},
         ["must divide each mini-batch", "= 6", "try 3"]),
        ({"algo": {"dynamic_sampling": {"enabled": True}}, "rollout": {"samples_per_prompt": 1,
                                                                       "prompts_per_step": 8}},
         ["dynamic_sampling needs rollout.samples_per_prompt"]),
        ({"algo": {"dynamic_sampling": {"max_round": 3}}}, ["max_round", "did you mean 'max_rounds'"]),
    ],
)
def test_invalid_combinations_name_the_fix(over, expected):
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(merge(TINY, over))
    for piece in expected:
        assert piece in str(e.value), (piece, str(e.value))


def test_gspo_on_policy_warns_and_off_policy_does_not():
    gspo = {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean"}
    with pytest.warns(UserWarning, match="on-policy.*equals ppo_clip"):
        recipe_from_dict(merge(TINY, {"algo": gspo}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = recipe_from_dict(merge(TINY, {"algo": {**gspo, "mini_batches": 2}}))
    assert r.algo.updates_per_step == 2


def test_valid_algorithm_sections_load():
    r = recipe_from_dict(merge(TINY, {"algo": {"advantage": "gae", "lam": 0.95, "ppo_epochs": 2, "mini_batches": 2},
                                      "critic": {"lr": 1e-4, "warmup_steps": 1}}))
    assert r.critic.value_clip == 0.5 and r.critic.path is None and r.algo.updates_per_step == 4
    r = recipe_from_dict(merge(TINY, {"algo": {"kl_coef": 0.01, "kl_controller": "adaptive", "kl_target": 0.1,
                                               "kl_placement": "reward", "kl_estimator": "k1",
                                               "dynamic_sampling": {"enabled": True, "max_rounds": 0},
                                               "mask_truncated": True}}))
    assert r.algo.kl_horizon == 10_000 and r.algo.dynamic_sampling.max_rounds == 0
