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

    def update(self, x, plan, spec, state) -> dict[str, float]:
        from rltune.train.update import run_update

        if self.engine.ds.device.type != "cpu":
            x = x.to(self.engine.ds.device)
        return run_update(self.engine, self.mods, x, plan, spec, state, self.rank, self.world_size)

    def weights(self):
        """Rank 0: an object ref to the gathered weights (adapter only with LoRA); other ranks: None."""
        import ray

        sd = self.engine.full_state_dict(adapter_only=self.lora)
        return None if sd is None else [ray.put(sd)]

    def save(self, path: str) -> None:
        self.engine.save(Path(path))

    def load(self, path: str) -> None:
        self.engine.load(Path(path))

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

    def update(self, x, plan, spec, state, mods=None) -> dict[str, float]:
        """The step's optimizer steps on every rank (`mods` is unused: ranks build their own pipelines)."""
        import ray

        from rltune.train.update import finish_metrics

        ref = ray.put(x)
        return finish_metrics(self._call("update", ref, plan, spec, state), len(plan))

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
        return {"deepspeed": "deepspeed/"}  # optimizer and scheduler live in the sharded files

    def load_state_dict(self, sd: dict) -> None:
        pass  # loaded from the checkpoint's deepspeed/ folder by the trainer (load)

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
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            raise TrainRankDiedError(
                f"a training rank died during `{method}` ({type(e).__name__}). The run stops here: the last checkpoint "
                "on disk is intact; `rltune train <recipe> --resume` continues from it. Check the rank's log under "
                "/tmp/ray/session_latest/logs (out of memory is the usual cause: lower train.micro_batch_size or "
                "raise cluster.zero_stage)."
            ) from None


class _Rendezvous:
    """Runs where rank 0 will: its node's address and a port free there."""

    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]
