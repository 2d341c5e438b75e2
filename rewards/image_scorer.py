"""A frozen small-CNN "CLIP" for CPU tests and demos (docs/diffusion.md): image and text embeddings, no downloads.

The image tower is a seeded random conv net (3→16→32 conv, pooled, linear to `dim`, L2-normalised) that is
never trained. Text has no real encoder: a text's embedding is the normalised mean of the image embeddings of
the flat colour images its colour words name ("red", "blue", ...), so "Red. a square" lands near red images.
Texts that name no colour get a fixed, seeded random unit vector. This makes SRPO's relative reward
f̂_img(x)·((1+k) f̂_txt(p_pos) − f̂_txt(p_neg)) meaningful on the toy (SRPO's relative reward, arXiv 2509.06942).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from rltune.reward.image import ImageReward, unit

PALETTE = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0),
           "black": (0.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0)}


class TinyClipScorer(ImageReward):
    """score(x, p) = score_scale · f̂_img(x)·f̂_txt(p) (a CLIP-style alignment score), differentiable in x.

    >>> import torch
    >>> s = TinyClipScorer()
    >>> red = torch.zeros(1, 3, 16, 16); red[:, 0] = 1.0
    >>> blue = torch.zeros(1, 3, 16, 16); blue[:, 2] = 1.0
    >>> r = s.score_images(torch.cat([red, blue]), ["a red square", "a red square"])
    >>> bool(r[0] > r[1])
    True
    """

    differentiable = True
    score_scale = 1.0

    def __init__(self, dim: int = 16, seed: int = 7, image_size: int = 16):
        with torch.random.fork_rng(devices=[]):  # torch's default init, seeded, leaving the global RNG as it was
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, dim))
        self.net.requires_grad_(False).eval()
        self.dim, self.seed, self.image_size = dim, seed, image_size
        with torch.no_grad():
            flats = torch.tensor(list(PALETTE.values()))[:, :, None, None].expand(-1, 3, image_size, image_size)
            self.colour_emb = dict(zip(PALETTE, self.embed_images(flats)))

    def embed_images(self, images: Tensor) -> Tensor:
        """[N,3,H,W] in [0,1] -> unit [N,dim] (differentiable)."""
        net = self.net.to(images.device)
        return unit(net(images.float() * 2 - 1))

    def embed_texts(self, prompts: list[str]) -> Tensor:
        """[M] strings -> unit [M,dim]: mean of the named colours' image embeddings, or a seeded random vector."""
        out = []
        for p in prompts:
            words = [w.strip(".,;:!?").lower() for w in p.split()]
            named = [self.colour_emb[w] for w in words if w in self.colour_emb]
            if named:
                out.append(torch.stack(named).mean(0))
            else:
                h = int(hashlib.sha1(f"{self.seed}:{p}".encode()).hexdigest()[:8], 16)
                out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(h)))
        return unit(torch.stack(out))

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        txt = self.embed_texts(prompts).to(images.device)
        return self.score_scale * (self.embed_images(images) * txt).sum(-1)
