"""The text causal-LM policy family (model.kind: causal_lm): a transformers model and its tokenizer, rolled out by
transformers.generate, vLLM or Ray workers (rltune/train/engines.py), trained in this process or on DeepSpeed
ranks, with PPO's critic when algo.advantage is gae. An agent is this family with a multi-turn env rollout engine
(rltune/rollout/multiturn.py, docs/agents.md): its rows carry per-turn token rewards in batch.extras."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rltune.config.schema import Recipe
from rltune.data.batch import RolloutBatch
from rltune.families import TEXT
from rltune.models.policy import load_policy, resolve_device
from rltune.reward import RewardInput, RewardResult
from rltune.train.critic import Critic
from rltune.train.engines import build_engines
from rltune.train.family import StepTensors
from rltune.train.loop import RunDirError
from rltune.train.shared import check_positions, greedy_eval, reward_input, step_metrics, text_eval_rows
from rltune.train.torch_engine import text_forward

__all__ = ["TextFamily"]


class TextFamily:
    """rltune.train.family.PolicyFamily for causal LMs."""

    manifest = TEXT

    def __init__(self, r: Recipe, base_dir: Path, resume_from: Path | None):
        self.r, self.base_dir = r, base_dir
        # Policy: a checkpoint when resuming, else the SFT warm start, else model.path / model.tiny.
        start = None
        if r.starts_from_sft:
            start = r.sft.output_dir
            if not (Path(start) / "config.json").is_file():
                raise RunDirError(f"no SFT model at {start}: run `rltune sft <recipe>` first (recipe has an sft: section)")
        # Actors build from this stable start (a resume checkpoint may be pruned before a worker restarts) and
        # then receive the current weights (sync, or the ranks' sharded checkpoint).
        self.actor_start = start
        if resume_from is not None and r.model.lora is None:
            start = str(resume_from / "model")
        self.device = resolve_device(r.run.device)
        self.model, self.tokenizer = load_policy(r.model, path=start, seed=r.run.seed)
        self.model.to(self.device)
        if resume_from is not None and r.model.lora is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(resume_from / "model" / "adapter_model.safetensors"))
        self.start_path = start
        # The reference model exists only when a KL term needs it (kl_coef > 0); with LoRA the base is the ref.
        # With training ranks the reference model lives on the ranks (sharded like the policy under ZeRO-3).
        self.ref_model = None
        if r.algo.kl_coef > 0 and r.model.lora is None and not r.cluster.train_ranks:
            self.ref_model, _ = load_policy(r.model, path=r.sft.output_dir if r.starts_from_sft else None,
                                            seed=r.run.seed, trainable=False)
            self.ref_model.to(self.device)
        self.eval_rows = text_eval_rows(r.data, self.tokenizer, base_dir)
        self.critic = None

    def check_prompts(self, prompts: list[str]) -> None:
        check_positions(self.r, self.model, self.tokenizer, prompts,
                        self.eval_rows["prompts"] if self.eval_rows is not None else [])

    def start(self, resume_from: Path | None, run_dir: Path) -> None:
        r = self.r
        # Training engine (this process, or DeepSpeed ranks) and rollout engine (in-process, vLLM, Ray workers,
        # multi-turn env episodes): the trainer uses only their protocols (rltune/train/engines.py).
        engines = build_engines(r, self.model, self.tokenizer, self.ref_model, self.actor_start, resume_from,
                                self.base_dir, run_dir)
        self.engine, self.rollout = engines.train, engines.rollout
        # PPO's value model (algo.advantage=gae) starts from the policy's starting model unless critic.path/tiny.
        # On training ranks it is a DeepSpeed engine there too (TrainGroup.critic, same interface).
        if r.critic is not None:
            self.critic = (self.engine.critic if r.cluster.train_ranks else
                           Critic(r.critic, r.model, self.start_path, r.run.seed, r.train.micro_batch_size))

    @property
    def response_budget(self) -> int:
        return self.r.rollout.max_new_tokens

    def reward_input(self, batch: RolloutBatch, step: int) -> RewardInput:
        return reward_input(batch, step)

    def on_rewards(self, batch: RolloutBatch, result: RewardResult) -> None:
        return None

    def update_rows(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.input_ids, batch.attention_mask

    def forward(self, model, input_ids, attention_mask, response_len, temperature=1.0, entropy=False,
                entropy_grad=False):
        """The training engines' own forward (rltune/train/torch_engine.py: text_forward)."""
        return text_forward(model, self.r.train, input_ids, attention_mask, response_len, temperature, entropy,
                            entropy_grad)

    def step_metrics(self, batch, result, raw, rewards, s: StepTensors) -> dict[str, Any]:
        return step_metrics(batch, result, raw, rewards, s.advantages, self.r.rollout.samples_per_prompt)

    def describe(self, batch: RolloutBatch, i: int) -> dict[str, Any]:
        return {"prompt": batch.prompts[i], "completion": batch.completions[i]}

    def evaluate(self, rows, rewards, sampling, step: int) -> dict[str, float]:
        """Greedy completions on the held-out rows (`sampling` is greedy)."""
        return greedy_eval(self.rollout, rewards, rows, sampling, self.r.rewards, step)

    def save_model(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def export(self, out: Path) -> None:
        """A servable Hugging Face folder: LoRA adapters are merged into a copy of the base."""
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if self.r.model.lora is not None:
            import copy

            model = copy.deepcopy(self.model).merge_and_unload()
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
