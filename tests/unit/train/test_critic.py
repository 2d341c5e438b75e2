"""The critic's update (rltune/train/critic.py) runs the optimizer loop the policy update runs
(rltune/train/update.py: accumulate_steps): its value loss on a hand-computed case, micro-batch invariance, and the
loop's skip rule and step counting under the critic's metric names."""

import math

import pytest
import torch

from rltune.config.schema import CriticConfig, ModelConfig, TrainConfig
from rltune.train.critic import Critic, finish_critic_metrics
from rltune.train.torch_engine import TorchEngine
from rltune.train.update import CRITIC_KEYS, POLICY_KEYS, accumulate_steps, micro_batches

TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}


def _critic(micro: int, **cfg) -> Critic:
    return Critic(CriticConfig(tiny=TINY, lr=1e-2, **cfg), ModelConfig(tiny=TINY), None, seed=0,
                  micro_batch_size=micro)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 20, (2, 5), generator=g)
    old = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    returns = torch.tensor([[1.0, 2.0], [0.5, 3.0]])
    mask = torch.tensor([[True, True], [True, False]])
    return ids, torch.ones(2, 5, dtype=torch.long), old, returns, mask


@pytest.mark.parametrize("micro", [2, 1])
def test_value_loss_hand_computed(micro):
    """The value head starts at 0, so V ≡ 0 at the first forward. Clip 0.5 around V_old, vf_coef 2:
    row 0: t0 max((0−1)², (0−1)²) = 1; t1 V_clip = 0.5: max((0−2)², (0.5−2)²) = 4; row 1: t0 V_clip = −0.5:
    max((0−0.5)², (−0.5−0.5)²) = 1; t1 masked. Token mean 6/3 = 2, × ½ × vf_coef 2 = 2.0. V is outside
    V_old ± 0.5 at 2 of the 3 tokens."""
    c = _critic(micro, vf_coef=2.0, value_clip=0.5)
    ids, am, old, ret, mask = _batch()
    sums = c.update(ids, am, [torch.arange(2)], old, ret, mask)
    out = finish_critic_metrics(sums, 1, old, ret, mask)
    assert out["loss/value"] == pytest.approx(2.0, abs=1e-6)
    assert out["critic/value_clip_frac"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["critic/grad_norm"] > 0 and "critic/skipped_steps" not in out


def test_micro_batch_size_does_not_change_the_critic_update():
    """2 epochs × 2 mini-batches of one row each (4 optimizer steps) and 1 epoch over both rows: micro-batches of
    1 row and of the whole mini-batch give the same parameters."""
    ids, am, old, ret, mask = _batch()
    for plan in ([torch.arange(2)], [torch.tensor([0]), torch.tensor([1])] * 2):
        a, b = _critic(2), _critic(1)
        for c in (a, b):
            c.update(ids, am, plan, old, ret, mask)
        moved = False
        for (n, p), (_, q), (_, p0) in zip(a.model.named_parameters(), b.model.named_parameters(),
                                           _critic(2).model.named_parameters()):
            assert torch.allclose(p, q, atol=1e-6), n
            moved |= not torch.equal(p, p0)
        assert moved


def test_micro_batches_split_rows_and_token_budget():
    mini = torch.arange(5)
    assert [r.tolist() for r in micro_batches(mini, None, 2)] == [[0, 1], [2, 3], [4]]
    assert [r.tolist() for r in micro_batches(mini, None, 2, rank=1, world_size=2)] == [[3, 4]]
    lengths = torch.tensor([3, 3, 3, 1, 5])
    assert [r.tolist() for r in micro_batches(mini, lengths, 8, max_tokens=6)] == [[0, 1], [2, 3], [4]]


def test_accumulate_steps_skips_a_non_finite_step_and_counts_under_the_given_names():
    """Mini-batch 1's loss is NaN: its step is skipped (weights untouched), the other two are taken."""
    lin = torch.nn.Linear(2, 1)
    eng = TorchEngine(lin, TrainConfig(lr=0.1), total_steps=3)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])

    def loss(rows, mini, denom, acc):
        out = lin(x[rows]).sum() / denom["num_tokens"]
        acc["seen"] += len(rows)
        return out * math.nan if 1 in rows.tolist() else out

    split = lambda mini: list(mini.split(1))  # noqa: E731
    plan = [torch.tensor([0]), torch.tensor([1]), torch.tensor([2])]
    acc = accumulate_steps(eng, plan, torch.ones(3, 1, dtype=torch.bool), "token-mean", split, loss, POLICY_KEYS)
    assert acc["train/optimizer_steps"] == 2.0 and acc["train/skipped_step"] == 1.0 and acc["seen"] == 3
    assert all(torch.isfinite(p).all() for p in lin.parameters())
    crit = accumulate_steps(eng, plan[:1], torch.ones(3, 1, dtype=torch.bool), "token-mean", split, loss,
                            CRITIC_KEYS)
    assert set(crit) == {"seen", "critic/grad_norm"}
