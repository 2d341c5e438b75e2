"""The update's shared-prompt forward (each distinct prompt once, its KV cache gathered to the rows) gives the
plain forward's log-probs, entropy and gradients, with left-padded prompts, right-padded responses and LoRA."""

import pytest
import torch

from rltune.config.schema import ModelConfig
from rltune.models.policy import load_policy
from rltune.train import torch_engine as te
from tests.helpers.batches import TINY_CFG, padded_batch

CFG = TINY_CFG


def _batch(tok, B=4, G=3, P=6, T=5):
    return padded_batch(tok, B, G, P, T, seed=0, eos_every=4)


def _run(model, ids, mask, T, share, monkeypatch):
    if not share:
        monkeypatch.setattr(te, "_shared_prompt_outputs", lambda *a: None)
    model.zero_grad()
    lp, ent = te.response_logprobs(model, ids, mask, T, temperature=0.7, entropy=True)
    (lp * mask[:, -T:]).sum().backward()
    monkeypatch.undo()
    return lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_forward_equals_plain(lora, monkeypatch):
    cfg = ModelConfig(tiny=CFG, lora={"r": 4, "alpha": 8} if lora else None)
    model, tok = load_policy(cfg, seed=0)
    ids, mask, T = _batch(tok)
    calls = []
    shared = te._shared_prompt_outputs
    monkeypatch.setattr(te, "_shared_prompt_outputs", lambda *a: calls.append(1) or shared(*a))
    lp_s, ent_s, g_s = _run(model, ids, mask, T, True, monkeypatch)
    assert calls  # the shared path ran
    lp_p, ent_p, g_p = _run(model, ids, mask, T, False, monkeypatch)
    m = mask[:, -T:].bool()
    torch.testing.assert_close(lp_s[m], lp_p[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_s[m], ent_p[m], rtol=1e-5, atol=1e-5)
    assert g_s.keys() == g_p.keys() and g_s
    for k in g_p:
        torch.testing.assert_close(g_s[k], g_p[k], rtol=1e-4, atol=1e-6)


def test_distinct_prompts_take_the_plain_path():
    model, tok = load_policy(ModelConfig(tiny=CFG), seed=0)
    ids, mask, T = _batch(tok, B=4, G=1)
    dec, _, _ = te.head_of(model)
    assert te._shared_prompt_outputs(te._Forward(model, dec), ids, mask, ids.shape[1] - T, T) is None


@pytest.mark.parametrize("share", [True, False])
def test_no_left_padding_drops_the_mask_without_changing_real_tokens(share, monkeypatch):
    model, tok = load_policy(ModelConfig(tiny=CFG), seed=0)
    g = torch.Generator().manual_seed(1)
    B, G, P, T = 3, 2, 5, 4
    ids = torch.cat([torch.randint(5, 90, (B, P), generator=g).repeat_interleave(G, 0),
                     torch.randint(5, 90, (B * G, T), generator=g)], 1)
    mask = torch.ones_like(ids)
    mask[::2, -2:] = 0  # right padding after an early EOS: no loss there
    if not share:
        monkeypatch.setattr(te, "_shared_prompt_outputs", lambda *a: None)
    with torch.no_grad():
        fast, _ = te.response_logprobs(model, ids, mask, T)
        monkeypatch.setattr(te, "_key_mask", lambda m, P: m.long())  # always pass the mask
        masked, _ = te.response_logprobs(model, ids, mask, T)
    m = mask[:, -T:].bool()
    torch.testing.assert_close(fast[m], masked[m], rtol=1e-5, atol=1e-6)
