"""Value tests for rltune.algo.advantages: spec §2 numbers and loop == vectorized checks."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.algo.advantages import (
    dynamic_sampling_keep,
    gae,
    group_mean,
    group_norm,
    outcome_to_token_rewards,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
    singleton_groups,
)

F64 = torch.float64
NAN = float("nan")


def _t(x: list, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _close(a: torch.Tensor, b: list | torch.Tensor, atol: float = 1e-6) -> None:
    b = b if isinstance(b, torch.Tensor) else _t(b)
    torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=0)


ONE_GROUP = dict(rewards=_t([1, 0, 0, 1]), group_id=torch.zeros(4, dtype=torch.long),
                 response_mask=torch.ones(4, 1, dtype=torch.bool))


# ------------------------------------------------------------------------------------ spec §2 numbers
def test_grpo_spec_example_verl_and_trl_eps() -> None:
    _close(group_norm(**ONE_GROUP)[:, 0], [0.866024, -0.866024, -0.866024, 0.866024])
    _close(group_norm(**ONE_GROUP, eps=1e-4)[:, 0], [0.865875, -0.865875, -0.865875, 0.865875])


def test_dr_grpo_spec_example() -> None:
    _close(group_norm(**ONE_GROUP, scale="none")[:, 0], [0.5, -0.5, -0.5, 0.5])
    _close(group_mean(**ONE_GROUP)[:, 0], [0.5, -0.5, -0.5, 0.5])


def test_rloo_spec_example() -> None:
    _close(rloo(**ONE_GROUP)[:, 0], [0.666667, -0.666667, -0.666667, 0.666667])


def test_group_advantage_broadcasts_over_mask_only() -> None:
    mask = _t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]).bool()
    adv = group_norm(ONE_GROUP["rewards"], ONE_GROUP["group_id"], mask)
    a = 0.866024
    _close(adv, [[a, a, 0], [-a, 0, 0], [-a, -a, -a], [0, 0, 0]])


def test_all_equal_group_is_zero() -> None:
    for fn in (group_norm, group_mean, rloo):
        adv = fn(_t([1, 1, 1, 1]), torch.zeros(4, dtype=torch.long), torch.ones(4, 2))
        assert (adv == 0).all()


def test_singleton_group_gets_zero_and_is_counted() -> None:
    r, gid, mask = _t([1.0, 1, 0, 5.0]), torch.tensor([0, 1, 1, 2]), torch.ones(4, 3)
    for fn in (group_norm, group_mean, rloo, reinforce_pp_baseline):
        adv = fn(r, gid, mask)
        assert (adv[0] == 0).all() and (adv[3] == 0).all(), fn.__name__
        assert (adv[1] != 0).all(), fn.__name__
    assert (group_norm(r, gid, mask, scale="batch")[[0, 3]] == 0).all()
    assert singleton_groups(gid) == 2
    # With rewards: group 1 left with one scorable reward also counts.
    assert singleton_groups(gid, _t([1.0, 1, NAN, 5.0])) == 3
    assert singleton_groups(torch.tensor([4, 4, 9, 9])) == 0


def test_nan_rewards_excluded_and_zero() -> None:
    gid = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    mask = torch.ones(7, 2)
    r_nan = _t([1, NAN, 0, 0, 1, 2, 3])
    r_ref = _t([1, 0, 0, 1, 2, 3])                       # same without the unscorable row
    keep = [0, 2, 3, 4, 5, 6]
    for fn in (group_norm, group_mean, rloo):
        adv, ref = fn(r_nan, gid, mask), fn(r_ref, gid[keep], mask[keep])
        assert (adv[1] == 0).all() and torch.isfinite(adv).all(), fn.__name__
        _close(adv[keep], ref, atol=1e-12)
    adv = reinforce_pp_baseline(r_nan, gid, mask)
    assert (adv[1] == 0).all()
    _close(adv[keep], reinforce_pp_baseline(r_ref, gid[keep], mask[keep]), atol=1e-12)


def test_batch_scale_uses_group_mean_and_batch_std() -> None:
    r, gid = _t([1, 0, 0, 1, 3, 1, NAN]), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    adv = group_norm(r, gid, torch.ones(7, 1), scale="batch", eps=1e-6)[:, 0]
    sd = r[:6].std(unbiased=True).item()
    _close(adv, [0.5 / (sd + 1e-6), -0.5 / (sd + 1e-6), -0.5 / (sd + 1e-6), 0.5 / (sd + 1e-6),
                 1 / (sd + 1e-6), -1 / (sd + 1e-6), 0.0], atol=1e-12)


def test_reinforce_pp_baseline_spec_example() -> None:
    mask = _t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    adv = reinforce_pp_baseline(_t([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1]), mask)
    p, n = 1.333333, -0.666667
    _close(adv, [[p, p, 0], [n, n, n], [p, 0, 0], [n, n, n]])


def test_reinforce_pp_reference_example() -> None:
    tr, mask = _t([[0, 0, 1], [0, 0, 0]]), _t([[1, 1, 1], [1, 1, 0]])
    a, b = 0.730297, -1.095445
    _close(reinforce_pp(tr, mask), [[a, a, a], [b, b, 0]])


def test_gae_spec_example() -> None:
    adv, ret = gae(_t([[0, 0, 1]]), _t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=1.0, lam=0.95)
    _close(ret, [[0.96575, 0.985, 1.0]])
    _close(ret - _t([[0.5, 0.6, 0.7]]), [[0.46575, 0.385, 0.3]])   # raw A = returns − V
    _close(adv, [[0.991344, 0.017092, -1.008436]])


def test_outcome_to_token_rewards_last_valid_token() -> None:
    mask = _t([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]).bool()
    out = outcome_to_token_rewards(_t([2.0, 3.0, 4.0, NAN]), mask)
    assert out[:3].tolist() == [[0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    assert out[3, :3].tolist() == [0, 0, 0] and math.isnan(out[3, 3].item())


def test_token_estimators_treat_nan_rows_as_unscorable() -> None:
    mask = torch.ones(3, 4)
    tr = outcome_to_token_rewards(_t([1.0, NAN, 0.0]), mask)
    vals = torch.full((3, 4), 0.3, dtype=F64)
    adv_nan, ret_nan = gae(tr, vals, mask, gamma=0.9, lam=0.8)
    adv_ref, ret_ref = gae(tr[[0, 2]], vals[[0, 2]], mask[[0, 2]], gamma=0.9, lam=0.8)
    assert (adv_nan[1] == 0).all() and torch.isfinite(adv_nan).all()
    _close(ret_nan[1], vals[1], atol=0)                              # A = 0 -> returns = V
    _close(adv_nan[[0, 2]], adv_ref, atol=1e-12)
    _close(ret_nan[[0, 2]], ret_ref, atol=1e-12)
    rp = reinforce_pp(tr, mask, gamma=0.9)
    assert (rp[1] == 0).all()
    _close(rp[[0, 2]], reinforce_pp(tr[[0, 2]], mask[[0, 2]], gamma=0.9), atol=1e-12)


def test_dynamic_sampling_spec_example() -> None:
    acc = _t([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0])
    gid = torch.arange(4).repeat_interleave(4) + 1                       # q1..q4
    keep, kept = dynamic_sampling_keep(acc, gid)
    assert kept == [2, 4]
    assert keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4


def test_dynamic_sampling_exact_equality_nan_and_singletons() -> None:
    r = _t([0.1, 0.1, 0.1, 0.2, NAN, 0.2, 1.0, NAN, 0.5, 0.0])
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    keep, kept = dynamic_sampling_keep(r, gid)
    assert kept == [3]                     # flat 0.1 group, NaN-ignored flat group and lone scorable dropped
    assert keep.tolist() == [False] * 8 + [True] * 2


# ------------------------------------------------------------------------------------ loop == vectorized
def _random_groups(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [5, 3, 1, 4, 2, 6]                                    # unequal, with a singleton
    ids = [11, 2, 40, 7, 3, 19]
    gid = torch.tensor([i for i, s in zip(ids, sizes) for _ in range(s)])
    gid = gid[torch.randperm(gid.numel(), generator=g)]                # interleaved rows
    r = torch.randint(0, 3, (gid.numel(),), generator=g).to(F64) + 0.1 * torch.randn(gid.numel(), dtype=F64,
                                                                                       generator=g)
    r[[0, 7]] = NAN
    lengths = torch.randint(0, 6, (gid.numel(),), generator=g)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    return r, gid, mask


def _loop_group_adv(r: list[float], gid: list[int], kind: str, eps: float = 1e-6) -> list[float]:
    valid_all = [x for x in r if not math.isnan(x)]
    mu_b = sum(valid_all) / len(valid_all)
    sd_b = math.sqrt(sum((x - mu_b) ** 2 for x in valid_all) / (len(valid_all) - 1))
    out = []
    for i, (ri, gi) in enumerate(zip(r, gid)):
        members = [r[j] for j in range(len(r)) if gid[j] == gi and not math.isnan(r[j])]
        if math.isnan(ri) or len(members) < 2:
            out.append(0.0)
            continue
        n = len(members)
        mu = sum(members) / n
        sd = math.sqrt(sum((x - mu) ** 2 for x in members) / (n - 1))
        if kind == "group":
            out.append((ri - mu) / (sd + eps))
        elif kind == "batch":
            out.append((ri - mu) / (sd_b + eps))
        elif kind == "none":
            out.append(ri - mu)
        else:                                                          # rloo
            out.append(ri - (sum(members) - ri) / (n - 1))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["group", "batch", "none", "rloo"])
def test_group_estimators_loop_equals_vectorized(seed: int, kind: str) -> None:
    r, gid, mask = _random_groups(seed)
    expect = torch.tensor(_loop_group_adv(r.tolist(), gid.tolist(), kind), dtype=F64)[:, None] * mask
    got = rloo(r, gid, mask) if kind == "rloo" else group_norm(r, gid, mask, scale=kind)
    _close(got, expect, atol=1e-10)


def _loop_whiten(x: list[list[float]], m: list[list[int]]) -> list[list[float]]:
    vals = [x[i][t] for i in range(len(x)) for t in range(len(x[0])) if m[i][t]]
    mu = sum(vals) / len(vals)
    var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
    return [[(x[i][t] - mu) / math.sqrt(var + 1e-8) if m[i][t] else 0.0 for t in range(len(x[0]))]
            for i in range(len(x))]


def _loop_gae(r: list[list[float]], v: list[list[float]], m: list[list[int]], gamma: float, lam: float):
    raw, ret = [], []
    for ri, vi, mi in zip(r, v, m):
        next_v, last_a, row = 0.0, 0.0, [0.0] * len(ri)
        for t in reversed(range(len(ri))):
            if mi[t]:                                                  # masked positions carry both through
                last_a = ri[t] + gamma * next_v - vi[t] + gamma * lam * last_a
                next_v = vi[t]
            row[t] = last_a
        raw.append(row)
        ret.append([(a + vv) if mm else 0.0 for a, vv, mm in zip(row, vi, mi)])
    return _loop_whiten(raw, m), ret


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_loop_equals_vectorized_with_multiturn_holes(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, t = 7, 9
    mask = torch.rand(n, t, generator=g) > 0.3                         # holes = observation tokens
    mask[:, 0] = True
    mask[3, 5:] = False                                                 # padding tail
    r = torch.randn(n, t, dtype=F64, generator=g) * (torch.rand(n, t, generator=g) > 0.6)
    v = torch.randn(n, t, dtype=F64, generator=g)
    v_garbage = torch.where(mask, v, torch.full_like(v, float("inf")))  # padding values must not leak
    adv, ret = gae(r, v_garbage, mask, gamma=0.9, lam=0.8)
    ladv, lret = _loop_gae(r.tolist(), v.tolist(), mask.int().tolist(), 0.9, 0.8)
    _close(adv, _t(ladv), atol=1e-10)
    _close(ret, _t(lret), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_pp_loop_equals_vectorized(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, t, gamma = 5, 8, 0.95
    mask = (torch.rand(n, t, generator=g) > 0.25).int()
    r = torch.randn(n, t, dtype=F64, generator=g)
    ret = []
    for ri, mi in zip(r.tolist(), mask.tolist()):
        run, row = 0.0, [0.0] * t
        for k in reversed(range(t)):
            if mi[k]:                                                   # holes carry the return through
                run = ri[k] + gamma * run
            row[k] = run
        ret.append(row)
    _close(reinforce_pp(r, mask, gamma=gamma), _t(_loop_whiten(ret, mask.tolist())), atol=1e-10)
