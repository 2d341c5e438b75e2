"""ADHint (spec §5): hint lengths, AE-RDP, CGM and selective masking; the hooks on hand-built contexts."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.algo import group_norm
from rltune.data.batch import PromptBatch
from rltune.modifiers.adhint import (
    ADHint,
    ae_rdp_factors,
    cgm_weights,
    hint_lengths,
    hint_ratios,
    selective_mask,
)
from rltune.modifiers.base import AdvantageContext, LossContext, PromptContext, StepState

F64 = torch.float64
SOL = "".join(str(i % 10) for i in range(200))  # |y*| = 200 characters


# ------------------------------------------------------------------------------------------ AH-SDP
def test_spec_hint_lengths() -> None:
    naive = torch.tensor([[0.0, 0, 0, 1]])
    diff = 1 - naive.mean(1)
    assert float(diff) == 0.75
    w = hint_ratios(diff, torch.tensor([[0.05, -0.05, 0.0, 0.02]], dtype=F64), w_min=0.0, w_max=0.8, w_cap=1.0)
    torch.testing.assert_close(w, torch.tensor([[0.65, 0.55, 0.60, 0.62]], dtype=F64))
    assert hint_lengths(w, 200).tolist() == [[130, 110, 120, 124]]
    # Clipping: to [0, w_cap], and never longer than the reference.
    w = hint_ratios(torch.tensor([1.0, 0.0]), torch.tensor([[0.3], [-0.2]]), 0.0, 0.8, 0.9)
    assert w.flatten().tolist() == pytest.approx([0.9, 0.0])
    assert hint_lengths(torch.tensor([1.5]), 10).tolist() == [10]


class _Probe:
    def __init__(self, rewards):
        self.rewards, self.calls = torch.tensor(rewards), []

    def __call__(self, prompts, n, keep=False):
        self.calls.append((n, keep))
        return self.rewards[:, :n]


def _prompts():
    return PromptBatch(prompts=["a", "b", "c"], meta={"prompt": ["a", "b", "c"], "solution": [SOL, SOL, ""]})


def _pctx(probe, step=0, G=4):
    return PromptContext(StepState(step=step, seed=7, total_steps=10), probe, samples_per_prompt=G)


def test_on_prompts_hints_hard_prompts_only() -> None:
    probe = _Probe([[0.0, 0.0, 0, 0], [1.0, 1.0, 1, 1], [0.0, 0.0, 0, 0]])
    m = ADHint(delta=0.05)
    out = m.on_prompts(_prompts(), _pctx(probe))
    assert probe.calls == [(2, True)]                      # the G − n_hint naive samples of the group, kept
    assert out.prompts == ["a", "b", "c"] and out.meta == _prompts().meta
    h = out.hints
    assert len(h) == 3 and all(len(row) == 4 for row in h)
    assert h[0][:2] == ["", ""] and all(x and SOL.startswith(x) for x in h[0][2:])   # n_hint = G//2, naive first
    assert h[1] == [""] * 4                                # Diff_N = 0 <= skip_if_diff_le
    assert h[2] == [""] * 4                                # no reference solution
    # Diff_N = 1 -> w = 0.8 + ξ with ξ ∈ [-0.05, 0.05] drawn from the step's generator.
    xi = (torch.rand(3, 2, generator=StepState(0, 7).generator(0xAD41), dtype=F64) * 2 - 1) * 0.05
    assert [len(x) for x in h[0][2:]] == [math.floor((0.8 + float(v)) * 200 + 1e-6) for v in xi[0]]
    metrics = m.on_step_end({}, None)
    assert metrics["hint_frac"] == pytest.approx(2 / 12) and metrics["diff_prior_mean"] == pytest.approx(2 / 3)


def test_on_prompts_deterministic_per_step_and_token_units() -> None:
    probe = _Probe([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    a = ADHint(n_hint=3, delta=0.2).on_prompts(_prompts(), _pctx(probe, step=1))
    b = ADHint(n_hint=3, delta=0.2).on_prompts(_prompts(), _pctx(probe, step=1))
    c = ADHint(n_hint=3, delta=0.2).on_prompts(_prompts(), _pctx(probe, step=2))
    assert a.hints == b.hints and a.hints != c.hints and a.hints[0][0] == ""
    # With the char tokenizer a token is a character: same hints in token units.
    t = ADHint(n_hint=3, delta=0.2, tokenizer="char").on_prompts(_prompts(), _pctx(probe, step=1))
    assert t.hints == a.hints


def test_on_prompts_errors() -> None:
    with pytest.raises(KeyError, match="solution"):
        ADHint().on_prompts(PromptBatch(["a"], {"prompt": ["a"]}), _pctx(_Probe([[0.0]])))
    with pytest.raises(ValueError, match="probe"):
        ADHint().on_prompts(_prompts(), _pctx(None))


# ------------------------------------------------------------------------------------------- AE-RDP
def _actx(raw, is_hint, gid=None, rewards=None):
    n = len(raw)
    gid = torch.zeros(n, dtype=torch.long) if gid is None else gid
    return AdvantageContext(None, raw if rewards is None else rewards, raw, torch.ones(n, 2, dtype=torch.bool), gid,
                            StepState(0, 0), None, None, {"is_hint": is_hint})


def test_spec_ae_rdp() -> None:
    raw = torch.tensor([0.0, 0, 0, 1, 1, 1, 0, 1], dtype=F64)
    is_hint = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    gid, mask = torch.zeros(8, dtype=torch.long), torch.ones(8, 2, dtype=torch.bool)
    union = group_norm(raw, gid, mask)
    a = 0.935413
    torch.testing.assert_close(union[:, 0], torch.tensor([-a, -a, -a, a, a, a, -a, a], dtype=F64), atol=1e-6, rtol=0)
    factor, dn, dh = ae_rdp_factors(union, raw, gid, is_hint)
    assert float(dn[0]) == 0.75 and float(dh[0]) == 0.25
    out = ADHint().shape_advantages(union.clone(), _actx(raw, is_hint))
    want = torch.tensor([-a, -a, -a, 1.636972, a, a, -1.636972, a], dtype=F64)
    torch.testing.assert_close(out[:, 0], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, union * factor)


def test_ae_rdp_leaves_unhinted_groups_and_lam_zero_alone() -> None:
    raw = torch.tensor([0.0, 1, 0, 1, 0, 1, 1, 0], dtype=F64)
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    is_hint = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)   # group 0 has no hinted rows
    adv = group_norm(raw, gid, torch.ones(8, 2, dtype=torch.bool))
    out = ADHint().shape_advantages(adv.clone(), _actx(raw, is_hint, gid))
    assert torch.equal(out[:4], adv[:4]) and not torch.equal(out[4:], adv[4:])
    assert torch.equal(ADHint(lam=0.0).shape_advantages(adv.clone(), _actx(raw, is_hint, gid)), adv)
    assert torch.equal(ADHint().shape_advantages(adv.clone(), _actx(raw, torch.zeros(8, dtype=torch.bool), gid)), adv)


def test_ae_rdp_separate_base() -> None:
    raw = torch.tensor([0.0, 0, 0, 1, 1, 1, 0, 1], dtype=F64)
    is_hint = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    mask = torch.ones(8, 2, dtype=torch.bool)
    sub = group_norm(raw, is_hint.long(), mask)
    out = ADHint(base_norm="separate").shape_advantages(torch.zeros(8, 2, dtype=F64), _actx(raw, is_hint))
    factor, _, _ = ae_rdp_factors(sub, raw, torch.zeros(8, dtype=torch.long), is_hint)
    torch.testing.assert_close(out, sub * factor)
    assert out[3, 0] == pytest.approx(1.5 * 1.75, abs=1e-5)        # naive success: (1 − 0.25)/0.5 · (1 + 0.75)


# --------------------------------------------------------------------------- CGM and selective masking
def test_spec_cgm_ratio_and_exp() -> None:
    ent = torch.tensor([[0.3, 1.2, 2.4, 0.6, 0.5, 0.7, 0.6]], dtype=F64)
    hint = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    c = cgm_weights(ent, hint, ~hint, "ratio")
    torch.testing.assert_close(c[0, :3], torch.tensor([1.0, 0.5, 0.25], dtype=F64), atol=1e-5, rtol=0)
    assert (c[0, 3:] == 1).all()
    e = cgm_weights(ent, hint, ~hint, "exp", lambda_c=2.0)
    torch.testing.assert_close(e[0, :3], torch.exp(torch.tensor([0.0, -1.2, -3.6], dtype=F64)))
    assert (cgm_weights(ent, hint, ~hint, "none") == 1).all()


def _lctx(adv_rows, hint_len, T=5, ent=None):
    n = len(adv_rows)
    mask = torch.ones(n, T, dtype=torch.bool)
    hint = torch.arange(T)[None] < torch.tensor(hint_len)[:, None]
    adv = torch.tensor(adv_rows, dtype=torch.float32)[:, None] * mask
    ent = torch.rand(n, T) + 0.1 if ent is None else ent
    return LossContext(torch.arange(n), torch.zeros(n, T), torch.zeros(n, T), adv, mask, StepState(0, 0), ent,
                       {"hint_mask": hint, "is_hint": hint.any(1)}, total_rows=n)


def test_selective_masking() -> None:
    ctx = _lctx([-1.0, 1.0, 0.0, -1.0, 1.0], [2, 2, 2, 0, 5])
    mod = ADHint()
    tw = mod.token_weights(ctx)
    m = tw.mask
    assert m[0].tolist() == [False, False, True, True, True]     # A < 0: hint tokens leave the loss
    assert m[1].all() and m[2].all() and m[3].all()              # A >= 0, or no hint
    assert not m[4].any()                                         # the hint used the whole budget: row dropped
    assert (tw.weight[3] == 1).all() and (tw.weight[0, 2:] == 1).all()
    assert selective_mask(ctx.extras["hint_mask"], ctx.advantages).tolist() == [
        [False, False, True, True, True]] + [[True] * 5] * 3 + [[True] * 5]
    assert ADHint(selective_mask=False).token_weights(ctx).mask[0].all()
    metrics = mod.on_step_end({}, None)
    assert metrics["masked_hint_frac"] == pytest.approx((2 + 5) / 11) and mod.on_step_end({}, None) == {}
    assert 0 < metrics["cgm_weight_mean"] <= 1


def test_token_weights_none_without_hints_and_state_round_trip() -> None:
    assert ADHint().token_weights(_lctx([1.0, -1.0], [0, 0])) is None
    m = ADHint()
    m.on_prompts(_prompts(), _pctx(_Probe([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])))
    sd = m.state_dict()
    assert sd["prompts"] == 3 and sd["hinted_prompts"] == 1
    m2 = ADHint()
    m2.load_state_dict(sd)
    assert m2.state_dict() == sd


def test_validate_refuses_a_probe_size_with_the_group_prior() -> None:
    import yaml

    from rltune.config.load import recipe_from_dict
    from rltune.families import check_support
    from rltune.modifiers.pipeline import ModifierError
    from tests.conftest import ROOT, merge

    raw = yaml.safe_load((ROOT / "recipes/addition-tiny-adhint.yaml").read_text())
    check_support(recipe_from_dict(raw), base_dir=ROOT)                    # n_hint 4 of G 8, prior: group
    for args, msg in (({"n_probe": 4}, "remove n_probe"), ({"n_hint": 8}, "leaves none")):
        bad = merge(raw, {"modifiers": [{"use": "adhint", "args": args}]})
        with pytest.raises(ModifierError, match=msg):
            check_support(recipe_from_dict(bad), base_dir=ROOT)
    ok = merge(raw, {"modifiers": [{"use": "adhint", "args": {"prior": "probe", "n_probe": 4, "n_hint": 8}}]})
    check_support(recipe_from_dict(ok), base_dir=ROOT)                     # the separate probe: any n_hint
