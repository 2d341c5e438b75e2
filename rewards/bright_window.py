"""A detector-style spatial signal for Mask Propagation: where in the image is the brightest size×size window?

`BrightWindow` looks only at the decoded image (never at the prompt, its class or the reward's box) and marks
the brightest window (mean over channels, stride 1) as a 0/1 map in `saliency` [H,W], the extra that
`var_mask` reads with `source: saliency`. Its score is that window's brightness. Give it weight 0 next to the
task reward to use it as a mask source only: the analogue of an off-the-shelf detector (e.g. OCR boxes) whose
regions are not the reward's own (bench/evidence.py, the VAR row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rltune.reward import RewardError, RewardInput
from rltune.reward.adapters import Scores

__all__ = ["BrightWindow", "brightest_window"]


def brightest_window(images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N,C,H,W] -> (mask [N,H,W] float 0/1 of the brightest size×size window, its brightness [N]).
    Ties go to the first window in row-major order."""
    N, _, H, W = images.shape
    if not 1 <= size <= min(H, W):
        raise RewardError(f"BrightWindow size={size} must be in 1..{min(H, W)} for {H}x{W} images")
    pooled = F.avg_pool2d(images.float().mean(1, keepdim=True), size, stride=1).flatten(1)   # [N,(H-s+1)(W-s+1)]
    best, idx = pooled.max(1)
    y0, x0 = idx // (W - size + 1), idx % (W - size + 1)
    ys, xs = torch.arange(H), torch.arange(W)
    inside = ((ys[None, :, None] >= y0[:, None, None]) & (ys[None, :, None] < y0[:, None, None] + size)
              & (xs[None, None, :] >= x0[:, None, None]) & (xs[None, None, :] < x0[:, None, None] + size))
    return inside.float(), best


class BrightWindow:
    """Score = brightness of the brightest size×size window; extras `saliency` = that window as a 0/1 map.

    >>> import torch
    >>> from rltune.reward import RewardInput
    >>> img = torch.zeros(1, 3, 4, 4); img[0, :, 2:, 1:3] = 1.0
    >>> out = BrightWindow(size=2)(RewardInput(prompts=["a"], completions=[""], completion_ids=[[]], meta={},
    ...                                        images=img))
    >>> list(out), out.extras["saliency"][0].nonzero().tolist()
    ([1.0], [[2, 1], [2, 2], [3, 1], [3, 2]])
    """

    def __init__(self, size: int = 8):
        self.size = size

    def __call__(self, inp: RewardInput) -> Scores:
        if inp.images is None:
            raise RewardError("BrightWindow scores images: RewardInput.images is None (use it with a visual policy)")
        mask, best = brightest_window(torch.as_tensor(inp.images), self.size)
        return Scores(best.tolist(), extras={"saliency": list(mask)})
