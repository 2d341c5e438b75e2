"""Visual autoregressive (VAR, next-scale prediction) policies: the interface the VAR trainer talks to, a sampler
that records per-token log-probs, a tiny CPU model, and an adapter for official VAR checkpoints.

Token layout (every tensor below): an image is a pyramid of token maps r_1..r_S with grids h_t×w_t (coarse to
fine). A sample is one row of T = Σ_t h_t·w_t tokens, scale after scale, each map row-major. Scale t occupies
columns [offsets[t], offsets[t+1]). Teacher-forcing logits are aligned with the tokens they *predict*: logits
[:, j] predict token j, so per-scale weights (PANW, masks) attach to the logits of the scale they predict
(docs/var.md, "Token layout and the teacher-forcing shift"; the 1×1 map is predicted from the class/start token).

A policy is block-causal: the logits of scale t depend only on the condition and the tokens of scales < t. The
sampler relies on it to draw scale after scale with the same teacher-forcing forward, so any model that provides
`forward(tokens, cond)` and `decode(tokens)` can be sampled, resumed from a stored prefix, and trained.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VarPolicy", "TinyVAR", "VarSample", "scale_offsets", "scale_index", "split_scales", "filter_logits",
           "sample_var", "token_logprobs", "OfficialVAR", "load_official_var", "build_var_policy"]

Scale = tuple[int, int]


# ------------------------------------------------------------------------------------------- layout
def scale_offsets(scales: Sequence[Scale]) -> list[int]:
    """Start of each scale in the flat token row, plus the total: [0, n_1, n_1+n_2, ..., T] (len S+1)."""
    out = [0]
    for h, w in scales:
        out.append(out[-1] + h * w)
    return out


def scale_index(scales: Sequence[Scale]) -> Tensor:
    """[T] long: the scale of every flat token position."""
    return torch.cat([torch.full((h * w,), t, dtype=torch.long) for t, (h, w) in enumerate(scales)])


def split_scales(x: Tensor, scales: Sequence[Scale]) -> list[Tensor]:
    """[N,T,...] -> S tensors [N,h_t·w_t,...] (views)."""
    off = scale_offsets(scales)
    if x.shape[1] != off[-1]:
        raise ValueError(f"expected {off[-1]} tokens for scales {list(scales)}, got {x.shape[1]}")
    return [x[:, off[t]:off[t + 1]] for t in range(len(scales))]


# ------------------------------------------------------------------------------------------ interface
class VarPolicy(nn.Module):
    """What the VAR trainer needs from a model. Subclasses set `scales`, `vocab_size`, `num_classes` and implement
    `forward` and `decode`; the class index `num_classes` is the unconditional (null) class used by CFG."""

    scales: tuple[Scale, ...]
    vocab_size: int
    num_classes: int

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def num_tokens(self) -> int:
        return scale_offsets(self.scales)[-1]

    def forward(self, tokens: Tensor, cond: Tensor) -> Tensor:
        """Teacher forcing: tokens [N,T] long, cond [N] long -> logits [N,T,V] (logits[:, j] predict token j).
        Must be block-causal (module docstring); tokens of scales ≥ t may hold anything when predicting t."""
        raise NotImplementedError

    def scale_logits(self, tokens: Tensor, cond: Tensor, t: int) -> Tensor:
        """Logits [N,h_t·w_t,V] of scale t given the tokens of scales < t (the sampler's step). The default runs
        the full teacher-forcing forward; models with a cheaper incremental path override it."""
        off = scale_offsets(self.scales)
        return self.forward(tokens, cond)[:, off[t]:off[t + 1]]

    def decode(self, tokens: Tensor) -> Tensor:
        """tokens [N,T] -> images [N,C,H,W] float (what rewards see)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ tiny model
class TinyVAR(VarPolicy):
    """A VAR-like toy for CPU tests and demos (docs/var.md, The CPU toy): a frozen random codebook [V,C]; the image
    feature is the VAR residual sum f = Σ_t nearest-upsample(codebook[r_t]) on the finest grid; scale t's logits
    are an MLP of the area-downsampled f of scales < t plus position, scale and class embeddings (sites are
    independent within a scale, as VAR's are given the previous scales). `decode` shows f with `patch`×`patch`
    pixels per finest token, so reward boxes are in pixels as for a real decoder."""

    def __init__(self, scales: Sequence[int | Scale] = (1, 2, 4, 8), vocab_size: int = 8, channels: int = 3,
                 hidden_size: int = 32, num_classes: int = 4, patch: int = 4, codebook_seed: int = 0):
        super().__init__()
        self.scales = tuple((s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in scales)
        self.vocab_size, self.num_classes, self.channels, self.patch = vocab_size, num_classes, channels, patch
        g = torch.Generator().manual_seed(codebook_seed)
        # Frozen "VQ codebook" (a buffer: never trained, saved with the weights).
        self.register_buffer("codebook", torch.randn(vocab_size, channels, generator=g) * 0.5)
        D = hidden_size
        self.scale_emb = nn.Parameter(torch.randn(len(self.scales), D) * 0.02)
        self.pos = nn.ParameterList([nn.Parameter(torch.randn(h * w, D) * 0.02) for h, w in self.scales])
        self.class_emb = nn.Embedding(num_classes + 1, D)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        self.inp = nn.Linear(channels, D)
        self.mlp = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, vocab_size))

    def _residual(self, tok: Tensor, t: int) -> Tensor:
        """tok [N,h_t·w_t] -> its contribution [N,C,H,W] to the finest-grid feature."""
        (h, w), (H, W) = self.scales[t], self.scales[-1]
        e = self.codebook[tok].transpose(1, 2).reshape(tok.shape[0], self.channels, h, w)
        return F.interpolate(e, size=(H, W), mode="nearest")

    def _logits_at(self, fhat: Tensor, cond: Tensor, t: int) -> Tensor:
        h, w = self.scales[t]
        ctx = F.interpolate(fhat, size=(h, w), mode="area").flatten(2).transpose(1, 2)       # [N,hw,C]
        x = self.inp(ctx) + self.pos[t] + self.scale_emb[t] + self.class_emb(cond)[:, None]
        return self.mlp(x)                                                                   # [N,hw,V]

    def features(self, tokens: Tensor, upto: int | None = None) -> Tensor:
        """[N,T] -> f [N,C,H,W] = Σ_{t < upto} upsampled residuals (all scales by default)."""
        parts = split_scales(tokens, self.scales)[: upto if upto is not None else len(self.scales)]
        H, W = self.scales[-1]
        f = torch.zeros(tokens.shape[0], self.channels, H, W, device=tokens.device)
        for t, tok in enumerate(parts):
            f = f + self._residual(tok, t)
        return f

    def forward(self, tokens: Tensor, cond: Tensor) -> Tensor:
        parts = split_scales(tokens, self.scales)
        H, W = self.scales[-1]
        f = torch.zeros(tokens.shape[0], self.channels, H, W, device=tokens.device)
        out = []
        for t, tok in enumerate(parts):
            out.append(self._logits_at(f, cond, t))
            f = f + self._residual(tok, t)
        return torch.cat(out, dim=1)

    def scale_logits(self, tokens: Tensor, cond: Tensor, t: int) -> Tensor:
        return self._logits_at(self.features(tokens, upto=t), cond, t)

    def decode(self, tokens: Tensor) -> Tensor:
        f = self.features(tokens)
        return f.repeat_interleave(self.patch, dim=2).repeat_interleave(self.patch, dim=3)


