"""The shared optimizer path (TorchEngine) that text, VAR and diffusion all use: the one LR schedule with
hand-computed values, and the skip rule (a skipped step moves neither weights, optimizer state nor schedule)."""

import math

import pytest
import torch

from rltune.config.schema import TrainConfig
from rltune.train.torch_engine import TorchEngine, lr_schedule


@pytest.mark.parametrize("kind, expect", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 1 - 1 / 8, 1 - 2 / 8]),   # decay over the 8 steps after warmup
    ("cosine", [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in (0, 1, 2)]),
])
def test_lr_schedule_warmup_then_decay(kind, expect):
    f = lr_schedule(TrainConfig(scheduler=kind, warmup_steps=2), total=10)
    assert [f(s) for s in range(5)] == pytest.approx(expect)


def test_skipped_step_leaves_weights_optimizer_and_schedule():
    model = torch.nn.Linear(2, 1)
    eng = TorchEngine(model, TrainConfig(lr=0.1, scheduler="linear", warmup_steps=2), total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[1.0, float("inf")]])).sum().backward()
    assert not eng.grads_finite()
    lr0 = eng.lr
    eng.skip_step()
    assert eng.scheduler.last_epoch == 0 and eng.lr == lr0 and not eng.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model(torch.tensor([[1.0, 2.0]])).sum().backward()
    assert eng.grads_finite() and eng.step() > 0
    assert eng.scheduler.last_epoch == 1 and eng.lr == pytest.approx(0.1)   # warmup: step 1 of 2 -> 2/2
