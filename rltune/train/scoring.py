"""Scoring a batch without gradient: old-policy log-probs (and entropy) and reference log-probs.

One function for the driver (one process, all rows) and the training ranks (rltune/train/worker.py: each rank
scores its contiguous slice of the rows and the driver concatenates the slices in rank order). Under ZeRO-3 a
partitioned model's forward is collective (each layer all-gathers its parameters), so every rank runs the same
number of micro-batch forwards: a rank with fewer rows runs a throw-away forward on one of them.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from rltune.train.torch_engine import response_logprobs


def rank_micro_batches(n: int, micro: int, rank: int = 0, world: int = 1) -> list[tuple[torch.Tensor, bool]]:
    """Row indices of this rank's micro-batches (rank r takes the r-th of `world` contiguous slices of range(n)),
    as (rows, real); the count is the same on every rank, padded with (one row, False) entries."""
    local = torch.arange(n).tensor_split(world)[rank]
    count = max(1, math.ceil(math.ceil(n / world) / micro))
    out = []
    for k in range(count):
        rows = local[k * micro:(k + 1) * micro]
        out.append((rows, True) if len(rows) else (torch.zeros(1, dtype=torch.long), False))
    return out


@torch.no_grad()
def score_rows(policy: nn.Module, ref: nn.Module | str | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               T: int, temperature: float, entropy: bool, micro: int, rank: int = 0, world: int = 1,
               always_split: bool = False, forward: Callable | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs [n,T] of this rank's rows under `policy`, their entropy (or None) and log-probs under `ref`
    (a model; "adapter_off" = the LoRA policy with its adapter disabled; None = no reference), on CPU.
    `always_split`: the two-pass prompt/response forward even where no prompt repeats (ZeRO-3, see above).
    `forward`: a policy family's forward (model, ids, mask, T, temperature, entropy) -> (log-probs, entropy);
    default the causal LM's response_logprobs."""
    device = next(policy.parameters()).device
    if forward is None:
        forward = functools.partial(response_logprobs, always_split=always_split)
    olds, ents, refs = [], [], []
    for rows, real in rank_micro_batches(len(input_ids), micro, rank, world):
        ids, attn = input_ids[rows].to(device), attention_mask[rows].to(device)
        lp, ent = forward(policy, ids, attn, T, temperature, entropy)
        rlp = None
        if ref == "adapter_off":  # LoRA: the frozen base without the adapter is the reference
            base = getattr(policy, "module", policy)
            with base.disable_adapter():
                rlp = forward(policy, ids, attn, T, temperature)[0]
        elif ref is not None:
            rlp = forward(ref, ids, attn, T, temperature)[0]
        if real:
            olds.append(lp.cpu())
            ents.append(None if ent is None else ent.cpu())
            refs.append(None if rlp is None else rlp.cpu())
    cat = lambda xs: torch.cat(xs) if xs and xs[0] is not None else None  # noqa: E731
    if not olds:  # this rank has no rows
        return torch.zeros(0, T), (torch.zeros(0, T) if entropy else None), (None if ref is None else torch.zeros(0, T))
    return cat(olds), cat(ents), cat(refs)
