"""EMPG (spec §4): the 5-step table, edge cases, segmentation, and loop == vectorized."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.modifiers.base import AdvantageContext, StepState
from rltune.modifiers.empg import EMPG, empg_advantages, segment_delimiter, segment_whole, step_means

F64 = torch.float64
NAN = float("nan")
TABLE_FINAL = {("a", 0): 1.210108, ("a", 1): 0.422941, ("a", 2): 0.713593, ("b", 0): -0.843144, ("b", 1): -1.503499}


def _spec_batch():
    """Trajectory a (A=+1) with step entropies [0.2, 0.8, 0.5], b (A=−1) with [1.0, 0.4]; one token per step."""
    ent = torch.tensor([[0.2, 0.8, 0.5], [1.0, 0.4, 123.0]], dtype=F64)  # padding entropy must be ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([[1.0, 1, 1], [-1, -1, 0]], dtype=F64)
    return adv, ent, mask, torch.tensor([[0, 1, 2], [0, 1, -1]])


def test_spec_table() -> None:
    adv, ent, mask, sid = _spec_batch()
    out, stats = empg_advantages(adv, ent, mask, sid, k=1.0, k_f=1.0, zeta=0.05)
    want = [[TABLE_FINAL["a", 0], TABLE_FINAL["a", 1], TABLE_FINAL["a", 2]],
            [TABLE_FINAL["b", 0], TABLE_FINAL["b", 1], 0.0]]
    torch.testing.assert_close(out, torch.tensor(want, dtype=F64), atol=1e-5, rtol=0)
    assert stats["g_min"] == pytest.approx(0.556325, abs=1e-6)
    assert stats["g_max"] == pytest.approx(1.512248, abs=1e-6)
    # A_mod (final_norm="none") column of the table.
    mod, _ = empg_advantages(adv, ent, mask, sid, final_norm="none")
    torch.testing.assert_close(mod[mask], torch.tensor([1.535866, 0.748700, 1.039352, -0.517385, -1.177740],
                                                       dtype=F64), atol=1e-5, rtol=0)


def test_spec_table_with_multi_token_steps_and_delimiters() -> None:
    """Same table when each step has several tokens ending in a delimiter (id 9): step means are what count."""
    ids = torch.tensor([[5, 9, 6, 6, 9, 7, 0, 0], [8, 8, 9, 7, 0, 0, 0, 0]])
    mask = ids != 0
    ent = torch.tensor([[0.1, 0.3, 0.7, 0.9, 0.8, 0.5, NAN, NAN], [1.2, 0.8, 1.0, 0.4, NAN, NAN, NAN, NAN]], dtype=F64)
    adv = torch.tensor([1.0, -1.0], dtype=F64)[:, None] * mask
    sid = segment_delimiter(ids, mask, [9])
    assert sid.tolist() == [[0, 0, 1, 1, 1, 2, -1, -1], [0, 0, 0, 1, -1, -1, -1, -1]]
    out, _ = empg_advantages(adv, ent, mask, sid)
    for (row, step), v in TABLE_FINAL.items():
        i = 0 if row == "a" else 1
        torch.testing.assert_close(out[i][sid[i] == step], torch.full_like(out[i][sid[i] == step], v),
                                   atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()


def test_max_equals_min_entropy() -> None:
    """H̃ ≡ 0 so g ≡ 1 and f ≡ 1: A_mod = A + ζ on non-last steps, A on last steps, then centred."""
    mask = torch.ones(2, 3, dtype=torch.bool)
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=F64)
    sid = torch.tensor([[0, 1, 2], [0, 1, 2]])
    mod, _ = empg_advantages(adv, torch.full((2, 3), 0.7, dtype=F64), mask, sid, final_norm="none")
    torch.testing.assert_close(mod, torch.tensor([[1.05, 1.05, 1.0], [-0.95, -0.95, -1.0]], dtype=F64))
    out, _ = empg_advantages(adv, torch.full((2, 3), 0.7, dtype=F64), mask, sid)
    torch.testing.assert_close(out, mod - mod.mean())


def test_one_step_trajectories_have_no_future_bonus() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    ent = torch.tensor([[0.2, 0.4, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    adv = torch.tensor([[1.0, 1, 0], [-1, -1, -1]], dtype=F64)
    mod, _ = empg_advantages(adv, ent, mask, segment_whole(mask), final_norm="none")
    # H = [0.3, 1.0] -> H̃ = [0, 1]; g = exp(-H̃)/mean; f = 0 (no successor).
    e = torch.tensor([1.0, math.exp(-1.0)], dtype=F64)
    g = e / e.mean()
    torch.testing.assert_close(mod, torch.stack([g[0] * adv[0], g[1] * adv[1]]), atol=1e-7, rtol=0)
    # An all-equal group (A = 0 everywhere) stays 0 without a successor step.
    zero, _ = empg_advantages(torch.zeros(2, 3, dtype=F64), ent, mask, segment_whole(mask))
    assert (zero == 0).all()


def test_zero_token_steps_are_excluded() -> None:
    adv, ent, mask, sid = _spec_batch()
    ref, _ = empg_advantages(adv, ent, mask, sid)
    # Step ids with a gap (step 1 of row a has no token) and a step whose only token is masked out.
    ent2 = torch.cat([ent, torch.tensor([[9.0], [9.0]], dtype=F64)], 1)
    adv2 = torch.cat([adv, torch.tensor([[1.0], [-1.0]], dtype=F64)], 1)
    mask2 = torch.cat([mask, torch.tensor([[False], [False]])], 1)
    sid2 = torch.tensor([[0, 2, 3, 1], [0, 1, -1, 2]])
    out, _ = empg_advantages(adv2, ent2, mask2, sid2)
    torch.testing.assert_close(out[:, :3], ref)
    assert (out[:, 3] == 0).all()


def test_unscorable_rows_are_zero_and_left_out() -> None:
    adv, ent, mask, sid = _spec_batch()
    ref, _ = empg_advantages(adv, ent, mask, sid)
    adv3 = torch.cat([adv, torch.zeros(1, 3, dtype=F64)])
    out, _ = empg_advantages(adv3, torch.cat([ent, torch.full((1, 3), 5.0, dtype=F64)]),
                             torch.cat([mask, torch.ones(1, 3, dtype=torch.bool)]),
                             torch.cat([sid, torch.tensor([[0, 1, 2]])]), row_valid=torch.tensor([True, True, False]))
    torch.testing.assert_close(out[:2], ref)
    assert (out[2] == 0).all()


# ------------------------------------------------------------------------------------ loop == vectorized
def _empg_loop(adv, ent, mask, sid, k, k_f, zeta, final_norm, eps_norm=1e-8, row_valid=None):
    N, T = adv.shape
    steps = []
    for i in range(N):
        if row_valid is not None and not row_valid[i]:
            continue
        for s in sorted({int(sid[i, t]) for t in range(T) if mask[i, t] and sid[i, t] >= 0}):
            steps.append((i, [t for t in range(T) if mask[i, t] and sid[i, t] == s]))
    H = [sum(float(ent[i, t]) for t in ts) / len(ts) for i, ts in steps]
    lo, hi = min(H), max(H)
    Hn = [(h - lo) / (hi - lo + eps_norm) for h in H]
    e = [math.exp(-k * x) for x in Hn]
    g = [x / (sum(e) / len(e)) for x in e]
    f = [math.exp(-k_f * x) for x in Hn]
    fn = [f[j + 1] if j + 1 < len(steps) and steps[j + 1][0] == steps[j][0] else 0.0 for j in range(len(steps))]
    a = [sum(float(adv[i, t]) for t in ts) / len(ts) for i, ts in steps]
    mod = [g[j] * a[j] + zeta * fn[j] for j in range(len(steps))]
    mu = sum(mod) / len(mod) if final_norm != "none" else 0.0
    sd = 1.0
    if final_norm == "mean_std" and len(mod) > 1:
        sd = math.sqrt(sum((m - mu) ** 2 for m in mod) / (len(mod) - 1)) + eps_norm
    out = torch.zeros(N, T, dtype=F64)
    for j, (i, ts) in enumerate(steps):
        for t in ts:
            out[i, t] = (g[j] * float(adv[i, t]) + zeta * fn[j] - mu) / sd
    return out


@pytest.mark.parametrize("final_norm", ["mean", "mean_std", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_loop_equals_vectorized(final_norm: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    N, T = 6, 12
    lens = torch.randint(1, T + 1, (N,), generator=g)
    mask = (torch.arange(T)[None] < lens[:, None]) & (torch.rand(N, T, generator=g) > 0.15)
    # Non-decreasing step ids with random gaps (zero-token steps) and token-varying advantages.
    sid = torch.cumsum(torch.randint(0, 3, (N, T), generator=g) == 0, 1) * torch.randint(1, 3, (N, 1), generator=g)
    sid = torch.where(mask, sid, -1)
    ent = torch.where(mask, torch.rand(N, T, generator=g, dtype=F64) * 3, torch.tensor(NAN, dtype=F64))
    adv = torch.randn(N, T, generator=g, dtype=F64) * mask
    valid = torch.rand(N, generator=g) > 0.2
    kw = dict(k=1.3, k_f=0.7, zeta=0.1, final_norm=final_norm)
    vec, _ = empg_advantages(adv, ent, mask, sid, row_valid=valid, **kw)
    torch.testing.assert_close(vec, _empg_loop(adv, ent, mask, sid, row_valid=valid, **kw), atol=1e-10, rtol=0)


def test_step_means_scatter() -> None:
    vals = torch.tensor([[1.0, 3.0, 5.0, 100.0]], dtype=F64)
    mean, cnt = step_means(vals, torch.tensor([[0, 0, 2, 2]]), torch.tensor([[True, True, True, False]]))
    assert mean.tolist() == [[2.0, 0.0, 5.0]] and cnt.tolist() == [[2.0, 0.0, 1.0]]


# -------------------------------------------------------------------------------------------- modifier
def _ctx(adv, ent, mask, raw, extras=None, ids=None):
    class _B:
        response_ids = ids if ids is not None else torch.zeros_like(mask, dtype=torch.long)

    return AdvantageContext(_B(), raw, raw, mask, torch.zeros(len(raw), dtype=torch.long), StepState(0, 0),
                            None, ent, extras or {})


def test_modifier_segments_and_nan_rows() -> None:
    adv, ent, mask, sid = _spec_batch()
    raw = torch.tensor([1.0, 0.0])
    out = EMPG(segment="turn").shape_advantages(adv.clone(), _ctx(adv, ent, mask, raw, {"step_idx": sid}))
    torch.testing.assert_close(out, empg_advantages(adv, ent, mask, sid)[0])
    with pytest.raises(ValueError, match="step_idx"):
        EMPG(segment="turn").shape_advantages(adv, _ctx(adv, ent, mask, raw))
    whole = EMPG(segment="whole_response").shape_advantages(adv.clone(),
                                                             _ctx(adv, ent, mask, torch.tensor([1.0, NAN])))
    assert (whole[1] == 0).all() and (whole[0] == 0).all()  # one valid step: centred to 0
    m = EMPG()
    m.shape_advantages(adv.clone(), _ctx(adv, ent, mask, raw, {"step_idx": sid}))
    assert set(m.on_step_end({}, None)) >= {"step_entropy_mean", "g_min", "g_max", "bonus_mean", "shift"}


def test_string_delimiter_uses_the_char_tokenizer() -> None:
    from rltune.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    ids = torch.tensor([tok("12\n34\n5", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    ent = torch.rand(ids.shape, dtype=F64)
    adv = torch.ones(ids.shape, dtype=F64)
    m = EMPG(segment="delimiter", delimiter="\n")
    ctx = _ctx(adv, ent, mask, torch.tensor([1.0]), ids=ids)
    assert m.step_ids(ctx).tolist() == [[0, 0, 0, 1, 1, 1, 2]]
    assert EMPG(segment="delimiter", delimiter_ids=m.delimiter_ids).step_ids(ctx).tolist() == [[0, 0, 0, 1, 1, 1, 2]]
    with pytest.raises(ValueError):
        EMPG(segment="delimiter")


# ---------------------------------------------------------------------------------- default segmentation
def test_auto_is_per_turn_on_multiturn_rollouts_and_explicit_settings_are_unchanged() -> None:
    adv, ent, mask, sid = _spec_batch()
    raw = torch.tensor([1.0, 0.0])
    turn = _ctx(adv, ent, mask, raw, {"step_idx": sid})
    # the spec's example (per-turn steps): the default reproduces segment='turn', which is the pure function
    ref = empg_advantages(adv, ent, mask, sid)[0]
    torch.testing.assert_close(EMPG().shape_advantages(adv.clone(), turn), ref)
    torch.testing.assert_close(EMPG(segment="turn").shape_advantages(adv.clone(), turn), ref)
    assert ref[0, 0].item() == pytest.approx(1.210108, abs=1e-6)         # the spec's table, step a0
    # VAR: one step per scale (extras['scale_idx'])
    torch.testing.assert_close(EMPG().shape_advantages(adv.clone(), _ctx(adv, ent, mask, raw, {"scale_idx": sid})),
                               ref)
    # explicit whole_response / delimiter give the pure functions' values, as before
    torch.testing.assert_close(EMPG(segment="whole_response").shape_advantages(adv.clone(), turn),
                               empg_advantages(adv, ent, mask, segment_whole(mask))[0])
    ids = torch.tensor([[5, 9, 5], [9, 5, 9]])
    dl = _ctx(adv, ent, mask, raw, ids=ids)
    torch.testing.assert_close(EMPG(segment="delimiter", delimiter_ids=[9]).shape_advantages(adv.clone(), dl),
                               empg_advantages(adv, ent, mask, segment_delimiter(ids, mask, [9]))[0])
    torch.testing.assert_close(EMPG(delimiter_ids=[9]).shape_advantages(adv.clone(), dl),   # auto -> delimiter
                               empg_advantages(adv, ent, mask, segment_delimiter(ids, mask, [9]))[0])
    with pytest.raises(ValueError, match="found no steps"):   # auto with nothing to segment by
        EMPG().shape_advantages(adv.clone(), _ctx(adv, ent, mask, raw))


def _recipe(path: str, **over):
    import yaml

    from rltune.config.load import recipe_from_dict
    from tests.conftest import ROOT, merge

    return recipe_from_dict(merge(yaml.safe_load((ROOT / path).read_text()), over))


@pytest.mark.parametrize("path, over, args, pieces", [
    ("recipes/addition-tiny.yaml", {}, {}, ["segment: auto on a single-turn task", "Fix:", "delimiter"]),
    ("recipes/addition-tiny.yaml", {}, {"segment": "whole_response"}, ["segment: whole_response", "bonus is then 0"]),
    ("recipes/addition-tiny.yaml", {}, {"segment": "turn"}, ["needs a multi-turn rollout", "no env"]),
    ("recipes/agent-guess-tiny.yaml", {"env": {"max_turns": 1}}, {},
     ["segment: auto -> turn", "env.max_turns = 1", "max_turns ≥ 2"]),
    ("recipes/agent-guess-tiny.yaml", {}, {"segment": "whole_response"}, ["whole_response"]),
    ("recipes/var-tiny.yaml", {"model": {"var": {"tiny": {"scales": [4]}}}}, {}, ["VAR", "1 scale(s)"]),
])
def test_single_step_recipes_are_refused(path, over, args, pieces) -> None:
    from rltune.families import check_support
    from rltune.modifiers.pipeline import ModifierError
    from tests.conftest import ROOT

    with pytest.raises(ModifierError) as e:
        check_support(_recipe(path, modifiers=[{"use": "empg", "args": args}], **over), base_dir=ROOT)
    for p in ["modifier 'empg'", "single step", *pieces]:
        assert p in str(e.value), (p, str(e.value))


@pytest.mark.parametrize("path, args", [
    ("recipes/agent-guess-tiny.yaml", {}),                                  # auto -> turn (4 turns)
    ("recipes/agent-guess-tiny.yaml", {"segment": "turn"}),
    ("recipes/var-tiny.yaml", {}),                                          # auto -> scale
    ("recipes/addition-tiny.yaml", {"segment": "delimiter", "delimiter": "\n"}),
    ("recipes/addition-tiny.yaml", {"delimiter": "\n"}),                   # auto -> delimiter
])
def test_multi_step_recipes_pass(path, args) -> None:
    from rltune.families import check_support
    from tests.conftest import ROOT

    check_support(_recipe(path, modifiers=[{"use": "empg", "args": args}]), base_dir=ROOT)


def test_validate_cli_refuses_with_exit_2(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from rltune.cli import app
    from tests.conftest import ROOT

    r = yaml.safe_load((ROOT / "recipes/addition-tiny.yaml").read_text())
    r["modifiers"] = [{"use": "empg", "args": {"segment": "whole_response"}}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    res = CliRunner().invoke(app, ["validate", "--no-model-check", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2 and "single step" in res.output and "Fix:" in res.output
    assert "Traceback" not in res.output
