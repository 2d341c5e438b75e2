"""Compressibility-style image rewards (DDPO/AlignProp's "compressibility" objective).

The true objective, −(JPEG size), is not differentiable: `JpegCompressibility` computes it for logging and
evaluation (differentiable = False). `Smoothness` is the differentiable stand-in for reward backprop: minus
the mean absolute difference between neighbouring pixels (total variation), which is what JPEG's DCT
quantisation rewards (few high-frequency coefficients).
"""

from __future__ import annotations

import io

import torch
from torch import Tensor

from rltune.reward.image import ImageReward


class Smoothness(ImageReward):
    """−TV(x) = −(mean |x[h+1]−x[h]| + mean |x[w+1]−x[w]|) · scale, images in [0,1]. 0 for a flat image.

    >>> import torch
    >>> flat, stripes = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    >>> stripes[..., ::2] = 1.0                                   # columns alternate 1, 0
    >>> Smoothness().score_images(torch.cat([flat, stripes]), ["a", "b"]).tolist() == [0.0, -1.0]
    True
    """

    differentiable = True

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        x = images.float()
        dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return (dh + dw) * -self.scale


class JpegCompressibility(ImageReward):
    """−(JPEG size in kB) at `quality` (DDPO's jpeg_compressibility). Not differentiable: log/eval only.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> flat, noise = torch.full((1, 3, 32, 32), 0.5), torch.rand(1, 3, 32, 32, generator=g)
    >>> a, b = JpegCompressibility().score_images(torch.cat([flat, noise]), ["a", "b"]).tolist()
    >>> a > b
    True
    """

    differentiable = False

    def __init__(self, quality: int = 95):
        self.quality = quality

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        from PIL import Image

        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=self.quality)
            sizes.append(-buf.tell() / 1000.0)
        return torch.tensor(sizes)
