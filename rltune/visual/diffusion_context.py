"""The typed contexts that diffusion modifiers (AlignProp, Direct-Align, DDPO) receive in `extra_loss` and
`shape_advantages` from the diffusion trainer. It carries a handle to the policy (to re-run denoising steps *with* gradient) and the
differentiable reward, never the trainer (a hook sees what it needs, nothing to mutate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from rltune.models.diffusion import DiffusionPolicy, Rollout
from rltune.modifiers.base import StepState


@dataclass(frozen=True)
class DiffusionLossContext:
    """One micro-batch of n of the step's N samples. Tensors are detached; gradients come only from calls on
    `policy` (resume / predict / decode) and `reward_fn`."""

    rows: Tensor                                   # [n] indices into the step's N samples
    rollout: Rollout                               # the n rows of the no-grad rollout (latents [T+1,n,...])
    policy: DiffusionPolicy                        # handle: resume(), predict(), decode(), num_steps, kind
    reward_fn: Callable[[Tensor, list[str]], Tensor]  # Σ_k w_k·R_k(images [n,3,H,W], prompts) -> [n], with grad
    scorers: tuple                                 # text-image scorers among the rewards (SRPO's relative reward)
    raw_rewards: Tensor                            # [n] rewards of the rollout images (no grad)
    state: StepState
    total_rows: int                                # N: a term sums its per-row losses and divides by N
    advantages: Tensor | None = None               # [n,T] per denoising step (algo.advantage), for ddpo
    epoch: int = 0                                 # inner epoch (algo.ppo_epochs) of this update


@dataclass(frozen=True)
class DiffusionAdvantageContext:
    """What `shape_advantages` sees in the diffusion step (DDPO's per-prompt statistics): the whole batch."""

    prompts: list[str]                             # [N] prompt of each image
    raw_rewards: Tensor                            # [N] (NaN = unscorable)
    group_id: Tensor                               # [N] the G images of one prompt share an id
    state: StepState
