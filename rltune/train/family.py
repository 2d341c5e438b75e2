"""The policy-family protocol: the per-family pieces that one `Trainer.train_step` (rltune/trainer.py) drives.

    rollout -> rewards -> shape_rewards -> (old log-probs) -> advantages -> shape_advantages -> token_weights
            -> run_update (critic first with PPO) -> sync -> metrics

is the same step for every token policy; a family says how its rows are sampled, scored, fed to the model, logged,
evaluated and saved. Two implement it: the text causal LM (rltune/train/text_family.py; an agent is that family
with a multi-turn env rollout engine) and VAR (rltune/visual/var_trainer.py). Diffusion keeps its own step (its
reward is backpropagated through the sampler, docs/concepts.md) and uses the shared engine and helpers only.
What each family honours is its support manifest (rltune/families.py), checked before anything is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from rltune.data.batch import RolloutBatch
from rltune.families import SupportManifest
from rltune.reward import RewardInput, RewardResult
from rltune.rollout.base import RolloutEngine

__all__ = ["PolicyFamily", "StepTensors"]


@dataclasses.dataclass
class StepTensors:
    """What the advantage phase hands the update: [N,T] tensors (None when the step does not need them)."""

    advantages: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None       # response mask & modifier masks (& not truncated)
    weight: torch.Tensor | None = None          # modifier token weights
    old_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None          # critic (PPO)
    returns: torch.Tensor | None = None
    kl_tok: torch.Tensor | None = None          # per-token KL of the rollout policy to the reference


@runtime_checkable
class PolicyFamily(Protocol):
    """One policy family (model.kind) as the Trainer sees it. Built in two phases: the constructor
    `(recipe, base_dir, resume_from)` loads the policy (and the frozen reference when a KL term needs one), its
    tokenizer and the held-out rows; `start` builds the engines once the run directory is claimed."""

    manifest: ClassVar[SupportManifest]   # hooks it calls, capabilities it provides, recipe keys it honours
    model: torch.nn.Module                # the policy this process holds (rollout, eval, export)
    ref_model: torch.nn.Module | None
    tokenizer: Any | None                 # for the prompt loader (None: prompts are not tokenized)
    eval_rows: Any | None                 # the held-out rows evaluate() reads, or None
    engine: Any                           # TrainingEngine (rltune/train/engines.py); set by start()
    rollout: RolloutEngine                # generate(prompts, sampling) -> RolloutBatch; set by start()
    critic: Any | None                    # PPO's value model, or None

    def check_prompts(self, prompts: list[str]) -> None:
        """Fail before the first step when a training prompt cannot be rolled out (e.g. too long)."""

    def start(self, resume_from: Path | None, run_dir: Path) -> None:
        """Build the training and rollout engines (and the critic); resume their weights from `resume_from`."""

    @property
    def response_budget(self) -> int:
        """Response tokens a row can have: algo.loss_scale_constant's default (seq-mean-token-sum-norm)."""

    def reward_input(self, batch: RolloutBatch, step: int) -> RewardInput:
        """The rewards' view of the batch (text completions, or decoded images)."""

    def on_rewards(self, batch: RolloutBatch, result: RewardResult) -> None:
        """Put what the rewards returned for modifiers into `batch.extras` (e.g. VAR's boxes), or nothing."""

    def update_rows(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows the training engine's forward reads: (input_ids [N,·], attention_mask [N,·])."""

    def forward(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_len: int, temperature: float = 1.0, entropy: bool = False,
                entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [n,T] of the rows' T response tokens under `model` (+ entropy [n,T] or None): what
        scoring (old/reference log-probs) and the update differentiate."""

    def step_metrics(self, batch: RolloutBatch, result: RewardResult, raw: torch.Tensor, rewards: torch.Tensor,
                     s: StepTensors) -> dict[str, Any]:
        """The step's reward/rollout metrics (the update adds its own)."""

    def describe(self, batch: RolloutBatch, i: int) -> dict[str, Any]:
        """Row i for the run report's best/worst samples."""

    def evaluate(self, rows: Any, rewards: Any, sampling: Any, step: int) -> dict[str, float]:
        """Held-out metrics of `rows`; `eval/accuracy` is the first reward's mean."""

    def save_model(self, path: Path) -> None: ...          # the weights a checkpoint resumes from
    def export(self, out: Path) -> None: ...               # the servable final model
