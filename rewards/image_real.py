"""Adapters for real image scorers, loading local weights only (no downloads): CLIP/PickScore, the LAION
aesthetic predictor (AlignProp's aesthetic reward), HPS v2 (AlignProp's and SRPO's HPS reward).

All are differentiable (`score_images` keeps the graph; preprocessing is torch-only, docs/diffusion.md) and the
text-image ones expose `embed_images` / `embed_texts` / `score_scale` for SRPO's relative reward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from rltune.reward.image import ImageReward, preprocess, unit


class ClipScore(ImageReward):
    """score = s · f̂_img(x)·f̂_txt(prompt) with a transformers CLIPModel folder (CLIP, or PickScore_v1 whose
    score is exp(logit_scale)·cos). `score_scale` defaults to exp(logit_scale); SRPO uses that / 20.
    `device` None = the GPU if there is one."""

    differentiable = True

    def __init__(self, path: str, score_scale: float | None = None, device: str | None = None):
        from transformers import CLIPModel, CLIPTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: no local CLIP folder at {path} (rltune does not download)")
        self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False)
        self.tok = CLIPTokenizer.from_pretrained(path)
        self.model.to(_device(device))
        self.size = self.model.config.vision_config.image_size
        self.score_scale = float(self.model.logit_scale.exp()) if score_scale is None else score_scale

    def embed_images(self, images: Tensor) -> Tensor:
        x = preprocess(images.to(self.model.device), self.size).to(self.model.dtype)
        return unit(_features(self.model.get_image_features(pixel_values=x)))

    def embed_texts(self, prompts: list[str]) -> Tensor:
        tok = self.tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.model.device)
        return unit(_features(self.model.get_text_features(**tok)))

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.score_scale * (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)


PickScore = ClipScore  # PickScore_v1 is a CLIPModel checkpoint; its score is exp(logit_scale)·cos


class AestheticScorer(ImageReward):
    """LAION aesthetic predictor v2: MLP(768→1024→128→64→16→1) on the normalised CLIP ViT-L/14 image
    embedding.
    `clip_path`: a CLIPModel folder; `head_path`: the MLP state dict (keys layers.{0,2,4,6,7}.*)."""

    differentiable = True

    def __init__(self, clip_path: str, head_path: str, device: str | None = None):
        from transformers import CLIPModel

        for p in (clip_path, head_path):
            if not Path(p).exists():
                raise FileNotFoundError(f"AestheticScorer: {p} not found (local weights only)")
        self.clip = CLIPModel.from_pretrained(clip_path).eval().requires_grad_(False)
        sd = torch.load(head_path, map_location="cpu", weights_only=True)
        dim = sd["layers.0.weight"].shape[1]
        self.head = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                  nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in sd.items()})
        self.head.eval().requires_grad_(False)
        self.clip.to(_device(device))
        self.head.to(_device(device))
        self.size = self.clip.config.vision_config.image_size

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        x = preprocess(images.to(self.clip.device), self.size).to(self.clip.dtype)
        emb = unit(_features(self.clip.get_image_features(pixel_values=x)))
        return self.head.to(emb.device)(emb).squeeze(-1)


class HPSv2(ImageReward):
    """HPS v2 / v2.1 (an OpenCLIP ViT-H-14 fine-tuned on human preferences): score = f̂_img·f̂_txt.
    Needs `open_clip_torch` and the local checkpoint (HPS_v2.1_compressed.pt)."""

    differentiable = True
    score_scale = 1.0

    def __init__(self, checkpoint: str, arch: str = "ViT-H-14", device: str | None = None):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("HPSv2 needs open_clip_torch: pip install open_clip_torch") from e
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"HPSv2: checkpoint {checkpoint} not found (local weights only)")
        self.model = open_clip.create_model(arch, pretrained=None)
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True)  # a pickle must not run code
        self.model.load_state_dict(sd.get("state_dict", sd))
        self.model.eval().requires_grad_(False).to(_device(device))
        self.tok = open_clip.get_tokenizer(arch)
        self.size = self.model.visual.image_size[0] if isinstance(self.model.visual.image_size, tuple) else \
            self.model.visual.image_size

    def _dev(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_images(self, images: Tensor) -> Tensor:
        return unit(self.model.encode_image(preprocess(images.to(self._dev()), self.size)))

    def embed_texts(self, prompts: list[str]) -> Tensor:
        return unit(self.model.encode_text(self.tok(prompts).to(self._dev())))

    def score_images(self, images: Tensor, prompts: list[str]) -> Tensor:
        return (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)


def _device(device: str | None) -> str:
    """`device` or, when None, the GPU if there is one: the scorer runs beside the policy's images."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _features(out) -> Tensor:
    """Projected CLIP features: a tensor (transformers 4) or the output's pooler_output (transformers 5)."""
    return out if isinstance(out, Tensor) else out.pooler_output
