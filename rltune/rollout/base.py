"""The rollout engine protocol: prompts in, a `RolloutBatch` out. In-process, Ray and vLLM engines share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rltune.data.batch import PromptBatch, RolloutBatch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                  # samples per prompt (G)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0              # 0 = off
    greedy: bool = False
    seed: int | None = None     # reseeds the sampler for this call (exact resume, per-step determinism)


class RolloutEngine(Protocol):
    weight_version: int            # the policy version the next batch is sampled with

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch: ...
    def sync(self, model: Any, version: int, weights_ref: Any = None) -> None: ...   # new weights (or shared ones)
    def shutdown(self) -> None: ...
