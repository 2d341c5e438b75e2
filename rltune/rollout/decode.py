"""rltune's decode loop for an in-process transformers model: the rollout engine's fast path.

Why not `transformers.generate`: on small models its per-token Python (logits processors, stopping criteria,
cache bookkeeping) costs as much as the model, it prefills every copy of a prompt (G copies per GRPO group)
and it keeps the full-vocabulary logits of every step when asked for them (`output_logits`), which is
[N, T, V] floats. Here each distinct prompt is prefilled once and its KV cache gathered to the G rows, the
sampled token's log-prob is taken from each step's logits and the logits are dropped, and the loop stops as
soon as every row has emitted EOS. The sampling follows generate's order (temperature → top-k → top-p →
softmax → multinomial on the global RNG), so a seed fixes the draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rltune.rollout.base import SamplingParams


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature-scaled logits [N,V] with the tokens outside the top-k / nucleus set to -inf.

    top-k keeps the k largest (ties at the k-th value kept); top-p keeps the smallest set of most likely tokens
    whose probability reaches p (the most likely token always stays), as in Holtzman et al. 2019.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


@torch.inference_mode()
def decode(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    n: int,
    params: SamplingParams,
    eos_token_id: int,
    pad_token_id: int,
    cache_kwarg: str,
) -> tuple[Tensor, Tensor] | None:
    """Sample `n` continuations of each left-padded prompt.

    prompt_ids, prompt_mask: [U,P] (distinct prompts). Returns (tokens [U·n, Tg], logprobs [U·n, Tg]) with rows
    grouped per prompt (prompt u's samples at u·n … u·n+n−1), pad after EOS and Tg ≤ max_new_tokens the longest
    row; logprobs are of the temperature-scaled full distribution (0 for greedy and after EOS). None when the
    model returns no reorderable KV cache (the caller falls back to `generate`).
    """
    device = prompt_ids.device
    mask = prompt_mask.long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # No left padding: a plain causal mask is exact (rows past EOS only feed their own ignored positions), and
    # transformers skips building a 4-D mask each step.
    padded = not bool(prompt_mask.all())
    out = model(input_ids=prompt_ids, attention_mask=mask if padded else None, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    cache = _cache_of(out)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    rows = torch.arange(len(prompt_ids), device=device).repeat_interleave(n)
    cache.reorder_cache(rows)
    logits = out.logits[:, -1].float()[rows]
    mask = mask[rows]
    next_pos = pos[rows, -1:] + 1
    N = len(rows)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for t in range(params.max_new_tokens):
        if params.greedy:
            tok = logits.argmax(-1)
            lp = torch.zeros(N, device=device)
        else:
            scaled = logits / params.temperature
            probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
            tok = torch.multinomial(probs, 1).squeeze(1)
            lp = scaled.log_softmax(-1).gather(-1, tok[:, None]).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        tokens.append(tok)
        logprobs.append(torch.where(done, torch.zeros_like(lp), lp))
        done = done | (tok == eos_token_id)
        if bool(done.all()) or t == params.max_new_tokens - 1:
            break
        if padded:
            mask = torch.cat([mask, torch.ones(N, 1, dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask if padded else None, position_ids=next_pos,
                    use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
        cache = _cache_of(out) or cache
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)
