"""Training ranks as Ray actors: one DeepSpeed engine per actor, placed with a placement group.

The driver (rltune/trainer.py) keeps the loop; `TrainGroup.update` sends the step's `UpdateInputs` to every rank,
each rank runs `run_update` on its slice of each mini-batch (rltune/train/update.py), and the ranks' metric sums
come back. After the update, rank 0 gathers the weights (all ZeRO-3 partitions, or only the LoRA adapter) into
Ray's object store; the driver and the rollout workers load them from there (rltune/rollout/pool.py).

Each actor builds its model from the recipe's ModelConfig and the same seed (no model object crosses processes),
and initialises torch.distributed itself: gloo on CPU, NCCL on GPU, rendezvous at rank 0's node.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class TrainRankDiedError(RuntimeError):
    pass


class TrainWorker:
    """Body of one Ray actor (rank `rank` of `world_size`)."""

    def __init__(self, recipe: dict[str, Any], start_path: str | None, rank: int, world_size: int,
                 master_addr: str, master_port: int, total_steps: int, threads: int = 1, base_dir: str = "."):
        from rltune.config.schema import Recipe
        from rltune.models.policy import load_policy
        from rltune.modifiers.pipeline import ModifierPipeline
        from rltune.train.deepspeed_engine import DeepSpeedEngine

        torch.set_num_threads(threads)
        r = Recipe.model_validate(recipe)
        c = r.cluster
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        import deepspeed

        backend = "nccl" if torch.cuda.is_available() and c.gpus_per_rank > 0 else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        self.rank, self.world_size = rank, world_size
        self.lora = r.model.lora is not None
        model, _ = load_policy(r.model, path=start_path, seed=r.run.seed)
        self.engine = DeepSpeedEngine(model, r.train, total_steps, c.zero_stage, c.offload_optimizer)
        # Loss-side hooks (extra_loss, on_gradients) run here, on rank-local instances built from the specs.
        self.mods = ModifierPipeline.from_specs(r.modifiers, base_dir=base_dir)
        self.micro = r.train.micro_batch_size
        # The reference model (a KL term without LoRA; with LoRA the base is the reference): replicated on each
        # rank under ZeRO-0/1/2, partitioned across the ranks under ZeRO-3 (DeepSpeed without an optimizer, as
        # for the policy's weights).
        self.ref = None
        if r.algo.kl_coef > 0:
            if self.lora:
                self.ref = "adapter_off"
            else:
                ref, _ = load_policy(r.model, path=r.sft.output_dir if r.starts_from_sft else None, seed=r.run.seed,
                                     trainable=False)
                self.ref = _frozen_engine(ref, c.zero_stage, world_size) if c.zero_stage == 3 else ref
                if c.zero_stage != 3 and backend == "nccl":
                    self.ref.to(self.engine.ds.device)
        # PPO's value model: its own DeepSpeed engine on every rank, trained on the rank's slice of each mini-batch.
        self.critic = None
        if r.critic is not None:
            from rltune.train.critic import Critic

            self.critic = Critic(r.critic, r.model, start_path, r.run.seed, self.micro, c.zero_stage,
                                 c.offload_optimizer)

    def update(self, x, plan, spec, state) -> dict[str, float]:
        from rltune.train.update import run_update

        if self.engine.ds.device.type != "cpu":
            x = x.to(self.engine.ds.device)
        return run_update(self.engine, self.mods, x, plan, spec, state, self.rank, self.world_size)

    def mods_step_end(self, state) -> dict[str, float]:
        """This rank's `mod/<name>/...` metrics of the modifiers whose hooks run here (extra_loss, on_gradients),
        and their hook timings: the driver's instances never see those hooks."""
        from rltune.modifiers.base import Modifier
        from rltune.modifiers.pipeline import ModifierPipeline

        here = [(n, m) for n, m in self.mods.mods if any(getattr(type(m), h) is not getattr(Modifier, h)
                                                          for h in ("extra_loss", "on_gradients"))]
        out = ModifierPipeline(here).on_step_end({}, state) if here else {}
        out.update(self.mods.timings)
        self.mods.timings.clear()
        return out

    def mods_state(self) -> dict[str, Any]:
        return self.mods.state_dict()

    def load_mods_state(self, sd: dict[str, Any]) -> None:
        self.mods.load_state_dict(sd)

    def score(self, input_ids, attention_mask, T: int, temperature: float, entropy: bool, kl: bool):
        """Old-policy log-probs (+ entropy) and reference log-probs of this rank's slice of the rows."""
        from rltune.train.scoring import score_rows

        return score_rows(self.engine.ds, self.ref if kl else None, input_ids, attention_mask, T, temperature,
                          entropy, self.micro, self.rank, self.world_size, always_split=self.engine.zero_stage == 3)

    def critic_values(self, input_ids, attention_mask, response_mask):
        return self.critic.values(input_ids, attention_mask, response_mask)

    def critic_update(self, input_ids, attention_mask, plan, old_values, returns, mask):
        return self.critic.update(input_ids, attention_mask, plan, old_values, returns, mask)

    def weights(self):
        """Rank 0: an object ref to the gathered weights (adapter only with LoRA); other ranks: None."""
        import ray

        sd = self.engine.full_state_dict(adapter_only=self.lora)
        return None if sd is None else [ray.put(sd)]

    def save(self, path: str) -> None:
        self.engine.save(Path(path))
        if self.critic is not None:
            self.critic.engine.save(Path(path) / "critic")

    def load(self, path: str) -> None:
        self.engine.load(Path(path))
        if self.critic is not None:
            self.critic.engine.load(Path(path) / "critic")

    def lr(self) -> float:
        return self.engine.lr

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()


