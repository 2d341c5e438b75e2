"""Batch types passed between the phases of one step (shapes in the field comments).

B prompts per step, G samples each, N = B·G rows, P prompt positions (left-padded), T response positions
(right-padded). Everything the loss reads is a tensor here; text and dataset columns ride along as lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class PromptBatch:
    prompts: list[str]                      # [B] prompt text as fed to the tokenizer (templated)
    meta: dict[str, list[Any]]              # dataset columns, each [B]
    hints: list[list[str]] | None = None    # [B][G] forced response prefix per sample (ADHint); "" = none
    plan: Any = None                        # a typed rollout plan for the family's sampler (VAR: var_plan.RolloutPlan)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class RolloutBatch:
    prompt_ids: torch.Tensor                # [N,P] long, left-padded
    prompt_mask: torch.Tensor               # [N,P] bool
    response_ids: torch.Tensor              # [N,T] long, right-padded with pad id
    response_mask: torch.Tensor             # [N,T] bool: tokens that get a loss
    response_len: torch.Tensor              # [N] long: valid response tokens incl. EOS (attention)
    rollout_logprobs: torch.Tensor          # [N,T] float: log π_sample(token) at the sampling temperature
    group_id: torch.Tensor                  # [N] long: rows of the same prompt share a group id
    truncated: torch.Tensor                 # [N] bool: ended without EOS (hit max_new_tokens)
    prompts: list[str]                      # [N]
    completions: list[str]                  # [N] decoded response text, EOS and padding stripped
    meta: dict[str, list[Any]]              # [N] per column, repeated G times
    weight_version: int = 0                 # policy version that sampled this batch (the oldest row's)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)   # e.g. hint_mask [N,T]
    row_version: torch.Tensor | None = None  # [N] long: version per row where rows differ (Ray workers)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def versions(self) -> torch.Tensor:
        """[N] long: the policy version that sampled each row."""
        if self.row_version is not None:
            return self.row_version
        return torch.full((len(self),), self.weight_version, dtype=torch.long)

    @property
    def input_ids(self) -> torch.Tensor:
        """[N,P+T] prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[N,P+T]; response padding after EOS is masked out."""
        t = torch.arange(self.response_ids.shape[1], device=self.response_len.device)
        resp_attn = t[None, :] < self.response_len[:, None]
        return torch.cat([self.prompt_mask, resp_attn], dim=1)

    @property
    def completion_ids(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.response_ids, self.response_len.tolist())]
