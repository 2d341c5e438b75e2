"""rltune's decode loop (rltune/rollout/decode.py) against `transformers.generate` and the trainer's forward:
greedy tokens equal generate's, sampled tokens carry the log-probs the trainer recomputes, top-k/top-p keep
exactly the stated sets, and a seed fixes the draw."""

import pytest
import torch

from rltune.config.schema import ModelConfig
from rltune.data.batch import PromptBatch
from rltune.models.policy import load_policy
from rltune.rollout.base import SamplingParams
from rltune.rollout.decode import filter_logits
from rltune.rollout.hf_engine import HFEngine
from rltune.train.torch_engine import response_logprobs

CFG = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
PROMPTS = ["12+7=", "3+45=", "8+8=", "1+230="]  # different lengths: left padding


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_policy(ModelConfig(tiny=CFG), seed=0)


def _batch(model, tok, decode, params):
    return HFEngine(model, tok, decode=decode).generate(PromptBatch(prompts=PROMPTS, meta={}), params)


def test_greedy_equals_generate(policy):
    model, tok = policy
    p = SamplingParams(n=2, max_new_tokens=9, greedy=True)
    a, b = _batch(model, tok, "loop", p), _batch(model, tok, "generate", p)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.completions == b.completions and torch.equal(a.prompt_ids, b.prompt_ids)
    assert torch.equal(a.truncated, b.truncated)


def test_sampled_logprobs_are_the_trainers(policy):
    model, tok = policy
    p = SamplingParams(n=3, max_new_tokens=8, temperature=0.8, seed=5)
    b = _batch(model, tok, "loop", p)
    ids = torch.cat([b.prompt_ids, b.response_ids], 1)
    mask = torch.cat([b.prompt_mask, b.response_mask], 1)
    T = b.response_ids.shape[1]
    with torch.no_grad():
        lp, _ = response_logprobs(model, ids, mask.long(), T, temperature=0.8)
    m = b.response_mask
    torch.testing.assert_close(b.rollout_logprobs[m], lp[m], rtol=1e-5, atol=1e-5)
    assert (b.rollout_logprobs[~m] == 0).all() and (b.response_ids[~m] == tok.pad_token_id).all()
    # rows of a group are distinct draws, and the same seed gives the same draw
    assert not all(torch.equal(b.response_ids[0], b.response_ids[i]) for i in (1, 2))
    again = _batch(model, tok, "loop", p)
    assert torch.equal(again.response_ids, b.response_ids)


def test_top_k_one_is_greedy(policy):
    model, tok = policy
    g = _batch(model, tok, "loop", SamplingParams(n=2, max_new_tokens=6, greedy=True))
    s = _batch(model, tok, "loop", SamplingParams(n=2, max_new_tokens=6, top_k=1, seed=1))
    assert torch.equal(g.response_ids, s.response_ids)


def test_filter_logits_keeps_the_stated_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    inf = float("-inf")
    k2 = filter_logits(logits, top_k=2)
    assert torch.equal(torch.isinf(k2), torch.tensor([[False, False, True, True], [True, True, False, False]]))
    # p = 0.8: 0.5 alone is short of it, 0.5 + 0.3 reaches it → two tokens stay
    p8 = filter_logits(logits, top_p=0.8)
    assert torch.equal(p8 == inf, torch.tensor([[False, False, True, True], [True, True, False, False]]))
    # p = 0.81 needs the third token; p tiny keeps only the most likely one
    assert int((filter_logits(logits, top_p=0.81) > inf).sum()) == 6
    assert int((filter_logits(logits, top_p=0.01) > inf).sum()) == 2
    torch.testing.assert_close(filter_logits(logits, top_p=0.8)[0, :2], logits[0, :2])


def test_hints_fall_back_to_generate(policy):
    model, tok = policy
    prompts = PromptBatch(prompts=PROMPTS[:2], meta={}, hints=[["1", ""], ["", "2"]])
    b = HFEngine(model, tok, decode="loop").generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert b.extras["hint_mask"][0, 0] and not b.extras["hint_mask"][1].any()
    assert b.response_ids[0, 0] == tok("1", add_special_tokens=False)["input_ids"][0]


def test_prompts_without_padding_take_the_maskless_path_with_the_same_tokens(policy):
    model, tok = policy
    same_len = PromptBatch(prompts=["12+7=", "31+4=", "88+1="], meta={})  # no left padding: no attention mask
    p = SamplingParams(n=2, max_new_tokens=7, greedy=True)
    a = HFEngine(model, tok, decode="loop").generate(same_len, p)
    b = HFEngine(model, tok, decode="generate").generate(same_len, p)
    assert a.prompt_mask.all() and torch.equal(a.response_ids, b.response_ids)
    s = HFEngine(model, tok, decode="loop").generate(same_len, SamplingParams(n=3, max_new_tokens=7, seed=2))
    ids = torch.cat([s.prompt_ids, s.response_ids], 1)
    mask = torch.cat([s.prompt_mask, s.response_mask], 1).long()
    with torch.no_grad():
        lp, _ = response_logprobs(model, ids, mask, s.response_ids.shape[1])
    torch.testing.assert_close(s.rollout_logprobs[s.response_mask], lp[s.response_mask], rtol=1e-5, atol=1e-5)
