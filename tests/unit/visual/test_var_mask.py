"""Mask Propagation and PANW: the hand-computed values of spec visual_modifiers.md §1.3.3–1.3.4."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.modifiers.base import LossContext, StepState
from rltune.modifiers.scale_reweight import ScaleReweight
from rltune.modifiers.var_mask import (
    VarMask,
    boxes_to_mask,
    dilate,
    propagate_mask,
    saliency_to_mask,
    scale_weights,
    var_token_weights,
)

PYR = [(1, 1), (2, 2), (4, 4)]


def _spec_mask() -> torch.Tensor:
    m = torch.zeros(1, 4, 4)
    m[0, 0:2, 0:2] = 1
    m[0, 3, 3] = 1
    return m


@pytest.mark.parametrize("recursive", [False, True])
def test_pyramid_1_2_4_both_modes(recursive):
    mx = propagate_mask(_spec_mask(), PYR, "max", recursive)
    ar = propagate_mask(_spec_mask(), PYR, "area", recursive)
    assert [tuple(t.shape) for t in mx] == [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert mx[1][0].tolist() == [[1, 0], [0, 1]] and mx[0][0].tolist() == [[1]]
    assert ar[1][0].tolist() == [[1, 0], [0, 0.25]] and ar[0].item() == pytest.approx(5 / 16, abs=1e-7)
    assert torch.equal(mx[2], _spec_mask()) and torch.equal(ar[2], _spec_mask())
    for a, b in zip(mx, ar):   # max ≥ area, same support, values in [0,1]
        assert (a >= b).all() and torch.equal(a > 0, b > 0) and a.max() <= 1 and b.min() >= 0


def test_single_token():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 1
    ar = propagate_mask(m, PYR, "area")
    mx = propagate_mask(m, PYR, "max")
    assert ar[1][0].tolist() == [[0.25, 0], [0, 0]] and ar[0].item() == pytest.approx(0.0625)
    assert mx[1][0].tolist() == [[1, 0], [0, 0]] and mx[0].item() == 1


def test_non_nested_recursive_differs_from_direct_in_area_mode():
    sc = [(1, 1), (3, 3), (4, 4)]
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1
    direct = propagate_mask(m, sc, "area", recursive=False)
    rec = propagate_mask(m, sc, "area", recursive=True)
    expect3 = torch.tensor([[.25, .25, 0], [.25, .25, 0], [0, 0, 0]])
    assert torch.allclose(direct[1][0], expect3) and torch.allclose(rec[1][0], expect3)
    assert direct[0].item() == pytest.approx(1 / 16) and rec[0].item() == pytest.approx(1 / 9)
    mx = propagate_mask(m, sc, "max")
    assert mx[1][0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_threshold_and_dilate():
    ar = propagate_mask(_spec_mask(), PYR, "area", threshold=0.3)
    assert ar[1][0].tolist() == [[1, 0], [0, 0]] and ar[0].item() == 1.0   # 5/16 > 0.3
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1
    d = dilate(m, 1)[0]
    assert d[0:3, 0:3].eq(1).all() and d.sum() == 9


def test_boxes_conservative_rounding_and_padding():
    # 32 px image, 8x8 grid: 4 px per token. (3,5)-(9,10) covers cols floor(3/4)=0..ceil(9/4)-1=2, rows 1..2.
    boxes = torch.tensor([[[3.0, 5.0, 9.0, 10.0], [math.nan] * 4], [[math.nan] * 4, [math.nan] * 4]])
    m = boxes_to_mask(boxes, (32, 32), (8, 8))
    expect = torch.zeros(8, 8)
    expect[1:3, 0:3] = 1
    assert torch.equal(m[0], expect) and m[1].sum() == 0
    # non-square: H=16, W=32 onto a 2x4 grid; x and y use separate factors
    m2 = boxes_to_mask(torch.tensor([[[8.0, 0.0, 9.0, 9.0]]]), (16, 32), (2, 4))
    assert m2[0].tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]


def test_saliency_top_q():
    sal = torch.zeros(1, 32, 32)
    sal[0, :8, :8] = 2.0
    sal[0, 8:16, :8] = 1.0
    m = saliency_to_mask(sal, (4, 4), q=1 / 16)          # 1 of 16 tokens: the strongest
    assert m[0].tolist()[0] == [1, 0, 0, 0] and m.sum() == 1
    m = saliency_to_mask(sal, (4, 4), q=0.25)            # ties at 0 are never kept
    assert m.sum() == 2 and m[0, 1, 0] == 1


@pytest.mark.parametrize("alpha, expect", [(0, [1 / 21] * 3), (0.5, [1 / 7, 1 / 14, 1 / 28]),
                                           (1, [1 / 3, 1 / 12, 1 / 48])])
def test_panw_weights(alpha, expect):
    w = scale_weights([1, 4, 16], alpha)
    assert torch.allclose(w, torch.tensor(expect, dtype=torch.float64), atol=1e-15)
    assert float((w * torch.tensor([1.0, 4, 16])).sum()) == pytest.approx(1.0, abs=1e-12)


def test_panw_var_d16_reference():
    sizes = [p * p for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    ref = [0.03367, 0.01276, 0.00723, 0.00483, 0.00354, 0.00274, 0.00183, 0.00134, 0.00093, 0.00069]
    w = scale_weights(sizes, 0.7)
    assert max(abs(a - b) for a, b in zip(w.tolist(), ref)) < 5e-6


def _loop_weights(scale_idx, sizes, alpha, active, mask, renormalize):
    out = torch.zeros(scale_idx.shape, dtype=torch.float64)
    for b in range(scale_idx.shape[0]):
        k = [sizes[int(t)] ** -alpha for t in scale_idx[b]]
        m = [float(mask[b, j]) * float(active[b, j]) for j in range(scale_idx.shape[1])]
        src = m if renormalize else [float(x) for x in active[b]]
        z = max(sum(kj * sj for kj, sj in zip(k, src)), 1e-8)
        c = float(active[b].sum())
        for j in range(scale_idx.shape[1]):
            out[b, j] = k[j] * m[j] * c / z
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_token_weights_loop_equals_vectorized(renormalize):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]).expand(3, -1)
    active = torch.rand(3, 21, generator=g) > 0.2
    mask = torch.rand(3, 21, generator=g)
    w = var_token_weights(idx, [1, 4, 16], 0.7, active, mask, renormalize)
    assert torch.allclose(w.double(), _loop_weights(idx, [1, 4, 16], 0.7, active, mask, renormalize), atol=1e-6)
    assert (w[~active] == 0).all()
    if renormalize:   # Σ_j w over the row's active tokens == their count: token-mean gives Σ_j w ℓ / Z per sample
        assert torch.allclose(w.sum(-1), active.sum(-1).float(), atol=1e-5)


def _ctx(n, extras, mask=None):
    T = extras["scale_idx"].shape[1]
    z = torch.zeros(n, T)
    m = torch.ones(n, T, dtype=torch.bool) if mask is None else mask
    return LossContext(torch.arange(n), z, z, z, m, StepState(0, 0), None, extras, total_rows=n)


def _extras(n, boxes):
    idx = torch.cat([torch.full((h * w,), t) for t, (h, w) in enumerate(PYR)])
    return {"scale_idx": idx.expand(n, -1), "scale_hw": torch.tensor(PYR).expand(n, -1, -1),
            "image_hw": torch.tensor([16, 16]).expand(n, 2), "boxes": boxes}


def test_var_mask_modifier_boxes_and_empty_fallback():
    # row 0: box over pixels (0,0)-(8,8) of a 16px image = top-left 2x2 tokens of the 4x4 grid; row 1: no box
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0]], [[math.nan] * 4]])
    mod = VarMask(source="boxes", mode="max", alpha=0.0)
    tw = mod.token_weights(_ctx(2, _extras(2, boxes)))
    w = tw.weight
    # row 0: active tokens = 1 (1x1) + 1 (2x2) + 4 (4x4) = 6 of 21; each gets 21/6
    expect = torch.zeros(21)
    expect[0], expect[1] = 1, 1
    fine = torch.zeros(4, 4)
    fine[:2, :2] = 1
    expect[5:] = fine.flatten()
    assert torch.allclose(w[0], expect * 21 / 6)
    assert torch.allclose(w[1], torch.ones(21))            # empty -> all ones, counted
    assert mod.on_step_end({}, None)["empty_frac"] == 0.5 and mod.state_dict() == {"empty_count": 1}


def test_scale_gate_and_stage_mask():
    ex = _extras(1, torch.full((1, 1, 4), math.nan))
    stage = torch.zeros(1, 21, dtype=torch.bool)
    stage[:, :5] = True                                   # a prefix step: scales 0 and 1 only
    tw = VarMask(source="none", alpha=0.0, scales=[1]).token_weights(_ctx(1, ex, stage))
    assert tw.mask[0].tolist() == [False] + [True] * 4 + [False] * 16
    assert torch.allclose(tw.weight[0, 1:5], torch.ones(4)) and (tw.weight[0, [0] + list(range(5, 21))] == 0).all()


def test_scale_reweight_matches_panw():
    ex = _extras(2, torch.full((2, 1, 4), math.nan))
    w = ScaleReweight(alpha=0.5).token_weights(_ctx(2, ex)).weight
    expect = torch.tensor([1 / 7] + [1 / 14] * 4 + [1 / 28] * 16) * 21
    assert torch.allclose(w[0], expect) and torch.allclose(w[1], expect)


def test_no_var_layout_is_an_error_not_a_silent_noop():
    from rltune.modifiers.scale_reweight import ScaleReweight

    ctx = LossContext(torch.arange(2), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                      torch.ones(2, 3, dtype=torch.bool), StepState(0, 0))
    for mod in (VarMask(), ScaleReweight()):
        with pytest.raises(ValueError, match="VAR token layout.*model.kind: var"):
            mod.token_weights(ctx)
