"""Diffusion policy on `diffusers`: a denoiser (UNet) + noise schedule that samples with or without gradient.

Two parameterisations (docs/diffusion.md):
  * `ddim`: ε-prediction on a DDPM schedule, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, sampled with DDIM (Song et al.
    eq. 12);
  * `flow`: velocity prediction (rectified flow), x_σ = (1−σ) x_0 + σ ε, v ≈ ε − x_0, Euler ODE steps on the
    shifted σ grid s = shift·u/(1+(shift−1)u) (SRPO.py); the model's timestep input is σ·1000.
A rollout records every latent of the chain ([T+1,N,...]) and the DDIM variance noise of every step, so a
modifier can re-run any suffix of the chain *with* gradient and land on exactly the same sample (AlignProp's
truncated backprop: steps before the truncation point carry no gradient, so starting from the recorded latent
is equivalent). Images leave the policy as [N,3,H,W] in ≈[0,1], never clamped (clamping kills the gradient on
saturated pixels, docs/diffusion.md).

Models: a tiny UNet built from config (optionally pre-trained in-process on synthetic images, docs/diffusion.md), or a
Stable Diffusion 1.5 / SDXL diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/, for SDXL also
text_encoder_2/, tokenizer_2/) loaded from a local path, or a FLUX.1-layout folder (transformer/ = a
FluxTransformer2DModel, velocity prediction; the FLUX specifics live in diffusion_flux.FluxAdapter).
LoRA through PEFT on the denoiser; gradient checkpointing wraps each denoising call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["DiffusionPolicy", "Rollout", "Cond", "ddim_step", "ddim_std", "ddim_logprob", "euler_step", "flow_sigmas",
           "cfg_combine", "tiny_denoiser",
           "load_diffusion_policy", "synthetic_images", "pretrain_tiny"]


# ------------------------------------------------------------------------------------------ pure math
def ddim_step(x: Tensor, eps: Tensor, a_t: float | Tensor, a_prev: float | Tensor, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12), differentiable in x and eps.

    x, eps, noise: [N,C,H,W]; a_t, a_prev: ᾱ at t and at the previous (less noisy) timestep; eta ∈ [0,1] scales
    the stochastic part (0 = deterministic ODE, 1 = DDPM-like; AlignProp rolls out with eta = 1).
        x̂_0 = (x − √(1−ᾱ_t) ε)/√ᾱ_t,  σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev)
        x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ²) ε + σ z
    No clipping of x̂_0: it would zero the gradient (docs/diffusion.md).
    """
    a_t, a_prev = torch.as_tensor(a_t, dtype=x.dtype), torch.as_tensor(a_prev, dtype=x.dtype)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    std = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp_min(0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs the variance noise")
        out = out + std * noise
    return out


def ddim_std(a_t: float | Tensor, a_prev: float | Tensor, eta: float) -> Tensor:
    """σ of a DDIM step: η√((1−ᾱ_prev)/(1−ᾱ_t))√(1−ᾱ_t/ᾱ_prev). 0 for the last step when ᾱ_prev = 1
    (set_alpha_to_one): that step is deterministic and has no log-prob."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=torch.float32), torch.as_tensor(a_prev, dtype=torch.float32)
    return eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()


def ddim_logprob(x_prev: Tensor, x: Tensor, eps: Tensor, a_t: float | Tensor, a_prev: float | Tensor,
                 eta: float) -> Tensor:
    """log N(x_prev; μ, σ²I) of one DDIM step (eq. 12 mean, σ = ddim_std), averaged over the C·H·W elements as
    DDPO does (arXiv 2305.13301). x_prev, x, eps: [N,C,H,W] -> [N]."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=x.dtype), torch.as_tensor(a_prev, dtype=x.dtype)
    mean = ddim_step(x, eps, a_t, a_prev, eta, torch.zeros_like(x))
    std = ddim_std(a_t, a_prev, eta).to(x.dtype)
    lp = -((x_prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """[T+1] σ grid from 1 to 0: s = shift·u/(1+(shift−1)u), u = linspace(1, 0, T+1) (SRPO.py, FLUX's shift)."""
    u = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return (shift * u / (1 + (shift - 1) * u)).float()


def euler_step(x: Tensor, v: Tensor, s: float | Tensor, s_next: float | Tensor) -> Tensor:
    """Rectified-flow Euler step x_{σ'} = x_σ + (σ' − σ) v. Shapes: x, v [N,C,H,W] -> [N,C,H,W]."""
    return x + (s_next - s) * v


def cfg_combine(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance u + w·(c − u) (Ho & Salimans 2022); scale 1 = the conditional output."""
    return uncond + scale * (cond - uncond)


# ------------------------------------------------------------------------------------------ tiny models
PRETRAIN_VERSION = 1  # part of the cache key of pre-trained tiny weights: bump when pretrain_tiny changes
def tiny_denoiser(cfg: Any, seed: int = 0) -> nn.Module:
    """The tiny CPU UNet (docs/diffusion.md; 16×16×3): UNet2DModel, or UNet2DConditionModel when cfg.conditional."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    common = dict(sample_size=cfg.sample_size, in_channels=3, out_channels=3,
                  block_out_channels=tuple(cfg.block_out_channels), layers_per_block=1, norm_num_groups=8,
                  attention_head_dim=8)
    if cfg.conditional:
        return UNet2DConditionModel(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=cfg.cross_attention_dim, **common)
    return UNet2DModel(down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), **common)


class TinyTextEncoder(nn.Module):
    """Frozen byte-level text encoder for the conditional tiny UNet: [N] strings -> [N,L,D] (random init, seeded).
    It only has to make different prompts give different conditions; it is never trained."""

    def __init__(self, dim: int, max_len: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed + 7)
        self.max_len = max_len
        self.register_buffer("table", torch.randn(257, dim, generator=g) / math.sqrt(dim))
        self.register_buffer("pos", torch.randn(max_len, dim, generator=g) / math.sqrt(dim))

    def forward(self, prompts: list[str]) -> Tensor:
        ids = torch.full((len(prompts), self.max_len), 256, dtype=torch.long)   # 256 = padding
        for i, p in enumerate(prompts):
            b = list(p.encode()[: self.max_len])
            ids[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        return self.table[ids] + self.pos


def synthetic_images(n: int, size: int, g: torch.Generator) -> Tensor:
    """[n,3,size,size] in [−1,1]: a flat random colour plus a random-coloured square (the CPU fixture's data)."""
    x = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1).expand(n, 3, size, size).clone()
    lo, hi = max(1, size // 4), max(2, size // 2 + 1)
    for b in range(n):
        s = int(torch.randint(lo, hi, (1,), generator=g))
        i, j = torch.randint(0, size - s, (2,), generator=g).tolist()
        x[b, :, i:i + s, j:j + s] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


def pretrain_tiny(net: nn.Module, kind: str, cfg: Any, seed: int = 0, text: TinyTextEncoder | None = None) -> None:
    """Fit the tiny UNet to the synthetic images for cfg.pretrain_steps (400 steps ≈ 25 s on 2 cores):
    ε-loss on the DDPM schedule for `ddim`, velocity loss (v = ε − x_0, timestep σ·1000) for `flow`."""
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.pretrain_lr)
    sched = DDPMScheduler(num_train_timesteps=1000)
    emb = text([""] * cfg.pretrain_batch) if text is not None else None
    for _ in range(cfg.pretrain_steps):
        x0 = synthetic_images(cfg.pretrain_batch, cfg.sample_size, g)
        eps = torch.randn(x0.shape, generator=g)
        if kind == "ddim":
            t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
            xt, target = sched.add_noise(x0, eps, t), eps
        else:
            s = torch.rand(x0.shape[0], generator=g)
            xt, target, t = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * eps, eps - x0, s * 1000
        out = net(xt, t, encoder_hidden_states=emb).sample if emb is not None else net(xt, t).sample
        loss = ((out - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# -------------------------------------------------------------------------------------------- rollout
@dataclass(frozen=True)
class Cond:
    """Text condition of N samples: encoder hidden states, plus SDXL's pooled text embedding."""

    emb: Tensor                  # [N,L,D] cross-attention states
    pooled: Tensor | None = None  # [N,P] SDXL: added_cond_kwargs["text_embeds"] (None for SD 1.x / tiny)

    def select(self, idx: Tensor) -> "Cond":
        return Cond(self.emb.index_select(0, idx), None if self.pooled is None else self.pooled.index_select(0, idx))

    def cat(self, other: "Cond") -> "Cond":
        return Cond(torch.cat([self.emb, other.emb]),
                    None if self.pooled is None else torch.cat([self.pooled, other.pooled]))


@dataclass(frozen=True)
class Rollout:
    """One batch of N samples of a T-step chain (all tensors detached)."""

    latents: Tensor              # [T+1,N,C,h,w]: latents[0] = initial noise x_T, latents[T] = x_0 (pre-decode)
    step_noise: Tensor | None    # [T,N,C,h,w] DDIM variance noise of each step (None: eta = 0 or flow ODE)
    images: Tensor               # [N,3,H,W] decoded x_0 in ≈[0,1]
    prompts: list[str]           # [N]
    cond: Cond | None            # text condition (None: unconditional denoiser)
    uncond: Cond | None          # negative-prompt condition for CFG (None: no CFG)
    eta: float
    # [T,N] log-prob of each sampled DDIM transition under the sampling policy, computed while sampling: DDPO's
    # old policy (arXiv 2305.13301). None without a density (eta = 0, flow); 0 on deterministic steps (σ = 0).
    logprobs: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def rows(self, idx: Tensor) -> "Rollout":
        """The sub-rollout of rows `idx` [n] (micro-batches)."""
        pick = lambda t, dim=0: None if t is None else t.index_select(dim, idx.to(t.device))  # noqa: E731
        sel = lambda c: None if c is None else c.select(idx.to(c.emb.device))  # noqa: E731
        return Rollout(pick(self.latents, 1), pick(self.step_noise, 1), pick(self.images),
                       [self.prompts[i] for i in idx.tolist()], sel(self.cond), sel(self.uncond), self.eta,
                       pick(self.logprobs, 1))


class DiffusionPolicy(nn.Module):
    """Denoiser + schedule (+ optional text encoder(s) and VAE). Only the denoiser (or its LoRA) is trainable.

    kind: "ddim" (ε-prediction) or "flow" (velocity). `scheduler` is a diffusers DDIMScheduler for ddim (its
    ᾱ table and timestep spacing are used; the step itself is `ddim_step`), None for flow. A second text encoder
    (CLIPTextModelWithProjection) makes it SDXL-style: both encoders' penultimate states are concatenated, the
    second's pooled embedding and the size ids (H, W, 0, 0, H, W) go in as added_cond_kwargs.
    """

    def __init__(self, denoiser: nn.Module, kind: str, num_steps: int, scheduler: Any = None,
                 text_encoder: nn.Module | None = None, tokenizer: Any = None, vae: nn.Module | None = None,
                 guidance_scale: float = 1.0, eta: float = 1.0, flow_shift: float = 1.0, negative_prompt: str = "",
                 latent_shape: tuple[int, int, int] = (3, 16, 16), gradient_checkpointing: bool = True,
                 text_encoder_2: nn.Module | None = None, tokenizer_2: Any = None, image_size: int | None = None,
                 adapter: Any = None):
        super().__init__()
        if kind not in ("ddim", "flow"):
            raise ValueError(f"diffusion kind must be ddim or flow, got {kind!r}")
        self.denoiser, self.text_encoder, self.vae = denoiser, text_encoder, vae
        self.kind, self.num_steps, self.scheduler, self.tokenizer = kind, num_steps, scheduler, tokenizer
        self.guidance_scale, self.eta, self.negative_prompt = guidance_scale, eta, negative_prompt
        self.latent_shape, self.gradient_checkpointing = tuple(latent_shape), gradient_checkpointing
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.adapter = adapter  # FLUX: encode/denoiser call/decode (diffusion_flux.FluxAdapter); None: UNets
        self.conditional = text_encoder is not None
        if text_encoder_2 is not None and adapter is None:  # SDXL micro-conditioning: size, crop (0, 0), size
            side = image_size or latent_shape[-1] * 8
            self.register_buffer("add_time_ids", torch.tensor([side, side, 0, 0, side, side], dtype=torch.float32),
                                 persistent=False)
        for m in (text_encoder, text_encoder_2, vae):
            if m is not None:
                m.requires_grad_(False)
        if kind == "ddim":
            scheduler.set_timesteps(num_steps)
            ts = scheduler.timesteps.long()
            ac = scheduler.alphas_cumprod.float()
            prev = ts - scheduler.config.num_train_timesteps // num_steps
            final = 1.0 if scheduler.config.set_alpha_to_one else float(ac[0])
            self.register_buffer("timesteps", ts.float(), persistent=False)
            self.register_buffer("alphas", ac[ts], persistent=False)                       # ᾱ_t  [T]
            self.register_buffer("alphas_prev", torch.where(prev >= 0, ac[prev.clamp_min(0)],
                                                            torch.tensor(final)), persistent=False)  # [T]
            self.register_buffer("alphas_cumprod", ac, persistent=False)                   # [T_train]
        else:
            sig = flow_sigmas(num_steps, flow_shift)
            self.register_buffer("sigmas", sig, persistent=False)                          # [T+1]
            self.register_buffer("timesteps", sig[:-1] * 1000, persistent=False)

    # --------------------------------------------------------------------------------- building blocks
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[Cond | None, Cond | None]:
        """-> (cond, uncond or None when guidance is off); (None, None) when unconditional."""
        if not self.conditional:
            return None, None
        enc = lambda ps: self._encode(ps)  # noqa: E731
        cond = enc(prompts)
        if self.guidance_scale == 1.0:
            return cond, None
        if self.text_encoder_2 is not None and self.adapter is None and self.negative_prompt == "":
            # SDXL's force_zeros_for_empty_prompt (diffusers default): the empty negative prompt is all zeros
            return cond, Cond(torch.zeros_like(cond.emb), torch.zeros_like(cond.pooled))
        return cond, enc([self.negative_prompt] * len(prompts))

    def _encode(self, prompts: list[str]) -> Cond:
        if self.adapter is not None:
            return Cond(*self.adapter.encode(self, prompts))
        to = lambda t: t.to(self.device, self.dtype)  # noqa: E731
        if self.tokenizer is None:
            return Cond(to(self.text_encoder(prompts)))
        if self.text_encoder_2 is None:
            return Cond(to(self.text_encoder(_token_ids(self.tokenizer, prompts, self.text_encoder))[0]))
        states, out = [], None
        for enc, tok in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)):
            out = enc(_token_ids(tok, prompts, enc), output_hidden_states=True)
            states.append(out.hidden_states[-2])          # SDXL conditions on the penultimate layer
        return Cond(to(torch.cat(states, dim=-1)), to(out.text_embeds))

    def model_output(self, x: Tensor, i: int, cond: Cond | None, uncond: Cond | None) -> Tensor:
        """Denoiser output (ε for ddim, v for flow) at chain step i, with CFG when `uncond` is given.
        x: [N,C,h,w] -> [N,C,h,w]. The two CFG halves run as one doubled batch (diffusers' convention), so a
        truncation detaches both halves together (docs/diffusion.md)."""
        return self.predict_at(x, self.timesteps[i], cond, uncond)

    def predict_at(self, x: Tensor, t: Tensor, cond: Cond | None, uncond: Cond | None) -> Tensor:
        """Denoiser call at model timestep t (scalar tensor). The chain state stays float32; the denoiser runs in
        its own dtype (half-precision bases) and its output comes back as float32."""
        t = t.float().reshape(-1).expand(x.shape[0])
        xd = x.to(self.dtype)
        if cond is None:
            return self.denoiser(xd, t).sample.float()
        if uncond is None:
            return self._cond_call(xd, t, cond).float()
        u, c = self._cond_call(torch.cat([xd, xd]), torch.cat([t, t]), uncond.cat(cond)).float().chunk(2)
        return cfg_combine(u, c, self.guidance_scale)

    def _cond_call(self, x: Tensor, t: Tensor, c: Cond) -> Tensor:
        if self.adapter is not None:
            return self.adapter.forward(self.denoiser, x, t, c)
        if c.pooled is None:
            return self.denoiser(x, t, encoder_hidden_states=c.emb).sample
        added = {"text_embeds": c.pooled, "time_ids": self.add_time_ids.to(c.pooled.dtype).expand(x.shape[0], 6)}
        return self.denoiser(x, t, encoder_hidden_states=c.emb, added_cond_kwargs=added).sample

    def step(self, x: Tensor, i: int, out: Tensor, noise: Tensor | None, eta: float) -> Tensor:
        """Advance chain step i (x at latents[i] -> latents[i+1]) given the model output."""
        if self.kind == "ddim":
            return ddim_step(x, out, self.alphas[i], self.alphas_prev[i], eta, noise)
        return euler_step(x, out, self.sigmas[i], self.sigmas[i + 1])

    def decode(self, latents: Tensor) -> Tensor:
        """x_0 latents [N,C,h,w] -> images [N,3,H,W] in ≈[0,1], differentiable (no clamp)."""
        if self.adapter is not None:
            return self.adapter.decode(self.vae, latents)
        if self.vae is not None:
            vdt = next(self.vae.parameters()).dtype
            latents = self.vae.decode((latents / self.vae.config.scaling_factor).to(vdt)).sample
        return (latents.float() + 1) / 2

    def _call(self, x: Tensor, i: int, cond, uncond, grad: bool) -> Tensor:
        if not grad:
            with torch.no_grad():
                return self.model_output(x, i, cond, uncond)
        if self.gradient_checkpointing:
            # Recompute this step's activations in backward: memory O(1) in the number of grad steps (2310.03739 §3.3).
            return checkpoint(self.model_output, x, i, cond, uncond, use_reentrant=False)
        return self.model_output(x, i, cond, uncond)

    # ---------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def rollout(self, prompts: list[str], generator: torch.Generator, eta: float | None = None,
                noise: Tensor | None = None) -> Rollout:
        """Sample N = len(prompts) images without gradient, recording the chain. `eta` defaults to the policy's
        (ignored by flow, which is an ODE); eval passes eta=0 and fixed `noise` [N,C,h,w]."""
        eta = self.eta if eta is None else eta
        eta = eta if self.kind == "ddim" else 0.0
        n, T = len(prompts), self.num_steps
        cond, uncond = self.encode_prompts(prompts)
        x = noise.to(self.device, torch.float32) if noise is not None else \
            torch.randn((n, *self.latent_shape), generator=generator).to(self.device)
        step_noise = torch.randn((T, n, *self.latent_shape), generator=generator).to(self.device) if eta > 0 else None
        lat, lps = [x], []
        for i in range(T):
            z = None if step_noise is None else step_noise[i]
            out = self.model_output(x, i, cond, uncond)
            x_next = self.step(x, i, out, z, eta)
            if z is not None:  # the transition's density, from this very forward (the behaviour policy's)
                stochastic = ddim_std(self.alphas[i], self.alphas_prev[i], eta) > 0
                lps.append(ddim_logprob(x_next, x, out, self.alphas[i], self.alphas_prev[i], eta) if stochastic
                           else torch.zeros(n, device=x.device))
            x = x_next
            lat.append(x)
        return Rollout(torch.stack(lat), step_noise, self.decode(x).detach(), list(prompts), cond, uncond, eta,
                       torch.stack(lps) if lps else None)

    def resume(self, ro: Rollout, start: int, grad_steps: list[bool] | Tensor) -> Tensor:
        """Re-run chain steps start..T−1 from the recorded latents[start] with the recorded noise; step i keeps its
        graph where grad_steps[i] (len T), else its model output is computed without grad (AlignProp's detach).
        Returns x_0 latents [N,C,h,w]; equal to the rollout's x_0 up to float noise. Steps before `start` are
        not re-run: with no grad there, starting from the recorded latent gives the same gradient
        (docs/diffusion.md)."""
        x = ro.latents[start]
        for i in range(start, self.num_steps):
            out = self._call(x, i, ro.cond, ro.uncond, grad=bool(grad_steps[i]))
            x = self.step(x, i, out, None if ro.step_noise is None else ro.step_noise[i], ro.eta)
        return x

    def predict(self, x: Tensor, t: Tensor | float, cond: Cond | None, uncond: Cond | None = None,
                grad: bool = True) -> Tensor:
        """One denoiser call at an arbitrary model timestep t (DDIM: a train timestep; flow: σ·1000), with CFG
        when `uncond` is given, checkpointed when grad. x: [N,C,h,w] -> ε or v [N,C,h,w] (Direct-Align)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if not grad:
            with torch.no_grad():
                return self.predict_at(x, t, cond, uncond)
        if self.gradient_checkpointing:
            return checkpoint(self.predict_at, x, t, cond, uncond, use_reentrant=False)
        return self.predict_at(x, t, cond, uncond)

    # ------------------------------------------------------------------------------------ parameters/io
    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.denoiser.named_parameters() if p.requires_grad]

    def trained_state(self) -> dict[str, Tensor]:
        """The trained weights only: the LoRA tensors, or the whole denoiser when trained in full."""
        return {n: p.detach().cpu().clone() for n, p in self.trainable()}

    def load_trained_state(self, sd: dict[str, Tensor]) -> None:
        params = dict(self.denoiser.named_parameters())
        missing = [n for n, _ in self.trainable() if n not in sd]
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for n, v in sd.items():
                params[n].copy_(v)

    def save_pretrained(self, out: str | Path) -> None:
        """<out>/denoiser_trained.safetensors (LoRA or full denoiser weights) + diffusion.json."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({n: t.contiguous() for n, t in self.trained_state().items()},
                  str(out / "denoiser_trained.safetensors"))
        (out / "diffusion.json").write_text(json.dumps({"kind": self.kind, "num_steps": self.num_steps,
                                                        "trained_tensors": len(self.trainable())}, indent=1))


