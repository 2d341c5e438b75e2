"""ReDit (spec §3): the hand-computed vectors with injected noise, schedules, flat groups, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.modifiers.base import RewardContext, StepState
from rltune.algo import flat_groups, group_norm
from rltune.modifiers.redit import ReDit, dither, draw_noise, scheduled_sigma

F64 = torch.float64
EPS = torch.tensor([0.03, -0.02, 0.05, -0.01], dtype=F64)
ONE = torch.zeros(4, dtype=torch.long)
MASK = torch.ones(4, 1, dtype=torch.bool)


def _close(a: torch.Tensor, b: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, torch.tensor(b, dtype=a.dtype), atol=atol, rtol=0)


def _ctx(raw: torch.Tensor, gid: torch.Tensor, step: int = 0, total: int = 10, seed: int = 0):
    class _B:  # shape_rewards only reads batch.group_id
        group_id = gid

    return RewardContext(_B(), raw, raw[:, None], StepState(step=step, seed=seed, total_steps=total))


# ------------------------------------------------------------------------------------------- spec numbers
def test_mixed_group_barely_changes() -> None:
    r = torch.tensor([1.0, 0, 0, 0], dtype=F64)
    _close(dither(r, EPS), [1.03, -0.02, 0.05, -0.01])
    _close(group_norm(r, ONE, MASK)[:, 0], [1.5, -0.5, -0.5, -0.5])
    _close(group_norm(dither(r, EPS), ONE, MASK)[:, 0], [1.497267, -0.551111, -0.414553, -0.531603])


def test_flat_group_without_std_scaling_is_centred_noise() -> None:
    _close(group_norm(dither(torch.zeros(4, dtype=F64), EPS), ONE, MASK, scale="none")[:, 0],
           [0.0175, -0.0325, 0.0375, -0.0225])


def test_flat_group_with_std_scaling_has_unit_scale() -> None:
    _close(group_norm(dither(torch.zeros(4, dtype=F64), EPS), ONE, MASK)[:, 0],
           [0.529639, -0.983615, 1.134941, -0.680964])
    # Any constant r and any noise: mean 0, unbiased std 1 (σ only matters through the 1e-6 floor).
    for c, sigma in ((0.0, 0.05), (1.0, 0.1), (0.5, 0.3)):
        eps = draw_noise(8, sigma, "gaussian", torch.Generator().manual_seed(3))
        a = group_norm(dither(torch.full((8,), c, dtype=F64), eps), torch.zeros(8, dtype=torch.long),
                       torch.ones(8, 1, dtype=torch.bool))[:, 0]
        assert abs(float(a.mean())) < 1e-9 and abs(float(a.std()) - 1) < 1e-4


def test_sigma_zero_is_identity_and_nan_stays_nan() -> None:
    raw = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    out = ReDit(sigma=0.0).shape_rewards(raw.clone(), _ctx(raw, ONE))
    assert torch.equal(out[[0, 2, 3]], raw[[0, 2, 3]]) and torch.isnan(out[1])
    out = ReDit(sigma=0.05).shape_rewards(raw.clone(), _ctx(raw, ONE))
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all() and not torch.equal(out[0], raw[0])


# ---------------------------------------------------------------------------------------------- knobs
def test_uniform_half_width_and_noise_std() -> None:
    g = torch.Generator().manual_seed(0)
    u = draw_noise(200_000, 0.05, "uniform", g)
    assert float(u.abs().max()) <= 0.05 * math.sqrt(3) + 1e-12
    assert abs(0.05 * math.sqrt(3) - 0.086603) < 1e-6
    assert abs(float(u.std()) - 0.05) < 5e-4
    n = draw_noise(200_000, 0.05, "gaussian", torch.Generator().manual_seed(0))
    assert abs(float(n.std()) - 0.05) < 5e-4 and abs(float(n.mean())) < 5e-4


def test_reward_range_scales_sigma() -> None:
    raw = torch.zeros(4)
    m = ReDit(sigma=0.05, reward_range=(-1, 1))
    m.shape_rewards(raw.clone(), _ctx(raw, ONE))
    assert m.on_step_end({}, None)["sigma"] == pytest.approx(0.1)


def test_schedules() -> None:
    assert scheduled_sigma(0.1, "constant", 5, 10) == 0.1
    assert scheduled_sigma(0.1, "linear_decay", 0, 10) == pytest.approx(0.1)
    assert scheduled_sigma(0.1, "linear_decay", 5, 10) == pytest.approx(0.05)
    assert scheduled_sigma(0.1, "cosine_decay", 5, 10) == pytest.approx(0.05)
    assert scheduled_sigma(0.1, "cosine_decay", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_sigma(0.1, "linear_decay", 3, 0) == 0.1  # unknown length: constant
    with pytest.raises(ValueError):
        ReDit(schedule="exponential")


def test_flat_group_scale_only_touches_flat_groups() -> None:
    raw = torch.tensor([1.0, 0, 0, 0, 1, 1, float("nan"), 1])
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert flat_groups(raw, gid).tolist() == [False] * 4 + [True] * 4
    eps = torch.full((8,), 0.1)
    assert dither(raw, eps, gid, flat_group_scale=0.5)[[0, 4, 5]].tolist() == pytest.approx([1.1, 1.05, 1.05])
    full, half = ReDit(flat_group_scale=1.0), ReDit(flat_group_scale=0.5)
    a = full.shape_rewards(raw.clone(), _ctx(raw, gid)) - raw
    b = half.shape_rewards(raw.clone(), _ctx(raw, gid)) - raw
    torch.testing.assert_close(b[:4], a[:4])
    torch.testing.assert_close(b[[4, 5, 7]], 0.5 * a[[4, 5, 7]])
    assert full.on_step_end({}, None)["flat_group_frac"] == 0.5


def test_deterministic_per_step_and_rank_and_input_untouched() -> None:
    raw = torch.tensor([1.0, 0, 0, 1])
    keep = raw.clone()
    m = ReDit()
    a = m.shape_rewards(raw.clone(), _ctx(raw, ONE, step=3))
    b = ReDit().shape_rewards(raw.clone(), _ctx(raw, ONE, step=3))
    c = m.shape_rewards(raw.clone(), _ctx(raw, ONE, step=4))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(raw, keep)
    other_rank = RewardContext(_ctx(raw, ONE).batch, raw, raw[:, None], StepState(step=3, seed=0, rank=1))
    assert not torch.equal(m.shape_rewards(raw.clone(), other_rank), a)
    metrics = m.on_step_end({}, None)
    assert set(metrics) == {"sigma", "noise_std", "flat_group_frac"} and m.on_step_end({}, None) == {}
