"""DeepSpeed ZeRO (stage 0/1/2/3, optional CPU offload) behind the same surface as `TorchEngine`.

One instance lives on each data-parallel rank (rltune/train/worker.py starts them in Ray actors). torch.distributed
must already be initialised (gloo on CPU, NCCL on GPU). The optimizer is torch's AdamW with the same schedule as
the single-process engine, so a sharded run and an unsharded one take the same steps (tested to float tolerance).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rltune.config.schema import TrainConfig
from rltune.modifiers.base import GradView
from rltune.train.checkpoint import CheckpointError
from rltune.train.packing import use_packing
from rltune.train.torch_engine import autocast, lr_schedule, response_logprobs


def ds_config(cfg: TrainConfig, zero_stage: int, offload: bool, world_size: int, bf16: bool = False) -> dict:
    zero: dict = {"stage": zero_stage}
    if zero_stage == 3:
        # Gathering a 16-bit copy on save is what export and weight sync read under ZeRO-3.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload and zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        # rltune splits micro-batches itself and marks the accumulation boundary (set_boundary), so DeepSpeed
        # neither rescales the loss nor steps early.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": cfg.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,   # torch AdamW: the same optimizer as the single-process engine
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int, zero_stage: int = 2,
                 offload: bool = False):
        import deepspeed

        self.cfg, self.zero_stage = cfg, zero_stage
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (check model.lora / frozen layers)")
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg, total_steps))
        self.world_size = dist.get_world_size()
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched,
            config=ds_config(cfg, zero_stage, offload, self.world_size))
        self.model = self.ds.module
        self._boundary = True
        self.ds.train()

    # -- the TorchEngine surface used by rltune/train/update.py
    def forward(self, input_ids, attention_mask, response_len, temperature=1.0, entropy=False, entropy_grad=False):
        with autocast(self.cfg.autocast, next(self.model.parameters()).device):
            return response_logprobs(self.ds, input_ids, attention_mask, response_len, temperature, entropy,
                                     entropy_grad, always_split=self.zero_stage == 3,
                                     pack=use_packing(self.cfg.padding_free, self.ds))

    def set_boundary(self, is_last_micro_batch: bool) -> None:
        self._boundary = is_last_micro_batch
        self.ds.set_gradient_accumulation_boundary(is_last_micro_batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)
        if not self._boundary:
            self.ds.step()  # a non-boundary step only advances DeepSpeed's micro-step counter

    def zero_loss(self) -> torch.Tensor:
        # A rank without rows must still run backward: ZeRO's gradient reduction is collective.
        return sum(p.sum() * 0.0 for p in self.ds.module.parameters() if p.requires_grad)

    def named_parameters(self):
        return [(n, p) for n, p in self.ds.module.named_parameters() if p.requires_grad]

    def grad_view(self) -> GradView:
        return _ZeroGradView(self.named_parameters())

    def grads_finite(self) -> bool:
        # Under ZeRO-2/3 the local gradients are partitions inside the optimizer; the loss check in run_update plus
        # the all-reduce in all_finite cover the ranks, and DeepSpeed's global norm catches the rest at step().
        return all(torch.isfinite(p.grad).all() for _, p in self.named_parameters() if p.grad is not None)

    def all_finite(self, local: bool) -> bool:
        flag = torch.tensor([0.0 if local else 1.0])
        dist.all_reduce(flag)
        return float(flag) == 0.0

    def step(self) -> float:
        """Clip (DeepSpeed's gradient_clipping), optimizer step, zero grads, schedule; pre-clip global norm."""
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def skip_step(self) -> None:
        self.ds.zero_grad()
        self.ds.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # -- weights and checkpoints
    def full_state_dict(self, adapter_only: bool = False) -> dict[str, torch.Tensor] | None:
        """The full (gathered) weights on rank 0, None elsewhere. Collective: every rank must call it.
        `adapter_only`: only the LoRA adapter's tensors (what the rollout workers need to sync)."""
        model = self.ds.module
        params = list(model.parameters())
        if self.zero_stage == 3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        else:
            import contextlib

            ctx = contextlib.nullcontext()
        with ctx:
            if dist.get_rank() != 0:
                return None
            if adapter_only:
                from peft import get_peft_model_state_dict

                sd = get_peft_model_state_dict(model)
            else:
                sd = model.state_dict()
            return {k: v.detach().clone().cpu() for k, v in sd.items()}

    def save(self, path: Path) -> None:
        """DeepSpeed's sharded checkpoint (weights, optimizer partitions, scheduler) into `path`. Collective."""
        self.ds.save_checkpoint(str(path), tag="ds")

    def load(self, path: Path) -> None:
        # DeepSpeed reads its shards with torch.load(weights_only=False): a tampered shard would run code on
        # --resume. Read them with weights_only=True instead, allowing only the DeepSpeed types they hold.
        plain = self.ds.checkpoint_engine
        self.ds.checkpoint_engine = _WeightsOnlyLoads(plain)
        try:
            self.ds.load_checkpoint(str(path), tag="ds")
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"--resume: a DeepSpeed shard under {path} holds more than tensors and DeepSpeed's "
                                  f"state types, so it was not loaded (a pickle can run code): {str(e)[:300]}"
                                  ) from None
        finally:
            self.ds.checkpoint_engine = plain
        # The recipe's lr wins over the checkpoint's, as in the single-process engine.
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]


class _WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine with a load() that cannot run code (torch.load(weights_only=True))."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        from rltune.train.state_io import allow_globals

        with allow_globals([fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]):
            return torch.load(path, map_location=map_location, weights_only=True)


class _ZeroGradView(GradView):
    """Gradients by name under ZeRO: full gradients gathered with DeepSpeed's safe accessors (every rank sees
    the same values), written back with safe_set_full_grad when a modifier rescales them."""

    def items(self):
        from deepspeed.utils import safe_get_full_grad

        for n, p in self._params_all:
            g = safe_get_full_grad(p)
            if g is not None:
                yield n, g

    def __init__(self, named_params):
        super().__init__(named_params)
        self._params_all = list(named_params)

    def global_norm(self) -> float:
        sq = sum((g.detach().float().pow(2).sum() for _, g in self.items()), torch.zeros(()))
        return float(sq.sqrt())

    def scale_(self, factor: float) -> None:
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        for _, p in self._params_all:
            g = safe_get_full_grad(p)
            if g is not None:
                safe_set_full_grad(p, g * factor)
