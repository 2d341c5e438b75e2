"""Rollout/trainer importance ratios, TIS truncation and IcePop masks on a hand-made batch (values by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.algo import offpolicy

# old − rollout per token: row 0 = [0, ln 3, ln 1/4], row 1 = [ln 0.4, ln 8, (padding)]
LOG_RATIO = torch.tensor([[0.0, math.log(3), math.log(0.25)], [math.log(0.4), math.log(8), 0.7]])
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -3.0, -9.0]])
OLD = ROLLOUT + LOG_RATIO
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_token_ratio_is_exp_of_the_log_ratio_and_one_off_mask() -> None:
    r = offpolicy.importance_ratio(OLD, ROLLOUT, MASK)
    assert torch.allclose(r, torch.tensor([[1.0, 3.0, 0.25], [0.4, 8.0, 1.0]]), atol=1e-6)


def test_sequence_ratio_is_the_product_over_the_row() -> None:
    r = offpolicy.importance_ratio(OLD, ROLLOUT, MASK, level="sequence")
    assert torch.allclose(r, torch.tensor([[0.75, 0.75, 0.75], [3.2, 3.2, 1.0]]), atol=1e-6)


def test_truncate_and_icepop_keep() -> None:
    r = offpolicy.importance_ratio(OLD, ROLLOUT, MASK)
    assert torch.allclose(offpolicy.truncate(r, 2.0), torch.tensor([[1.0, 2.0, 0.25], [0.4, 2.0, 1.0]]), atol=1e-6)
    keep = offpolicy.outside_mask(r, 0.5, 5.0)
    assert keep.tolist() == [[True, True, False], [False, False, True]]


def test_mismatch_stats_by_hand() -> None:
    r = offpolicy.importance_ratio(OLD, ROLLOUT, MASK)
    s = offpolicy.mismatch_stats(OLD, ROLLOUT, r, MASK)
    assert s["ratio_mean"] == pytest.approx(12.65 / 5, rel=1e-6)
    assert (s["ratio_min"], s["ratio_max"]) == (pytest.approx(0.25), pytest.approx(8.0))
    assert s["kl_k1"] == pytest.approx(-0.17509374747, rel=1e-5)   # −mean ln ρ
    assert s["kl_k3"] == pytest.approx(1.35490625253, rel=1e-5)    # mean(ρ − 1 − ln ρ)
    assert s["ess"] == pytest.approx(0.43119673953, rel=1e-5)      # (Σρ)² / (5 Σρ²)
    seq = offpolicy.importance_ratio(OLD, ROLLOUT, MASK, level="sequence")
    assert offpolicy.mismatch_stats(OLD, ROLLOUT, seq, MASK, "sequence")["ess"] == pytest.approx(0.7221707938, rel=1e-5)


def test_identical_policies_give_ratio_one_and_zero_kl() -> None:
    r = offpolicy.importance_ratio(ROLLOUT, ROLLOUT, MASK)
    s = offpolicy.mismatch_stats(ROLLOUT, ROLLOUT, r, MASK)
    assert torch.equal(r, torch.ones_like(r))
    assert s["kl_k1"] == 0 and s["kl_k3"] == 0 and s["ess"] == pytest.approx(1.0)


def test_a_wild_token_does_not_overflow() -> None:
    old = torch.tensor([[0.0]])
    r = offpolicy.importance_ratio(old, torch.tensor([[-500.0]]), torch.tensor([[True]]))
    assert torch.isfinite(r).all() and float(r) == pytest.approx(math.exp(20.0))
