"""The policy update of one training step, shared by the in-process engine and the DeepSpeed ranks in Ray actors.

The driver computes everything that is a constant of the loss (advantages, the loss mask and token weights,
old/reference log-probs) and hands it over as `UpdateInputs`; this function runs the optimizer steps. On a data-
parallel rank it takes its slice of every mini-batch, while the loss is normalised by the *global* counts of the
mini-batch, so the ranks' losses add up to the single-process loss and their gradients, averaged by the engine's
all-reduce, equal the single-process gradients (tested: tests/integration/test_deepspeed_ranks.py).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rltune import algo
from rltune.modifiers.base import LossContext, StepState
from rltune.ops import masked_mean
from rltune.train.packing import token_budget_micro_batches

# Metrics that are partial sums on each rank (add them up) vs. global values every rank agrees on (take one).
GLOBAL_KEYS = ("train/grad_norm", "train/skipped_step", "train/optimizer_steps", "train/lr")


@dataclass
class UpdateInputs:
    """The whole step's batch, on CPU. N rows, T response positions."""

    input_ids: torch.Tensor            # [N,P+T] long
    attention_mask: torch.Tensor       # [N,P+T]
    advantages: torch.Tensor           # [N,T]
    loss_mask: torch.Tensor            # [N,T] bool (response mask & modifier masks & truncation filter)
    rollout_logprobs: torch.Tensor     # [N,T] sampling log-probs (drift metric)
    weight: torch.Tensor | None = None          # [N,T] modifier token weights
    old_logprobs: torch.Tensor | None = None    # [N,T] fixed old policy (None: on-policy single update)
    entropy: torch.Tensor | None = None         # [N,T] old-policy entropy for modifiers
    ref_logprobs: torch.Tensor | None = None    # [N,T] when a KL term is in the loss
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def response_len(self) -> int:
        return self.advantages.shape[1]

    def to(self, device: torch.device) -> "UpdateInputs":
        """A copy with every tensor on `device` (one transfer per step; the update indexes rows there)."""
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return UpdateInputs(mv(self.input_ids), mv(self.attention_mask), mv(self.advantages), mv(self.loss_mask),
                            mv(self.rollout_logprobs), mv(self.weight), mv(self.old_logprobs), mv(self.entropy),
                            mv(self.ref_logprobs), {k: mv(v) for k, v in self.extras.items()})


@dataclass(frozen=True)
class UpdateSpec:
    """The recipe values the update reads (plain data: it travels to Ray actors)."""

    policy_loss: str
    loss_agg: str
    clip_low: float
    clip_high: float
    dual_clip_c: float | None
    kl_estimator: str
    kl_coef: float                     # 0 = no KL term in the loss (placement reward, or off)
    entropy_coef: float
    micro_batch_size: int
    temperature: float
    loss_scale_constant: int | None = None
    max_tokens_per_micro_batch: int | None = None

    @classmethod
    def from_recipe(cls, r, kl_coef: float) -> "UpdateSpec":
        a = r.algo
        return cls(a.policy_loss, a.loss_agg, a.clip_low, a.clip_high, a.dual_clip_c, a.kl_estimator, kl_coef,
                   a.entropy_coef, r.train.micro_batch_size, r.rollout.temperature, r.loss_scale_constant,
                   r.train.max_tokens_per_micro_batch)


@dataclass(frozen=True)
class StepKeys:
    """The metric names one optimizer-step loop counts under (accumulate_steps)."""

    grad_norm: str                 # sum of the pre-clip gradient norms of the steps taken
    skipped: str                   # steps skipped for a non-finite loss or gradient
    steps: str | None = None       # steps taken
    loss: str | None = None        # sum over steps of the micro-batch losses


POLICY_KEYS = StepKeys("train/grad_norm", "train/skipped_step", "train/optimizer_steps", "loss/total")
CRITIC_KEYS = StepKeys("critic/grad_norm", "critic/skipped_steps")

