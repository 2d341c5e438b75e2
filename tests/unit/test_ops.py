"""Value tests for rltune.ops (masked statistics, group statistics, logit helpers)."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.ops import (
    entropy_from_logits,
    group_stats,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

F64 = torch.float64


def test_masked_sum_and_mean_ignore_garbage_at_masked_positions() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 0.0]], dtype=F64)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_sum(x, m).item() == 7.0
    assert masked_mean(x, m).item() == pytest.approx(7.0 / 3.0)
    torch.testing.assert_close(masked_sum(x, m, dim=-1), torch.tensor([3.0, 4.0], dtype=F64))
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 4.0], dtype=F64))
    torch.testing.assert_close(masked_mean(x, m, dim=0), torch.tensor([2.5, 2.0, 0.0], dtype=F64))


def test_masked_mean_empty_mask_is_zero_with_finite_grad() -> None:
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    m = torch.zeros(2, 3, dtype=torch.bool)
    out = masked_mean(x, m)
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_masked_var_matches_torch_var_on_valid_entries() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, dtype=F64, generator=g)
    m = torch.rand(5, 7, generator=g) > 0.4
    v = x[m]
    torch.testing.assert_close(masked_var(x, m), v.var(unbiased=True))
    torch.testing.assert_close(masked_var(x, m, unbiased=False), v.var(unbiased=False))


def test_masked_var_single_token_is_zero_not_nan() -> None:
    x = torch.tensor([3.0, 5.0], dtype=F64)
    m = torch.tensor([True, False])
    assert masked_var(x, m).item() == 0.0
    assert masked_whiten(x, m).tolist() == [0.0, 0.0]


def test_masked_whiten_verl_semantics() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, dtype=F64, generator=g)
    m = torch.rand(4, 6, generator=g) > 0.3
    v = x[m]
    mu, var = v.mean(), v.var(unbiased=True)
    expect = (x - mu) / torch.sqrt(var + 1e-8) * m
    torch.testing.assert_close(masked_whiten(x, m), expect)
    torch.testing.assert_close(masked_whiten(x, m, shift_mean=False), (expect + mu) * m)
    w = masked_whiten(x, m)
    assert w[m].mean().abs().item() < 1e-12
    assert w[m].var().item() == pytest.approx(1.0, rel=1e-6)
    assert (w[~m] == 0).all()


def _loop_group_stats(values: list[float], gids: list[int]) -> tuple[list[float], list[float], list[int]]:
    means, stds, counts = [], [], []
    for gid in gids:
        vals = [v for v, g in zip(values, gids) if g == gid and not math.isnan(v)]
        n = len(vals)
        mu = sum(vals) / n if n else 0.0
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        means.append(mu), stds.append(sd), counts.append(n)
    return means, stds, counts


def test_group_stats_loop_equals_vectorized() -> None:
    g = torch.Generator().manual_seed(2)
    gids = torch.tensor([7, 3, 7, 100, 3, 3, 7, 42, 100, 7, 5, 5])  # unequal sizes, singleton 42, ids unordered
    values = torch.randn(gids.shape[0], dtype=F64, generator=g)
    values[[1, 10]] = float("nan")                                     # group 5 keeps one scorable value
    mean, std, count = group_stats(values, gids)
    lm, ls, lc = _loop_group_stats(values.tolist(), gids.tolist())
    torch.testing.assert_close(mean, torch.tensor(lm, dtype=F64))
    torch.testing.assert_close(std, torch.tensor(ls, dtype=F64))
    assert count.dtype == torch.long and count.tolist() == lc


def test_group_stats_all_nan_group() -> None:
    mean, std, count = group_stats(torch.tensor([float("nan"), float("nan"), 1.0]), torch.tensor([0, 0, 1]))
    assert mean.tolist() == [0.0, 0.0, 1.0] and std.tolist() == [0.0, 0.0, 0.0] and count.tolist() == [0, 0, 1]


def test_entropy_from_logits() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 11, dtype=F64, generator=g) * 3
    p = torch.softmax(z, -1)
    torch.testing.assert_close(entropy_from_logits(z), -(p * torch.log(p)).sum(-1))
    assert entropy_from_logits(torch.zeros(2, 8, dtype=F64)).tolist() == pytest.approx([math.log(8)] * 2)


def test_logprobs_from_logits_full_precision() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 5, 13, dtype=F64, generator=g) * 4
    ids = torch.randint(0, 13, (3, 5), generator=g)
    expect = torch.log_softmax(z, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(z, ids), expect)
    z32 = z.float().requires_grad_()
    logprobs_from_logits(z32, ids).sum().backward()   # differentiable
    assert torch.isfinite(z32.grad).all()


def test_logprobs_from_logits_bf16_chunked_upcasts() -> None:
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(4, 3, 17, generator=g) * 4).bfloat16()
    ids = torch.randint(0, 17, (4, 3), generator=g)
    out = logprobs_from_logits(z, ids, chunk_rows=5)   # 12 rows in chunks of 5 -> 3 chunks
    expect = torch.log_softmax(z.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    assert out.dtype == torch.float32 and out.shape == ids.shape
    torch.testing.assert_close(out, expect)
