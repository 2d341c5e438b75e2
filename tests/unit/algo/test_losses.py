"""Value tests for rltune.algo.losses: spec §2 numbers, gradient flow and micro-batch invariance."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.algo.losses import (
    aggregate,
    global_denominators,
    gspo_loss,
    kl_penalty,
    ppo_clip_loss,
    soft_overlong_penalty,
    value_loss,
)

F64 = torch.float64
MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _t(x: list, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _close(a: torch.Tensor, b: list | torch.Tensor, atol: float = 1e-6) -> None:
    b = b if isinstance(b, torch.Tensor) else _t(b)
    torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------ PPO clip
def _ppo_table(dual: float | None):
    ratio = _t([[1.5, 0.5, 1.1, 5.0, 0.7]])
    adv = _t([[1.0, 1.0, -1.0, -1.0, -1.0]])
    logp = ratio.log().requires_grad_()
    loss, clipped = ppo_clip_loss(logp, torch.zeros_like(logp), adv, clip_low=0.2, clip_high=0.28,
                                  dual_clip_c=dual)
    loss.sum().backward()
    return loss.detach(), clipped, logp.grad


def test_ppo_clip_spec_table_with_dual_clip() -> None:
    loss, clipped, grad = _ppo_table(3.0)
    _close(loss, [[-1.28, -0.5, 1.1, 3.0, 0.8]])
    assert clipped.tolist() == [[True, False, False, True, True]]
    flows = (grad != 0).tolist()[0]
    assert flows == [False, True, True, False, False]
    # d(−A·ρ)/d logπ = −A·ρ on the rows where the gradient flows.
    _close(grad[0, [1, 2]], [-0.5, 1.1], atol=1e-12)


def test_ppo_clip_without_dual_clip_keeps_large_ratio() -> None:
    loss, clipped, grad = _ppo_table(None)
    _close(loss, [[-1.28, -0.5, 1.1, 5.0, 0.8]])
    assert clipped.tolist() == [[True, False, False, False, True]]
    assert grad[0, 3].item() == pytest.approx(5.0)


def test_ppo_ratio_log_clamp_and_dual_clip_validation() -> None:
    loss, _ = ppo_clip_loss(_t([[100.0]]), _t([[0.0]]), _t([[-1.0]]))
    assert loss.item() == pytest.approx(math.exp(20))
    with pytest.raises(ValueError):
        ppo_clip_loss(_t([[0.0]]), _t([[0.0]]), _t([[1.0]]), dual_clip_c=1.0)


# ------------------------------------------------------------------------------------------ GSPO
@pytest.mark.parametrize("adv,expect_loss,grad_flows", [(1.0, -1.0004, False), (-1.0, 1.105171, True)])
def test_gspo_spec_example(adv: float, expect_loss: float, grad_flows: bool) -> None:
    logp = _t([[-1.0, -2.0, -0.5, 123.0]]).requires_grad_()            # last position is padding garbage
    old = _t([[-1.1, -2.1, -0.6, -7.0]])
    mask = _t([[1, 1, 1, 0]]).bool()
    loss, clipped = gspo_loss(logp, old, torch.full((1, 4), adv, dtype=F64), mask, clip_low=3e-4, clip_high=4e-4)
    _close(loss[:, :3], [[expect_loss] * 3])
    assert clipped[0, :3].tolist() == [not grad_flows] * 3
    aggregate(loss, mask, "seq-mean-token-mean").backward()
    s = math.exp(0.1)
    assert s == pytest.approx(1.105171, abs=1e-6)
    if grad_flows:   # token view: d/dlogπ_t of mean_t(−A·s_{i,t}) = −A·s/|o|
        _close(logp.grad, [[s / 3, s / 3, s / 3, 0.0]], atol=1e-12)
    else:
        assert (logp.grad == 0).all()


def test_gspo_gradient_equals_sequence_objective_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(3, 5, dtype=F64, generator=g) * 0.05 - 1).requires_grad_()
    old = logp.detach() + 0.01 * torch.randn(3, 5, dtype=F64, generator=g)
    mask = _t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).bool()
    adv = _t([1.0, -2.0, 0.5])[:, None].expand(3, 5)
    loss, _ = gspo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)   # wide clip: nothing clipped
    aggregate(loss, mask, "seq-mean-token-mean").backward()
    lp2 = logp.detach().clone().requires_grad_()
    s = torch.exp(((lp2 - old) * mask).sum(-1) / mask.sum(-1))                   # s_i(θ), differentiable
    (-(adv[:, 0] * s).mean()).backward()
    _close(logp.grad, lp2.grad, atol=1e-12)


# ------------------------------------------------------------------------------------------ KL
def test_kl_spec_example() -> None:
    logp, ref = _t([-1.0, -2.0, -0.5]), _t([-1.2, -1.0, -0.5])
    _close(kl_penalty(logp, ref, "k1"), [0.2, -1.0, 0.0])
    _close(kl_penalty(logp, ref, "abs"), [0.2, 1.0, 0.0])
    _close(kl_penalty(logp, ref, "k2"), [0.02, 0.5, 0.0])
    _close(kl_penalty(logp, ref, "k3"), [0.018731, 0.718282, 0.0])
    _close(kl_penalty(logp, ref, "low_var_kl"), [0.018731, 0.718282, 0.0])


def test_kl_k3_clamps() -> None:
    out = kl_penalty(_t([0.0, 0.0]), _t([50.0, -50.0]), "k3")       # x = ∓50
    assert out.tolist() == [10.0, 10.0]


@pytest.mark.parametrize("kind", ["k1+", "k3+", "abs+"])
def test_kl_straight_through_value_of_base_gradient_of_k2(kind: str) -> None:
    logp = _t([-1.0, -2.0, -0.5]).requires_grad_()
    ref = _t([-1.2, -1.0, -0.5])
    out = kl_penalty(logp, ref, kind)
    _close(out.detach(), kl_penalty(logp.detach(), ref, kind[:-1]), atol=1e-12)
    out.sum().backward()
    _close(logp.grad, (logp.detach() - ref), atol=1e-12)              # d(½x²)/dx = x


def test_kl_unknown_kind() -> None:
    with pytest.raises(ValueError):
        kl_penalty(_t([0.0]), _t([0.0]), "k4")


# ------------------------------------------------------------------------------------------ value loss
def test_value_loss_spec_example() -> None:
    v = _t([[1.2, 0.1]]).requires_grad_()
    out = value_loss(v, _t([[0.5, 0.3]]), _t([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool), clip=0.5)
    assert out.item() == pytest.approx(0.0125, abs=1e-12)


def test_value_loss_clip_takes_the_pessimistic_branch() -> None:
    v = _t([[0.0]]).requires_grad_()
    out = value_loss(v, _t([[1.0]]), _t([[0.0]]), torch.ones(1, 1), clip=0.5)
    assert out.item() == pytest.approx(0.125)                          # ½·(0.5 − 0)², the clipped term
    out.backward()
    assert v.grad.item() == 0.0                                        # clipped branch: no gradient
    assert value_loss(v, _t([[1.0]]), _t([[0.0]]), torch.ones(1, 1), clip=None).item() == 0.0


# ------------------------------------------------------------------------------------------ aggregation
AGG_L = _t([[1, 2, 3, 0], [4, 0, 0, 0]])
AGG_M = _t([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("mode,expect", [("token-mean", 2.5), ("seq-mean-token-sum", 5.0),
                                         ("seq-mean-token-mean", 3.0), ("seq-mean-token-sum-norm", 1.25)])
def test_aggregate_spec_table(mode: str, expect: float) -> None:
    assert aggregate(AGG_L, AGG_M, mode).item() == pytest.approx(expect)
    # A fully masked row (with garbage losses) changes nothing: it is not a sequence.
    losses = torch.cat([AGG_L, _t([[9.0, float("nan"), 9.0, 9.0]])])
    mask = torch.cat([AGG_M, torch.zeros(1, 4, dtype=F64)])
    assert aggregate(losses, mask, mode, scale_constant=4).item() == pytest.approx(expect)


def test_sum_norm_relation_to_verl_and_trl() -> None:
    ours = aggregate(AGG_L, AGG_M, "seq-mean-token-sum-norm", scale_constant=4).item()
    assert ours == pytest.approx(1.25)                 # = TRL dr_grpo Σ/(B·L)
    assert ours * 2 == pytest.approx(2.5)              # verl Σ/L = ours × N_seq
    assert aggregate(AGG_L, AGG_M, "seq-mean-token-sum-norm", scale_constant=10).item() == pytest.approx(0.5)


def test_aggregate_all_masked_is_zero_and_finite() -> None:
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    for mode in MODES:
        out = aggregate(x, torch.zeros(2, 3), mode)
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(x.grad).all()


def test_aggregate_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        aggregate(AGG_L, AGG_M, "seq-sum")


def test_global_denominators_counts() -> None:
    mask = torch.cat([AGG_M, torch.zeros(1, 4, dtype=F64)])
    assert global_denominators(mask) == {"num_seqs": 2.0, "num_tokens": 4.0}
    assert global_denominators(mask.bool(), "token-mean") == {"num_seqs": 2.0, "num_tokens": 4.0}
    with pytest.raises(ValueError):
        global_denominators(mask, "token-sum")


# ------------------------------------------------------------------------------------------ micro-batch invariance
def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, t = 12, 7
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    mask &= torch.rand(n, t, generator=g) > 0.15                       # multi-turn holes
    mask[[2, 9]] = False                                                # fully masked rows
    old = -torch.rand(n, t, dtype=F64, generator=g) * 3
    logp = (old + 0.3 * torch.randn(n, t, dtype=F64, generator=g)).requires_grad_()
    ref = old + 0.2 * torch.randn(n, t, dtype=F64, generator=g)
    adv = torch.randn(n, 1, dtype=F64, generator=g).expand(n, t)
    vals = torch.randn(n, t, dtype=F64, generator=g)
    return logp, old, ref, adv, vals, mask


def _step_loss(logp, old, ref, adv, vals, mask, mode, **den) -> torch.Tensor:
    pg, _ = ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip_c=3.0)
    loss = aggregate(pg, mask, mode, **den)
    loss = loss + 0.1 * aggregate(kl_penalty(logp, ref, "k3"), mask, mode, **den)
    # a value-loss term on a stand-in critic output (logp) exercises value_loss's passthrough
    return loss + 0.5 * value_loss(logp, old, vals, mask, clip=0.2, agg=mode, **den)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_invariance(mode: str) -> None:
    logp, old, ref, adv, vals, mask = _batch()
    den = global_denominators(mask, mode)
    full = _step_loss(logp, old, ref, adv, vals, mask, mode, scale_constant=9)   # local counts = global here
    (g_full,) = torch.autograd.grad(full, logp)
    assert full.item() == pytest.approx(
        _step_loss(logp, old, ref, adv, vals, mask, mode, **den, scale_constant=9).item(), abs=1e-12)

    parts = [slice(0, 2), slice(2, 6), slice(6, 9), slice(9, 12)]     # 4 micro-batches, unequal sizes
    total = torch.zeros((), dtype=F64)
    for sl in parts:
        total = total + _step_loss(logp[sl], old[sl], ref[sl], adv[sl], vals[sl], mask[sl], mode, **den,
                                   scale_constant=9)
    (g_micro,) = torch.autograd.grad(total, logp)
    assert abs(total.item() - full.item()) < 1e-6
    torch.testing.assert_close(g_micro, g_full, atol=1e-6, rtol=0)
    assert g_full.abs().sum() > 0


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_two_micro_batches_with_ddp_mean(mode: str) -> None:
    logp, old, ref, adv, vals, mask = _batch(1)
    full = _step_loss(logp, old, ref, adv, vals, mask, mode, scale_constant=9)
    (g_full,) = torch.autograd.grad(full, logp)

    ranks = [[slice(0, 3), slice(3, 5)], [slice(5, 9), slice(9, 12)]]
    world = len(ranks)
    # Each rank counts its own rows; an all-reduce(sum) of the counts gives the global denominators.
    local = [global_denominators(mask[r[0].start:r[-1].stop]) for r in ranks]
    den = {"num_seqs": sum(d["num_seqs"] for d in local), "num_tokens": sum(d["num_tokens"] for d in local)}
    assert den == global_denominators(mask)
    rank_losses, rank_grads = [], []
    for micro in ranks:
        loss_r = torch.zeros((), dtype=F64)
        for sl in micro:   # engine.backward per micro-batch, loss × world because DDP averages gradients
            loss_r = loss_r + world * _step_loss(logp[sl], old[sl], ref[sl], adv[sl], vals[sl], mask[sl],
                                                 mode, **den, scale_constant=9)
        rank_losses.append(loss_r.detach())
        rank_grads.append(torch.autograd.grad(loss_r, logp)[0])
    g_ddp = torch.stack(rank_grads).mean(0)                            # the all-reduce mean of DDP/ZeRO
    assert abs(torch.stack(rank_losses).mean().item() - full.item()) < 1e-6
    torch.testing.assert_close(g_ddp, g_full, atol=1e-6, rtol=0)


def test_local_token_mean_is_not_invariant() -> None:
    """Sanity check that the invariance test has teeth: local denominators break it."""
    logp, old, ref, adv, vals, mask = _batch()
    full = _step_loss(logp, old, ref, adv, vals, mask, "token-mean").item()
    parts = [slice(0, 2), slice(2, 6), slice(6, 9), slice(9, 12)]
    naive = sum(_step_loss(logp[s], old[s], ref[s], adv[s], vals[s], mask[s], "token-mean").item()
                for s in parts) / len(parts)
    assert abs(naive - full) > 1e-3


# ------------------------------------------------------------------------------------------ DAPO overlong
def test_soft_overlong_spec_example() -> None:
    lengths = torch.tensor([16000, 16384, 18000, 20480, 21000])
    out = soft_overlong_penalty(lengths, max_len=20480, cache_len=4096)
    _close(out, [0.0, 0.0, -0.394531, -1.0, -1.0])
    _close(soft_overlong_penalty(lengths, 20480, 4096, penalty_factor=0.5), [0.0, 0.0, -0.197266, -0.5, -0.5])
    with pytest.raises(ValueError):
        soft_overlong_penalty(lengths, max_len=100, cache_len=0)
