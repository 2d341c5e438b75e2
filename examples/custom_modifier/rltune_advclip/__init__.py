"""AdvClip: an example rltune modifier living in its own installable package.

Clips every token advantage to [-max_abs, max_abs] after the estimator (hook ``shape_advantages``). Under GRPO's
std scaling the one success in a group of G 0/1 rewards gets A = (G−1)/√G (2.5 for G = 8, 7.9 for G = 64); the
clip bounds how hard a single sample can pull the update.
"""

from __future__ import annotations

import torch

from rltune.modifiers import AdvantageContext, Modifier, StepState


class AdvClip(Modifier):
    """Clip advantages [N,T] to [-max_abs, max_abs]; logs the fraction of response tokens that were clipped.

    Args:
        max_abs: the bound (> 0).
    """

    def __init__(self, max_abs: float = 5.0):
        if max_abs <= 0:
            raise ValueError(f"max_abs must be > 0, got {max_abs}")
        self.max_abs = float(max_abs)
        self._clipped = 0.0

    def shape_advantages(self, advantages: torch.Tensor, ctx: AdvantageContext) -> torch.Tensor:
        # Return a new tensor; never modify `advantages` or anything in `ctx` in place.
        out = advantages.clamp(-self.max_abs, self.max_abs)
        mask = ctx.response_mask
        self._clipped = float(((out != advantages) & mask).sum() / mask.sum().clamp_min(1))
        return out

    def on_step_end(self, metrics: dict[str, float], state: StepState) -> dict[str, float]:
        return {"clipped_frac": self._clipped}   # logged as mod/<name>/clipped_frac