# -------------------------------------------------------------------------------------------- loading
def add_lora(denoiser: nn.Module, lora: Any) -> None:
    """Inject PEFT LoRA into the denoiser and freeze everything else (UNet2DModel has no add_adapter, so
    peft.inject_adapter_in_model; gaussian init as TRL's DDPO/AlignProp pipelines)."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, init_lora_weights="gaussian",
                     target_modules=lora.target_modules)
    inject_adapter_in_model(cfg, denoiser)
    for n, p in denoiser.named_parameters():
        p.requires_grad_("lora_" in n)


def _cache_dir() -> Path:
    return Path(os.environ.get("RLTUNE_CACHE", Path.home() / ".cache" / "rltune")) / "tiny_diffusion"


def load_diffusion_policy(model_cfg: Any, seed: int = 0, device: str | torch.device = "cpu") -> DiffusionPolicy:
    """Build the recipe's policy: model.diffusion.tiny (pre-trained in-process, cached by config hash under
    $RLTUNE_CACHE) or model.path (a local SD-1.5/SDXL-layout folder, or FLUX.1's: diffusion_flux).
    model.lora / gradient_checkpointing / dtype apply."""
    d = model_cfg.diffusion
    dtype = getattr(torch, model_cfg.dtype)
    if d.tiny is not None:
        net = tiny_denoiser(d.tiny, seed)
        text = TinyTextEncoder(d.tiny.cross_attention_dim, seed=seed) if d.tiny.conditional else None
        if d.tiny.pretrain_steps:
            key = hashlib.sha256(json.dumps([PRETRAIN_VERSION, d.tiny.model_dump(mode="json"), d.scheduler, seed])
                                 .encode()).hexdigest()[:16]
            path = _cache_dir() / f"{key}.pt"
            if path.is_file():
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            else:
                pretrain_tiny(net, d.scheduler, d.tiny, seed, text)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                torch.save(net.state_dict(), tmp)
                os.replace(tmp, path)
        sched, tok, vae, extra = _tiny_scheduler() if d.scheduler == "ddim" else None, None, None, {}
        shape = (3, d.tiny.sample_size, d.tiny.sample_size)
    else:
        from rltune.models.diffusion_flux import is_flux_folder, load_flux_folder

        net, text, tok, vae, sched, shape, extra = load_flux_folder(model_cfg) if is_flux_folder(model_cfg.path) \
            else _load_folder(model_cfg.path, d)
    if model_cfg.lora is not None:
        add_lora(net, model_cfg.lora)
        for _, p in net.named_parameters():   # PEFT creates LoRA in the base's dtype (FLUX loads in model.dtype)
            if p.requires_grad:
                p.data = p.data.float()
    gs = extra.pop("guidance_scale", d.guidance_scale)   # FLUX-dev: guidance is an embedding input, not CFG
    policy = DiffusionPolicy(net, d.scheduler, d.num_steps, sched, text, tok, vae, gs, d.eta,
                             d.flow_shift, d.negative_prompt, shape, model_cfg.gradient_checkpointing, **extra)
    policy.to(device)
    # LoRA tensors stay fp32 for stable updates; the frozen base may run in half precision (AlignProp fp16).
    for n, p in policy.named_parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)
    return policy


def _token_ids(tokenizer: Any, prompts: list[str], encoder: nn.Module) -> Tensor:
    """CLIP token ids [N,L], padded to the tokenizer's max length as SD pipelines do."""
    tok = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return tok.input_ids.to(encoder.device)


def _tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, clip_sample=False)


def _load_folder(path: str | None, d: Any):
    """A diffusers folder in the SD 1.5 layout, or SDXL's (+ text_encoder_2/, tokenizer_2/). DDIM's clip_sample
    is forced off: clipping zeroes gradients (docs/diffusion.md)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(path)
    if not (root / "unet").is_dir():
        raise FileNotFoundError(f"model.path={path}: expected a diffusers folder with unet/ (and vae/, text_encoder/, "
                                "tokenizer/, scheduler/), e.g. a local copy of stable-diffusion-v1-5")
    net = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
    text = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    sdxl = {}
    if (root / "text_encoder_2").is_dir():
        sdxl = {"text_encoder_2": CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2"),
                "tokenizer_2": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2")}
    sched = None if d.scheduler != "ddim" else \
        DDIMScheduler.from_pretrained(root, subfolder="scheduler", clip_sample=False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    px = d.resolution or net.config.sample_size * factor
    return net, text, tok, vae, sched, (net.config.in_channels, px // factor, px // factor), {**sdxl, "image_size": px}
