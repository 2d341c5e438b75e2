"""Spatial image rewards: a score per image plus the pixel boxes that determined it (docs/var.md, Mask Propagation:
the mask of "VAR RL Done Right" starts from the reward's boxes, e.g. OCR word boxes).

A reward returns spatial metadata next to its scores as `Scores(values, extras={"boxes": [...]})`: one list of
[x0, y0, x1, y1] pixel boxes per image (an empty list = no box). The RewardManager carries non-numeric extras in
`RewardResult.extras` and the VAR trainer hands them to modifiers as batch extras (`boxes` [N,K,4], NaN padding).
A differentiable reward may also return `saliency`, [H,W] |∂R/∂x| per image (`saliency_map`).
"""

from __future__ import annotations

from typing import Callable

import torch

from rltune.reward import RewardError, RewardInput
from rltune.reward.adapters import Scores

__all__ = ["RegionBrightness", "saliency_map", "region_brightness"]


def region_brightness(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean over channels and pixels of each image inside its box (differentiable).
    images [N,C,H,W], boxes [N,4] long (x0,y0,x1,y1) -> [N]."""
    N, _, H, W = images.shape
    ys, xs = torch.arange(H), torch.arange(W)
    inside = ((ys[None, :, None] >= boxes[:, 1, None, None]) & (ys[None, :, None] < boxes[:, 3, None, None])
              & (xs[None, None, :] >= boxes[:, 0, None, None]) & (xs[None, None, :] < boxes[:, 2, None, None]))
    m = inside[:, None].to(images.dtype)
    return (images * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * images.shape[1]).clamp_min(1)


def saliency_map(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """|∂R/∂x| summed over channels for a differentiable reward fn: images [N,C,H,W] -> [N] scores.
    Returns [N,H,W] (each image's reward only depends on that image, so one backward of the sum suffices)."""
    x = images.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad.abs().sum(1)


class RegionBrightness:
    """Mean value of the decoded image inside the box in column `column` ([x0, y0, x1, y1] pixels), and that box
    as spatial metadata (`boxes`). With `saliency`, also the reward's |∂R/∂x| map (`saliency`).

    >>> import torch
    >>> from rltune.reward import RewardInput
    >>> img = torch.zeros(2, 3, 4, 4); img[0, :, :2, :2] = 1.0
    >>> inp = RewardInput(prompts=["a", "b"], completions=["", ""], completion_ids=[[], []],
    ...                   meta={"region": [[0, 0, 2, 2], [2, 2, 4, 4]]}, images=img)
    >>> out = RegionBrightness()(inp)
    >>> list(out), out.extras["boxes"]
    ([1.0, 0.0], [[[0, 0, 2, 2]], [[2, 2, 4, 4]]])
    """

    def __init__(self, column: str = "region", saliency: bool = False):
        self.column, self.saliency = column, saliency

    def __call__(self, inp: RewardInput) -> Scores:
        if inp.images is None:
            raise RewardError("RegionBrightness scores images: RewardInput.images is None (use it with a visual "
                              "policy)")
        if self.column not in inp.meta:
            raise RewardError(f"RegionBrightness needs the column {self.column!r} (available: "
                              f"{', '.join(sorted(inp.meta)) or 'none'}); set args.column")
        boxes = torch.tensor([list(b) for b in inp.meta[self.column]], dtype=torch.long)
        images = torch.as_tensor(inp.images).float()
        values = region_brightness(images, boxes)
        extras: dict[str, list] = {"boxes": [[list(map(int, b))] for b in boxes.tolist()]}
        if self.saliency:
            sal = saliency_map(lambda x: region_brightness(x, boxes), images)
            extras["saliency"] = list(sal)
        return Scores(values.tolist(), extras=extras)