class TrainGroup:
    """`world_size` DeepSpeed ranks in Ray actors. Same `update` signature as TorchEngine, plus weight gathering
    and sharded checkpoints. A rank that dies ends the run with TrainRankDiedError (the last checkpoint on disk is
    untouched); `rltune train --resume` continues from it."""

    def __init__(self, recipe, start_path: str | None, total_steps: int, placement_group=None,
                 bundle_offset: int = 0, base_dir: str | Path = "."):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        c = recipe.cluster
        self.world_size = c.train_ranks
        self.lora = recipe.model.lora is not None
        pg = placement_group or ray.util.placement_group(
            [{"CPU": c.cpus_per_rank, **({"GPU": c.gpus_per_rank} if c.gpus_per_rank else {})}] * c.train_ranks,
            strategy=c.placement_strategy)
        ray.get(pg.ready(), timeout=120)
        self.pg = pg
        actor = ray.remote(TrainWorker)
        # In colocated mode the rollout workers share these bundles, so each side asks for a fraction of them.
        share = 0.5 if c.placement == "colocated" and c.rollout_workers else 1.0
        opts = lambda k: dict(  # noqa: E731
            num_cpus=c.cpus_per_rank * share, num_gpus=c.gpus_per_rank * share, max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_offset + k))
        dump = recipe.model_dump(mode="json")
        # Rank 0 first: its node is the rendezvous address of torch.distributed.
        probe = ray.remote(_Rendezvous).options(**opts(0)).remote()
        addr, port = ray.get(probe.address.remote())
        ray.kill(probe)
        self.workers = [
            actor.options(**opts(k)).remote(dump, start_path, k, self.world_size, addr, port, total_steps,
                                            c.threads_per_rank, str(base_dir))
            for k in range(self.world_size)
        ]
        self._call("pid")  # every rank up (torch.distributed rendezvous done) before the first step
        self.nodes = self._call("node_id")  # Ray node of each rank

    def score(self, input_ids, attention_mask, T: int, temperature: float, entropy: bool, kl: bool):
        """Old-policy log-probs [N,T] (+ entropy) and reference log-probs scored on the ranks, each its slice."""
        import ray

        parts = self._call("score", ray.put(input_ids), ray.put(attention_mask), T, temperature, entropy, kl)
        cat = lambda i: torch.cat([p[i] for p in parts]) if parts[0][i] is not None else None  # noqa: E731
        return cat(0), cat(1), cat(2)

    @property
    def critic(self) -> "_RankCritic":
        return _RankCritic(self)

    def update(self, x, plan, spec, state, mods=None) -> dict[str, float]:
        """The step's optimizer steps on every rank (`mods` is unused: ranks build their own pipelines)."""
        import ray

        from rltune.train.update import finish_metrics

        ref = ray.put(x)
        out = finish_metrics(self._call("update", ref, plan, spec, state), len(plan))
        return out | self._call("mods_step_end", state)[0]   # rank 0's view of the rank-side modifiers

    def weights_ref(self):
        """Object ref of the gathered weights (the adapter only with LoRA), for the driver and rollout workers."""
        return self._call("weights")[0][0]

    def save(self, path: Path) -> None:
        self._call("save", str(path))

    def load(self, path: Path) -> None:
        self._call("load", str(path))

    @property
    def lr(self) -> float:
        return self._call("lr")[0]

    def state_dict(self) -> dict:
        # Optimizer and scheduler live in the sharded files; each rank's modifier instances (they run extra_loss
        # and on_gradients there) are saved here, one state per rank.
        return {"deepspeed": "deepspeed/", "rank_modifiers": self._call("mods_state")}

    def load_state_dict(self, sd: dict) -> None:
        """The ranks' modifier states (weights and optimizer come from the deepspeed/ folder: `load`)."""
        import ray

        if "rank_modifiers" in sd and len(sd["rank_modifiers"]) == len(self.workers):
            ray.get([w.load_mods_state.remote(s) for w, s in zip(self.workers, sd["rank_modifiers"])])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []
        ray.util.remove_placement_group(self.pg)

    def _call(self, method: str, *args) -> list:
        import ray

        try:
            return ray.get([getattr(w, method).remote(*args) for w in self.workers])
        except ray.exceptions.RayTaskError as e:
            from rltune.train.checkpoint import CheckpointError

            if isinstance(e.cause, CheckpointError):  # a refused checkpoint: its message, not Ray's traceback
                raise CheckpointError(str(e.cause)) from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            raise TrainRankDiedError(
                f"a training rank died during `{method}` ({type(e).__name__}). The run stops here: the last checkpoint "
                "on disk is intact; `rltune train <recipe> --resume` continues from it. Check the rank's log under "
                "/tmp/ray/session_latest/logs (out of memory is the usual cause: lower train.micro_batch_size or "
                "raise cluster.zero_stage)."
            ) from None


