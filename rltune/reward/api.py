"""The reward API users write against.

A reward is a callable `reward(inp: RewardInput) -> list[float | None]`, one value per completion, where
None means "not applicable to this sample" (it is skipped in the weighted sum, not counted as 0).
TRL-style `fn(prompts, completions, **columns)` and verl-style `compute_score(data_source, solution_str,
ground_truth, extra_info)` functions work unchanged through `rltune.reward.adapters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RewardInput:
    prompts: list[str]                               # [N]
    completions: list[str]                           # [N] decoded, EOS stripped
    completion_ids: list[list[int]]                  # [N] token ids of each completion
    meta: dict[str, list[Any]] = field(default_factory=dict)  # dataset columns, each [N]
    step: int = 0
    images: Any | None = None                        # [N,C,H,W] for visual policies

    def __len__(self) -> int:
        return len(self.completions)


@runtime_checkable
class Reward(Protocol):
    def __call__(self, inp: RewardInput) -> list[float | None]: ...
