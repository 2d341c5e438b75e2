"""The training-engine protocol of the text trainer and the engines that implement it, and `build_engines`, which
picks the training and rollout engines a recipe's `cluster:` and `rollout:` sections ask for.

    TrainingEngine   LocalEngine (TorchEngine in this process) | TrainGroup (DeepSpeed ZeRO ranks in Ray actors)
    RolloutEngine    HFEngine (+ MultiTurnEngine for env:) | VLLMEngine | RolloutPool (Ray rollout workers)

The trainer calls only the protocols' methods, so it never asks which engine it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rltune.rollout.base import RolloutEngine
from rltune.train.scoring import score_rows
from rltune.train.torch_engine import TorchEngine

__all__ = ["TrainingEngine", "LocalEngine", "Engines", "build_engines", "describe_engines"]


@runtime_checkable
class TrainingEngine(Protocol):
    nodes: list[str]               # where the engine's ranks run (empty: this process)

    def update(self, x: Any, plan: list[torch.Tensor], spec: Any, state: Any, mods: Any) -> dict[str, float]:
        """The step's optimizer steps (rltune/train/update.py: run_update) -> metrics."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, T: int, temperature: float,
              entropy: bool, kl: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """No-grad old-policy log-probs [N,T], entropy [N,T] or None, reference log-probs [N,T] or None."""

    def weights_ref(self) -> Any | None:
        """The new weights for this process's copy and the rollout workers, or None when they are shared."""

    def save(self, path: Path) -> None: ...          # engine-owned checkpoint files (sharded state), if any
    def load(self, path: Path) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, sd: dict) -> None: ...
    def shutdown(self) -> None: ...


class LocalEngine(TorchEngine):
    """The policy's TorchEngine in this process, with what the protocol adds: scoring with the policy and the
    reference (a frozen copy, or the LoRA base with its adapter off), weights shared with the in-process rollout,
    optimizer state in the trainer's checkpoint."""

    nodes: list[str] = []

    def __init__(self, model: torch.nn.Module, ref_model: torch.nn.Module | None, cfg: Any, total_steps: int,
                 forward: Any = None):
        super().__init__(model, cfg, total_steps, forward)
        self.ref_model = ref_model

    def score(self, input_ids, attention_mask, T, temperature, entropy, kl):
        """With a family forward (VAR) scoring runs it; a causal LM is scored by response_logprobs in full
        precision, unpacked (rltune/train/scoring.py)."""
        ref = (self.ref_model if self.ref_model is not None else "adapter_off") if kl else None
        return score_rows(self.model, ref, input_ids, attention_mask, T, temperature, entropy,
                          min(self.cfg.micro_batch_size, len(input_ids)), forward=self.forward_fn)

    def weights_ref(self) -> None:
        return None

    def save(self, path: Path) -> None:
        return None

    def load(self, path: Path) -> None:
        return None

    def shutdown(self) -> None:
        return None


@dataclass
class Engines:
    train: TrainingEngine
    rollout: RolloutEngine


def build_engines(r: Any, model: torch.nn.Module, tok: Any, ref_model: torch.nn.Module | None,
                  actor_start: str | None, resume_from: Path | None, base_dir: Path, run_dir: Path) -> Engines:
    """The training engine (DeepSpeed ranks with cluster.train_ranks, else this process) and the rollout engine
    (Ray workers with cluster.rollout_workers, vLLM with rollout.engine=vllm, else transformers.generate, wrapped
    for multi-turn episodes with env:). Actors build from `actor_start`, a stable folder, and then receive the
    current weights."""
    c = r.cluster
    if c.rollout_workers or c.train_ranks:
        from rltune.cluster import ensure_ray

        ensure_ray(c)
    total = r.run.steps * r.algo.updates_per_step
    if c.train_ranks:  # DeepSpeed ZeRO ranks in Ray actors; this process keeps a synced copy for rollout/eval
        from rltune.train.worker import TrainGroup

        engine: TrainingEngine = TrainGroup(r, actor_start, total, base_dir=base_dir)
        if resume_from is not None:  # sharded weights, optimizer state and scheduler (policy and critic)
            engine.load(resume_from / "deepspeed")
    else:
        engine = LocalEngine(model, ref_model, r.train, total)
    return Engines(engine, _rollout_engine(r, model, tok, actor_start, engine, base_dir, run_dir))


def _rollout_engine(r: Any, model, tok, actor_start, engine, base_dir: Path, run_dir: Path) -> RolloutEngine:
    c = r.cluster
    if c.rollout_workers:
        from rltune.rollout.pool import RolloutPool

        pg = engine.pg if c.train_ranks and c.placement == "colocated" else None
        return RolloutPool(r.model, actor_start, c.rollout_workers, r.run.seed, r.data.max_prompt_tokens,
                           tok.pad_token_id, c.address, c.cpus_per_worker, c.threads_per_worker, c.gpus_per_worker,
                           placement_group=pg, env=r.env, restart_timeout_s=c.worker_restart_timeout_s,
                           decode=r.rollout.decode,
                           vllm=(r.rollout.vllm.model_dump() | {"max_new_tokens": r.rollout.max_new_tokens}
                                 if r.rollout.engine == "vllm" else None))
    if r.rollout.engine == "vllm":  # vLLM in this process, next to the trainer (rltune/rollout/vllm_engine.py)
        from rltune.rollout.vllm_engine import VLLMEngine, model_dir_for

        rollout = VLLMEngine(model_dir_for(actor_start, r.model, model, tok, run_dir), tok, r.data.max_prompt_tokens,
                             r.rollout.max_new_tokens, r.run.seed, **r.rollout.vllm.model_dump())
        rollout.sync(model, 0)  # the current weights (a resumed run's, not the folder's)
        return rollout
    from rltune.rollout.hf_engine import HFEngine

    rollout = HFEngine(model, tok, r.data.max_prompt_tokens, decode=r.rollout.decode)
    if r.env is not None:  # multi-turn agent episodes (docs/agents.md)
        from rltune.rollout.multiturn import MultiTurnEngine

        rollout = MultiTurnEngine(rollout, r.env, base_dir=base_dir)
    return rollout


def describe_engines(r: Any) -> str:
    """Where rollout and training run, for the start summary: e.g. "rollout in 2 Ray workers (vllm) + DeepSpeed
    ZeRO-3 on 4 Ray training ranks (this process keeps a synced copy)"."""
    c, kind = r.cluster, r.rollout.engine
    rollout = (f"rollout in {c.rollout_workers} Ray workers ({kind})" if c.rollout_workers
               else f"in-process rollout ({kind})" if r.model.kind == "causal_lm" else "in-process rollout")
    if c.train_ranks:
        return (f"{rollout} + DeepSpeed ZeRO-{c.zero_stage} on {c.train_ranks} Ray training ranks (this process keeps "
                "a synced copy)")
    return f"{rollout} + torch engine in this process"