# One micro-batch's loss: (this rank's rows of the micro-batch, the whole mini-batch's rows, its global
# denominators, the metric sums to add to) -> a scalar normalised by the *global* counts, so the micro-batch losses
# add up to the mini-batch's.
MicroLoss = Callable[[torch.Tensor, torch.Tensor, algo.AggDenominators, dict], torch.Tensor]


def accumulate_steps(engine, plan: list[torch.Tensor], loss_mask: torch.Tensor, loss_agg: str,
                     micro_batches: Callable[[torch.Tensor], list[torch.Tensor]], micro_loss: MicroLoss,
                     keys: StepKeys, world_size: int = 1,
                     on_gradients: Callable[[], None] | None = None) -> dict[str, float]:
    """The optimizer loop every update shares (the policy's run_update and the critic's): one optimizer step per
    mini-batch of row indices in `plan`, gradients accumulated over its micro-batches.

    loss_mask [N,T] gives each mini-batch's global denominators (algo.global_denominators in `loss_agg` mode),
    which `micro_loss` divides by, so any micro-batch split gives the same gradient. `micro_batches(mini)` is this
    rank's split of a mini-batch (an empty one still joins the collectives with a zero loss). After the backwards,
    `on_gradients` (modifiers), then the engine's step (clip, optimizer, LR schedule) or, when the loss or a
    gradient is not finite on any rank, its skip rule. Returns this rank's metric sums (see StepKeys).
    """
    acc: dict[str, float] = defaultdict(float)
    for mini in plan:
        denom = algo.global_denominators(loss_mask[mini], loss_agg)
        micros = micro_batches(mini)
        step_loss = 0.0
        for i, rows in enumerate(micros):
            engine.set_boundary(i == len(micros) - 1)
            if len(rows) == 0:  # a rank with no rows this mini-batch still joins the collectives
                engine.backward(engine.zero_loss())
                continue
            loss = micro_loss(rows, mini, denom, acc)
            # The engine averages gradients over ranks; each rank's loss is its share of the global sum.
            engine.backward(loss * world_size if world_size > 1 else loss)
            step_loss += float(loss.detach())
        if keys.loss is not None:
            acc[keys.loss] += step_loss
        if on_gradients is not None:
            on_gradients()
        # Every rank must agree on skipping, so finiteness is all-reduced (a no-op in one process).
        if not engine.all_finite(bool(np.isfinite(step_loss)) and engine.grads_finite()):
            engine.skip_step()
            acc[keys.skipped] += 1.0
            continue
        acc[keys.grad_norm] += engine.step()
        if keys.steps is not None:
            acc[keys.steps] += 1.0
    return acc


