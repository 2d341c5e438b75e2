"""Rollout workers as Ray actors: prompts sharded across N workers, results gathered in order, every batch
stamped with the weight version that sampled it, weights pushed after each update.

Each worker builds its own model from the recipe's `ModelConfig` (no model object is pickled across processes)
and runs the same `HFEngine` as the in-process path. Shard k of a call is sampled with seed `seed + k`, so a
pool's output equals the in-process engine run on the same shards with the same seeds (tested).
A worker that dies is restarted by Ray; the pool pushes the current weights to it again and retries its shard.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from rltune.config.schema import ModelConfig
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.rollout.base import SamplingParams
from rltune.rollout.dynamic import concat_batches

log = logging.getLogger(__name__)


class RolloutWorker:
    """Body of one Ray actor (also usable in-process for tests)."""

    def __init__(self, model_cfg: dict[str, Any], start_path: str | None, seed: int, max_prompt_tokens: int,
                 threads: int = 1):
        from rltune.models.policy import load_policy
        from rltune.rollout.hf_engine import HFEngine

        torch.set_num_threads(threads)
        cfg = ModelConfig.model_validate(model_cfg)
        # Workers sample from the merged policy: a LoRA adapter is folded in by the trainer before each sync.
        cfg = cfg.model_copy(update={"lora": None, "gradient_checkpointing": False})
        model, tok = load_policy(cfg, path=start_path, seed=seed, trainable=False)
        self.engine = HFEngine(model, tok, max_prompt_tokens)

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        return self.engine.generate(prompts, params)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        missing, unexpected = self.engine.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied lm_head may be absent
            raise RuntimeError(f"weight sync: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.engine.weight_version = version
        return version

    def weight_version(self) -> int:
        return self.engine.weight_version

    def pid(self) -> int:
        import os

        return os.getpid()


class RolloutPool:
    def __init__(self, model_cfg: ModelConfig, start_path: str | None, n_workers: int, seed: int,
                 max_prompt_tokens: int, pad_id: int, address: str | None = None, cpus_per_worker: float = 1.0,
                 threads_per_worker: int = 1):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": max(2, int(n_workers * cpus_per_worker) + 1)}))
        actor = ray.remote(num_cpus=cpus_per_worker, max_restarts=3, max_task_retries=0)(RolloutWorker)
        args = (model_cfg.model_dump(mode="json"), start_path, seed, max_prompt_tokens, threads_per_worker)
        self.workers = [actor.remote(*args) for _ in range(n_workers)]
        self.pad_id = pad_id
        self.weight_version = 0
        self._weights_ref = None  # the last pushed weights, re-sent to a restarted worker
        self.restarts = 0
        ray.get([w.weight_version.remote() for w in self.workers])  # fail early if a worker cannot start

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        import ray

        shards = _shard(prompts, len(self.workers))
        seed = params.seed
        calls = {}
        for k, (w, shard) in enumerate(zip(self.workers, shards)):
            if len(shard):
                p = dataclasses.replace(params, seed=None if seed is None else seed + k)
                calls[k] = (w, shard, p, w.generate.remote(shard, p))
        out = {}
        for k, (w, shard, p, ref) in calls.items():
            try:
                out[k] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                # Died mid-call: Ray restarts it (max_restarts); wait for it, re-sync weights, retry the shard.
                log.warning("rollout worker %d died (%s); restarting it and retrying its shard", k, type(e).__name__)
                self.restarts += 1
                out[k] = self._retry(w, shard, p)
            if out[k].weight_version != self.weight_version:
                # A worker restarted between calls comes back with its start weights: re-sync, sample again.
                log.warning("rollout worker %d had weights v%d, expected v%d; re-syncing", k, out[k].weight_version,
                            self.weight_version)
                self.restarts += 1
                out[k] = self._retry(w, shard, p)
        batch = concat_batches([out[k] for k in sorted(out)], self.pad_id)
        return dataclasses.replace(batch, weight_version=self.weight_version)

    def sync(self, model: torch.nn.Module, version: int) -> None:
        """Push the trainer's current weights (merged when LoRA is on) to every worker."""
        import ray

        if hasattr(model, "merge_and_unload"):  # PEFT: send base + adapter folded together
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        self._weights_ref = ray.put(state)
        self.weight_version = version
        ray.get([w.load_weights.remote(self._weights_ref, version) for w in self.workers])

    def _retry(self, worker, shard: PromptBatch, params: SamplingParams, timeout_s: float = 120.0) -> RolloutBatch:
        import time

        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._weights_ref is not None:
                    ray.get(worker.load_weights.remote(self._weights_ref, self.weight_version))
                return ray.get(worker.generate.remote(shard, params))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a rollout worker did not come back within {timeout_s:.0f}s after dying; "
                                       "check `ray status` and the worker logs under /tmp/ray") from None
                time.sleep(0.5)

    def versions(self) -> list[int]:
        import ray

        return ray.get([w.weight_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


def _shard(prompts: PromptBatch, n: int) -> list[PromptBatch]:
    """n contiguous, near-equal slices of the prompts (order is kept when the results are concatenated)."""
    B = len(prompts)
    bounds = [round(i * B / n) for i in range(n + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out.append(PromptBatch(
            prompts=prompts.prompts[lo:hi],
            meta={k: v[lo:hi] for k, v in prompts.meta.items()},
            hints=None if prompts.hints is None else prompts.hints[lo:hi],
        ))
    return out
