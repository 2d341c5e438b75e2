"""The name → estimator / policy-loss tables: every recipe name dispatches, with one call signature."""

import typing

import pytest
import torch

from rltune import algo
from rltune.algo import dispatch
from rltune.config.schema import AlgoConfig


def _batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0])
    group_id = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    lengths = torch.tensor([2, 3, 1, 3, 4, 2, 3, 1])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    return rewards, group_id, mask


def test_table_matches_the_schema_choices():
    assert set(algo.ESTIMATORS) == set(typing.get_args(AlgoConfig.model_fields["advantage"].annotation))
    assert set(algo.POLICY_LOSSES) == set(typing.get_args(AlgoConfig.model_fields["policy_loss"].annotation))


@pytest.mark.parametrize("name", sorted(dispatch.ESTIMATORS))
def test_every_name_works(name):
    rewards, group_id, mask = _batch()
    values = torch.rand(mask.shape) * mask
    adv, ret = algo.estimate(name, rewards, group_id, mask, values=values, gamma=1.0, lam=0.95)
    assert adv.shape == mask.shape and torch.isfinite(adv).all()
    assert (adv[~mask] == 0).all()
    assert (ret is not None) == (name in algo.NEEDS_VALUES)
    if ret is not None:
        assert ret.shape == mask.shape


@pytest.mark.parametrize("name, direct", [
    ("group_norm", lambda r, g, m: algo.group_norm(r, g, m)),
    ("group_mean", lambda r, g, m: algo.group_mean(r, g, m)),
    ("rloo", lambda r, g, m: algo.rloo(r, g, m)),
    ("reinforce_pp_baseline", lambda r, g, m: algo.reinforce_pp_baseline(r, g, m)),
    ("reinforce_pp", lambda r, g, m: algo.reinforce_pp(algo.outcome_to_token_rewards(r, m), m)),
])
def test_dispatch_equals_the_direct_call(name, direct):
    rewards, group_id, mask = _batch()
    adv, _ = algo.estimate(name, rewards, group_id, mask)
    torch.testing.assert_close(adv, direct(rewards, group_id, mask))


def test_gae_needs_values():
    rewards, group_id, mask = _batch()
    with pytest.raises(ValueError, match="needs values"):
        algo.estimate("gae", rewards, group_id, mask)
    with pytest.raises(ValueError, match="unknown advantage estimator 'grpo'.*group_norm"):
        algo.estimate("grpo", rewards, group_id, mask)


def test_gae_spec_example_through_the_table():
    # spec §2.7: r=[0,0,1], V=[0.5,0.6,0.7], γ=1, λ=0.95 -> returns [0.96575, 0.985, 1.0]
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = algo.estimate("gae", torch.tensor([1.0]), torch.tensor([0]), mask,
                             values=torch.tensor([[0.5, 0.6, 0.7]]), gamma=1.0, lam=0.95)
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0]]))


def test_token_rewards_sum_into_outcome_estimators():
    """KL in the reward: outcome estimators see r − β·Σ_t kl_t; token estimators see it per token."""
    rewards, group_id, mask = _batch()
    pen = -0.1 * torch.rand(mask.shape)
    seq = rewards + (pen * mask).sum(-1)
    adv, _ = algo.estimate("group_norm", rewards, group_id, mask, token_rewards=pen)
    torch.testing.assert_close(adv, algo.group_norm(seq, group_id, mask))
    adv, _ = algo.estimate("reinforce_pp", rewards, group_id, mask, token_rewards=pen, gamma=0.9)
    tok = algo.outcome_to_token_rewards(rewards, mask) + pen * mask
    torch.testing.assert_close(adv, algo.reinforce_pp(tok, mask, gamma=0.9))
    values = torch.rand(mask.shape) * mask
    adv, ret = algo.estimate("gae", rewards, group_id, mask, values=values, token_rewards=pen, lam=0.9)
    a2, r2 = algo.gae(tok, values, mask, 1.0, 0.9)
    torch.testing.assert_close(adv, a2)
    torch.testing.assert_close(ret, r2)


@pytest.mark.parametrize("name", sorted(dispatch.POLICY_LOSSES))
def test_policy_losses_dispatch(name):
    lp = torch.randn(3, 4, requires_grad=True)
    old = lp.detach() + 0.1 * torch.randn(3, 4)
    adv = torch.randn(3, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    loss, clipped = algo.policy_loss(name, lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.shape == clipped.shape == (3, 4)
    loss.sum().backward()
    assert torch.isfinite(lp.grad).all()
    with pytest.raises(ValueError, match="unknown policy loss"):
        algo.policy_loss("ppo", lp, old, adv, mask)


def test_kl_controller_moves_toward_target():
    up = algo.KLController(0.1, target=0.05, horizon=100)
    assert up.update(0.5, n_samples=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    down = algo.KLController(0.1, target=0.05, horizon=100)
    assert down.update(0.04, n_samples=10) == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))
    fixed = algo.KLController(0.1)
    assert fixed.update(5.0, 100) == 0.1
    sd = up.state_dict()
    again = algo.KLController(0.3, target=0.05)
    again.load_state_dict(sd)
    assert again.coef == up.coef
