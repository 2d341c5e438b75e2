"""The VAR loss path (var_trainer.policy_loss with the modifiers' token weights): zero gradient where the mask is 0
or the stage is inactive, equality with vanilla token-mean GRPO at an all-ones mask and α = 0 (spec §1.8 item 4),
and the spatial reward extras (boxes) that feed the mask."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from rltune import algo
from rltune.config.schema import AlgoConfig, RewardSpec
from rltune.modifiers.base import LossContext, StepState
from rltune.modifiers.pipeline import ModifierPipeline
from rltune.modifiers.scale_reweight import ScaleReweight
from rltune.modifiers.var_mask import VarMask
from rltune.reward import RewardInput, RewardManager
from rltune.visual.var_trainer import _reward_extras, policy_loss
from rltune_rewards.spatial import RegionBrightness, region_brightness, saliency_map

SCALES = [(1, 1), (2, 2), (4, 4)]
T, V, N = 21, 5, 4


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, T, V, generator=g).requires_grad_(True)
    tokens = torch.randint(0, V, (N, T), generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])[:, None].expand(N, T).clone()
    idx = torch.cat([torch.full((h * w,), t) for t, (h, w) in enumerate(SCALES)])
    extras = {"scale_idx": idx.expand(N, -1), "scale_hw": torch.tensor(SCALES).expand(N, -1, -1),
              "image_hw": torch.tensor([8, 8]).expand(N, 2)}
    return logits, tokens, adv, extras


def _loss(logits, tokens, adv, mask, mods, extras):
    ctx = LossContext(torch.arange(N), torch.zeros(N, T), torch.zeros(N, T), adv, mask, StepState(0, 0), None, extras,
                      total_rows=N)
    tw = ModifierPipeline(mods).token_weights(ctx)
    m = mask & tw.mask if tw.mask is not None else mask
    a = AlgoConfig()
    agg = functools.partial(algo.aggregate, mode=a.loss_agg, **algo.global_denominators(m))
    return policy_loss(logits, tokens, None, adv, m, tw.weight, a, agg)[0], tw


def test_zero_gradient_where_mask_is_zero_or_stage_inactive():
    logits, tokens, adv, extras = _batch()
    # rows 0/1: a box on the top-left 2x2 pixels (= fine token (0,0) of the 4x4 grid of an 8px image); rows 2/3: the
    # bottom-right quarter -> max-pooled masks differ per row
    extras["boxes"] = torch.tensor([[[0.0, 0, 2, 2]], [[0.0, 0, 2, 2]], [[4.0, 4, 8, 8]], [[4.0, 4, 8, 8]]])
    stage = torch.zeros(N, T, dtype=torch.bool)
    stage[:, 1:] = True                                           # a suffix step from split = 1
    loss, tw = _loss(logits, tokens, adv, stage, [("mask", VarMask(source="boxes", mode="max", alpha=0.7))], extras)
    loss.backward()
    g = logits.grad.abs().sum(-1)                                  # [N,T]
    zero = (tw.weight == 0) | ~stage
    assert zero[:, 0].all() and zero.sum() > 0 and (~zero).sum() > 0
    assert (g[zero] == 0).all()                                    # exactly zero, not small
    assert (g[~zero] > 0).all()
    fine = torch.zeros(4, 4, dtype=torch.bool)
    fine[0, 0] = True
    assert torch.equal(~zero[0, 5:], fine.flatten())


def test_all_ones_mask_and_alpha_zero_equal_vanilla_token_mean_grpo():
    logits, tokens, adv, extras = _batch(1)
    mask = torch.ones(N, T, dtype=torch.bool)
    extras["boxes"] = torch.tensor([[[0.0, 0, 8, 8]]]).expand(N, 1, 4)     # the box covers the whole image
    vanilla, _ = _loss(logits, tokens, adv, mask, [], extras)
    (g_van,) = torch.autograd.grad(vanilla, logits)
    for mods in ([("m", VarMask(source="boxes", alpha=0.0))], [("m", VarMask(source="none", alpha=0.0))],
                 [("r", ScaleReweight(alpha=0.0))]):
        loss, tw = _loss(logits, tokens, adv, mask, mods, extras)
        assert torch.equal(tw.weight, torch.ones(N, T))
        (g,) = torch.autograd.grad(loss, logits)
        assert torch.allclose(loss, vanilla, atol=1e-7) and torch.allclose(g, g_van, atol=1e-8)
    # and vanilla is the token mean of −A·ratio (ratio = 1 on-policy): −mean(A)
    assert vanilla.item() == pytest.approx(-adv.mean().item(), abs=1e-6)


def test_panw_with_mask_is_the_spec_per_sample_normalised_sum():
    logits, tokens, adv, extras = _batch(2)
    extras["boxes"] = torch.tensor([[[0.0, 0, 4, 4]], [[4.0, 0, 8, 4]], [[0.0, 4, 4, 8]], [[2.0, 2, 6, 6]]])
    mask = torch.ones(N, T, dtype=torch.bool)
    loss, tw = _loss(logits, tokens, adv, mask, [("m", VarMask(source="boxes", mode="area", alpha=0.7))], extras)
    # spec §0.2: L = (1/B) Σ_b Σ_j k_j M_bj ℓ_bj / Σ_j k_j M_bj with ℓ = −A (ratio 1)
    from rltune.modifiers.var_mask import boxes_to_mask, propagate_mask

    M = torch.cat([p.flatten(1) for p in propagate_mask(boxes_to_mask(extras["boxes"], (8, 8), (4, 4)), SCALES,
                                                        "area")], 1)
    k = torch.tensor([1.0] + [4 ** -0.7] * 4 + [16 ** -0.7] * 16)
    expect = (-(adv * k * M).sum(1) / (k * M).sum(1)).mean()
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)


def test_region_reward_returns_boxes_and_saliency_through_the_manager():
    img = torch.zeros(2, 3, 8, 8)
    img[0, :, :4, :4] = 2.0
    meta = {"region": [[0, 0, 4, 4], [4, 4, 8, 8]]}
    inp = RewardInput(prompts=["a", "b"], completions=["", ""], completion_ids=[[], []], meta=meta, images=img)
    mgr = RewardManager([RewardSpec(use="region_brightness", args={"saliency": True})])
    res = mgr(inp)
    assert res.rewards.tolist() == [2.0, 0.0]
    assert res.extras["region_brightness/boxes"] == [[[0, 0, 4, 4]], [[4, 4, 8, 8]]]
    assert "reward/region_brightness/boxes" not in res.metrics          # carried, not logged
    ex = _reward_extras(res.extras, 2)
    assert ex["boxes"].shape == (2, 1, 4) and ex["saliency"].shape == (2, 8, 8)
    sal = ex["saliency"]
    assert (sal[0, :4, :4] > 0).all() and sal[0].sum() == pytest.approx(sal[0, :4, :4].sum().item())
    assert torch.allclose(sal[0].sum(), torch.tensor(1.0))    # R = mean of 3·16 pixels: |∂R/∂x| sums to 1


def test_reward_extras_padding_and_numbers():
    ex = _reward_extras({"det/boxes": [[[0, 0, 1, 1], [1, 1, 2, 2]], []], "det/conf": [0.5, None]}, 2)
    assert ex["boxes"].shape == (2, 2, 4) and torch.isnan(ex["boxes"][1]).all()
    assert ex["conf"][0] == 0.5 and math.isnan(ex["conf"][1])
    with pytest.raises(ValueError, match="already has"):
        _reward_extras({"a/boxes": [[]], "b/boxes": [[]]}, 1)


def test_saliency_map_of_a_differentiable_reward():
    img = torch.rand(1, 3, 4, 4)
    box = torch.tensor([[1, 1, 3, 3]])
    sal = saliency_map(lambda x: region_brightness(x, box), img)
    expect = torch.zeros(1, 4, 4)
    expect[0, 1:3, 1:3] = 3 / 12                                    # 3 channels × 1/(3·4)
    assert torch.allclose(sal, expect)
    assert RegionBrightness()(RewardInput(["p"], [""], [[]], {"region": [[1, 1, 3, 3]]}, images=img)).extras["boxes"] \
        == [[[1, 1, 3, 3]]]
