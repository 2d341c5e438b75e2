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
import math
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
                 threads: int = 1, env_cfg: dict[str, Any] | None = None, decode: str = "loop",
                 vllm: dict[str, Any] | None = None):
        from rltune.models.policy import load_policy
        from rltune.rollout.hf_engine import HFEngine

        torch.set_num_threads(threads)
        cfg = ModelConfig.model_validate(model_cfg)
        # With LoRA the worker holds the frozen base plus the adapter; a sync sends only the adapter's tensors.
        self.lora = cfg.lora is not None
        model, tok = load_policy(cfg.model_copy(update={"gradient_checkpointing": False}), path=start_path, seed=seed,
                                 trainable=self.lora)
        model.requires_grad_(False).eval()
        self.vllm = vllm is not None
        if self.vllm:  # vLLM on this worker's GPU (rltune/rollout/vllm_engine.py); the HF copy only names the folder
            import tempfile

            from rltune.rollout.vllm_engine import VLLMEngine, model_dir_for

            opts = dict(vllm)
            max_new = opts.pop("max_new_tokens")
            folder = model_dir_for(start_path, cfg, model, tok, tempfile.mkdtemp(prefix="rltune-vllm-"))
            self.engine = VLLMEngine(folder, tok, max_prompt_tokens, max_new, seed, **opts)
            del model
        else:
            self.engine = HFEngine(model, tok, max_prompt_tokens, decode=decode)
        if env_cfg is not None:  # multi-turn episodes: this worker builds its own envs from the spec
            from rltune.config.schema import EnvSpec
            from rltune.rollout.multiturn import MultiTurnEngine

            self.engine = MultiTurnEngine(self.engine, EnvSpec.model_validate(env_cfg))

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        return self.engine.generate(prompts, params)

    def generate_timed(self, prompts: PromptBatch, params: SamplingParams) -> tuple[RolloutBatch, float, float]:
        """`generate` plus its wall-clock start and end (time.time()), for the overlap metrics of async runs."""
        import time

        t0 = time.time()
        batch = self.engine.generate(prompts, params)
        return batch, t0, time.time()

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> tuple[int, float]:
        """Load full weights (or the LoRA adapter's); returns (version, checksum of what the model now holds)."""
        if self.vllm:  # vLLM fuses layers under its own names: it checks that every parameter was written instead
            self.engine.load_state(state)
            self.engine.weight_version = version
            return version, checksum(state)
        model = self.engine.model
        if self.lora:
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            res = set_peft_model_state_dict(model, state)
            if res.unexpected_keys:
                raise RuntimeError(f"adapter sync: unexpected {res.unexpected_keys[:5]}")
            held = get_peft_model_state_dict(model)
        else:
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied lm_head may be absent
                raise RuntimeError(f"weight sync: missing {missing[:5]}, unexpected {unexpected[:5]}")
            held = model.state_dict()
        self.engine.weight_version = version
        return version, checksum({k: held[k] for k in state})

    def weight_version(self) -> int:
        return self.engine.weight_version

    def pid(self) -> int:
        import os

        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class RolloutPool:
    def __init__(self, model_cfg: ModelConfig, start_path: str | None, n_workers: int, seed: int,
                 max_prompt_tokens: int, pad_id: int, address: str | None = None, cpus_per_worker: float = 1.0,
                 threads_per_worker: int = 1, gpus_per_worker: float = 0.0, placement_group=None,
                 restart_timeout_s: float = 600.0, env=None, decode: str = "loop", vllm: dict | None = None):
        """`placement_group`: colocate worker k on bundle k of the training ranks' group (see TrainGroup)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": max(2, int(n_workers * cpus_per_worker) + 1)}))
        # Unlimited restarts: a long run may lose a worker many times; a worker that cannot come back is caught by
        # the retry deadline in _retry instead.
        actor = ray.remote(max_restarts=-1, max_task_retries=0)(RolloutWorker)
        args = (model_cfg.model_dump(mode="json"), start_path, seed, max_prompt_tokens, threads_per_worker,
                None if env is None else env.model_dump(mode="json"), decode, vllm)  # env: EnvSpec of multi-turn

        def options(k: int) -> dict:
            if placement_group is None:
                return {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
            share = placement_group.bundle_specs[k]
            return {"num_cpus": share.get("CPU", 0) / 2, "num_gpus": share.get("GPU", 0) / 2,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group, k)}

        self.workers = [actor.options(**options(k)).remote(*args) for k in range(n_workers)]
        self.pad_id = pad_id
        self.weight_version = 0
        self._weights_ref = None  # the last pushed weights, re-sent to a restarted worker
        self._sync_pending = None  # (version, checksum, refs) of a sync not yet checked (wait=False)
        self.restarts = 0
        self.restart_timeout_s = restart_timeout_s
        ray.get([w.weight_version.remote() for w in self.workers])  # fail early if a worker cannot start

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        return self.collect(self.submit(prompts, params))

    def submit(self, prompts: PromptBatch, params: SamplingParams) -> "Pending":
        """Start sampling `prompts` on the workers with the weights they hold now (version `weight_version`) and
        return at once. Ray runs one caller's calls to an actor in order, so a `sync` issued later reaches a worker
        only after this call: the batch is sampled with the version stamped here (async rollouts rely on it)."""
        shards = _shard(prompts, len(self.workers))
        seed = params.seed
        calls = {}
        for k, (w, shard) in enumerate(zip(self.workers, shards)):
            if len(shard):
                p = dataclasses.replace(params, seed=None if seed is None else seed + k)
                calls[k] = (w, shard, p, w.generate_timed.remote(shard, p))
        return Pending(calls, self.weight_version)

    def collect(self, pending: "Pending") -> RolloutBatch:
        """Wait for a submitted batch. Each row is stamped with the version of the weights that sampled it
        (`row_version`; a retried shard runs on the current weights, so it can be newer than the submission's)."""
        import ray

        self.finish_sync()
        out = {}
        for k, (w, shard, p, ref) in pending.calls.items():
            try:
                out[k], t0, t1 = ray.get(ref)
                pending.spans[k] = (t0, t1)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                # Died mid-call: Ray restarts it (max_restarts); wait for it, re-sync weights, retry the shard.
                log.warning("rollout worker %d died (%s); restarting it and retrying its shard", k, type(e).__name__)
                self.restarts += 1
                out[k] = self._retry(w, shard, p)
            if out[k].weight_version not in range(pending.version, self.weight_version + 1):
                # A worker restarted between calls comes back with its start weights: re-sync, sample again.
                log.warning("rollout worker %d had weights v%d, expected v%d; re-syncing", k, out[k].weight_version,
                            pending.version)
                self.restarts += 1
                out[k] = self._retry(w, shard, p)
        parts = [out[k] for k in sorted(out)]
        batch = concat_batches(parts, self.pad_id)
        rows = torch.cat([torch.full((len(b),), b.weight_version, dtype=torch.long) for b in parts])
        return dataclasses.replace(batch, weight_version=int(rows.min()), row_version=rows)

    def sync(self, model: torch.nn.Module, version: int, weights_ref=None, wait: bool = True) -> None:
        """Push the trainer's current weights to every worker and check that each now holds them (checksum).
        With LoRA only the adapter travels. `weights_ref`: weights already in Ray's object store (the training
        ranks put them there), else they are taken from `model`. `wait=False` returns at once: the workers load
        the weights after the calls already queued on them, and the check runs at the next collect or sync."""
        import ray

        self.finish_sync()
        if weights_ref is None:
            weights_ref = ray.put(_weights_of(model))
        self._weights_ref = weights_ref
        self.weight_version = version
        refs = [w.load_weights.remote(weights_ref, version) for w in self.workers]
        self._sync_pending = (version, checksum(ray.get(weights_ref)), refs)
        if wait:
            self.finish_sync()

    def finish_sync(self) -> None:
        """Check the last sync: every worker holds `version` with the expected checksum (retrying dead ones)."""
        import ray

        if self._sync_pending is None:
            return
        version, want, refs = self._sync_pending
        self._sync_pending = None
        for k, (w, ref) in enumerate(zip(self.workers, refs)):
            try:
                v, got = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                # Died while loading: Ray restarts it; load into the new process (the same path as a retried shard).
                log.warning("rollout worker %d died during weight sync (%s); restarting it", k, type(e).__name__)
                self.restarts += 1
                v, got = self._retry(w, None, None)
            if v != version or not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6):
                raise RuntimeError(f"weight sync: rollout worker {k} holds version {v} with checksum {got}, expected "
                                   f"version {version} with checksum {want}")

    def _retry(self, worker, shard: PromptBatch | None, params: SamplingParams | None, timeout_s: float | None = None):
        """Wait for a restarted worker, give it the current weights, then sample `shard` (or, with no shard, return
        what load_weights returned)."""
        import time

        import ray

        timeout_s = self.restart_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                loaded = None
                if self._weights_ref is not None:
                    loaded = ray.get(worker.load_weights.remote(self._weights_ref, self.weight_version))
                return loaded if shard is None else ray.get(worker.generate.remote(shard, params))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a rollout worker did not come back within {timeout_s:.0f}s after dying; "
                                       "check `ray status` and the worker logs under /tmp/ray") from None
                time.sleep(0.5)

    def nodes(self) -> list[str]:
        """The Ray node of each worker."""
        import ray

        return ray.get([w.node_id.remote() for w in self.workers])

    def versions(self) -> list[int]:
        import ray

        return ray.get([w.weight_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


@dataclasses.dataclass
class Pending:
    """A submitted batch: worker k's (worker, shard, params, object ref), and the weight version at submission."""

    calls: dict[int, tuple[Any, PromptBatch, SamplingParams, Any]]
    version: int
    spans: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)  # worker k's (start, end)


def _weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a sync sends: the LoRA adapter's tensors for a PEFT model, else the full state dict."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_synced_weights(model: torch.nn.Module, ref) -> None:
    """Load weights from Ray's object store into a model (the adapter's tensors for a PEFT model)."""
    import ray

    state = ray.get(ref)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def checksum(state: dict[str, torch.Tensor]) -> float:
    """A cheap fingerprint of a set of tensors (sum of all values in float64)."""
    return float(sum(float(v.double().sum()) for v in state.values()))


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