def run_update(engine, mods, x: UpdateInputs, plan: list[torch.Tensor], spec: UpdateSpec, state: StepState,
               rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """The policy's optimizer steps (accumulate_steps) with the policy loss of `spec` (+ KL, entropy bonus and the
    modifiers' extra_loss terms) on each micro-batch.

    `engine` has forward/backward/step/skip_step/grads_finite/all_finite/named_parameters/grad_view/lr (TorchEngine
    or DeepSpeedEngine). Returns metric sums over the plan's steps for this rank (see GLOBAL_KEYS); the caller
    adds the ranks up and divides by len(plan).
    """
    T = x.response_len
    lengths = x.attention_mask.sum(1)

    def micro_loss(rows: torch.Tensor, mini: torch.Tensor, denom: algo.AggDenominators,
                   acc: dict[str, float]) -> torch.Tensor:
        agg = functools.partial(algo.aggregate, mode=spec.loss_agg, **denom, scale_constant=spec.loss_scale_constant)
        # Entropy carries grad only when it is part of the loss; otherwise it is a detached metric.
        lp, ent = engine.forward(x.input_ids[rows], x.attention_mask[rows], T, spec.temperature, entropy=True,
                                 entropy_grad=bool(spec.entropy_coef))
        # On-policy single update: the old policy is the current one, so ratio = 1 with the right gradient
        # and no extra forward (as TRL does for num_iterations=1).
        old = lp.detach() if x.old_logprobs is None else x.old_logprobs[rows]
        m = x.loss_mask[rows]
        pg, clipped = algo.policy_loss(spec.policy_loss, lp, old, x.advantages[rows], m, clip_low=spec.clip_low,
                                       clip_high=spec.clip_high, dual_clip_c=spec.dual_clip_c)
        if x.weight is not None:
            pg = pg * x.weight[rows]
        loss = agg(pg, m)
        acc["loss/policy"] += float(loss.detach())
        if spec.kl_coef > 0:
            kl_loss = agg(algo.kl_penalty(lp, x.ref_logprobs[rows], spec.kl_estimator), m)
            loss = loss + spec.kl_coef * kl_loss
            acc["algo/kl"] += float(kl_loss.detach())
        if spec.entropy_coef:
            loss = loss - spec.entropy_coef * agg(ent, m)
        ctx = LossContext(rows, lp, old, x.advantages[rows], m, state,
                          x.entropy[rows] if x.entropy is not None else None,
                          {k: v[rows] for k, v in x.extras.items()}, total_rows=len(mini),
                          rollout_logprobs=x.rollout_logprobs[rows])
        for name, term in mods.extra_loss(ctx).items():
            loss = loss + term
            acc[f"loss/{name}"] += float(term.detach())
        if m.any():
            share = float(m.sum()) / max(1.0, denom["num_tokens"])
            lpd = lp.detach()
            acc["algo/clip_frac"] += float(masked_mean(clipped.float(), m)) * share
            acc["algo/entropy"] += float(masked_mean(ent.detach(), m)) * share
            acc["algo/ppo_kl"] += float(masked_mean(old - lpd, m)) * share  # drift from the old policy
            acc["rollout/logprob_diff"] += float(masked_mean((lpd - x.rollout_logprobs[rows]).abs(), m)) * share
        return loss

    split = functools.partial(micro_batches, lengths=lengths, micro=spec.micro_batch_size,
                              max_tokens=spec.max_tokens_per_micro_batch, rank=rank, world_size=world_size)
    acc = accumulate_steps(engine, plan, x.loss_mask, spec.loss_agg, split, micro_loss, POLICY_KEYS, world_size,
                           on_gradients=lambda: mods.on_gradients(engine.grad_view(), state))
    acc["train/lr"] = engine.lr * len(plan)
    return dict(acc)


def micro_batches(mini: torch.Tensor, lengths: torch.Tensor | None, micro: int, max_tokens: int | None = None,
                  rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """This rank's micro-batches of the mini-batch `mini` (row indices): `micro` rows each, or with a token budget
    `max_tokens` (real tokens = lengths [N]) as many consecutive rows as fit. Every rank runs as many as the rank
    with the most (empty ones join the collectives with a zero loss), so forwards/backwards stay in step."""
    split = lambda rows: token_budget_micro_batches(rows, lengths, max_tokens, micro)  # noqa: E731
    shares = mini.tensor_split(world_size)
    micros = split(shares[rank])
    if world_size > 1 and max_tokens is not None:
        most = max(len(split(s)) for s in shares)
        micros += [shares[rank][:0]] * (most - len(micros))
    return micros


def finish_metrics(per_rank: list[dict[str, float]], n_steps: int) -> dict[str, float]:
    """Add the ranks' partial sums (global keys from rank 0), then average over the plan's optimizer steps."""
    total: dict[str, float] = defaultdict(float)
    for k, v in per_rank[0].items():
        if k in GLOBAL_KEYS:
            total[k] = v
    for stats in per_rank:
        for k, v in stats.items():
            if k not in GLOBAL_KEYS:
                total[k] += v
    steps = total.pop("train/optimizer_steps", 0.0)
    skipped = total.pop("train/skipped_step", 0.0)
    grad = total.pop("train/grad_norm", 0.0)
    lr = total.pop("train/lr", 0.0)
    out = {k: v / n_steps for k, v in total.items()}
    if skipped:
        out["train/skipped_step"] = skipped
    if steps:
        out["train/optimizer_steps"] = steps
        out["train/grad_norm"] = grad / steps
        out["train/lr"] = lr / n_steps
    return out