# ------------------------------------------------------------------------------------------- sampler
@dataclass(frozen=True)
class VarSample:
    tokens: Tensor            # [N,T] long
    logprobs: Tensor          # [N,T] log π_θ(token) of the plain policy (no CFG, no truncation, temperature 1)
    sample_logprobs: Tensor   # [N,T] log-prob under the distribution actually sampled from (CFG, top-k/p, temp)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k then nucleus (top-p) filtering: [..., V] -> [..., V] with −inf outside the kept set. The most likely
    token is always kept; top_k=0 and top_p=1 are off."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        srt, idx = logits.sort(dim=-1, descending=True)
        cum = srt.softmax(-1).cumsum(-1)
        drop = (cum - srt.softmax(-1)) >= top_p          # mass before this token already reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), -math.inf)
    return logits


def _guidance(cfg: float, schedule: str, t: int, S: int) -> float:
    """CFG weight w of scale t (1 = off). `linear` ramps from 1 at the first scale to `cfg` at the last, as VAR's
    sampler does (models/var.py: t = cfg·si/(S−1) on (1+t)·cond − t·uncond)."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (t / max(1, S - 1))
    return cfg


@torch.no_grad()
def sample_var(policy: VarPolicy, cond: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               cfg: float = 1.0, cfg_schedule: Literal["constant", "linear"] = "constant", prefix: Tensor | None = None,
               start_scale: int = 0, stop_scale: int | None = None,
               generator: torch.Generator | None = None) -> VarSample:
    """Draw token pyramids scale by scale; resume from a stored prefix of scales.

    Args:
        cond [N] long class labels. prefix [N,T] long: its scales < `start_scale` are kept (a stored state s_m,
            docs/var.md, VMR); the rest is sampled. stop_scale: sample only scales < stop_scale (a prefix; later
            tokens stay 0 with log-prob 0). temperature, top_k, top_p: per-site sampling. cfg: guidance weight
            w on logits u + w·(c − u) (1 = off; the paper samples with 5, top-k 2, top-p 0.9, arXiv 2601.02256 §4.1).
    Returns VarSample: `logprobs` are those of the plain policy — the distribution the training forward computes
    (no CFG in training, 2601.02256 §4.1) — so the PPO ratio starts at 1; the sampled distribution's are kept apart for
    diagnostics (the gap is the off-policyness the paper leaves uncorrected; docs/var.md).
    """
    N, T, S = cond.shape[0], policy.num_tokens, len(policy.scales)
    off = scale_offsets(policy.scales)
    dev = cond.device
    tokens = torch.zeros(N, T, dtype=torch.long, device=dev) if prefix is None else prefix.clone()
    tokens[:, off[start_scale]:] = 0
    lp = torch.zeros(N, T, device=dev)
    slp = torch.zeros(N, T, device=dev)
    if start_scale > 0:  # the stored prefix's log-probs under the current policy
        pre = token_logprobs(policy(tokens, cond), tokens)
        lp[:, :off[start_scale]] = pre[:, :off[start_scale]]
        slp[:, :off[start_scale]] = pre[:, :off[start_scale]]
    null = torch.full_like(cond, policy.null_class)
    for t in range(start_scale, S if stop_scale is None else stop_scale):
        c = policy.scale_logits(tokens, cond, t).float()                     # [N,n_t,V]
        w = _guidance(cfg, cfg_schedule, t, S)
        g = c if w == 1.0 else policy.scale_logits(tokens, null, t).float().lerp(c, w)  # u + w·(c − u)
        g = filter_logits(g / temperature, top_k, top_p)
        probs = g.softmax(-1)
        tok = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(N, -1)
        tokens[:, off[t]:off[t + 1]] = tok
        lp[:, off[t]:off[t + 1]] = c.log_softmax(-1).gather(-1, tok[..., None]).squeeze(-1)
        slp[:, off[t]:off[t + 1]] = probs.gather(-1, tok[..., None]).squeeze(-1).log()
    return VarSample(tokens, lp, slp)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits [N,T,V], tokens [N,T] -> log-probs [N,T] (fp32, docs/var.md)."""
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


