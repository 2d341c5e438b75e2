"""ADHint: adaptive hints with difficulty priors (arXiv 2512.13095); docs/modifiers.md, ADHint.

A hint is a prefix of the reference solution forced into the response; the policy writes the rest. Three parts:
- AH-SDP (``on_prompts``) [S]: the group's G − n_hint naive (hint-free) samples are generated and scored first,
  Diff_N = 1 − their mean reward; they stay in the trained group (``prior="group"``, the paper's two-phase
  rollout; ``"probe"``: n_probe extra samples, thrown away). The other n_hint samples get the first ⌊w_k·|y*|⌋
  characters (or tokens) of y*, with
  w_k = clip((w_max − w_min)·Diff_N + w_min + ξ_k, 0, w_cap), ξ_k ~ U(−δ, δ)  [INFERRED: per-sample ξ, w_cap].
- AE-RDP (``shape_advantages``) [INFERRED estimator]: posterior difficulties from raw rewards,
  Diff_N = 1 − mean(r_naive), Diff_H = 1 − mean(r_hint) per group; a naive success is boosted by
  (1 + λ·Diff_N), a hinted failure by (1 + λ·(1 − Diff_H)); all else unchanged.
- CGM and selective masking (``token_weights``) [INFERRED weight]: hint token j of row i gets
  c_j = min(1, H̄_cont,i/(H_j + 1e-6)) (``cgm="ratio"``) or exp(−λ_c·max(0, H_j − H̄_cont,i)) (``"exp"``),
  H̄_cont,i the mean entropy of the row's own continuation; continuation tokens keep weight 1. Hint tokens
  with a negative advantage leave the loss (mask False: docs/algorithms.md) so a correct prefix is never pushed down.
Hint tokens have rollout log-prob 0, but because ADHint requires "entropy" the trainer recomputes the old
log-probs over the whole sequence, so the PPO ratios on hint tokens are right (docs/modifiers.md, ADHint).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from rltune.algo import group_norm
from rltune.data.batch import PromptBatch
from rltune.modifiers.base import AdvantageContext, LossContext, Modifier, PromptContext, TokenWeights
from rltune.ops import group_stats, masked_mean

__all__ = ["ADHint", "hint_ratios", "hint_lengths", "ae_rdp_factors", "cgm_weights", "selective_mask"]

_SALT = 0xAD41


def hint_ratios(diff: Tensor, xi: Tensor, w_min: float, w_max: float, w_cap: float) -> Tensor:
    """w = clip((w_max − w_min)·Diff + w_min + ξ, 0, w_cap). Shapes: diff [B], xi [B,K] -> [B,K] float64."""
    return ((w_max - w_min) * diff.double()[:, None] + w_min + xi.double()).clamp(0.0, w_cap)


def hint_lengths(w: Tensor, ref_len: int) -> Tensor:
    """⌊w·|y*|⌋ as long (a 1e-6 guard so 0.62·200 is 124, not 123 from rounding), capped at |y*|."""
    return torch.floor(w.double() * ref_len + 1e-6).long().clamp(0, ref_len)


def ae_rdp_factors(advantages: Tensor, raw_rewards: Tensor, group_id: Tensor, is_hint: Tensor, lam: float = 1.0,
                   reward_range: Sequence[float] = (0.0, 1.0)) -> tuple[Tensor, Tensor, Tensor]:
    """AE-RDP multipliers for ``advantages`` [N,T]; groups without both naive and hinted rows are left as is.

    raw_rewards [N] (NaN = unscorable, left out), group_id [N], is_hint [N] bool ->
    (factor [N,T], Diff_N [N], Diff_H [N]); Diff_* are the row's group's posterior difficulties (NaN when the
    group has no scorable naive / hinted row).
    """
    lo, hi = reward_range
    r = ((raw_rewards.double() - lo) / (hi - lo)).clamp(0.0, 1.0)
    nan = torch.full_like(r, math.nan)
    mean_n, _, cnt_n = group_stats(torch.where(is_hint, nan, r), group_id)
    mean_h, _, cnt_h = group_stats(torch.where(is_hint, r, nan), group_id)
    diff_n = torch.where(cnt_n > 0, 1.0 - mean_n, nan)
    diff_h = torch.where(cnt_h > 0, 1.0 - mean_h, nan)
    mixed = ((cnt_n > 0) & (cnt_h > 0))[:, None]
    a = advantages.double()
    naive_up = mixed & ~is_hint[:, None] & (a > 0)
    hint_down = mixed & is_hint[:, None] & (a < 0)
    one = torch.ones_like(a)
    factor = torch.where(naive_up, (1 + lam * diff_n)[:, None] * one,
                         torch.where(hint_down, (1 + lam * (1 - diff_h))[:, None] * one, one))
    return factor, diff_n, diff_h


def cgm_weights(entropy: Tensor, hint_mask: Tensor, cont_mask: Tensor, mode: str = "ratio",
                lambda_c: float = 1.0) -> Tensor:
    """Consistency-based gradient modulation: [N,T] weights, c_j on hint tokens, 1 elsewhere (detached).

    entropy [N,T] (old policy), hint_mask / cont_mask [N,T] bool (hint and continuation response tokens).
    """
    H = torch.where(hint_mask | cont_mask, entropy.detach().double(), 0.0)
    h_cont = masked_mean(H, cont_mask, dim=1)[:, None]             # [N,1]; 0 for an empty continuation
    if mode == "ratio":
        c = torch.clamp(h_cont / (H + 1e-6), max=1.0)
    elif mode == "exp":
        c = torch.exp(-lambda_c * (H - h_cont).clamp_min(0.0))
    elif mode == "none":
        c = torch.ones_like(H)
    else:
        raise ValueError(f"cgm must be ratio, exp or none, got {mode!r}")
    return torch.where(hint_mask, c, 1.0).to(entropy.dtype)


def selective_mask(hint_mask: Tensor, advantages: Tensor) -> Tensor:
    """[N,T] bool: False on hint tokens whose advantage is negative (per token: a row's A for GRPO)."""
    return ~(hint_mask & (advantages < 0))


class ADHint(Modifier):
    """Adaptive hints (hooks ``on_prompts``, ``shape_advantages``, ``token_weights``).

    Args:
        n_hint: hinted samples of the G per prompt (None → G//2); the other G − n_hint are naive.
        prior: ``"group"`` (default, paper): Diff_N from the group's naive samples, generated first and trained;
            ``"probe"``: from n_probe separate hint-free samples that are thrown away (None → G//2).
        w_min, w_max, delta, w_cap: hint-ratio knobs (rltune placeholders 0.0, 0.8, 0.05, 0.9; paper values unknown).
        skip_if_diff_le: prompts with Diff_N ≤ this get no hint (0.0: prompts the probe always solves).
        solution_column: dataset column holding y*. reward_range: (min, max) of the raw reward.
        tokenizer: None → hint lengths in characters; `char` or a tokenizer folder → in tokens.
        base_norm: ``"union"`` (the incoming advantage: GRPO over naive + hinted) or ``"separate"`` (GRPO within
            each of the two subgroups, recomputed from ``ctx.rewards``). lam: AE-RDP λ (0 = off).
        cgm: ``"ratio"`` (default), ``"exp"`` (with lambda_c) or ``"none"``.
        selective_mask: hint tokens with A < 0 leave the loss.
    """

    requires = frozenset({"probe", "entropy"})

    def __init__(self, n_hint: int | None = None, n_probe: int | None = None, w_min: float = 0.0,
                 w_max: float = 0.8, delta: float = 0.05, w_cap: float = 0.9, skip_if_diff_le: float = 0.0,
                 solution_column: str = "solution", reward_range: Sequence[float] = (0.0, 1.0),
                 tokenizer: str | None = None, base_norm: Literal["union", "separate"] = "union", lam: float = 1.0,
                 cgm: Literal["ratio", "exp", "none"] = "ratio", lambda_c: float = 1.0, selective_mask: bool = True,
                 prior: Literal["group", "probe"] = "group"):
        if base_norm not in ("union", "separate") or cgm not in ("ratio", "exp", "none"):
            raise ValueError(f"base_norm must be union|separate and cgm ratio|exp|none, got {base_norm!r}, {cgm!r}")
        if prior not in ("group", "probe") or (prior == "group" and n_probe is not None):
            raise ValueError(f"adhint prior must be group|probe (got {prior!r}); n_probe sizes the separate probe of "
                             "prior: probe only (with prior: group the G − n_hint naive samples are the prior)")
        if not (0.0 <= w_cap < 1.0 and delta >= 0 and float(reward_range[1]) > float(reward_range[0])):
            raise ValueError("need 0 <= w_cap < 1, delta >= 0 and reward_range (min, max) with max > min")
        self.n_hint, self.n_probe, self.w = n_hint, n_probe, (w_min, w_max, w_cap)
        self.delta, self.skip_if_diff_le, self.solution_column = delta, skip_if_diff_le, solution_column
        self.reward_range = (float(reward_range[0]), float(reward_range[1]))
        self.tokenizer, self.base_norm, self.lam = tokenizer, base_norm, lam
        self.cgm, self.lambda_c, self.selective, self.prior = cgm, lambda_c, selective_mask, prior
        self._tok = None
        self._metrics: dict[str, float] = {}
        self.totals = {"prompts": 0, "hinted_prompts": 0, "diff_sum": 0.0}   # running difficulty statistics

    @classmethod
    def check_recipe(cls, recipe, args: dict) -> None:
        """With prior: group the prior comes from the G − n_hint naive samples: there must be some."""
        G, n_hint = recipe.rollout.samples_per_prompt, args.get("n_hint")
        if args.get("prior", "group") == "group":
            if args.get("n_probe") is not None:
                raise ValueError("n_probe sizes the separate probe of `prior: probe`; with prior: group (the default) "
                                 "the prior comes from the G − n_hint naive samples of the group: remove n_probe")
            if (G // 2 if n_hint is None else n_hint) >= G:
                raise ValueError(f"prior: group needs naive samples: n_hint leaves none of rollout.samples_per_prompt"
                                 f"={G}; lower n_hint (or raise samples_per_prompt)")

    # ------------------------------------------------------------------------------ AH-SDP (before rollout)
    def _units(self, text: str) -> tuple[int, Callable[[int], str]]:
        if self.tokenizer is None:
            return len(text), lambda k: text[:k]
        if self._tok is None:
            from rltune.models.tokenizer import build_char_tokenizer
            from transformers import AutoTokenizer

            tok = self.tokenizer
            self._tok = build_char_tokenizer() if tok == "char" else AutoTokenizer.from_pretrained(tok)
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        return len(ids), lambda k: self._tok.decode(ids[:k]) if k else ""

    def on_prompts(self, prompts: PromptBatch, ctx: PromptContext) -> PromptBatch:
        G, B = ctx.samples_per_prompt, len(prompts)
        n_hint = min(G, G // 2 if self.n_hint is None else self.n_hint)
        if ctx.probe is None:
            raise ValueError("ADHint needs ctx.probe (requires={'probe'}); the trainer did not provide it")
        if n_hint == 0:
            return PromptBatch(prompts=list(prompts.prompts), meta=prompts.meta, hints=[[""] * G for _ in range(B)])
        if self.solution_column not in prompts.meta:
            raise KeyError(f"ADHint: no column {self.solution_column!r} in the data (columns: {sorted(prompts.meta)}); "
                           "set solution_column")
        if self.prior == "group":   # the naive samples of the group itself: generated first, kept, trained
            if n_hint >= G:
                raise ValueError(f"adhint prior: group needs naive samples: n_hint={n_hint} leaves none of G={G}; "
                                 "lower n_hint or use prior: probe")
            probe = ctx.probe(prompts, G - n_hint, keep=True).double().cpu()
        else:
            probe = ctx.probe(prompts, max(1, G // 2 if self.n_probe is None else self.n_probe)).double().cpu()
        lo, hi = self.reward_range
        diff = 1.0 - torch.nanmean(((probe - lo) / (hi - lo)).clamp(0.0, 1.0), dim=1)   # [B]; NaN: unscorable
        xi = (torch.rand(B, n_hint, generator=ctx.state.generator(_SALT), dtype=torch.float64) * 2 - 1) * self.delta
        w = hint_ratios(diff, xi, *self.w)
        hints, ratios, lens = [], [], []
        for b, d in enumerate(diff.tolist()):
            row = [""] * G
            sol = str(prompts.meta[self.solution_column][b] or "")
            if n_hint and sol and not math.isnan(d) and d > self.skip_if_diff_le:
                n_units, prefix = self._units(sol)
                for j, k in enumerate(hint_lengths(w[b], n_units).tolist()):
                    row[G - n_hint + j] = prefix(k)
                    if k:
                        ratios.append(float(w[b, j]))
                        lens.append(k)
            hints.append(row)
        ok = ~torch.isnan(diff)
        hinted = sum(any(h) for h in hints)
        self.totals["prompts"] += int(ok.sum())
        self.totals["hinted_prompts"] += hinted
        self.totals["diff_sum"] += float(diff[ok].sum())
        self._metrics = {"diff_prior_mean": float(diff[ok].mean()) if ok.any() else 0.0,
                         "hint_frac": len(lens) / max(1, B * G), "hinted_prompt_frac": hinted / max(1, B),
                         "hint_ratio_mean": sum(ratios) / max(1, len(ratios)),
                         "hint_len_mean": sum(lens) / max(1, len(lens)),
                         "diff_prior_running": self.totals["diff_sum"] / max(1, self.totals["prompts"])}
        return PromptBatch(prompts=list(prompts.prompts), meta=prompts.meta, hints=hints)

    # ------------------------------------------------------------------------------------------- AE-RDP
    def shape_advantages(self, advantages: Tensor, ctx: AdvantageContext) -> Tensor:
        is_hint = ctx.extras.get("is_hint")
        if is_hint is None or not is_hint.any():
            return advantages
        is_hint = is_hint.bool()
        base = advantages
        if self.base_norm == "separate":
            base = group_norm(ctx.rewards, ctx.group_id * 2 + is_hint.long(), ctx.response_mask)
        factor, diff_n, diff_h = ae_rdp_factors(base, ctx.raw_rewards, ctx.group_id, is_hint, self.lam,
                                                self.reward_range)
        mixed = ~torch.isnan(diff_n) & ~torch.isnan(diff_h)
        if mixed.any():
            self._metrics |= {"posterior_diff_naive": float(diff_n[mixed].mean()),
                              "posterior_diff_hint": float(diff_h[mixed].mean())}
        self._metrics["boosted_frac"] = float(((factor != 1) & ctx.response_mask).any(1).double().mean())
        return (base.double() * factor).to(advantages.dtype)

    # ------------------------------------------------------------------------------ CGM + selective masking
    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        hint = ctx.extras.get("hint_mask")
        if hint is None or not (hint.bool() & ctx.response_mask).any():
            return None
        if ctx.entropy is None:
            raise ValueError("ADHint needs ctx.entropy (requires={'entropy'}) for CGM")
        hint = hint.bool() & ctx.response_mask
        cont = ctx.response_mask & ~hint
        weight = cgm_weights(ctx.entropy, hint, cont, self.cgm, self.lambda_c).to(ctx.advantages.dtype)
        mask = selective_mask(hint, ctx.advantages) if self.selective else torch.ones_like(hint)
        mask = mask & ~(hint.any(1) & ~cont.any(1))[:, None]     # the hint used the whole budget: drop the row
        n_hint = hint.sum().clamp_min(1)
        self._metrics |= {"hint_token_frac": float(hint.sum() / ctx.response_mask.sum().clamp_min(1)),
                          "cgm_weight_mean": float(weight[hint].double().mean()),
                          "masked_hint_frac": float((hint & ~mask).sum() / n_hint)}
        return TokenWeights(weight=weight, mask=mask)

    def on_step_end(self, metrics: dict[str, float], state) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self) -> dict:
        return dict(self.totals)

    def load_state_dict(self, sd: dict) -> None:
        self.totals = {"prompts": int(sd["prompts"]), "hinted_prompts": int(sd["hinted_prompts"]),
                       "diff_sum": float(sd["diff_sum"])}
