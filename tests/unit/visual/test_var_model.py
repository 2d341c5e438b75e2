"""The VAR policy interface: layout, block-causal teacher forcing, the sampler (top-k/top-p, CFG, resumption)."""

from __future__ import annotations

import math

import torch

from rltune.models.var import (
    TinyVAR,
    filter_logits,
    sample_var,
    scale_index,
    scale_offsets,
    split_scales,
    token_logprobs,
)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyVAR((1, 2, 4), vocab_size=6, hidden_size=16, num_classes=3, patch=2)


def test_layout():
    sc = [(1, 1), (2, 2), (3, 4)]
    assert scale_offsets(sc) == [0, 1, 5, 17]
    assert scale_index(sc).tolist() == [0] + [1] * 4 + [2] * 12
    parts = split_scales(torch.arange(17)[None], sc)
    assert [p.shape[1] for p in parts] == [1, 4, 12] and parts[2][0, 0] == 5


def test_teacher_forcing_is_block_causal_and_matches_scale_logits():
    m = _model()
    tok = torch.randint(0, 6, (5, 21), generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 1, 2, 3, 0])                       # 3 = the null class
    logits = m(tok, cond)
    assert logits.shape == (5, 21, 6)
    changed = tok.clone()
    changed[:, 1:5] = (changed[:, 1:5] + 1) % 6                # perturb scale 1: only scale 2's logits move
    l2 = m(changed, cond)
    assert torch.equal(logits[:, :5], l2[:, :5]) and not torch.allclose(logits[:, 5:], l2[:, 5:])
    last = tok.clone()
    last[:, 5:] = (last[:, 5:] + 1) % 6                        # the last scale's tokens feed nothing
    assert torch.equal(m(last, cond), logits)
    off = scale_offsets(m.scales)
    for t in range(3):
        assert torch.allclose(m.scale_logits(tok, cond, t), logits[:, off[t]:off[t + 1]], atol=1e-6)


def test_filter_logits_top_k_top_p():
    lg = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(lg, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(lg, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(lg, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(lg, top_p=0.1)).tolist() == [[False, True, True, True]]   # top-1 always kept
    assert torch.equal(filter_logits(lg), lg)


def test_sampler_logprobs_are_the_training_forward_ones():
    m = _model()
    cond = torch.tensor([0, 1, 2, 0])
    s = sample_var(m, cond, generator=torch.Generator().manual_seed(3))
    tf = token_logprobs(m(s.tokens, cond), s.tokens)
    assert torch.allclose(s.logprobs, tf, atol=1e-6)              # ratio starts at 1
    assert torch.allclose(s.sample_logprobs, s.logprobs, atol=1e-6)  # no CFG/truncation: same distribution
    t = sample_var(m, cond, top_k=2, generator=torch.Generator().manual_seed(3))
    assert (t.sample_logprobs >= t.logprobs - 1e-6).all()          # truncation renormalises upwards


def test_top_k_1_is_greedy():
    m = _model()
    cond = torch.tensor([0, 1])
    s = sample_var(m, cond, top_k=1)
    assert torch.equal(m(s.tokens, cond).argmax(-1), s.tokens)


def test_cfg_zero_samples_the_unconditional_model_and_one_the_conditional():
    m = _model()
    cond = torch.tensor([0, 1, 2])
    null = torch.full_like(cond, m.null_class)
    a = sample_var(m, cond, cfg=0.0, generator=torch.Generator().manual_seed(5)).tokens
    b = sample_var(m, null, generator=torch.Generator().manual_seed(5)).tokens
    assert torch.equal(a, b)
    c = sample_var(m, cond, cfg=1.0, generator=torch.Generator().manual_seed(5)).tokens
    d = sample_var(m, cond, generator=torch.Generator().manual_seed(5)).tokens
    assert torch.equal(c, d)
    g = sample_var(m, cond, cfg=3.0, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(g.sample_logprobs, g.logprobs)       # guided ≠ plain distribution


def test_resume_from_a_stored_prefix_reproduces_the_full_draw():
    m = _model()
    cond = torch.tensor([0, 1, 2, 1])
    full = sample_var(m, cond, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    pre = sample_var(m, cond, stop_scale=2, generator=gen)
    assert (pre.tokens[:, 5:] == 0).all() and (pre.logprobs[:, 5:] == 0).all()
    rest = sample_var(m, cond, prefix=pre.tokens, start_scale=2, generator=gen)
    assert torch.equal(rest.tokens, full.tokens) and torch.allclose(rest.logprobs, full.logprobs, atol=1e-6)


def test_decode_is_the_residual_sum_in_pixels():
    m = _model()
    tok = torch.randint(0, 6, (2, 21))
    img = m.decode(tok)
    assert img.shape == (2, 3, 8, 8)
    f = m.features(tok)
    assert torch.equal(img[:, :, ::2, ::2], f) and math.isclose(float(img.mean()), float(f.mean()), rel_tol=1e-5)
