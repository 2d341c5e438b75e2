"""The chunked LM-head log-prob op (rltune/models/lm_head.py) equals the full-logits path — log-probs, entropy and
gradients of the hidden states, the head weight and bias — with temperature, tied embeddings and LoRA, and never
allocates a [tokens, vocab] tensor."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from rltune.config.schema import ModelConfig
from rltune.models import lm_head
from rltune.models.policy import load_policy
from rltune.ops import entropy_from_logits, logprobs_from_logits
from rltune.train import torch_engine as te

CFG = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}


def _plain(h, w, b, ids, t):
    z = (h @ w.t() + (b if b is not None else 0)).float() / t
    return logprobs_from_logits(z, ids), entropy_from_logits(z)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_op_equals_plain_with_gradients(bias, temperature, entropy_grad):
    g = torch.Generator().manual_seed(0)
    n, H, V = 23, 16, 101
    h0 = torch.randn(n, H, generator=g)
    w0 = torch.randn(V, H, generator=g) * 0.5
    b0 = torch.randn(V, generator=g) if bias else None
    ids = torch.randint(0, V, (n,), generator=g)
    cw = torch.rand(n, generator=g)  # loss weights on log-probs and entropy
    ce = torch.rand(n, generator=g)
    grads = []
    for chunked in (True, False):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if bias else None
        if chunked:  # chunk of 5 tokens: 5 chunks, the last one short
            lp, ent = lm_head.head_logprobs(h, w, b, ids, temperature, entropy=True, entropy_grad=entropy_grad, chunk=5)
        else:
            lp, ent = _plain(h, w, b, ids, temperature)
            ent = ent if entropy_grad else ent.detach()
        loss = (lp * cw).sum() + ((ent * ce).sum() if entropy_grad else 0)
        loss.backward()
        grads.append((lp.detach(), ent.detach(), h.grad, w.grad, b.grad if bias else None))
        assert ent.requires_grad == entropy_grad
    for a, c in zip(*grads):
        if a is not None:
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_op_without_entropy_returns_none_and_matches():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(4, 3, 8, generator=g), torch.randn(50, 8, generator=g)
    ids = torch.randint(0, 50, (4, 3), generator=g)
    lp, ent = lm_head.head_logprobs(h, w, None, ids, chunk=2)
    assert ent is None and lp.shape == (4, 3)
    torch.testing.assert_close(lp, _plain(h, w, None, ids, 1.0)[0], rtol=1e-5, atol=1e-5)


def _grads(model, ids, mask, T, chunked, monkeypatch, temperature=0.7):
    if not chunked:
        monkeypatch.setattr(te, "head_of", lambda m: (None, None, "test: plain path"))
    model.zero_grad()
    lp, ent = te.response_logprobs(model, ids, mask, T, temperature=temperature, entropy=True, entropy_grad=True)
    ((lp - 0.3 * ent) * mask[:, -T:]).sum().backward()
    monkeypatch.undo()
    return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batch(tok, B=3, G=2, P=5, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, 90, (B, P), generator=g)
    prompts[0, :2] = tok.pad_token_id
    pm = torch.ones(B, P, dtype=torch.long)
    pm[0, :2] = 0
    ids = torch.cat([prompts.repeat_interleave(G, 0), torch.randint(5, 90, (B * G, T), generator=g)], 1)
    mask = torch.cat([pm.repeat_interleave(G, 0), torch.ones(B * G, T, dtype=torch.long)], 1)
    mask[1, -1:] = 0
    return ids, mask, T


@pytest.mark.parametrize("case", ["untied", "tied", "lora", "tied_lora"])
@pytest.mark.parametrize("G", [1, 2])  # 1: plain forward; 2: the shared-prompt forward
def test_response_logprobs_chunked_equals_full_logits(case, G, monkeypatch):
    tiny = dict(CFG, tie_word_embeddings="tied" in case)
    model, tok = load_policy(ModelConfig(tiny=tiny, lora={"r": 4, "alpha": 8} if "lora" in case else None), seed=0)
    _, head, why = lm_head.head_of(model)
    assert head is not None, why
    if "tied" in case:
        assert head.weight is model.get_input_embeddings().weight
    ids, mask, T = _batch(tok, G=G)
    a = _grads(model, ids, mask, T, True, monkeypatch)
    b = _grads(model, ids, mask, T, False, monkeypatch)
    m = mask[:, -T:].bool()
    torch.testing.assert_close(a[0][m], b[0][m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1][m], b[1][m], rtol=1e-5, atol=1e-5)
    assert a[2].keys() == b[2].keys() and a[2]
    if "lora" not in case:
        assert any("embed" in k for k in a[2]) and any("lm_head" in k or "embed" in k for k in a[2])
    for k in b[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-4, atol=1e-5)


def test_lora_on_the_head_and_soft_cap_fall_back_to_the_plain_path(caplog):
    model, _ = load_policy(ModelConfig(tiny=CFG, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "lm_head"]}),
                           seed=0)
    dec, head, why = lm_head.head_of(model)
    assert head is None and dec is None and "LoRA on lm_head" in why
    plain, _ = load_policy(ModelConfig(tiny=CFG), seed=0)
    plain.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in lm_head.head_of(plain)[2]
    # and the fallback still computes log-probs (full logits), logging why once
    ids = torch.randint(5, 90, (2, 6))
    with caplog.at_level("INFO", logger="rltune.models.lm_head"):
        lp, _ = te.response_logprobs(model, ids, torch.ones_like(ids), 3)
    assert lp.shape == (2, 3) and "chunked LM head off" in caplog.text


def _largest_allocation(fn) -> int:
    """Bytes of the largest single allocation by any op while `fn` runs (torch's CPU memory profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


@pytest.mark.parametrize("V", [2000, 8000])
def test_no_tokens_by_vocab_tensor_in_forward_or_backward(V):
    g = torch.Generator().manual_seed(0)
    n, H, chunk = 256, 8, 16
    h = torch.randn(n, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (n,), generator=g)
    full = n * V * 4  # one fp32 [tokens, V] tensor
    saved = []

    def run():
        with saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            lp, ent = lm_head.head_logprobs(h, w, None, ids, entropy=True, entropy_grad=True, chunk=chunk)
        (lp.sum() + ent.sum()).backward()

    peak = _largest_allocation(run)
    assert max(saved) <= V * H  # what the backward keeps: hidden, weight, ids and [n] statistics
    # the largest temporaries are one chunk's logits/probabilities (and the weight's fp32 gradient [V,H])
    assert peak <= 2 * max(chunk * V * 4, V * H * 4) < full / 4

    def plain():
        lp, ent = _plain(h, w, None, ids, 1.0)
        (lp.sum() + ent.sum()).backward()

    assert _largest_allocation(plain) >= full  # the plain path does hold [tokens, V]


def test_bf16_autocast_option_is_close_keeps_fp32_weights_and_saves_bf16_activations():
    """train.autocast=bfloat16 (memory over exactness): log-probs near the fp32 ones, fp32 gradients, and the
    forward keeps bf16 activations for the backward (off: none)."""
    from rltune.config.schema import TrainConfig
    from rltune.train.torch_engine import TorchEngine

    model, tok = load_policy(ModelConfig(tiny=CFG), seed=0)
    ids, mask, T = _batch(tok, G=1)
    out = {}
    for mode in ("off", "bfloat16"):
        eng = TorchEngine(model, TrainConfig(autocast=mode), total_steps=1)
        dtypes = []
        model.zero_grad()
        with saved_tensors_hooks(lambda t: dtypes.append(t.dtype) or t, lambda t: t):
            lp, ent = eng.forward(ids, mask, T, temperature=0.7, entropy=True)
        (lp * mask[:, -T:]).sum().backward()
        out[mode] = (lp.detach(), dtypes, [p.grad.clone() for p in model.parameters()])
    lp32, d32, g32 = out["off"]
    lp16, d16, g16 = out["bfloat16"]
    assert lp16.dtype == torch.float32 and torch.bfloat16 not in d32 and torch.bfloat16 in d16
    m = mask[:, -T:].bool()
    torch.testing.assert_close(lp16[m], lp32[m], rtol=0, atol=0.05)
    assert not torch.equal(lp16[m], lp32[m])  # it is not the exact path
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in g16)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g16]),
                                                torch.cat([g.flatten() for g in g32]), dim=0)
    assert cos > 0.99
