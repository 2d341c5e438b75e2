"""Padding-free forward: the rows of a micro-batch as one packed sequence, and micro-batches by a token budget.

A row of the batch is [left padding | prompt | response | right padding after EOS]. Packed, only the real tokens
go through the model, one row after another in a single sequence with position ids restarting at 0 per row.
transformers (5.x) reads such position ids with no attention mask as packed sequences: the flash-attention
kernels run them as variable-length batches (no mask, no padding), and sdpa/eager build a block-diagonal causal
mask, exact but O((Σ tokens)²), so `train.padding_free: auto` packs only under flash attention (verl and OpenRLHF
pack the same way there). Used where the update does not take the shared-prompt forward (distinct prompts, or
gradient checkpointing on) and the chunked LM head applies (rltune/models/lm_head.py).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
_SAID: set[str] = set()


def use_packing(mode: str, model) -> bool:
    """Whether `train.padding_free` = mode packs for this model ("auto": only under a varlen attention kernel)."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    base = getattr(model, "module", model)
    impl = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if impl in VARLEN_ATTENTION:
        return True
    if impl not in _SAID:
        _SAID.add(impl)
        log.info("padding-free packing off: attention %r would build a dense [Σtokens, Σtokens] block mask; padded "
                 "rows are cheaper there (train.padding_free=on packs anyway)", impl)
    return False


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, T: int):
    """(ids [1,L], position_ids [1,L], index [n,T], valid [n,T]) for the packed sequence of the rows' real tokens,
    or None when a row's real tokens are not contiguous (then it cannot be one packed segment).

    index[i,t] is the packed position whose output predicts response token t of row i (the token before it);
    valid[i,t] is False where that response token is padding (its log-prob is set to 0, and gets no loss anyway).
    """
    mask = attention_mask.bool()
    lens = mask.sum(1)
    first = mask.long().argmax(1)  # first real token of each row
    cols = torch.arange(mask.shape[1], device=mask.device)
    inside = (cols >= first[:, None]) & (cols < (first + lens)[:, None])
    if not torch.equal(inside, mask):
        return None
    starts = torch.cumsum(lens, 0) - lens
    pos = cols[None, :] - first[:, None]
    P = mask.shape[1] - T
    rpos = pos[:, P:]  # in-row position of each response column
    valid = mask[:, P:] & (rpos >= 1)
    index = (starts[:, None] + rpos - 1).clamp(min=0, max=int(lens.sum()) - 1)
    return input_ids[mask][None], pos[mask][None], index, valid


def token_budget_micro_batches(rows: torch.Tensor, lengths: torch.Tensor, budget: int | None,
                               micro: int) -> list[torch.Tensor]:
    """Split `rows` (in order) into micro-batches: `micro` rows each, or with a token `budget`, as many consecutive
    rows as fit in it (real tokens = `lengths[rows]`; a row longer than the budget goes alone). The loss is
    normalised by the mini-batch's global counts, so any split gives the same gradient."""
    if budget is None:
        return list(rows.split(micro)) or [rows]
    out, cur, used = [], [], 0
    for r, n in zip(rows.tolist(), lengths[rows].tolist()):
        if cur and used + n > budget:
            out.append(torch.tensor(cur, dtype=rows.dtype))
            cur, used = [], 0
        cur.append(r)
        used += n
    if cur or not out:
        out.append(torch.tensor(cur, dtype=rows.dtype))
    return out
