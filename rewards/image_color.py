"""Analytic, differentiable colour rewards for image policies (CPU demos and tests; docs/diffusion.md)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rltune.reward.image import ImageReward

_NAMED = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColorReward(ImageReward):
    """Mean over pixels of the colour's channel minus the mean of the other channels, on images in [0,1]
    rescaled to [−1,1] as in the CPU toy ("redness" = mean R − ½(mean G + mean B), range [−2,2]).

    `target` is a name (red/green/blue: weight 1 on it, −½ on the others, so grey scores 0) or 3 raw RGB weights.
    `clamp` (default, as the CPU toy) scores the image as displayed, clipped to [0,1]: the reward is
    bounded (redness ≤ 2) but saturated pixels get no gradient (docs/diffusion.md); clamp=false is unbounded (hackable).

    >>> import torch
    >>> from rltune.reward import RewardInput
    >>> img = torch.zeros(2, 3, 4, 4); img[0, 0] = 1.0; img[1] = 0.5     # pure red, mid grey
    >>> ColorReward("red")(RewardInput(["a", "b"], ["", ""], [[], []], images=img))
    [2.0, 0.0]
    """

    differentiable = True

    def __init__(self, target: str | Sequence[float] = "red", clamp: bool = True):
        self.clamp = clamp
        if isinstance(target, str):
            if target not in _NAMED:
                raise ValueError(f"ColorReward target must be one of {sorted(_NAMED)} or 3 weights, got {target!r}")
            e = torch.tensor(_NAMED[target])
            self.w = e - (1 - e) / 2          # red -> (1, −½, −½): weights sum to 0, grey scores 0
        else:
            self.w = torch.tensor(list(target), dtype=torch.float32)
            if self.w.shape != (3,):
                raise ValueError(f"ColorReward target must be a colour name or 3 weights, got {target!r}")

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        x = images.float().clamp(0, 1) if self.clamp else images.float()
        x = x * 2 - 1                                                # [N,3,H,W] in [−1,1]
        return (x.mean(dim=(2, 3)) * self.w.to(x.device)).sum(dim=1)


class Brightness(ImageReward):
    """Mean pixel value in [0,1] (a uniform 'brightness' objective).

    >>> import torch
    >>> Brightness().score_images(torch.full((1, 3, 2, 2), 0.25), ["p"]).tolist()
    [0.25]
    """

    differentiable = True

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        return images.float().mean(dim=(1, 2, 3))
