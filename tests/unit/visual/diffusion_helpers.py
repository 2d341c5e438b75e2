"""A tiny Stable-Diffusion-1.5-layout folder built from configs (unet/, vae/, text_encoder/, tokenizer/,
scheduler/), to test loading a real model from a local path without downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_tiny_sd(root: Path, sdxl: bool = False) -> Path:
    """SD 1.5 layout, or SDXL's (a second text encoder with projection; added text_time conditioning)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    xl = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
              projection_class_embeddings_input_dim=16 + 6 * 8) if sdxl else {}
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                         cross_attention_dim=64 if sdxl else 32, attention_head_dim=8,
                         **xl).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                  latent_channels=4, norm_num_groups=8, sample_size=16).save_pretrained(root / "vae")
    words = ["a", "cat", "dog", "photo", "of"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    tdir = root / "tokenizer"
    tdir.mkdir(parents=True)
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=16).save_pretrained(tdir)
    text_cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                              pad_token_id=1, projection_dim=16)
    CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    if sdxl:
        CLIPTextModelWithProjection(text_cfg).save_pretrained(root / "text_encoder_2")
        CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=16).save_pretrained(
            root / "tokenizer_2")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=True, set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    return root


def tiny_policy(kind: str = "ddim", steps: int = 4, conditional: bool = False, lora: bool = True,
                guidance: float = 1.0, eta: float = 1.0, seed: int = 0):
    """A random-init tiny policy (no pre-training) for unit tests."""
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    cfg = ModelConfig(kind="diffusion", gradient_checkpointing=True,
                      lora={"r": 4, "alpha": 4.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1",
                                                                      "conv2"]} if lora else None,
                      diffusion={"tiny": {"pretrain_steps": 0, "conditional": conditional}, "scheduler": kind,
                                 "num_steps": steps, "guidance_scale": guidance, "eta": eta, "flow_shift": 1.0})
    return load_diffusion_policy(cfg, seed)
