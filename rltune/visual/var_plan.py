"""The typed rollout plan of one VAR step: how the sampler draws the step's rows (docs/var.md, VMR). A modifier
(VMR) attaches it to the step's `PromptBatch.plan`; the VAR trainer samples by it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["STAGES", "RolloutPlan"]

STAGES = ("full", "prefix", "suffix")


@dataclass(frozen=True)
class RolloutPlan:
    """`full` = G independent pyramids per prompt; `prefix` = G prefixes (scales < split) per prompt, each
    completed k times; `suffix` = one prefix per prompt completed G times."""

    stage: Literal["full", "prefix", "suffix"] = "full"
    split: int = 0
    k: int = 1

    def check(self, num_scales: int) -> "RolloutPlan":
        """Itself, or a ValueError naming what is wrong for a pyramid of `num_scales` scales."""
        if self.stage not in STAGES or (self.stage != "full" and not 0 < self.split < num_scales) or self.k < 1:
            raise ValueError(f"bad VAR rollout plan {self}: need a stage in {STAGES}, 0 < split < {num_scales} "
                             "scales, k ≥ 1")
        return self
