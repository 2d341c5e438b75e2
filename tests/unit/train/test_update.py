"""run_update and finish_metrics (rltune/train/update.py), the one update every family drives: hand-computed
metric reduction over ranks and steps, and the on-policy loss value -mean(A) over the mask (ratio 1)."""

import pytest
import torch

from rltune.config.schema import ModelConfig, TrainConfig
from rltune.models.policy import load_policy
from rltune.modifiers.base import StepState
from rltune.modifiers.pipeline import ModifierPipeline
from rltune.train.torch_engine import TorchEngine
from rltune.train.update import UpdateInputs, UpdateSpec, finish_metrics, run_update


def test_finish_metrics_adds_ranks_and_averages_over_the_plan():
    ranks = [{"loss/policy": 1.0, "train/grad_norm": 4.0, "train/optimizer_steps": 2.0, "train/lr": 0.2},
             {"loss/policy": 3.0, "train/grad_norm": 4.0, "train/optimizer_steps": 2.0, "train/lr": 0.2}]
    out = finish_metrics(ranks, n_steps=2)
    assert out == {"loss/policy": 2.0, "train/optimizer_steps": 2.0, "train/grad_norm": 2.0, "train/lr": 0.1}
    skipped = finish_metrics([{"loss/policy": 1.0, "train/skipped_step": 2.0, "train/lr": 0.2}], n_steps=2)
    assert skipped == {"loss/policy": 0.5, "train/skipped_step": 2.0}


def _setup(micro: int):
    cfg = ModelConfig(tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
                            "max_position_embeddings": 16})
    model, _ = load_policy(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    N, P, T = 4, 3, 4
    ids = torch.randint(4, 20, (N, P + T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])[:, None].expand(N, T) * mask
    x = UpdateInputs(ids, torch.ones(N, P + T, dtype=torch.long), adv, mask, torch.zeros(N, T))
    spec = UpdateSpec("ppo_clip", "token-mean", 0.2, 0.2, None, "k3", 0.0, 0.0, micro, 1.0)
    return model, TorchEngine(model, TrainConfig(lr=1e-2), total_steps=4), x, spec, adv, mask


@pytest.mark.parametrize("micro", [4, 1])
def test_on_policy_token_mean_loss_is_minus_mean_advantage(micro):
    model, eng, x, spec, adv, mask = _setup(micro)
    out = finish_metrics([run_update(eng, ModifierPipeline([]), x, [torch.arange(4)], spec,
                                     StepState(step=0, seed=0))], 1)
    assert out["loss/policy"] == pytest.approx(-float(adv[mask].sum() / mask.sum()), abs=1e-6)  # -(4·1−2+.5+6)/10
    assert out["loss/policy"] == pytest.approx(-0.85, abs=1e-6)
    assert out["train/optimizer_steps"] == 1.0 and out["algo/ppo_kl"] == pytest.approx(0.0, abs=1e-7)


def test_micro_batches_give_the_same_step():
    a = _setup(4)
    b = _setup(1)
    for model, eng, x, spec, *_ in (a, b):
        run_update(eng, ModifierPipeline([]), x, [torch.arange(4)], spec, StepState(step=0, seed=0))
    for (n, p), (_, q) in zip(a[0].named_parameters(), b[0].named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
