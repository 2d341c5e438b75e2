"""PANW, Per-Action Normalization Weighting (Sun et al., "VAR RL Done Right", arXiv 2601.02256, Eq. 9; NextFlow
arXiv 2601.02204 Eq. 2; docs/var.md, PANW) for VAR policies.

A VAR sample's last scales hold almost all its tokens (VAR-d16: 256 of 680), so a token-mean loss is dominated by
them. PANW weights each token of scale t by k_t = (h_t·w_t)^−α, normalised over the step's active scales
(Σ_t n_t·w_t = 1; the active-only normalisation is this project's reading of "step-level normalization"). α = 0 is the
plain token mean, α = 1 gives every scale the same total weight. The weights are returned times the row's
active-token count so that the trainer's token-mean gives Σ_j w_j ℓ_j per sample (see var_mask.py).
"""

from __future__ import annotations

from rltune.modifiers.base import LossContext, Modifier, TokenWeights
from rltune.modifiers.var_mask import layout, var_token_weights

__all__ = ["ScaleReweight"]


class ScaleReweight(Modifier):
    """Token weights ∝ (h_t·w_t)^−α (hook `token_weights`). Args: alpha (paper: 0.6–0.8 best, NextFlow
    pre-training 0.9; default 0.7). For PANW together with Mask Propagation use `var_mask` with its `alpha`."""

    requires = frozenset({"var_layout"})   # the VAR trainer's scale layout: `rltune validate` refuses other families

    def __init__(self, alpha: float = 0.7):
        if alpha < 0:
            raise ValueError(f"alpha must be ≥ 0, got {alpha}")
        self.alpha = alpha

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        lay = layout(ctx.extras)
        if lay is None:
            raise ValueError("scale_reweight needs the VAR token layout (extras scale_idx/scale_hw): use it with "
                             "model.kind: var")
        scale_idx, scales, _ = lay
        w = var_token_weights(scale_idx, [h * w for h, w in scales], self.alpha, ctx.response_mask.bool())
        return TokenWeights(weight=w)
