"""rltune/train/shared.py and the one "is this group's reward constant" test (rltune.algo.flat_groups), with
hand-computed values."""

import math
from types import SimpleNamespace

import pytest
import torch

from rltune.algo import dynamic_sampling_keep, flat_group_frac, flat_groups
from rltune.train.shared import best_worst_samples, eval_metrics, minibatches, step_seed

GID = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
RAW = torch.tensor([1.0, 1.0, 0.0, 1.0, math.nan, math.nan, 0.5, math.nan])


def test_flat_groups_constant_unscorable_and_single_scorable_rows():
    # group 0 constant, 1 varies, 2 has no scorable row, 3 one scorable row: all but group 1 are flat
    assert flat_groups(RAW, GID).tolist() == [True, True, False, False, True, True, True, True]
    assert flat_group_frac(RAW, GID) == 0.75
    keep, kept = dynamic_sampling_keep(RAW, GID)
    assert keep.tolist() == [False, False, True, True, False, False, False, False] and kept == [1]
    assert flat_groups(torch.tensor([3, 3, 1, 2]), torch.tensor([5, 5, 9, 9])).tolist() == [True, True, False, False]
    assert flat_group_frac(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0


def test_step_seed_and_minibatch_plan():
    assert step_seed(0, 0) == 17 and step_seed(1, 2) == 1_000_003 + 2 * 7_919 + 17
    assert step_seed(3000, 5) == (3000 * 1_000_003 + 5 * 7_919 + 17) % (2**31 - 1)
    plan = minibatches(5, epochs=2, mini_batches=2)
    assert [p.tolist() for p in plan] == [[0, 1, 2], [3, 4], [0, 1, 2], [3, 4]]


def test_best_worst_samples_order_nan_last_and_no_duplicates():
    raw = torch.tensor([0.25, math.nan, 0.75, -1.0, 0.5])
    got = best_worst_samples(raw, lambda i: {"i": i})
    assert got == [{"i": 2, "reward": 0.75}, {"i": 4, "reward": 0.5}, {"i": 3, "reward": -1.0},
                   {"i": 1, "reward": None}]
    assert [s["i"] for s in best_worst_samples(torch.tensor([1.0, 0.0, 0.5]), lambda i: {"i": i})] == [0, 2, 1]


def test_eval_metrics_first_reward_is_accuracy_and_nan_is_skipped():
    scores = torch.tensor([[1.0, 0.5], [0.0, math.nan], [1.0, 1.5], [0.0, 0.0]])
    specs = [SimpleNamespace(metric_name="acc"), SimpleNamespace(metric_name="fmt")]
    out = eval_metrics(scores, specs, t0=0.0)
    assert out["eval/accuracy"] == out["eval/reward/acc"] == 0.5
    assert out["eval/reward/fmt"] == pytest.approx(2 / 3) and out["time/eval"] > 0