# ------------------------------------------------------------------------------- official VAR checkpoints
class OfficialVAR(VarPolicy):
    """Adapter for the official VAR code (github.com/FoundationVision/VAR, `models/`): wraps its (VQVAE, VAR) pair.

    Teacher forcing goes through `vae.quantize.idxBl_to_var_input` and `VAR.forward(label_B, x_BLCv_wo_first_l)`,
    which is block-causal (its attn_bias_for_masking), so `sample_var` can drive it scale by scale without the KV
    cache. The training forward must not drop the class at random, so `cond_drop_rate` is set to 0 (arXiv 2601.02256
    §4.1: no CFG in the training forward). The VQVAE stays frozen. Images are returned in [0, 1].
    """

    def __init__(self, vae: nn.Module, var: nn.Module):
        super().__init__()
        self.vae, self.var = vae, var
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.var.cond_drop_rate = 0.0
        self.scales = tuple((int(p), int(p)) for p in var.patch_nums)
        self.vocab_size, self.num_classes = int(var.V), int(var.num_classes)

    def forward(self, tokens: Tensor, cond: Tensor) -> Tensor:
        x = self.vae.quantize.idxBl_to_var_input(split_scales(tokens, self.scales))
        return self.var(cond, x).float()

    def decode(self, tokens: Tensor) -> Tensor:
        img = self.vae.idxBl_to_img(list(split_scales(tokens, self.scales)), same_shape=True, last_one=True)
        return img.add(1).mul(0.5)


def load_official_var(path: str | Path, depth: int = 16, patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                      num_classes: int = 1000, device: str = "cpu") -> OfficialVAR:
    """Build an `OfficialVAR` from a local folder holding a clone of the VAR repository (its `models/` package)
    and the released weights `vae_ch160v4096z32.pth` and `var_d{depth}.pth`. Nothing is downloaded."""
    root = Path(path)
    vae_ckpt, var_ckpt = root / "vae_ch160v4096z32.pth", root / f"var_d{depth}.pth"
    missing = [str(p) for p in (root / "models" / "__init__.py", vae_ckpt, var_ckpt) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"model.var.path={root}: missing {missing}; the folder must hold the VAR repository "
                                "code (models/) and the released .pth files")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from models import build_vae_var  # the official code, from the folder above

    vae, var = build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device=device, patch_nums=tuple(patch_nums),
                             num_classes=num_classes, depth=depth, shared_aln=False)
    vae.load_state_dict(torch.load(vae_ckpt, map_location="cpu", weights_only=True), strict=True)
    var.load_state_dict(torch.load(var_ckpt, map_location="cpu", weights_only=True), strict=True)
    return OfficialVAR(vae, var)


def build_var_policy(cfg, seed: int = 0) -> VarPolicy:
    """The policy of a recipe's `model.var` section (a VarModelConfig): the tiny model or a local checkpoint."""
    if cfg.tiny is not None:
        t = cfg.tiny
        torch.manual_seed(seed)
        return TinyVAR(t.scales, t.vocab_size, t.channels, t.hidden_size, t.num_classes, t.patch, t.codebook_seed)
    return load_official_var(cfg.path, cfg.depth, cfg.scales, cfg.num_classes)
