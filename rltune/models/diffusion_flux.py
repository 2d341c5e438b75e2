"""FLUX-style transformer denoisers (diffusers `FluxTransformer2DModel`) behind the `DiffusionPolicy` interface.

The policy keeps its chain in the VAE latent layout [N,C,h,w] (C = 16 for FLUX.1); this adapter does the FLUX
specifics around each denoiser call, as diffusers' FluxPipeline does:
  * packing: [N,C,h,w] -> [N,(h/2)(w/2),4C] 2×2 patches (`pack`), and back (`unpack`);
  * position ids: latent image ids [(h/2)(w/2),3] = (0, row, col), text ids [L,3] = 0;
  * conditioning: T5 sequence states (`Cond.emb`, text_encoder_2/tokenizer_2) and CLIP's pooled embedding
    (`Cond.pooled`, text_encoder/tokenizer); the transformer's timestep input is σ (the policy's σ·1000 / 1000);
  * guidance: a guidance-distilled transformer (`guidance_embeds: true`, FLUX.1-dev) takes `guidance_scale` as its
    guidance embedding and runs without CFG (FluxPipeline's `guidance_scale`); otherwise guidance_scale > 1 is true
    CFG with the negative prompt (FluxPipeline's `true_cfg_scale`);
  * decode: the VAE's shift and scaling factors, z = latents / scaling_factor + shift_factor.
Velocity prediction on the rectified-flow grid is the policy's `flow` kind (σ = shift·u/(1+(shift−1)u), the
same grid as FlowMatchEulerDiscreteScheduler with a fixed shift; its dynamic shift is exp(mu)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FluxAdapter", "is_flux_folder", "load_flux_folder", "pack_latents", "unpack_latents",
           "latent_image_ids"]

FLUX_MAX_SEQUENCE_LENGTH = 512   # FluxPipeline's T5 limit (FLUX.1-dev default; schnell uses 256)
FLUX_DEFAULT_SAMPLE_SIZE = 128   # FluxPipeline.default_sample_size: latent side before packing (1024 px at /8)


def pack_latents(x: Tensor) -> Tensor:
    """[N,C,h,w] -> [N,(h/2)(w/2),4C]: 2×2 latent patches as tokens (FluxPipeline._pack_latents)."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, h: int, w: int) -> Tensor:
    """[N,(h/2)(w/2),4C] -> [N,C,h,w], the inverse of `pack_latents` (FluxPipeline._unpack_latents)."""
    n, _, d = x.shape
    return x.view(n, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, d // 4, h, w)


def latent_image_ids(h2: int, w2: int, device: Any = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """[h2·w2,3] RoPE ids of the packed tokens: (0, row, col) (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] += torch.arange(h2)[:, None]
    ids[..., 2] += torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


def _disable_cudnn_attention() -> None:
    """Process-wide: SDPA without the cuDNN backend (flash / memory-efficient / math remain). Its backward crashed at
    FLUX shapes on an H100 (torch 2.11+cu130: illegal memory access, mha_graph failure) and gave zero q/k/v
    gradients at tiny ones. A context manager around the call is not enough: the transformer's per-block
    checkpoints recompute in backward, outside it (and would then pick another kernel than the forward)."""
    torch.backends.cuda.enable_cudnn_sdp(False)


class FluxAdapter:
    """The FLUX calls of a `DiffusionPolicy` (its `adapter`): prompt encoding, the transformer call, VAE decode.

    guidance: the guidance-embedding value of a guidance-distilled transformer (None: the model has no guidance
    embedding); max_sequence_length: T5 tokens per prompt."""

    def __init__(self, guidance: float | None, max_sequence_length: int = FLUX_MAX_SEQUENCE_LENGTH):
        self.guidance, self.max_sequence_length = guidance, max_sequence_length

    @staticmethod
    def _ids(tokenizer: Any, prompts: list[str], max_length: int, device: torch.device) -> Tensor:
        tok = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return tok.input_ids.to(device)

    def encode(self, policy: Any, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """-> (T5 last hidden states [N,L,D_t5], CLIP pooled output [N,D_clip]): the policy's Cond(emb, pooled)."""
        clip, t5 = policy.text_encoder, policy.text_encoder_2
        clip_ids = self._ids(policy.tokenizer, prompts, policy.tokenizer.model_max_length, clip.device)
        pooled = clip(clip_ids, output_hidden_states=False).pooler_output
        t5_len = min(self.max_sequence_length, policy.tokenizer_2.model_max_length)
        emb = t5(self._ids(policy.tokenizer_2, prompts, t5_len, t5.device), output_hidden_states=False)[0]
        return emb.to(policy.device, policy.dtype), pooled.to(policy.device, policy.dtype)

    def forward(self, transformer: nn.Module, x: Tensor, t: Tensor, c: Any) -> Tensor:
        """Velocity [N,C,h,w] of the latents x [N,C,h,w] at model timesteps t [N] (σ·1000) under condition c."""
        n, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2×2 latent patches: latent side {h}×{w} must be even")
        img_ids = latent_image_ids(h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(c.emb.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None if self.guidance is None else torch.full((n,), self.guidance, device=x.device,
                                                                 dtype=torch.float32)
        out = transformer(hidden_states=pack_latents(x), encoder_hidden_states=c.emb, pooled_projections=c.pooled,
                          timestep=t / 1000, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                          return_dict=False)[0]
        return unpack_latents(out, h, w)

    @staticmethod
    def decode(vae: nn.Module, latents: Tensor) -> Tensor:
        """x_0 latents [N,C,h,w] -> images [N,3,H,W] in ≈[0,1] (no clamp): VAE(z/scaling + shift)."""
        cfg = vae.config
        z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        img = vae.decode(z.to(next(vae.parameters()).dtype)).sample
        return (img.float() + 1) / 2


def is_flux_folder(path: str | Path | None) -> bool:
    """True when `path` is a diffusers folder whose transformer/config.json names FluxTransformer2DModel or whose
    model_index.json names FluxPipeline."""
    if path is None:
        return False
    root = Path(path)
    for f, name in ((root / "transformer" / "config.json", "FluxTransformer2DModel"),
                    (root / "model_index.json", "FluxPipeline")):
        try:
            if json.loads(f.read_text()).get("_class_name") == name:
                return True
        except (OSError, ValueError):
            pass
    return False


def load_flux_folder(model_cfg: Any):
    """A local diffusers folder in the black-forest-labs/FLUX.1 layout (transformer/, vae/, text_encoder/ CLIP,
    text_encoder_2/ T5, tokenizer/, tokenizer_2/, scheduler/), loaded in model.dtype (a 12B transformer and a
    4.7B T5 do not fit in fp32 host memory comfortably). Returns the arguments `load_diffusion_policy` passes on:
    (transformer, clip, clip tokenizer, vae, scheduler (None: flow), latent shape, extra policy kwargs)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    d, root = model_cfg.diffusion, Path(model_cfg.path)
    if d.scheduler != "flow":
        raise ValueError(f"model.path={root} is a FLUX (velocity-prediction) model: set model.diffusion.scheduler: "
                         f"flow (got {d.scheduler!r})")
    dtype = getattr(torch, model_cfg.dtype)
    net = FluxTransformer2DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype)
    text = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype)
    tok = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    text_2 = T5EncoderModel.from_pretrained(root, subfolder="text_encoder_2", torch_dtype=dtype)
    tok_2 = AutoTokenizer.from_pretrained(root / "tokenizer_2")
    if model_cfg.gradient_checkpointing:
        net.enable_gradient_checkpointing()        # per block, inside the policy's per-call checkpoint
    _disable_cudnn_attention()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    px = d.resolution or FLUX_DEFAULT_SAMPLE_SIZE * factor
    if px % (2 * factor):
        raise ValueError(f"model.diffusion.resolution={px}: FLUX needs a multiple of {2 * factor} (VAE factor "
                         f"{factor} × 2×2 packing)")
    channels = net.config.in_channels // 4        # packed tokens carry 2×2 patches of the VAE's latent channels
    if channels != vae.config.latent_channels:
        raise ValueError(f"transformer in_channels {net.config.in_channels} != 4 × VAE latent_channels "
                         f"{vae.config.latent_channels}")
    distilled = bool(net.config.guidance_embeds)
    adapter = FluxAdapter(d.guidance_scale if distilled else None)
    extra = {"adapter": adapter, "text_encoder_2": text_2, "tokenizer_2": tok_2, "image_size": px}
    if distilled:
        extra["guidance_scale"] = 1.0             # the guidance value goes into the embedding; no CFG batch
    return net, text, tok, vae, None, (channels, px // factor, px // factor), extra
