"""DAPO dynamic sampling (Yu et al., 2503.14476 §3.2; docs/algorithms.md): generate, score, drop the prompt
groups whose **raw** reward is constant (zero advantage, no gradient), and draw more prompts until B groups
qualify. Without filtering it is one plain round, so the trainer always goes through `sample_groups`.

It takes callables (generate, score, next prompts) and no model, so it is tested with fakes. Per round it
draws B fresh prompts from the loader (which advances, so a resumed run draws exactly the same), and keeps the
first qualifying groups in order until B are collected; the rest of the last round is dropped (verl does the
same). Reward metrics are averaged over every round (what the policy scored), the batch holds kept rows only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rltune.algo import dynamic_sampling_keep
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.reward import RewardResult

__all__ = ["DynamicSamplingError", "sample_groups", "select_groups", "take_rows", "concat_batches"]


class DynamicSamplingError(RuntimeError):
    pass


def sample_groups(
    generate: Callable[[PromptBatch, int], RolloutBatch],
    score: Callable[[RolloutBatch], RewardResult],
    next_prompts: Callable[[int], PromptBatch],
    num_groups: int,
    *,
    enabled: bool,
    max_rounds: int = 0,
    pad_id: int = 0,
) -> tuple[RolloutBatch, RewardResult, dict[str, float]]:
    """(batch of `num_groups` groups, its reward result, metrics `rollout/dynamic_rounds` and
    `rollout/kept_group_frac`). `generate(prompts, round)` samples G completions per prompt (round 0, 1, ...
    lets it reseed); `score(batch)` returns the RewardResult whose `rewards` (raw, before shaping) decide.
    `max_rounds` caps the rounds, the first included (0 = unlimited); hitting it raises DynamicSamplingError.
    """
    parts: list[tuple[RolloutBatch, RewardResult, list[int]]] = []
    taken = qualified = seen = rounds = 0
    while True:
        batch = generate(next_prompts(num_groups), rounds)
        result = score(batch)
        rounds += 1
        if not enabled:
            return batch, result, {}
        _, kept_ids = dynamic_sampling_keep(result.rewards, batch.group_id)
        seen += int(batch.group_id.unique().numel())
        qualified += len(kept_ids)
        take = kept_ids[: num_groups - taken]
        parts.append((batch, result, take))
        taken += len(take)
        if taken >= num_groups:
            break
        if max_rounds and rounds >= max_rounds:
            raise DynamicSamplingError(
                f"dynamic sampling: only {taken}/{num_groups} prompt groups had a non-constant reward after "
                f"algo.dynamic_sampling.max_rounds={max_rounds} rounds of {num_groups} prompts ({qualified} of {seen} "
                "groups qualified). Raise max_rounds (0 = unlimited), raise rollout.samples_per_prompt or "
                "rollout.temperature, use easier/harder prompts, or set algo.dynamic_sampling.enabled: false"
            )
    merged = concat_batches([select_groups(b, ids) for b, _, ids in parts if ids], pad_id)
    rows = [torch.isin(b.group_id, torch.tensor(ids)) for b, _, ids in parts]
    result = RewardResult(
        scores=torch.cat([r.scores[k] for (_, r, _), k in zip(parts, rows)]),
        rewards=torch.cat([r.rewards[k] for (_, r, _), k in zip(parts, rows)]),
        metrics=_mean_metrics([r.metrics for _, r, _ in parts]),
        names=parts[0][1].names,
    )
    metrics = {"rollout/dynamic_rounds": float(rounds), "rollout/kept_group_frac": qualified / max(1, seen)}
    return merged, result, metrics


def select_groups(batch: RolloutBatch, group_ids: list[int]) -> RolloutBatch:
    """The rows of `batch` whose group id is in `group_ids`, in batch order (tensor widths unchanged)."""
    keep = torch.isin(batch.group_id, torch.tensor(group_ids, dtype=batch.group_id.dtype))
    return take_rows(batch, keep.nonzero().squeeze(-1))


def take_rows(batch: RolloutBatch, idx: torch.Tensor) -> RolloutBatch:
    """Rows `idx` [n] long of `batch`, in that order (tensor widths unchanged)."""
    pick = idx.tolist()
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[idx], prompt_mask=batch.prompt_mask[idx], response_ids=batch.response_ids[idx],
        response_mask=batch.response_mask[idx], response_len=batch.response_len[idx],
        rollout_logprobs=batch.rollout_logprobs[idx], group_id=batch.group_id[idx], truncated=batch.truncated[idx],
        prompts=[batch.prompts[i] for i in pick], completions=[batch.completions[i] for i in pick],
        meta={k: [v[i] for i in pick] for k, v in batch.meta.items()}, weight_version=batch.weight_version,
        extras={k: v[idx] for k, v in batch.extras.items()},
        row_version=None if batch.row_version is None else batch.row_version[idx],
    )


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Rows of all batches: prompts re-left-padded, responses (and [n,T] extras) re-right-padded with pad_id / 0,
    group ids renumbered 0.. in order of first appearance."""
    if len(batches) == 1:
        b = batches[0]
        return dataclasses.replace(b, group_id=_renumber([b.group_id]))
    P = max(b.prompt_ids.shape[1] for b in batches)
    T = max(b.response_ids.shape[1] for b in batches)

    def left(x, fill):
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=fill)

    def right(x, fill, width):
        return torch.nn.functional.pad(x, (0, T - width), value=fill)

    def extra(k):
        vals = []
        for b in batches:
            v, t = b.extras[k], b.response_ids.shape[1]
            # step_idx pads with −1 ("no step", the EMPG convention); other per-token extras with False / 0.
            fill = False if v.dtype == torch.bool else -1 if k == "step_idx" else 0
            vals.append(right(v, fill, t) if v.ndim == 2 and v.shape[1] == t else v)
        return torch.cat(vals)

    b0 = batches[0]
    return RolloutBatch(
        prompt_ids=torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
        prompt_mask=torch.cat([left(b.prompt_mask, False) for b in batches]),
        response_ids=torch.cat([right(b.response_ids, pad_id, b.response_ids.shape[1]) for b in batches]),
        response_mask=torch.cat([right(b.response_mask, False, b.response_ids.shape[1]) for b in batches]),
        response_len=torch.cat([b.response_len for b in batches]),
        rollout_logprobs=torch.cat([right(b.rollout_logprobs, 0.0, b.response_ids.shape[1]) for b in batches]),
        group_id=_renumber([b.group_id for b in batches]),
        truncated=torch.cat([b.truncated for b in batches]),
        prompts=[p for b in batches for p in b.prompts],
        completions=[c for b in batches for c in b.completions],
        meta={k: [v for b in batches for v in b.meta[k]] for k in b0.meta},
        weight_version=b0.weight_version,
        extras={k: extra(k) for k in b0.extras},
        row_version=(torch.cat([b.versions for b in batches]) if any(b.row_version is not None for b in batches)
                     else None),
    )


def _renumber(group_ids: list[torch.Tensor]) -> torch.Tensor:
    out, nxt = [], 0
    for g in group_ids:
        uniq, inv = torch.unique(g, return_inverse=True)
        first = torch.full((uniq.numel(),), len(g), dtype=torch.long).scatter_reduce(
            0, inv, torch.arange(len(g)), reduce="amin")
        rank = torch.empty_like(first)
        rank[first.argsort()] = torch.arange(uniq.numel())
        out.append(rank[inv] + nxt)
        nxt += uniq.numel()
    return torch.cat(out)


def _mean_metrics(ms: list[dict[str, float]]) -> dict[str, float]:
    """Per-round reward metrics merged: times add up, everything else is averaged over the rounds."""
    out = {}
    for k in sorted({k for m in ms for k in m}):
        vals = [float(m[k]) for m in ms if k in m and m[k] == m[k]]
        out[k] = (sum(vals) if k.startswith("time/") else sum(vals) / len(vals)) if vals else float("nan")
    return out
