"""GPU check: AlignProp on a random-init Stable-Diffusion-1.5-sized UNet with LoRA (issue 8). Offline, no weights.

Builds SD-1.5-shaped modules from configs (UNet2DConditionModel 860 M params, AutoencoderKL 84 M, a CLIP ViT-L/14
vision tower + aesthetic MLP as the reward, random text embeddings [B,77,768] in place of the text encoder), injects
LoRA r=4 on to_q/to_k/to_v/to_out.0 (AlignProp/TRL), then runs `--steps` AlignProp updates exactly as the trainer
does: a no-grad 50-step DDIM rollout (eta 1, CFG 5), the `alignprop` modifier re-running the last K steps with
gradient checkpointing, VAE decode and reward with grad, AdamW on the LoRA weights. Prints and writes JSON with peak
GPU memory, s/step and K per step.

    python bench/gpu_alignprop.py                          # GPU: SD-1.5 sizes, bf16, 10 steps (a few minutes)
    python bench/gpu_alignprop.py --tiny --steps 2         # CPU smoke test of the same code path (seconds)

Needs torch, diffusers, transformers, peft, and rltune's light imports (pydantic, pyyaml) from this repo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rltune.models.diffusion import DiffusionPolicy, add_lora  # noqa: E402
from rltune.modifiers.base import StepState  # noqa: E402
from rltune.modifiers.reward_backprop import AlignProp  # noqa: E402
from rltune.reward.image import preprocess, unit  # noqa: E402
from rltune.visual.diffusion_context import DiffusionLossContext  # noqa: E402

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
               image_size=224, patch_size=14, projection_dim=768)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=32,
                patch_size=8, projection_dim=16)


class RandomText(nn.Module):
    """Stands in for the CLIP text encoder: a fixed random embedding [N,L,D] per distinct prompt (seeded)."""

    def __init__(self, length: int, dim: int):
        super().__init__()
        self.length, self.dim = length, dim
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self, prompts: list[str]) -> torch.Tensor:
        seeds = [int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) for p in prompts]
        out = [torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(out).to(self.anchor.device)


class AestheticLike:
    """The aesthetic predictor's shape (CLIP ViT-L/14 image tower + MLP 768→1024→128→64→16→1), random init."""

    differentiable = True

    def __init__(self, vit: dict, device, dtype):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**vit)).to(device, dtype)
        self.tower.eval().requires_grad_(False)
        d = vit["projection_dim"]
        self.head = nn.Sequential(nn.Linear(d, 1024), nn.Linear(1024, 128), nn.Linear(128, 64), nn.Linear(64, 16),
                                  nn.Linear(16, 1)).to(device, dtype).requires_grad_(False)
        self.size, self.dtype = vit["image_size"], dtype

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = preprocess(images, self.size).to(self.dtype)
        return self.head(unit(self.tower(pixel_values=x).image_embeds).to(self.dtype)).squeeze(-1).float()


def build(tiny: bool, device, dtype, steps: int, guidance: float) -> tuple[DiffusionPolicy, AestheticLike]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from types import SimpleNamespace

    torch.manual_seed(0)
    with torch.device(device):                       # initialise on the GPU: 860 M params in seconds
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
    add_lora(unet, SimpleNamespace(r=4, alpha=4.0, dropout=0.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for n, p in list(unet.named_parameters()) + list(vae.named_parameters()):
        p.data = p.data.to(torch.float32 if "lora_" in n else dtype)   # LoRA in fp32, frozen base in half precision
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    dim, side = unet.config.cross_attention_dim, unet.config.sample_size
    policy = DiffusionPolicy(unet, "ddim", steps, sched, text_encoder=RandomText(77, dim).to(device), vae=vae,
                             guidance_scale=guidance, eta=1.0, latent_shape=(4, side, side),
                             gradient_checkpointing=True)
    return policy.to(device), AestheticLike(TINY_VIT if tiny else VIT_L14, device, dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny modules (CPU smoke test of the same code path)")
    ap.add_argument("--steps", type=int, default=10, help="AlignProp updates")
    ap.add_argument("--batch", type=int, default=4, help="images per update")
    ap.add_argument("--micro", type=int, default=2, help="images per backward (gradient accumulation)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--truncation", default="gaussian", help="alignprop truncation (gaussian = official default)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="frozen base weights (default bfloat16 on GPU, float32 on CPU); LoRA stays float32")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu_alignprop.json")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    sample_steps = min(a.sample_steps, 10) if a.tiny else a.sample_steps

    t0 = time.perf_counter()
    policy, reward = build(a.tiny, device, dtype, sample_steps, guidance=5.0)
    params = [p for _, p in policy.trainable()]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    mod = AlignProp(truncation=a.truncation, loss="neg", loss_coeff=0.01)
    build_s = time.perf_counter() - t0
    fn = lambda imgs, prompts: reward.score_images(imgs, prompts)  # noqa: E731
    prompts = [f"a photo of a {x}" for x in ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "bird", "sheep")]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(a.steps):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        batch = [prompts[(step * a.batch + i) % len(prompts)] for i in range(a.batch)]
        ro = policy.rollout(batch, torch.Generator().manual_seed(step))
        sync()
        t_roll = time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        state, ks, loss_sum = StepState(step=step, seed=0, total_steps=a.steps), [], 0.0
        for rows_ in torch.arange(a.batch).split(a.micro):
            ctx = DiffusionLossContext(rows_, ro.rows(rows_.to(device)), policy, fn, (), torch.zeros(len(rows_)),
                                       state, a.batch)
            loss = mod.extra_loss(ctx)["loss"]
            loss.backward()
            loss_sum += float(loss.detach())
            ks.append(int(mod.on_step_end({}, state)["grad_steps"]))
        gn = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        sync()
        dt = time.perf_counter() - t
        rows.append({"step": step, "s": round(dt, 3), "rollout_s": round(t_roll, 3), "K": ks, "loss": loss_sum,
                     "grad_norm": gn})
        print(json.dumps(rows[-1]), flush=True)
    timed = [r["s"] for r in rows[1:]] or [rows[0]["s"]]     # step 0 pays CUDA/cuDNN warm-up
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": a.tiny, "dtype": str(dtype), "batch": a.batch, "micro_batch": a.micro, "sample_steps": sample_steps,
        "truncation": a.truncation,
        "unet_params_M": round(sum(p.numel() for p in policy.denoiser.parameters()) / 1e6, 1),
        "lora_params_M": round(sum(p.numel() for p in params) / 1e6, 3), "build_s": round(build_s, 1),
        "s_per_step": round(sum(timed) / len(timed), 3),
        "s_per_step_incl_first": round(sum(r["s"] for r in rows) / len(rows), 3),
        "peak_gpu_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "steps": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "steps"}), flush=True)


if __name__ == "__main__":
    main()