class _RankCritic:
    """The critic's interface (rltune/train/critic.py) for a critic that lives on the training ranks."""

    def __init__(self, group: TrainGroup):
        self.group = group

    def values(self, input_ids, attention_mask, response_mask) -> torch.Tensor:
        import ray

        refs = [ray.put(t) for t in (input_ids, attention_mask, response_mask)]
        return torch.cat(self.group._call("critic_values", *refs))

    def update(self, input_ids, attention_mask, plan, old_values, returns, mask) -> list[dict[str, float]]:
        import ray

        refs = [ray.put(t) for t in (input_ids, attention_mask, old_values, returns, mask)]
        return self.group._call("critic_update", refs[0], refs[1], plan, *refs[2:])

    def state_dict(self) -> dict:
        return {"deepspeed": "deepspeed/critic/"}  # weights and optimizer live in the ranks' sharded files

    def load_state_dict(self, sd: dict) -> None:
        pass  # loaded with the policy's shards (TrainGroup.load)


def _frozen_engine(model, zero_stage: int, world_size: int):
    """A model partitioned across the ranks for inference only (ZeRO-3 without an optimizer)."""
    import deepspeed

    cfg = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": world_size,
           "zero_optimization": {"stage": zero_stage}, "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()
    return engine


class _Rendezvous:
    """Runs where rank 0 will: its node's address and a port free there."""

    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]
