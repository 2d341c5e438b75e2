"""The one extension mechanism: `Modifier` subclasses override a few no-op hooks.

Hooks receive typed, frozen context objects (never the trainer) and return new tensors; they must not
mutate their inputs. The pipeline (pipeline.py) checks shape, dtype and finiteness after every hook and names
the modifier that broke it. N = rows (completions), T = response positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch

from rltune.data.batch import PromptBatch, RolloutBatch

HOOKS = (
    "on_prompts",
    "shape_rewards",
    "shape_advantages",
    "token_weights",
    "extra_loss",
    "on_gradients",
    "on_step_end",
)
# Capabilities the trainer can provide on request (`requires`): computed only when a modifier asks.
# Which family provides which is in its support manifest (rltune/families.py); this is their union.
CAPABILITIES = frozenset({"entropy", "old_logprobs", "ref_logprobs", "rollout_logprobs", "probe", "step_idx",
                          "images", "var_layout"})


@dataclass(frozen=True)
class StepState:
    step: int                      # optimizer step about to be taken (0-based)
    seed: int                      # run seed; with `step` it makes every draw reproducible
    rank: int = 0
    world_size: int = 1
    total_steps: int = 0

    def generator(self, salt: int = 0) -> torch.Generator:
        """A generator seeded by (seed, step, rank, salt): deterministic, different per rank (docs/modifiers.md)."""
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + self.step) * 65_537 + self.rank) * 31 + salt)


@dataclass(frozen=True)
class PromptContext:
    state: StepState
    # With `requires = {"probe"}`: probe(prompts, n, keep=False) samples n hint-free completions per prompt with
    # the current policy and returns their raw rewards [B,n] (ADHint's difficulty prior). keep=True makes them the
    # first n samples of each prompt's group (the rollout generates only the rest; `hints[b][:n]` must be "").
    # None otherwise.
    probe: Callable[..., torch.Tensor] | None = None
    samples_per_prompt: int = 1    # G: completions the rollout draws per prompt (`hints` must be [B][G])


@dataclass(frozen=True)
class RewardContext:
    batch: RolloutBatch
    raw_rewards: torch.Tensor      # [N] before any shaping (NaN = unscorable)
    scores: torch.Tensor           # [N,K] per reward function
    state: StepState


@dataclass(frozen=True)
class AdvantageContext:
    batch: RolloutBatch
    rewards: torch.Tensor          # [N] shaped rewards the estimator used
    raw_rewards: torch.Tensor      # [N]
    response_mask: torch.Tensor    # [N,T] bool
    group_id: torch.Tensor         # [N]
    state: StepState
    old_logprobs: torch.Tensor | None = None   # [N,T] detached
    entropy: torch.Tensor | None = None        # [N,T] detached, old policy, at the sampling temperature
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossContext:
    """One micro-batch of n rows. `logprobs` carries grad; everything else is detached."""

    rows: torch.Tensor             # [n] indices into the step's batch
    logprobs: torch.Tensor         # [n,T] with grad
    old_logprobs: torch.Tensor     # [n,T]
    advantages: torch.Tensor       # [n,T]
    response_mask: torch.Tensor    # [n,T] bool
    state: StepState
    entropy: torch.Tensor | None = None        # [n,T] old policy entropy (detached)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # row-sliced batch extras
    total_rows: int = 0            # N of the whole step: extra_loss terms are summed over micro-batches
    rollout_logprobs: torch.Tensor | None = None  # [n,T] the rollout engine's sampling log-probs (behaviour policy)


@dataclass(frozen=True)
class TokenWeights:
    """Per-token loss weights and masks. Weights from several modifiers multiply; masks AND (order-free)."""

    weight: torch.Tensor | None = None   # [n,T] float
    mask: torch.Tensor | None = None     # [n,T] bool; False removes the token from the loss and its count


class GradView:
    """Gradients by parameter name, for `on_gradients`. Works the same on one process and under ZeRO, where the
    engine hands a view of the local partitions plus a reduce function for global statistics."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], all_reduce=None):
        self._params = [(n, p) for n, p in named_params if p.grad is not None]
        self._all_reduce = all_reduce or (lambda t: t)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for n, p in self._params:
            yield n, p.grad

    def global_norm(self) -> float:
        sq = sum((g.detach().float().pow(2).sum() for _, g in self.items()), torch.zeros(()))
        return float(self._all_reduce(sq).sqrt())

    def scale_(self, factor: float) -> None:
        for _, g in self.items():
            g.mul_(factor)


class Modifier:
    """Override any subset of the hooks below; the defaults do nothing."""

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def on_prompts(self, prompts: PromptBatch, ctx: PromptContext) -> PromptBatch:
        """Called before rollout; may attach per-sample hints (`PromptBatch.hints`) or filter prompts."""
        return prompts

    def shape_rewards(self, rewards: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        """[N] -> [N], before advantages (e.g. ReDit dithering)."""
        return rewards

    def shape_advantages(self, advantages: torch.Tensor, ctx: AdvantageContext) -> torch.Tensor:
        """[N,T] -> [N,T], after the estimator (e.g. EMPG)."""
        return advantages

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        """Per-token weights/masks of the policy loss, computed once per step for the WHOLE batch (ctx.rows =
        all N rows, before the update), so that the loss's token counts do not depend on the micro-batch split.
        ctx.logprobs and ctx.old_logprobs are both the old policy's (or the rollout's) log-probs, detached: no
        gradient flows through a weight. The trainer slices the result per micro-batch."""
        return None

    def extra_loss(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """Extra scalar loss terms (with grad) added to the micro-batch loss."""
        return {}

    def on_gradients(self, grads: GradView, state: StepState) -> None:
        """At the accumulation boundary, before clipping and the optimizer step; may scale grads in place."""
        return None

    def on_step_end(self, metrics: dict[str, float], state: StepState) -> dict[str, float]:
        """Return metrics to log under mod/<name>/."""
        return {}

    @classmethod
    def check_recipe(cls, recipe: Any, args: dict[str, Any]) -> None:
        """Refuse a recipe in which this modifier cannot do what it is for: raise ValueError saying why and what
        to change. Called with the recipe and this modifier's `args` by `rltune validate` and before training
        (rltune/families.py check_support); builds nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        return None
