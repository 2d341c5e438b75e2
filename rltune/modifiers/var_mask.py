"""Mask Propagation for VAR policies (Sun et al., "VAR RL Done Right", arXiv 2601.02256, §3.5; docs/var.md,
Mask Propagation). The paper gives no formula or code: the pooling rule, recursion, dilation, threshold
and normalisation below are this project's design (docs/var.md, Mask Propagation).

A final-scale mask M_S over the finest token grid marks the tokens that determine the reward (rasterised reward
boxes, or the reward's saliency); it is propagated fine → coarse (max or area pooling) and gates the per-token
policy loss, multiplied with the PANW scale weights k_t = (h_t·w_t)^−α:
    w_{b,j} = k_t(j) · M_b(j) · active_b(j) / Z_b,  Z_b = Σ_j k_t(j)·M_b(j)·active_b(j)   (renormalize=True)
                                                     Z_b = Σ_j k_t(j)·active_b(j)          (renormalize=False)
`active` is the loss mask of the step (the VMR stage's scales) and the optional `scales` gate. The weight is
returned times the row's active-token count c_b, so the trainer's token-mean (or seq-mean-token-mean) over
equal-length VAR rows gives L = (1/B) Σ_b Σ_j w_bj ℓ_bj (docs/var.md); with α=0 and M≡1 every weight is 1.

Batch extras read (written by rltune/visual/var_trainer.py): scale_idx [N,T] long, scale_hw [N,S,2] long,
image_hw [N,2] long, and per source boxes [N,K,4] float (x0,y0,x1,y1 pixels, NaN rows = padding) or saliency
[N,H,W] float.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rltune.modifiers.base import LossContext, Modifier, TokenWeights

__all__ = ["propagate_mask", "dilate", "boxes_to_mask", "saliency_to_mask", "scale_weights", "var_token_weights",
           "layout", "VarMask"]

Scale = tuple[int, int]


# ------------------------------------------------------------------------------------------ pure functions
def propagate_mask(final_mask: Tensor, scales: Sequence[Scale], mode: Literal["max", "area"] = "max",
                   recursive: bool = False, threshold: float | None = None) -> list[Tensor]:
    """Fine → coarse mask pyramid (docs/var.md, MP steps 3–4).

    final_mask [N,h_S,w_S] in [0,1] on the finest grid; scales [(h_t,w_t)] coarse → fine, the last = final grid.
    mode "max": a coarse token is 1 if any token of its footprint is (adaptive max pool); "area": the covered
    fraction of its footprint (adaptive avg pool, VAR's own residual projection). recursive pools from the next
    finer scale instead of the final mask (same result for nested ratios 1→2→4; differs for 3→4 in `area`).
    threshold τ: M ← 1[M > τ] on every scale. Returns S tensors [N,h_t,w_t] (float), coarse → fine.
    """
    m = final_mask.float().unsqueeze(1)
    if tuple(m.shape[-2:]) != tuple(scales[-1]):
        raise ValueError(f"final mask grid {tuple(m.shape[-2:])} != last scale {tuple(scales[-1])}")
    pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
    if mode not in ("max", "area"):
        raise ValueError(f"mode must be 'max' or 'area', got {mode!r}")
    out: list[Tensor] = [m] * len(scales)
    for t in range(len(scales) - 2, -1, -1):
        out[t] = pool(out[t + 1] if recursive else m, tuple(scales[t]))
    res = [o.squeeze(1) for o in out]
    return [(r > threshold).float() for r in res] if threshold is not None else res


def dilate(mask: Tensor, d: int) -> Tensor:
    """[N,h,w] -> [N,h,w]: max-pool with a (2d+1)² window, to cover the ~1-token bicubic halo VAR's decoder
    spreads a token over (docs/var.md, MP step 2)."""
    if d <= 0:
        return mask
    return F.max_pool2d(mask.float().unsqueeze(1), 2 * d + 1, stride=1, padding=d).squeeze(1)


def boxes_to_mask(boxes: Tensor, image_hw: tuple[int, int], grid: Scale) -> Tensor:
    """Rasterise pixel boxes to the final token grid with conservative rounding (docs/var.md, MP step 1): columns
    floor(x0·w/W) … ceil(x1·w/W)−1, rows likewise, union over a row's boxes.
    boxes [N,K,4] (x0,y0,x1,y1; NaN rows are padding), image_hw (H,W), grid (h,w) -> [N,h,w] float {0,1}."""
    (H, W), (h, w) = image_hw, grid
    N = boxes.shape[0]
    if boxes.numel() == 0:
        return torch.zeros(N, h, w)
    b = boxes.double()
    ok = ~torch.isnan(b).any(-1)                                     # [N,K]
    b = torch.nan_to_num(b)
    c0 = torch.floor(b[..., 0] * w / W).clamp(0, w)
    c1 = torch.ceil(b[..., 2] * w / W).clamp(0, w)
    r0 = torch.floor(b[..., 1] * h / H).clamp(0, h)
    r1 = torch.ceil(b[..., 3] * h / H).clamp(0, h)
    cols, rows = torch.arange(w, dtype=b.dtype), torch.arange(h, dtype=b.dtype)
    in_c = (cols >= c0[..., None]) & (cols < c1[..., None])         # [N,K,w]
    in_r = (rows >= r0[..., None]) & (rows < r1[..., None])         # [N,K,h]
    cover = in_r[..., :, None] & in_c[..., None, :] & ok[..., None, None]
    return cover.any(1).float()


def saliency_to_mask(saliency: Tensor, grid: Scale, q: float = 0.25) -> Tensor:
    """rltune extension (not in the paper): |∂R/∂x| [N,H,W] area-pooled to the token grid, keep the top-q
    fraction of tokens with non-zero saliency -> [N,h,w] float {0,1}."""
    s = F.adaptive_avg_pool2d(saliency.float().abs().unsqueeze(1), tuple(grid)).flatten(1)   # [N,h·w]
    kth = s.quantile(1.0 - q, dim=1, keepdim=True)
    return ((s >= kth) & (s > 0)).float().view(-1, *grid)


def scale_weights(sizes: Sequence[int] | Tensor, alpha: float) -> Tensor:
    """PANW per-token weight of each scale (paper Eq. 9): k_t = n_t^−α normalised so Σ_t n_t·w_t = 1.
    sizes [S] tokens per scale -> [S] float64. α=0: 1/T each; α=1: each scale's total is 1/S."""
    n = torch.as_tensor(sizes, dtype=torch.float64)
    k = n.pow(-alpha)
    return k / (n * k).sum()


def var_token_weights(scale_idx: Tensor, sizes: Sequence[int] | Tensor, alpha: float, active: Tensor,
                      mask: Tensor | None = None, renormalize: bool = True, eps: float = 1e-8) -> Tensor:
    """Per-token loss weights k_t·M·active/Z_b times c_b (module docstring), vectorized.

    scale_idx [N,T] long, sizes [S], active [N,T] bool (tokens in the loss), mask [N,T] float in [0,1] or None
    (all ones) -> [N,T] float32. Z_b is clamped ≥ eps (docs/var.md); c_b = Σ_j active_bj.
    """
    k = (torch.as_tensor(sizes, dtype=torch.float64).pow(-alpha))[scale_idx]          # [N,T]
    a = active.to(torch.float64)
    m = a if mask is None else mask.to(torch.float64) * a
    z_src = m if renormalize else a
    z = (k * z_src).sum(-1, keepdim=True).clamp_min(eps)
    c = a.sum(-1, keepdim=True)
    return (k * m * c / z).float()


def layout(extras: dict[str, Tensor]) -> tuple[Tensor, list[Scale], tuple[int, int]] | None:
    """(scale_idx [n,T], scales [(h,w)], image (H,W)) from a VAR batch's extras, or None for another batch."""
    if "scale_idx" not in extras or "scale_hw" not in extras:
        return None
    hw = extras["scale_hw"][0].tolist()
    img = tuple(extras["image_hw"][0].tolist()) if "image_hw" in extras else tuple(hw[-1])
    return extras["scale_idx"], [tuple(x) for x in hw], img


# ---------------------------------------------------------------------------------------------- modifier
class VarMask(Modifier):
    """Mask Propagation × PANW × stage gate as token weights (hook `token_weights`).

    Args:
        source: "boxes" (reward boxes, the paper's), "saliency" (the reward's |∂R/∂x|; differentiable rewards only)
            or "none" (all ones: PANW only).
        mode, recursive, threshold: pooling to the coarser scales (see `propagate_mask`; defaults max, direct).
        dilate: tokens of dilation at the final scale (default 0). saliency_q: top fraction kept for "saliency".
        alpha: PANW exponent inside the normaliser (0 = no scale reweighting; the paper's best is 0.6–0.8). Use
            this rather than stacking `scale_reweight`, whose own normaliser would then apply twice.
        renormalize: per-sample normaliser over the mask (True) or the unmasked PANW normaliser (False).
        scales: indices of the scales that may get a loss (temporal gating, e.g. NextFlow's prefix tuning of the
            first m scales); None = all. The VMR stage gate arrives as the step's loss mask and is applied too.
    Metrics: empty_frac (samples whose mask was empty and fell back to all ones), empty_count (cumulative),
    coverage (mean final-scale mask).
    """

    requires = frozenset({"var_layout"})   # the VAR trainer's scale layout: `rltune validate` refuses other families

    def __init__(self, source: Literal["boxes", "saliency", "none"] = "boxes", mode: Literal["max", "area"] = "max",
                 recursive: bool = False, dilate: int = 0, threshold: float | None = None, alpha: float = 0.0,
                 renormalize: bool = True, saliency_q: float = 0.25, scales: list[int] | None = None):
        if source not in ("boxes", "saliency", "none"):
            raise ValueError(f"source must be boxes, saliency or none, got {source!r}")
        if mode not in ("max", "area"):
            raise ValueError(f"mode must be max or area, got {mode!r}")
        if not 0 < saliency_q <= 1:
            raise ValueError(f"saliency_q must be in (0, 1], got {saliency_q}")
        self.source, self.mode, self.recursive, self.dilate, self.threshold = source, mode, recursive, dilate, threshold
        self.alpha, self.renormalize, self.saliency_q = alpha, renormalize, saliency_q
        self.scales = None if scales is None else sorted(set(scales))
        self.empty_count = 0
        self._metrics: dict[str, float] = {}

    def final_mask(self, extras: dict[str, Tensor], grid: Scale, image_hw: tuple[int, int], n: int) -> Tensor:
        """[n,h_S,w_S] final-scale mask of each row (before the empty fallback)."""
        if self.source == "none":
            return torch.ones(n, *grid)
        key = self.source
        if key not in extras:
            raise ValueError(f"var_mask source={key!r} needs batch extras[{key!r}]: use a reward that returns "
                             f"{key} (e.g. rltune_rewards.spatial.RegionBrightness) or set source: none")
        if key == "boxes":
            return boxes_to_mask(extras["boxes"], image_hw, grid)
        return saliency_to_mask(extras["saliency"], grid, self.saliency_q)

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        lay = layout(ctx.extras)
        if lay is None:
            raise ValueError("var_mask needs the VAR token layout (extras scale_idx/scale_hw): use it with "
                             "model.kind: var")
        scale_idx, scales, image_hw = lay
        n = scale_idx.shape[0]
        fm = dilate(self.final_mask(ctx.extras, scales[-1], image_hw, n), self.dilate)
        empty = fm.flatten(1).sum(-1) == 0
        fm = torch.where(empty[:, None, None], torch.ones_like(fm), fm)   # docs/var.md: fall back, count it
        pyr = propagate_mask(fm, scales, self.mode, self.recursive, self.threshold)
        m = torch.cat([p.flatten(1) for p in pyr], dim=1)                  # [n,T]
        gate = ctx.response_mask.bool()
        if self.scales is not None:
            gate = gate & torch.isin(scale_idx, torch.tensor(self.scales))
        sizes = [h * w for h, w in scales]
        w = var_token_weights(scale_idx, sizes, self.alpha, gate, m, self.renormalize)
        self.empty_count += int(empty.sum())
        self._metrics = {"empty_frac": float(empty.float().mean()), "empty_count": float(self.empty_count),
                         "coverage": float(pyr[-1].mean())}
        return TokenWeights(weight=w, mask=gate if self.scales is not None else None)

    def on_step_end(self, metrics: dict[str, float], state) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self) -> dict[str, int]:
        return {"empty_count": self.empty_count}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.empty_count = int(sd.get("empty_count", 0))
