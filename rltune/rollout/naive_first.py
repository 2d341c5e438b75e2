"""Groups whose naive samples come first (ADHint's AH-SDP, arXiv 2512.13095; docs/modifiers.md, ADHint).

A modifier that `requires = {"probe"}` calls `PromptContext.probe(prompts, n, keep)` in `on_prompts`: n hint-free
samples per prompt are generated with the current policy and scored, and their raw rewards [B,n] come back. With
keep=True those samples *are* the first n samples of each prompt's group: the rollout then generates only the
other G − n (the modifier's hints must leave the first n slots empty), and the group is naive + hinted in that
order, as in the paper, where the naive rollouts' accuracy sets the hint ratio of the hinted ones and both are
trained. The step's reward result is the two scorings spliced (each row scored once).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.reward import RewardResult
from rltune.rollout.base import SamplingParams
from rltune.rollout.dynamic import concat_batches, take_rows

__all__ = ["NaiveFirstGroups"]


class NaiveFirstGroups:
    """One step's two-phase groups: `probe` (phase 1, called by the modifier), `generate` (phase 2 + merge),
    `result_for` (the spliced reward result of the merged batch)."""

    def __init__(self, generate: Callable[[PromptBatch, SamplingParams], RolloutBatch],
                 score: Callable[[RolloutBatch], RewardResult], sampling: SamplingParams, pad_id: int):
        self._generate, self._score, self._sampling, self.pad_id = generate, score, sampling, pad_id
        self._kept: tuple[list[str], RolloutBatch, RewardResult] | None = None
        self._merged: tuple[RolloutBatch, RewardResult] | None = None

    def probe(self, prompts: PromptBatch, n: int, keep: bool = False) -> torch.Tensor:
        """Raw rewards [B,n] of n hint-free samples per prompt; kept as the groups' first n samples when `keep`."""
        plain = PromptBatch(prompts=list(prompts.prompts), meta=prompts.meta)
        b = self._generate(plain, dataclasses.replace(self._sampling, n=n))
        res = self._score(b)
        self._kept = (list(prompts.prompts), b, res) if keep else None
        return res.rewards.view(len(prompts), n)

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """The step's groups of G = sampling.n: all generated here, or the kept naive samples + the rest."""
        if self._kept is None:
            return self._generate(prompts, sampling)
        names, naive, res = self._kept
        self._kept = None
        B, G = len(prompts), sampling.n
        n = len(naive) // B
        if list(prompts.prompts) != names or prompts.hints is None or any(any(h[:n]) for h in prompts.hints):
            raise ValueError("probe(keep=True): the kept naive samples are the first n of each group, so on_prompts "
                             "must keep the same prompts and leave the first n hints of every prompt empty")
        if n >= G:
            raise ValueError(f"probe(keep=True) kept {n} samples per prompt, no room left in groups of {G}")
        rest = self._generate(dataclasses.replace(prompts, hints=[h[n:] for h in prompts.hints]),
                              dataclasses.replace(sampling, n=G - n))
        rest_res = self._score(rest)
        for k, v in rest.extras.items():   # the naive rows lack what hinted generation marks (hint_mask, is_hint)
            if k not in naive.extras:
                shape = (len(naive), naive.response_ids.shape[1]) if v.ndim == 2 else (len(naive), *v.shape[1:])
                naive = dataclasses.replace(naive, extras={**naive.extras, k: torch.zeros(shape, dtype=v.dtype)})
        both = concat_batches([naive, rest], self.pad_id)
        # prompt b's group: its n naive rows, then its G − n others
        order = torch.cat([torch.cat([torch.arange(b * n, (b + 1) * n), B * n + torch.arange(b * (G - n),
                                                                                             (b + 1) * (G - n))])
                           for b in range(B)])
        merged = dataclasses.replace(take_rows(both, order), group_id=torch.arange(B).repeat_interleave(G))
        result = RewardResult(scores=torch.cat([res.scores, rest_res.scores])[order],
                              rewards=torch.cat([res.rewards, rest_res.rewards])[order],
                              metrics=_row_weighted([(res.metrics, len(naive)), (rest_res.metrics, len(rest))]), names=res.names,
                              extras={k: [(res.extras[k] + rest_res.extras[k])[i] for i in order.tolist()]
                                      for k in res.extras if k in rest_res.extras})
        self._merged = (merged, result)
        return merged

    def result_for(self, batch: RolloutBatch) -> RewardResult | None:
        """The spliced reward result when `batch` is the merged batch just generated, else None (score it)."""
        if self._merged is not None and self._merged[0] is batch:
            return self._merged[1]
        return None


def _row_weighted(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Reward metrics of two scorings as one: times add up, everything else is the row-weighted mean."""
    out = {}
    for k in sorted({k for m, _ in parts for k in m}):
        vals = [(float(m[k]), n) for m, n in parts if k in m and m[k] == m[k]]
        if not vals:
            out[k] = float("nan")
        elif k.startswith("time/"):
            out[k] = sum(v for v, _ in vals)
        else:
            out[k] = sum(v * n for v, n in vals) / sum(n for _, n in vals)
    return out
