"""EMPG: Entropy-Modulated Policy Gradients (Wang et al., "Harnessing Uncertainty: Entropy-Modulated Policy
Gradients for Long-Horizon LLM Agents", arXiv 2509.09265, ICLR 2026). docs/modifiers.md, EMPG;
formulas as restated by ARLArena (arXiv 2602.21534, App. A.3.2, Eqs. S20–S23).

Per step t of trajectory i, with H_{i,t} the mean token entropy of the step (response tokens only):
    H̃ = (H − min H)/(max H − min H + eps_norm)              min/max over all steps of the batch
    g_{i,t} = exp(−k·H̃_{i,t}) / mean_{all steps} exp(−k·H̃)  self-calibrating: mean g = 1
    f_{i,t+1} = exp(−k_f·H̃_{i,t+1}), 0 when t is the last step  future-clarity bonus
    A_mod = g_{i,t}·A_i + ζ·f_{i,t+1};  A_final = A_mod − mean_{all steps} A_mod  (final_norm="mean")
broadcast to the step's tokens × response_mask. Confident steps are amplified, uncertain ones damped.

rltune choices: the advantage is applied per token (A_i is the incoming [N,T] advantage, so a token-varying
estimator keeps its shape; for GRPO it is the row's scalar) while the centring statistics are per step (a step's
A is the mean over its tokens). Steps (``segment``): ``auto`` (default) is the paper's step, one agent turn,
when the rollout is multi-turn (``env:``), one scale for VAR policies, and the ``delimiter`` split when one is
given; a recipe that leaves one step per response (``whole_response``, a single-turn task without delimiter,
a one-turn env) is refused by ``rltune validate``: f ≡ 0 and g is one weight per response, so EMPG's per-step
credit assignment is off. [INFERRED] ``delimiter`` for single-turn reasoning; ``final_norm="mean_std"`` also
divides by the steps' unbiased std. Zero-token steps and rows with an unscorable (NaN) raw reward are left out of every statistic and get
A = 0. Statistics are over the local batch (single process); under data parallelism they would need an
all-reduce.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from rltune.modifiers.base import AdvantageContext, Modifier

__all__ = ["EMPG", "segment_whole", "segment_delimiter", "step_means", "empg_advantages"]


def segment_whole(response_mask: Tensor) -> Tensor:
    """[N,T] long step ids: 0 on response tokens, −1 elsewhere (one step per response)."""
    return torch.where(response_mask.bool(), 0, -1).long()


def segment_delimiter(response_ids: Tensor, response_mask: Tensor, delimiter_ids: Sequence[int]) -> Tensor:
    """[N,T] long step ids: a step ends with (and includes) each occurrence of the token sequence
    ``delimiter_ids``; −1 outside the mask. "a\\nb\\nc" with delimiter "\\n" gives steps "a\\n", "b\\n", "c"."""
    d = torch.as_tensor(list(delimiter_ids), dtype=response_ids.dtype)
    L = d.numel()
    if L == 0:
        raise ValueError("delimiter_ids must not be empty")
    N, T = response_ids.shape
    ends = torch.zeros(N, T, dtype=torch.bool)
    if T >= L:
        win = response_ids.unfold(1, L, 1)                       # [N, T-L+1, L]
        mwin = response_mask.bool().unfold(1, L, 1).all(-1)
        ends[:, L - 1:] = (win == d).all(-1) & mwin              # True on the delimiter's last token
    ids = ends.long().cumsum(1) - ends.long()                    # delimiters ended strictly before t
    return torch.where(response_mask.bool(), ids, -1)


def step_means(values: Tensor, step_idx: Tensor, valid: Tensor, S: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` per (row, step) over ``valid`` tokens, vectorized with one scatter (no loops).

    Shapes: values [N,T], step_idx [N,T] long (−1 = no step), valid [N,T] bool ->
    (mean [N,S] float64, count [N,S] float64) with S = max step id + 1; absent steps have mean 0, count 0.
    """
    N, dev = values.shape[0], values.device
    ok = valid.bool() & (step_idx >= 0)
    if S is None:
        S = int(step_idx[ok].max()) + 1 if ok.any() else 1
    flat = (torch.arange(N, device=dev)[:, None] * S + step_idx.clamp_min(0))[ok]
    v = values.double()[ok]
    tot = torch.zeros(N * S, dtype=torch.float64, device=dev).index_add_(0, flat, v)
    cnt = torch.zeros(N * S, dtype=torch.float64, device=dev).index_add_(0, flat, torch.ones_like(v))
    return (tot / cnt.clamp_min(1)).view(N, S), cnt.view(N, S)


