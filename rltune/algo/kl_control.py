"""KL coefficient controllers: fixed, or the adaptive controller of Ziegler et al. (1909.08593 §2.2).

Adaptive: e = clip(KL/KL_target − 1, −0.2, 0.2); β ← β·(1 + e·n/horizon), with n the samples of the step.
KL is the rollout policy's KL to the reference measured on each step's batch (verl's convention: the
per-token masked mean per sequence, averaged over sequences). The controller's state (β) is checkpointed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KLController"]


class KLController:
    def __init__(self, init_coef: float, target: float | None = None, horizon: int = 10_000):
        """``target`` None = fixed β; else adaptive toward ``target`` over ``horizon`` samples."""
        if target is not None and (target <= 0 or horizon <= 0):
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.coef, self.target, self.horizon = float(init_coef), target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        """Move β after a step whose rollout KL was ``current_kl`` over ``n_samples``; returns the new β."""
        if self.target is not None:
            err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + err * n_samples / self.horizon
        return self.coef

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.coef = float(sd["coef"])
