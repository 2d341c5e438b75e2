"""AlignProp and Direct-Align/SRPO: the spec's hand-computed values (visual_modifiers.md §2.5, §3.5 unit tests),
truncation draws of the three published semantics, and the modifiers' losses on a tiny policy."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_helpers import tiny_policy

from rltune.modifiers.base import LossContext, StepState
from rltune.modifiers.ddpo import DDPO
from rltune.modifiers.reward_backprop import (
    AlignProp,
    DirectAlign,
    alignprop_loss,
    ddim_recover,
    flow_recover,
    grad_step_mask,
    srp_score,
    srpo_indices,
    srpo_sigma_grid,
    truncation_index,
)
from rltune.visual.diffusion_context import DiffusionLossContext


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- truncation draws
def test_fixed_and_full_truncation():
    assert truncation_index("fixed", 50, _g()) == 49                  # "AlignProp K=1"
    assert truncation_index("fixed", 50, _g(), fixed=40) == 40
    assert truncation_index("full", 50, _g()) == 0
    assert grad_step_mask("fixed", 10, _g()).tolist() == [False] * 9 + [True]
    with pytest.raises(ValueError):
        truncation_index("fixed", 10, _g(), fixed=10)


def test_uniform_draws_cover_1_to_T_minus_1():
    seen = [truncation_index("uniform", 10, _g(s)) for s in range(400)]
    assert set(seen) == set(range(1, 10))                               # b = 0 (K = T) is redrawn


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_gaussian_draw_truncates_toward_zero_as_the_official_code():
    # AlignProp's sd_pipeline.py: b = int(Normal(42, 5).sample()), redrawn while b >= T or b < 1. Replaying the
    # generator's normal draws gives the same b; rounding to nearest (the old behaviour) differs for ~half the seeds.
    for s in range(200):
        g, ref = _g(s), None
        while ref is None:
            b = int(42.0 + 5.0 * float(torch.randn((), generator=g)))
            ref = b if 1 <= b < 50 else None
        assert truncation_index("gaussian", 50, _g(s)) == ref


def test_gaussian_draw_distribution_official_defaults():
    n = 6000
    bs = torch.tensor([truncation_index("gaussian", 50, _g(s)) for s in range(n)], dtype=torch.float64)
    assert bs.min() >= 1 and bs.max() <= 49
    # Exact law: P(b = k) ∝ Φ((k+1−42)/5) − Φ((k−42)/5), k = 1..49: mean 40.911, std 4.473 (K = 50 − b ≈ 9.1).
    # Rounding to nearest would give mean 41.304, 6.8 standard errors away.
    p = torch.tensor([_normal_cdf((k + 1 - 42) / 5) - _normal_cdf((k - 42) / 5) for k in range(1, 50)],
                     dtype=torch.float64)
    p = p / p.sum()
    ks = torch.arange(1, 50, dtype=torch.float64)
    mean, std = float((p * ks).sum()), float((p * ks**2).sum() - (p * ks).sum() ** 2) ** 0.5
    assert mean == pytest.approx(40.911, abs=1e-3) and std == pytest.approx(4.473, abs=1e-3)
    assert abs(bs.mean().item() - mean) < 3.5 * std / math.sqrt(n)
    assert bs.std().item() == pytest.approx(std, rel=0.05)
    # The largest index T − 1 = 49 (K = 1) holds x ∈ [49, 50): 2.7 % of the mass.
    assert (bs == 49).double().mean().item() == pytest.approx(float(p[-1]), abs=0.007)
    assert truncation_index("gaussian", 50, _g(3)) == truncation_index("gaussian", 50, _g(3))


def test_official_mask_is_a_contiguous_tail_per_rollout():
    for s in range(50):
        m = grad_step_mask("gaussian", 20, _g(s))
        b = int(m.nonzero()[0])
        assert m.tolist() == [False] * b + [True] * (20 - b) and 1 <= b < 20


def test_per_step_trl_semantics():
    # TRL: each step i keeps its graph iff a fresh r_i ~ U{0..T} satisfies r_i <= i: P = (i+1)/(T+1)
    T, n = 10, 3000
    ms = torch.stack([grad_step_mask("per_step", T, _g(s)) for s in range(n)]).float()
    expected = (torch.arange(T) + 1) / (T + 1)
    assert torch.allclose(ms.mean(0), expected, atol=0.035)
    contiguous = [bool(torch.equal(m.bool(), torch.arange(T) >= int(m.nonzero()[0]))) for m in ms[:200]]
    assert not all(contiguous)                                          # not a single truncation point
    assert ms.sum(1).min() >= 1                                         # never K = 0


def test_alignprop_loss_forms():
    r = torch.tensor([2.0, 12.0])
    assert alignprop_loss(r).tolist() == [-2.0, -12.0]
    assert alignprop_loss(r, "target", 10.0).tolist() == [8.0, 2.0]
    assert alignprop_loss(r, "one_minus").tolist() == [-1.0, -11.0]


# --------------------------------------------------------------------------------------- Direct-Align
def test_srpo_index_logic():
    # spec §3.5 (3): L = 1000, ratio 0.9, sel = 500 -> k = 100 (float truncation), denoise (400, 500),
    # inversion mid = 400 -> (500, 600); sel = 50 -> k = 50 (clipped)
    assert int((1 - 0.9) * 1000) + 1 == 100
    assert srpo_indices(500) == (100, (500, 400, 500), (400, 500, 600))
    assert srpo_indices(50)[0] == 50
    assert srpo_indices(50)[2] == (1, 1000 - 1 - 50, 999)              # mid = max(sel − k, 1)
    assert srpo_indices(995)[0] == 5


def test_srpo_sigma_grid():
    g = srpo_sigma_grid()
    assert g.shape == (1000,)
    assert g[0].item() == pytest.approx(0.9642857, abs=1e-6) and g[-1].item() == pytest.approx(0.75, abs=1e-6)
    assert srpo_sigma_grid(train_timestep=(5, 30))[-1].item() == pytest.approx(0.6666667, abs=1e-6)
    assert torch.allclose(srpo_sigma_grid(sigma_range=(0.9, 0.3))[[0, -1]], torch.tensor([0.9, 0.3]))


def test_flow_one_step_recovery_is_exact_with_oracle_velocity():
    x0, eps = torch.randn(2, 3, 8, 8, generator=_g(1)), torch.randn(2, 3, 8, 8, generator=_g(2))
    for s_in, s_out in [(0.9, 0.8), (0.8, 0.9)]:                      # denoise, inversion
        x_in = (1 - s_in) * x0 + s_in * eps
        assert torch.allclose(flow_recover(x_in, eps - x0, eps, s_in, s_out), x0, atol=1e-5)


def test_flow_recovery_derivative_sign():
    # spec §3.5 (2): ∂x̂_0/∂v = −Δσ/(1−σ_lo) (denoise), +Δσ/(1−σ_hi) (inversion)
    x0, eps = torch.randn(1, 3, 4, 4, generator=_g(3)), torch.randn(1, 3, 4, 4, generator=_g(4))
    hi, lo = 0.9, 0.7
    v = (eps - x0).clone().requires_grad_(True)
    g_d, = torch.autograd.grad(flow_recover((1 - hi) * x0 + hi * eps, v, eps, hi, lo).sum(), v)
    g_i, = torch.autograd.grad(flow_recover((1 - lo) * x0 + lo * eps, v, eps, lo, hi).sum(), v)
    assert torch.allclose(g_d, torch.full_like(g_d, -(hi - lo) / (1 - lo)))
    assert torch.allclose(g_i, torch.full_like(g_i, (hi - lo) / (1 - hi)))


def test_ddim_recovery_exact_and_derivative():
    x0, eps = torch.randn(2, 3, 4, 4, generator=_g(5)), torch.randn(2, 3, 4, 4, generator=_g(6))
    a_hi, a_lo = torch.tensor(0.36), torch.tensor(0.64)               # (α, σ) = (0.6, 0.8) and (0.8, 0.6)
    x_in = a_hi.sqrt() * x0 + (1 - a_hi).sqrt() * eps
    e = eps.clone().requires_grad_(True)
    out = ddim_recover(x_in, e, eps, a_hi, a_lo)
    assert torch.allclose(out, x0, atol=1e-5)
    g, = torch.autograd.grad(out.sum(), e)
    assert torch.allclose(g, torch.full_like(g, 0.6 / 0.8 - 0.8 / 0.6), atol=1e-5)    # σ_out/α_out − σ_in/α_in


def test_srp_score_formula():
    f = torch.nn.functional.normalize(torch.randn(3, 5, generator=_g(7)), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(3, 5, generator=_g(8)), dim=-1)
    n = torch.nn.functional.normalize(torch.randn(3, 5, generator=_g(9)), dim=-1)
    assert torch.allclose(srp_score(f, p, n, 0.25), (f * (1.25 * p - n)).sum(-1))
    assert torch.allclose(srp_score(f, p, n, 0.0), (f * (p - n)).sum(-1))
    assert torch.allclose(srp_score(f, n, p, 0.0), -srp_score(f, p, n, 0.0))        # roles swapped negate (k=0)
    assert torch.allclose(srp_score(f, p, n, 0.1, scale=5.0), 5 * srp_score(f, p, n, 0.1))


# ---------------------------------------------------------------------------------------- the modifiers
def _redness(images, prompts):
    x = images * 2 - 1
    return x[:, 0].mean((1, 2)) - 0.5 * (x[:, 1] + x[:, 2]).mean((1, 2))


def _ctx(pol, n=2, step=3, scorers=()):
    ro = pol.rollout(["a"] * n, _g(step))
    return DiffusionLossContext(torch.arange(n), ro, pol, _redness, scorers, torch.zeros(n),
                                StepState(step=step, seed=11, total_steps=10), total_rows=n)


def test_modifiers_refuse_text_contexts():
    """Not a silent {}: `rltune validate` keeps them out of other families, and a direct call says why."""
    lp = torch.zeros(2, 3, requires_grad=True)
    ctx = LossContext(torch.arange(2), lp, lp.detach(), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool),
                      StepState(step=0, seed=0))
    for mod in (AlignProp(), DirectAlign(), DDPO()):
        with pytest.raises(TypeError, match="diffusion trainer only"):
            mod.extra_loss(ctx)


def test_alignprop_loss_value_k_and_lora_gradient():
    pol = tiny_policy("ddim", steps=5)
    calls = []
    pol.denoiser.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    ctx = _ctx(pol)
    calls.clear()
    mod = AlignProp(truncation="fixed", loss_coeff=0.5)                 # K = 1
    loss = mod.extra_loss(ctx)["loss"]
    assert sum(calls) == 1 and len(calls) == 1                          # only the last step is re-run, with grad
    expected = -_redness(ctx.rollout.images, None).mean() * 0.5         # resumed image == rollout image
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    g = [p.grad for _, p in pol.trainable() if p.grad is not None]
    assert g and sum(float(x.abs().sum()) for x in g) > 0
    assert mod.on_step_end({}, None) == {"grad_steps": 1.0, "reward_grad_path": pytest.approx(-expected.item() / 0.5,
                                                                                             abs=1e-5)}


def test_alignprop_draw_is_deterministic_per_step_and_rows():
    pol = tiny_policy("ddim", steps=10)
    ks = []
    for step in (3, 3, 4, 5, 6, 7):
        mod = AlignProp(truncation="uniform")
        mod.extra_loss(_ctx(pol, step=step))
        ks.append(mod.on_step_end({}, None)["grad_steps"])
    assert ks[0] == ks[1] and len(set(ks)) > 1


@pytest.mark.parametrize("kind", ["flow", "ddim"])
def test_direct_align_plain_reward_loss_and_grad(kind):
    pol = tiny_policy(kind, steps=3, lora=False)
    ctx = _ctx(pol)
    mod = DirectAlign(srp=False, use_inversion=False, loss="neg", sigma_range=(0.9, 0.3))
    loss = mod.extra_loss(ctx)["loss"]
    m = mod.on_step_end({}, None)
    assert loss.item() == pytest.approx(-m["score_denoise"], abs=1e-5)
    assert 0.3 <= m["sigma_lo"] < m["sigma_hi"] <= 0.9
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for _, p in pol.trainable() if p.grad is not None) > 0


def test_direct_align_srp_uses_text_scorer_and_swaps_roles():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("image_scorer", Path(__file__).parents[3] / "rewards/image_scorer.py")
    mod_ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod_)
    scorer = mod_.TinyClipScorer()
    pol = tiny_policy("flow", steps=3, lora=False)
    ctx = _ctx(pol, scorers=(scorer,))
    mod = DirectAlign(srp=True, use_inversion=True, loss="neg", sigma_range=(0.9, 0.3), positive_words=["Red"],
                      negative_words=["Blue"])
    loss = mod.extra_loss(ctx)["loss"]
    m = mod.on_step_end({}, None)
    assert loss.item() == pytest.approx(-(m["score_denoise"] + m["score_inversion"]) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="text-image scorer"):
        DirectAlign(srp=True).extra_loss(_ctx(pol))
    with pytest.raises(ValueError, match="use_inversion needs srp"):
        DirectAlign(srp=False, use_inversion=True)
