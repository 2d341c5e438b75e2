"""Reward backprop through the sampler: AlignProp and Direct-Align/SRPO (docs/diffusion.md).

Both contribute an `extra_loss` computed from the diffusion trainer's no-grad rollout through the policy handle
in `DiffusionLossContext` (any other context is a TypeError; `rltune validate` refuses them elsewhere):

  * AlignProp (Prabhudesai et al., arXiv 2310.03739): re-run the last K denoising steps from the recorded
    latent with gradient (checkpointed), decode, loss = −R (or |R − target|, 1 − R), into the LoRA weights.
    Randomised truncation, three published semantics (docs/diffusion.md, AlignProp): `gaussian` (official default: the
    truncation index b = int(N(0.84·T, 0.1·T)) once per rollout, i.e. 42±5 of 50), `uniform` (paper: K uniform),
    `fixed` (b = T−1: K = 1), `full` (K = T), and `per_step` (TRL: a fresh threshold at every step, so the
    kept steps need not be contiguous).
  * Direct-Align (Shen et al., arXiv 2509.06942): re-noise the rollout's clean x_0 with its known initial noise
    ε at σ_hi, take one model step to σ_lo, recover x̂_0 by interpolation with the known ε, score it; SRPO's
    relative reward s·f̂_img·((1+k)·f̂_txt(word. prompt) − f̂_txt(other word. prompt)), plus the inversion
    branch with roles swapped. σ grid, k, index and discount logic follow SRPO.py exactly (docs/diffusion.md).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rltune.models.diffusion import ddim_step, flow_sigmas
from rltune.modifiers.base import Modifier

__all__ = ["AlignProp", "DirectAlign", "truncation_index", "grad_step_mask", "alignprop_loss", "srpo_indices",
           "srpo_sigma_grid", "flow_recover", "ddim_recover", "srp_score", "REALISM_WORDS", "CG_WORDS"]

_SALT_ALIGNPROP, _SALT_DIRECT = 0xA11C9, 0xD1AE7

# SRPO.py control words, cycled by step index (SRPO, arXiv 2509.06942)
REALISM_WORDS = ("Natural-lighting", "Detail", "Detailed", "Real")
CG_WORDS = ("Concept art", "Painting", "Anime", "Flat", "Oil")


# --------------------------------------------------------------------------------------------- AlignProp
def truncation_index(strategy: str, T: int, g: torch.Generator, mean: float | None = None,
                     std: float | None = None, fixed: int | None = None) -> int:
    """The truncation index b of one rollout (official semantics): UNet outputs of steps i < b are detached,
    so K = T − b steps carry gradient. gaussian: b = int(x), x ~ N(mean, std), i.e. truncated toward zero as the
    official sd_pipeline.py does, redrawn until 1 ≤ b < T (defaults 0.84·T, 0.1·T = 42, 5 for T = 50; so
    P(b = k) ∝ Φ((k+1−μ)/σ) − Φ((k−μ)/σ) and E[b] ≈ 40.9, E[K] ≈ 9.1); uniform: b ~ U{0..T−1} redrawn until
    b ≥ 1; fixed: b = `fixed` (default T−1, K = 1); full: b = 0 (K = T)."""
    if strategy == "full":
        return 0
    if strategy == "fixed":
        b = T - 1 if fixed is None else fixed
        if not 0 <= b < T:
            raise ValueError(f"alignprop fixed truncation index {b} must be in [0, {T - 1}]")
        return b
    if T < 2:
        return 0  # a one-step chain: the only step keeps its gradient
    for _ in range(10_000):
        if strategy == "gaussian":
            mu, sd = 0.84 * T if mean is None else mean, 0.1 * T if std is None else std
            b = int(mu + sd * float(torch.randn((), generator=g)))   # int(): toward zero, as the official code
        elif strategy == "uniform":
            b = int(torch.randint(0, T, (), generator=g))
        else:
            raise ValueError(f"unknown alignprop truncation {strategy!r}")
        if 1 <= b < T:
            return b
    raise ValueError(f"alignprop: no truncation index in [1, {T - 1}] from N({mean}, {std}); check b_mean/b_std")


def grad_step_mask(strategy: str, T: int, g: torch.Generator, mean: float | None = None, std: float | None = None,
                   fixed: int | None = None, minmax: tuple[int, int] | None = None) -> Tensor:
    """[T] bool: chain steps whose UNet output keeps its graph. Official strategies: i ≥ b (contiguous tail).
    per_step (TRL): step i keeps it iff r_i ≤ i, r_i ~ U{lo..hi} drawn per step (default (0, T)); if no step
    is kept the last one is ([INFERRED]: TRL would then produce a loss without gradient)."""
    i = torch.arange(T)
    if strategy != "per_step":
        return i >= truncation_index(strategy, T, g, mean, std, fixed)
    lo, hi = minmax if minmax is not None else (0, T)
    keep = torch.randint(lo, hi + 1, (T,), generator=g) <= i
    if not keep.any():
        keep[-1] = True
    return keep


def alignprop_loss(r: Tensor, kind: str = "neg", target: float | None = None) -> Tensor:
    """Per-sample loss [N] from rewards [N]: neg = −R (TRL: 10 − R, same gradient); target = |R − target|
    (official aesthetic, target 10); one_minus = 1 − R (official HPS)."""
    if kind == "neg":
        return -r
    if kind == "target":
        if target is None:
            raise ValueError("alignprop loss 'target' needs `target`")
        return (r - target).abs()
    if kind == "one_minus":
        return 1 - r
    raise ValueError(f"unknown alignprop loss {kind!r} (neg, target, one_minus)")


class AlignProp(Modifier):
    """End-to-end reward gradient through the last K DDIM steps (2310.03739). `loss_coeff` 0.01 as the official code."""

    requires = frozenset({"images"})

    def __init__(self, truncation: Literal["gaussian", "uniform", "fixed", "full", "per_step"] = "gaussian",
                 b_mean: float | None = None, b_std: float | None = None, fixed_b: int | None = None,
                 per_step_minmax: tuple[int, int] | None = None, loss: Literal["neg", "target", "one_minus"] = "neg",
                 target: float | None = None, loss_coeff: float = 0.01):
        if truncation not in ("gaussian", "uniform", "fixed", "full", "per_step"):
            raise ValueError(f"alignprop truncation must be gaussian|uniform|fixed|full|per_step, got {truncation!r}")
        if loss not in ("neg", "target", "one_minus") or (loss == "target") == (target is None):
            raise ValueError(f"alignprop loss must be neg|target|one_minus, with `target` exactly for 'target' "
                             f"(official aesthetic: 10); got loss={loss!r}, target={target!r}")
        self.truncation, self.b_mean, self.b_std, self.fixed_b = truncation, b_mean, b_std, fixed_b
        self.minmax = tuple(per_step_minmax) if per_step_minmax is not None else None
        self.loss, self.target, self.loss_coeff = loss, target, loss_coeff
        self._metrics: dict[str, float] = {}

    def extra_loss(self, ctx: Any) -> dict[str, Tensor]:
        from rltune.visual.diffusion_context import DiffusionLossContext

        if not isinstance(ctx, DiffusionLossContext):
            raise TypeError(f"{type(self).__name__} runs in the diffusion trainer only (got {type(ctx).__name__}); "
                            "`rltune validate` refuses it for other model.kind values")
        T = ctx.policy.num_steps
        # One draw per sampling call (= micro-batch), seeded by (seed, step, rank, first row): reproducible.
        g = ctx.state.generator(_SALT_ALIGNPROP + int(ctx.rows[0]))
        keep = grad_step_mask(self.truncation, T, g, self.b_mean, self.b_std, self.fixed_b, self.minmax)
        start = int(keep.nonzero()[0])
        x0 = ctx.policy.resume(ctx.rollout, start, keep)
        r = ctx.reward_fn(ctx.policy.decode(x0), ctx.rollout.prompts)
        loss = alignprop_loss(r, self.loss, self.target).sum() / ctx.total_rows * self.loss_coeff
        self._metrics = {"grad_steps": float(keep.sum()), "reward_grad_path": float(r.detach().mean())}
        return {"loss": loss}

    def on_step_end(self, metrics: dict[str, float], state: Any) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out


# ------------------------------------------------------------------------------------------ Direct-Align
def srpo_indices(sel: int, L: int = 1000, ratio: float = 0.9) -> tuple[int, tuple[int, int, int], tuple[int, int, int]]:
    """SRPO.py's index logic (2509.06942). sel ∈ [5, L−5]; k = int((1 − ratio)·L) + 1 clipped to min(L−sel, k, sel)
    (for ratio 0.9 this is 100, not 101: (1 − 0.9)·1000 = 99.99999999999997 in floating point).
    -> (k, (mid, i_hi, i_lo) of the denoise branch, (mid, i_hi, i_lo) of the inversion branch), grid indices."""
    k = min(L - sel, int((1 - ratio) * L) + 1, sel)
    mid_inv = max(sel - k, 1)
    return k, (sel, L - sel - k, L - sel), (mid_inv, L - mid_inv - k, L - mid_inv)


def srpo_sigma_grid(L: int = 1000, train_timestep: tuple[int, int] = (5, 25), vis_steps: int = 50,
                    shift: float = 3.0, sigma_range: tuple[float, float] | None = None) -> Tensor:
    """[L] decreasing σ grid: linspace(s[a], s[b], L) on the shifted schedule s of vis_steps (default (5, 25)
    → σ ∈ [0.964, 0.75]), or linspace(*sigma_range, L) (the CPU toy uses (0.9, 0.3))."""
    if sigma_range is not None:
        return torch.linspace(sigma_range[0], sigma_range[1], L)
    s = flow_sigmas(vis_steps, shift)
    return torch.linspace(float(s[train_timestep[0]]), float(s[train_timestep[1]]), L)


def flow_recover(x_in: Tensor, v: Tensor, eps: Tensor, s_in: float | Tensor, s_out: float | Tensor) -> Tensor:
    """One Euler step σ_in -> σ_out with velocity v, then x̂_0 = (x_out − σ_out ε)/(1 − σ_out) (SRPO.py).
    Denoise branch: (σ_in, σ_out) = (σ_hi, σ_lo); inversion: (σ_lo, σ_hi). A perfect v = ε − x_0 returns x_0;
    ∂x̂_0/∂v = (σ_out − σ_in)/(1 − σ_out). Shapes [N,C,h,w]."""
    x_out = x_in + (s_out - s_in) * v
    return (x_out - s_out * eps) / (1 - s_out)


def ddim_recover(x_in: Tensor, eps_pred: Tensor, eps: Tensor, a_in: float | Tensor, a_out: float | Tensor) -> Tensor:
    """ε-model analogue (this project's; docs/diffusion.md): a deterministic DDIM step ᾱ_in -> ᾱ_out with ε_θ, then
    x̂_0 = (x_out − √(1−ᾱ_out) ε)/√ᾱ_out. A perfect ε_θ = ε returns x_0;
    ∂x̂_0/∂ε_θ = σ_out/α_out − σ_in/α_in."""
    x_out = ddim_step(x_in, eps_pred, a_in, a_out, eta=0.0)
    a_out = torch.as_tensor(a_out, dtype=x_in.dtype)
    return (x_out - (1 - a_out).sqrt() * eps) / a_out.sqrt()


def srp_score(img: Tensor, pos: Tensor, neg: Tensor, k: float | Tensor, scale: float = 1.0) -> Tensor:
    """SRPO code form (SRP_cfg): s · f̂_img·((1 + k) f̂_pos − f̂_neg). img, pos, neg: unit [N,D] -> [N]."""
    return scale * (img * ((1 + k) * pos - neg)).sum(-1)


class DirectAlign(Modifier):
    """Direct-Align one-step recovery + SRPO relative reward (2509.06942). With `srp` the first text-image scorer among
    the recipe's rewards gives the embeddings; without it the weighted reward is used directly (denoise branch
    only: a unimodal reward has no text branch to swap, docs/diffusion.md). Loss per branch: ReLU(hinge − score)
    (SRPO) or −score, averaged over the branches (SRPO's grad_accum = 2: one denoise + one inversion)."""

    requires = frozenset({"images"})

    def __init__(self, srp: bool = True, use_inversion: bool = True, timestep_length: int = 1000,
                 train_timestep: tuple[int, int] = (5, 25), vis_sampling_step: int = 50, shift: float = 3.0,
                 sigma_range: tuple[float, float] | None = None, groundtruth_ratio: float = 0.9,
                 discount_pos: tuple[float, float] = (0.1, 0.25), discount_inv: tuple[float, float] = (0.3, 0.01),
                 loss: Literal["hinge", "neg"] = "hinge", hinge: float = 0.7,
                 positive_words: Sequence[str] = REALISM_WORDS, negative_words: Sequence[str] = CG_WORDS,
                 loss_coeff: float = 1.0):
        if use_inversion and not srp:
            raise ValueError("direct_align: use_inversion needs srp (the inversion branch swaps the SRP text roles)")
        if loss not in ("hinge", "neg"):
            raise ValueError(f"direct_align loss must be hinge or neg, got {loss!r}")
        L = timestep_length
        self.srp, self.use_inversion, self.L, self.ratio = srp, use_inversion, L, groundtruth_ratio
        self.grid = srpo_sigma_grid(L, tuple(train_timestep), vis_sampling_step, shift,
                                    tuple(sigma_range) if sigma_range is not None else None)
        if not (0 < float(self.grid.min()) and float(self.grid.max()) < 1):
            raise ValueError("direct_align: the σ grid must stay inside (0, 1): 1/(1 − σ) blows up at σ = 1 "
                             "(docs/diffusion.md)")
        self.k_pos, self.k_inv = torch.linspace(*discount_pos, L), torch.linspace(*discount_inv, L)
        self.loss, self.hinge, self.loss_coeff = loss, hinge, loss_coeff
        self.pos_words, self.neg_words = list(positive_words), list(negative_words)
        self._metrics: dict[str, float] = {}

    def _recover(self, ctx: Any, i_in: int, i_out: int) -> Tensor:
        """x̂_0 latents [n,...]: noise the rollout's x_0 with its initial noise at grid σ[i_in], one model call,
        recover at σ[i_out]."""
        pol, ro = ctx.policy, ctx.rollout
        x0, eps = ro.latents[-1], ro.latents[0]
        s_in, s_out = float(self.grid[i_in]), float(self.grid[i_out])
        if pol.kind == "flow":
            x_in = (1 - s_in) * x0 + s_in * eps
            v = pol.predict(x_in, s_in * 1000, ro.cond, ro.uncond)
            return flow_recover(x_in, v, eps, s_in, s_out)
        a_in, a_out = _alpha_at(pol.alphas_cumprod, s_in), _alpha_at(pol.alphas_cumprod, s_out)
        x_in = a_in.sqrt() * x0 + (1 - a_in).sqrt() * eps
        e = pol.predict(x_in, s_in * (len(pol.alphas_cumprod) - 1), ro.cond, ro.uncond)
        return ddim_recover(x_in, e, eps, a_in, a_out)

    def _score(self, ctx: Any, img: Tensor, k: float, swap: bool) -> Tensor:
        if not self.srp:
            return ctx.reward_fn(img, ctx.rollout.prompts)
        if not ctx.scorers:
            raise ValueError("direct_align srp=true needs a text-image scorer among the rewards (embed_images/"
                             "embed_texts, e.g. TinyClipScorer, ClipScore, HPSv2); or set srp: false")
        sc, step = ctx.scorers[0], ctx.state.step
        good = [f"{self.pos_words[step % len(self.pos_words)]}. {p}" for p in ctx.rollout.prompts]
        bad = [f"{self.neg_words[step % len(self.neg_words)]}. {p}" for p in ctx.rollout.prompts]
        pos, neg = sc.embed_texts(bad if swap else good), sc.embed_texts(good if swap else bad)
        return srp_score(sc.embed_images(img), pos.to(img.device), neg.to(img.device), k, sc.score_scale)

    def extra_loss(self, ctx: Any) -> dict[str, Tensor]:
        from rltune.visual.diffusion_context import DiffusionLossContext

        if not isinstance(ctx, DiffusionLossContext):
            raise TypeError(f"{type(self).__name__} runs in the diffusion trainer only (got {type(ctx).__name__}); "
                            "`rltune validate` refuses it for other model.kind values")
        g = ctx.state.generator(_SALT_DIRECT + int(ctx.rows[0]))
        sel = int(torch.randint(5, self.L - 5 + 1, (), generator=g))          # SRPO: U{5..L−5} per update
        k, (mid_d, hi_d, lo_d), (mid_i, hi_i, lo_i) = srpo_indices(sel, self.L, self.ratio)
        branches = [("denoise", hi_d, lo_d, float(self.k_pos[mid_d]), False)]
        if self.use_inversion:  # one step toward noise; roles swapped so it penalises hacking (paper Eq. 9)
            branches.append(("inversion", lo_i, hi_i, float(self.k_inv[mid_i]), True))
        total, m = 0.0, {"sigma_hi": float(self.grid[hi_d]), "sigma_lo": float(self.grid[lo_d])}
        for name, i_in, i_out, kk, swap in branches:
            score = self._score(ctx, ctx.policy.decode(self._recover(ctx, i_in, i_out)), kk, swap)
            per = F.relu(self.hinge - score) if self.loss == "hinge" else -score
            total = total + per.sum() / ctx.total_rows / len(branches)
            m[f"score_{name}"] = float(score.detach().mean())
        self._metrics = m
        return {"loss": total * self.loss_coeff}

    def on_step_end(self, metrics: dict[str, float], state: Any) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out


def _alpha_at(alphas_cumprod: Tensor, u: float) -> Tensor:
    """ᾱ at the continuous train timestep u·(T_train − 1), linearly interpolated ([INFERRED] for ε-models)."""
    t = u * (len(alphas_cumprod) - 1)
    lo = min(int(math.floor(t)), len(alphas_cumprod) - 2)
    w = t - lo
    return (1 - w) * alphas_cumprod[lo] + w * alphas_cumprod[lo + 1]
