"""Padding-free updates (rltune/train/packing.py): the packed forward equals the padded and the shared-prompt
forwards (log-probs, entropy, gradients), token-budget micro-batches split as stated and leave the update unchanged."""

import pytest
import torch

from rltune.config.schema import ModelConfig
from rltune.models.policy import load_policy
from rltune.train import packing
from rltune.train import torch_engine as te
from tests.helpers.batches import TINY_CFG, padded_batch

CFG = TINY_CFG


def _batch(tok, B=3, G=2, P=6, T=5, seed=0):
    return padded_batch(tok, B, G, P, T, seed, eos_every=2, pad_ids=True)


def test_pack_rows_hand_checked():
    ids = torch.tensor([[0, 0, 7, 8, 9, 0], [5, 6, 7, 8, 9, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    flat, pos, index, valid = packing.pack_rows(ids, mask, T=2)  # prompt = 4 columns, response = 2
    assert flat.tolist() == [[7, 8, 9, 5, 6, 7, 8, 9, 4]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5]]
    # row 0: response token 9 (packed 2) is predicted by packed 1; its second response column is padding
    assert index[0, 0] == 1 and valid[0].tolist() == [True, False]
    assert index[1].tolist() == [3 + 3, 3 + 4] and valid[1].all()
    holey = mask.clone()
    holey[1, 2] = 0  # real tokens not contiguous: cannot be one segment
    assert packing.pack_rows(ids, holey, T=2) is None


def _run(model, ids, mask, T, path, monkeypatch):
    if path != "shared":
        monkeypatch.setattr(te, "_shared_prompt_outputs", lambda *a: None)
    model.zero_grad()
    lp, ent = te.response_logprobs(model, ids, mask, T, temperature=0.7, entropy=True, entropy_grad=True,
                                   pack=path == "packed")
    ((lp + 0.1 * ent) * mask[:, -T:]).sum().backward()
    monkeypatch.undo()
    return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_packed_equals_padded_and_shared_prompt(lora, monkeypatch):
    model, tok = load_policy(ModelConfig(tiny=CFG, lora={"r": 4, "alpha": 8} if lora else None), seed=0)
    ids, mask, T = _batch(tok)
    calls = []
    real = packing.pack_rows
    monkeypatch.setattr(te, "pack_rows", lambda *a: calls.append(1) or real(*a))
    packed = _run(model, ids, mask, T, "packed", monkeypatch)
    assert calls  # the packed forward ran
    m = mask[:, -T:].bool()
    for other in ("padded", "shared"):
        ref = _run(model, ids, mask, T, other, monkeypatch)
        torch.testing.assert_close(packed[0][m], ref[0][m], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[1][m], ref[1][m], rtol=1e-5, atol=1e-5)
        assert packed[2].keys() == ref[2].keys() and ref[2]
        for k in ref[2]:
            torch.testing.assert_close(packed[2][k], ref[2][k], rtol=1e-4, atol=1e-5)
    assert (packed[0][~m] == 0).all()


def test_auto_packs_only_under_a_varlen_attention():
    model, _ = load_policy(ModelConfig(tiny=CFG), seed=0)
    assert model.config._attn_implementation in ("sdpa", "eager")
    assert not packing.use_packing("auto", model) and packing.use_packing("on", model)
    assert not packing.use_packing("off", model)
    model.config._attn_implementation = "flash_attention_2"
    assert packing.use_packing("auto", model)


def test_token_budget_micro_batches_hand_checked():
    rows = torch.tensor([4, 0, 2, 1, 3])
    lengths = torch.tensor([5, 3, 9, 2, 4])  # per row index
    split = packing.token_budget_micro_batches(rows, lengths, 8, micro=99)
    # row 4 (4) + row 0 (5) > 8 -> alone; 0 (5) + 2 (9) > 8; 2 (9) alone (longer than the budget); 1 (3) + 3 (2)
    assert [s.tolist() for s in split] == [[4], [0], [2], [1, 3]]
    assert [s.tolist() for s in packing.token_budget_micro_batches(rows, lengths, None, micro=2)] == \
        [[4, 0], [2, 1], [3]]
    assert packing.token_budget_micro_batches(rows[:0], lengths, 8, micro=2)[0].numel() == 0


@pytest.mark.parametrize("train", [{"max_tokens_per_micro_batch": 30, "padding_free": "on"},
                                   {"max_tokens_per_micro_batch": 45, "padding_free": "off"}])
def test_token_budget_and_packing_do_not_change_the_update(tiny_recipe, train, monkeypatch):
    """Same batch: one padded micro-batch of 16 rows vs token-budget micro-batches (packed or padded, the
    shared-prompt forward off so that they run): the same weights after the step."""
    from rltune.train import update
    from rltune.trainer import Trainer

    weights, splits = [], []
    real = update.token_budget_micro_batches
    monkeypatch.setattr(update, "token_budget_micro_batches", lambda *a: splits.append(real(*a)) or splits[-1])
    for t_over in ({"micro_batch_size": 16, "padding_free": "off"}, train):
        if t_over is train:
            monkeypatch.setattr(te, "_shared_prompt_outputs", lambda *a: None)
        t = Trainer(tiny_recipe(train={"max_grad_norm": None, **t_over}, run={"steps": 1}), overwrite=True)
        t.eval_rows = None
        t.fit()
        weights.append({n: p.detach().clone() for n, p in t.model.named_parameters()})
    assert len(splits[0]) == 1 and len(splits[-1]) > 2  # the budget did split the mini-batch
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], rtol=0, atol=2e-6)