def empg_advantages(advantages: Tensor, entropy: Tensor, response_mask: Tensor, step_idx: Tensor,
                    k: float = 1.0, k_f: float = 1.0, zeta: float = 0.05,
                    final_norm: Literal["mean", "mean_std", "none"] = "mean", eps_norm: float = 1e-8,
                    row_valid: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """EMPG modulation of ``advantages`` (see the module docstring), vectorized over (row, step).

    Shapes: advantages, entropy [N,T] float; response_mask [N,T] bool; step_idx [N,T] long (−1 = no step);
    row_valid [N] bool (False rows: excluded from the statistics, output 0) -> (A_final [N,T], stats).
    A step's successor is the next *present* step of the same row (zero-token steps are skipped).
    """
    if final_norm not in ("mean", "mean_std", "none"):
        raise ValueError(f"final_norm must be mean, mean_std or none, got {final_norm!r}")
    ok = response_mask.bool() & (step_idx >= 0)
    if row_valid is not None:
        ok = ok & row_valid.bool()[:, None]
    if not ok.any():
        return torch.zeros_like(advantages), {}
    H, cnt = step_means(entropy, step_idx, ok)
    a_step, _ = step_means(advantages, step_idx, ok, S=H.shape[1])   # a step's A, for the centring statistics
    present = cnt > 0
    (N, S), dev = H.shape, H.device
    Hp = H[present]
    H = torch.where(present, H, Hp.min())  # absent steps: finite placeholders, never read
    Hn = (H - Hp.min()) / (Hp.max() - Hp.min() + eps_norm)
    e = torch.exp(-k * Hn)
    g = e / e[present].mean()
    f = torch.exp(-k_f * Hn)
    # Successor = nearest present step to the right: a reverse cummin over the present steps' positions.
    pos = torch.where(present, torch.arange(S, device=dev).expand(N, S), S)
    nxt = torch.cat([pos[:, 1:], torch.full((N, 1), S, device=dev)], 1).flip(1).cummin(1).values.flip(1)
    f_next = torch.where(nxt < S, f.gather(1, nxt.clamp_max(S - 1)), torch.zeros_like(f))
    mod_step = (g * a_step + zeta * f_next)[present]
    one = torch.ones((), dtype=torch.float64, device=dev)
    mu = mod_step.mean() if final_norm != "none" else 0 * one
    sd = mod_step.std() + eps_norm if final_norm == "mean_std" and mod_step.numel() > 1 else one
    sid = torch.where(ok, step_idx, 0)  # rows left out may carry step ids beyond S
    tok = g.gather(1, sid) * advantages.double() + zeta * f_next.gather(1, sid)
    out = torch.where(ok, (tok - mu) / sd, 0.0)
    stats = {"step_entropy_mean": float(Hp.mean()), "steps_per_response": float(present.sum(1)[present.any(1)]
             .double().mean()), "g_min": float(g[present].min()), "g_max": float(g[present].max()),
             "bonus_mean": float(zeta * f_next[present].mean()), "shift": float(mu)}
    return out.to(advantages.dtype), stats


def _encode(text: str, tokenizer: str) -> list[int]:
    """Token ids of ``text`` with the recipe-style tokenizer spec (`char` or a folder), no special tokens."""
    if tokenizer == "char":
        from rltune.models.tokenizer import build_char_tokenizer

        tok = build_char_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    return list(tok(text, add_special_tokens=False)["input_ids"])


class EMPG(Modifier):
    """Entropy-modulated advantages (hook ``shape_advantages``; needs old-policy token entropy).

    Args:
        k, k_f, zeta: g's and f's sharpness and the future-bonus weight (ARLArena Table S1: 1.0, 1.0, 0.05).
        final_norm: ``"mean"`` (default: subtract the mean over steps), ``"mean_std"`` or ``"none"``.
        segment: ``"auto"`` (default: ``turn`` for a multi-turn rollout, ``scale`` for VAR, else ``delimiter``
            when one is given), ``"turn"`` (``extras["step_idx"]`` [N,T] long from a multi-turn rollout),
            ``"scale"`` (``extras["scale_idx"]``, VAR), ``"delimiter"`` (steps end with a token sequence:
            ``delimiter_ids``, or the string ``delimiter`` encoded with ``tokenizer``) or ``"whole_response"``
            (one step per response; refused by ``rltune validate``, kept for the math's tests).
        eps_norm: added to max H − min H.
    Metrics: step_entropy_mean, steps_per_response, g_min, g_max, bonus_mean, shift.
    """

    requires = frozenset({"entropy"})
    SEGMENTS = ("auto", "turn", "scale", "delimiter", "whole_response")

    def __init__(self, k: float = 1.0, k_f: float = 1.0, zeta: float = 0.05,
                 final_norm: Literal["mean", "mean_std", "none"] = "mean",
                 segment: Literal["auto", "turn", "scale", "delimiter", "whole_response"] = "auto",
                 delimiter_ids: list[int] | None = None, delimiter: str | None = None, tokenizer: str = "char",
                 eps_norm: float = 1e-8):
        if final_norm not in ("mean", "mean_std", "none"):
            raise ValueError(f"final_norm must be mean, mean_std or none, got {final_norm!r}")
        if segment not in self.SEGMENTS:
            raise ValueError(f"segment must be one of {', '.join(self.SEGMENTS)}, got {segment!r}")
        if segment == "delimiter" and not delimiter_ids and not delimiter:
            raise ValueError("segment='delimiter' needs delimiter_ids (token ids) or delimiter (a string)")
        self.k, self.k_f, self.zeta, self.final_norm, self.eps_norm = k, k_f, zeta, final_norm, eps_norm
        self.segment, self.delimiter, self.tokenizer = segment, delimiter, tokenizer
        self.delimiter_ids = list(delimiter_ids) if delimiter_ids else None
        self._metrics: dict[str, float] = {}

    @classmethod
    def check_recipe(cls, recipe: Any, args: dict[str, Any]) -> None:
        """Refuse a recipe in which every response is one step (EMPG would reduce to a per-response weight)."""
        segment, delim = args.get("segment", "auto"), bool(args.get("delimiter") or args.get("delimiter_ids"))
        kind, env = recipe.model.kind, recipe.env
        turns = env.max_turns if env is not None else 1
        scales = (len(recipe.model.var.tiny.scales if recipe.model.var.tiny is not None else recipe.model.var.scales)
                  if kind == "var" else 1)
        asked = segment
        if segment == "auto":
            segment = "scale" if kind == "var" else "turn" if env is not None else "delimiter" if delim else None
        why = {None: "segment: auto on a single-turn task with no `delimiter`",
               "whole_response": "segment: whole_response",
               "turn": "segment: turn needs a multi-turn rollout (an `env:` with max_turns ≥ 2); this recipe has "
                       + (f"env.max_turns = {turns}" if env is not None else "no env"),
               "scale": f"segment: scale is for VAR policies with several scales ({kind}, {scales} scale(s))"}
        if segment in why and not (segment == "turn" and turns > 1) and not (segment == "scale" and scales > 1):
            via = f"segment: auto -> {segment}; " if asked == "auto" and segment is not None else ""
            raise ValueError(
                f"EMPG would give every response a single step here ({via}{why[segment]}): the future-clarity bonus is "
                "then 0 and g one weight per response, so the paper's per-step credit assignment (steps = agent "
                "turns, arXiv 2509.09265) is off. Fix: run a multi-turn env (`env:` with max_turns ≥ 2; EMPG then "
                "works per turn), or split responses into steps with `args: {segment: delimiter, delimiter: "
                "\"\\n\"}` when they have several lines, or remove empg (docs/modifiers.md, EMPG)")

    def step_ids(self, ctx: AdvantageContext) -> Tensor:
        seg = self.segment
        if seg == "auto":
            seg = ("turn" if "step_idx" in ctx.extras else "scale" if "scale_idx" in ctx.extras else
                   "delimiter" if self.delimiter_ids or self.delimiter else None)
            if seg is None:
                raise ValueError("EMPG segment='auto' found no steps: no multi-turn rollout (extras['step_idx']), no "
                                 "VAR scales and no delimiter; every response would be one step (docs/modifiers.md)")
        if seg == "whole_response":
            return segment_whole(ctx.response_mask)
        if seg in ("turn", "scale"):
            key = "step_idx" if seg == "turn" else "scale_idx"
            if key not in ctx.extras:
                raise ValueError(f"segment={seg!r} needs extras[{key!r}] [N,T] long from a "
                                 f"{'multi-turn' if seg == 'turn' else 'VAR'} rollout; use segment='delimiter' for "
                                 "single-turn responses")
            return torch.where(ctx.response_mask.bool(), ctx.extras[key].long(), -1)
        if self.delimiter_ids is None:  # encoded lazily: `rltune validate` builds nothing heavy
            self.delimiter_ids = _encode(self.delimiter, self.tokenizer)
        return segment_delimiter(ctx.batch.response_ids, ctx.response_mask, self.delimiter_ids)

    def shape_advantages(self, advantages: Tensor, ctx: AdvantageContext) -> Tensor:
        if ctx.entropy is None:
            raise ValueError("EMPG needs ctx.entropy (requires={'entropy'}); the trainer did not provide it")
        out, self._metrics = empg_advantages(
            advantages, ctx.entropy, ctx.response_mask, self.step_ids(ctx), self.k, self.k_f, self.zeta,
            self.final_norm, self.eps_norm, row_valid=~torch.isnan(ctx.raw_rewards))
        return out

    def on_step_end(self, metrics: dict[str, float], state) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out
