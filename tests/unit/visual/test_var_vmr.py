"""VMR (intermediate reward): the estimator values of spec visual_modifiers.md §1.3.2 and §1.8 item 3."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.data.batch import PromptBatch
from rltune.modifiers.base import PromptContext, StepState
from rltune.modifiers.var_vmr import VMR, first_of_prefix, prefix_advantages, prefix_values, soft_value, vmr_stage


def test_soft_value_hand_values():
    assert soft_value(torch.tensor([0.0, 1.0]), 1.0).item() == pytest.approx(math.log((1 + math.e) / 2), abs=1e-12)
    assert soft_value(torch.tensor([0.0, 1.0]), 1.0).item() == pytest.approx(0.620115, abs=1e-6)
    assert abs(soft_value(torch.tensor([0.0, 1.0]), 100.0).item() - 0.5) < 3e-3     # η→∞: mean
    assert soft_value(torch.tensor([0.0, 1.0]), 0.01).item() == pytest.approx(1 - 0.01 * math.log(2), abs=1e-9)
    v = soft_value(torch.tensor([1000.0, 1000.0]), 1e-3)                           # no overflow
    assert math.isfinite(v.item()) and v.item() == pytest.approx(1000.0)


def test_prefix_values_equal_loop_with_nan():
    r = torch.tensor([0.0, 1.0, 2.0, math.nan, math.nan, math.nan, 5.0, -1.0])
    pid = torch.tensor([3, 3, 7, 7, 9, 9, 4, 4])
    v, inv, first = prefix_values(r, pid, eta=0.5)
    for p in pid.unique():
        rows = (pid == p).nonzero().squeeze(-1)
        vals = r[rows][~torch.isnan(r[rows])]
        got = v[inv[rows[0]]].item()
        if len(vals) == 0:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(soft_value(vals, 0.5).item(), abs=1e-12)
        assert first[inv[rows[0]]].item() == rows[0].item()


def test_prefix_advantages_group_normalise_each_prefix_once():
    # one prompt, 3 prefixes with K=2 completions: V = ln((e^0+e^1)/2), ln((e^1+e^1)/2)=1, ln((e^0+e^0)/2)=0
    r = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    pid = torch.tensor([0, 0, 1, 1, 2, 2])
    adv, v = prefix_advantages(r, pid, torch.zeros(6, dtype=torch.long), eta=1.0, eps=0.0)
    vals = torch.tensor([math.log((1 + math.e) / 2), 1.0, 0.0], dtype=torch.float64)
    expect = (vals - vals.mean()) / vals.std()
    assert torch.allclose(adv, expect.repeat_interleave(2)) and torch.allclose(v, vals.repeat_interleave(2))


def test_alternation_and_first_rows():
    assert [vmr_stage(s, 3, 1) for s in range(8)] == ["prefix"] * 3 + ["suffix"] + ["prefix"] * 3 + ["suffix"]
    assert first_of_prefix(torch.tensor([5, 5, 2, 2, 5])).tolist() == [True, False, True, False, False]


def test_on_prompts_attaches_a_typed_plan_without_touching_the_input():
    from rltune.visual.var_plan import RolloutPlan

    pb = PromptBatch(prompts=["class 0", "class 1"], meta={"label": [0, 1]})
    out = VMR(split=2, k=3).on_prompts(pb, PromptContext(StepState(step=0, seed=0)))
    assert out.plan == RolloutPlan("prefix", 2, 3) and out.meta == {"label": [0, 1]}   # no plan columns
    assert pb.plan is None and set(pb.meta) == {"label"}
    out = VMR(split=2, k=3).on_prompts(pb, PromptContext(StepState(step=3, seed=0)))
    assert out.plan == RolloutPlan("suffix", 2, 1)
    with pytest.raises(ValueError, match="0 < split < 4"):
        RolloutPlan("prefix", 4, 1).check(4)
