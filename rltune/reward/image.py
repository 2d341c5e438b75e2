"""Image rewards: the differentiable protocol that reward-backprop modifiers (AlignProp, Direct-Align) use.

An image reward is still a normal reward (`reward(inp: RewardInput) -> list[float | None]`, reading
`inp.images`), so it logs and evaluates like any other. It is *differentiable* when it also offers

    differentiable = True
    score_images(images: Tensor[N,3,H,W] in ≈[0,1], prompts: list[str]) -> Tensor[N]   (keeps the graph)

Text-image scorers (CLIP, PickScore, HPS) additionally expose unit embeddings, which SRPO's relative reward
needs (arXiv 2509.06942):  embed_images(images) -> [N,D], embed_texts(prompts) -> [M,D], `score_scale` s.

Preprocessing must stay inside autograd (docs/diffusion.md): resize and normalise with torch ops (`preprocess`).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from rltune.reward.api import RewardInput

__all__ = ["DifferentiableReward", "TextImageScorer", "ImageReward", "is_differentiable", "preprocess",
           "weighted_image_reward", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class DifferentiableReward(Protocol):
    differentiable: bool

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor: ...


@runtime_checkable
class TextImageScorer(Protocol):
    score_scale: float

    def embed_images(self, images: Tensor) -> Tensor: ...

    def embed_texts(self, prompts: list[str]) -> Tensor: ...


class ImageReward:
    """Base class: subclasses implement `score_images`; `__call__` scores `inp.images` without grad."""

    differentiable: bool = True

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    def __call__(self, inp: RewardInput) -> list[float | None]:
        if inp.images is None:
            raise ValueError(f"{type(self).__name__} scores images, but RewardInput.images is None (a text policy?)")
        with torch.no_grad():
            return [float(v) for v in self.score_images(_check_images(torch.as_tensor(inp.images)),
                                                        list(inp.prompts)).float()]


def is_differentiable(reward: object) -> bool:
    return bool(getattr(reward, "differentiable", False)) and callable(getattr(reward, "score_images", None))


def preprocess(images: Tensor, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
               crop: bool = True) -> Tensor:
    """Differentiable CLIP-style preprocessing: [N,3,H,W] in [0,1] -> resized (short side, bicubic) and
    center-cropped to size×size, normalised. Same math as torchvision Resize/CenterCrop/Normalize on tensors."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = (max(size, round(h * scale)), max(size, round(w * scale))) if crop else (size, size)
    x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def weighted_image_reward(rewards: Sequence[tuple[float, object]], images: Tensor, prompts: list[str]) -> Tensor:
    """Σ_k w_k · score_images_k(images, prompts) over differentiable rewards with w_k ≠ 0. [N,3,H,W] -> [N]."""
    total = None
    for w, r in rewards:
        if w == 0:
            continue
        s = w * r.score_images(images, prompts).float()
        total = s if total is None else total + s
    if total is None:
        raise ValueError("no differentiable image reward with a non-zero weight in the recipe's rewards")
    return total


def unit(x: Tensor) -> Tensor:
    """L2-normalise the last dim (embeddings), in float32."""
    return F.normalize(x.float(), dim=-1)


def _check_images(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image rewards take [N,3,H,W] tensors in [0,1], got {tuple(images.shape)}")
    return images
