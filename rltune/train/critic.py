"""PPO's critic: a value model with its own AdamW, scored and updated beside the policy.

The trainer asks for `values(...)` [N,T] before the advantage (GAE), then `update(...)` on the same mini-batch
plan as the policy (ppo_epochs × mini_batches optimizer steps); each mini-batch's clipped value loss is normalised
by that mini-batch's token count, so micro-batching does not change the update.

The optimizer side is a training engine (rltune/train/torch_engine.py in one process; a DeepSpeed ZeRO engine
on each training rank, rltune/train/worker.py). On a rank the critic scores and trains on that rank's slice of
the rows, exactly as the policy update does (rltune/train/update.py), so sharded equals unsharded.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import torch

from rltune.algo import value_loss
from rltune.config.schema import CriticConfig, ModelConfig, TrainConfig
from rltune.models.value import load_value_model
from rltune.ops import masked_mean, masked_var
from rltune.train.scoring import rank_micro_batches
from rltune.train.update import CRITIC_KEYS, accumulate_steps, micro_batches

# Partial sums on each rank (add them up) vs. values every rank agrees on (take rank 0's).
_GLOBAL = ("critic/grad_norm", "critic/skipped_steps")


class Critic:
    def __init__(self, cfg: CriticConfig, model_cfg: ModelConfig, start: str | None, seed: int, micro_batch_size: int,
                 zero_stage: int | None = None, offload: bool = False):
        """`start` is the policy's starting model (SFT output or model.path; None = built from model.tiny).
        `zero_stage` None: one process; else this rank's DeepSpeed engine (torch.distributed initialised)."""
        self.cfg, self.micro = cfg, micro_batch_size
        model = load_value_model(model_cfg, cfg.path or (None if cfg.tiny else start), cfg.tiny, seed)
        tcfg = TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                           micro_batch_size=micro_batch_size)
        if zero_stage is None:
            from rltune.train.torch_engine import TorchEngine

            self.engine, self.rank, self.world = TorchEngine(model, tcfg, 1), 0, 1
            self._module = model
        else:
            import torch.distributed as dist

            from rltune.train.deepspeed_engine import DeepSpeedEngine

            self.engine = DeepSpeedEngine(model, tcfg, 1, zero_stage, offload)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self._module = self.engine.ds
        self.model = model

    @torch.no_grad()
    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """V [n,T] of the state before each response token, 0 outside the response mask, for this rank's rows
        (all rows in one process)."""
        T = response_mask.shape[1]
        device = next(self.model.parameters()).device
        out = []
        for rows, real in rank_micro_batches(len(input_ids), self.micro, self.rank, self.world):
            v = self._module(input_ids[rows].to(device), attention_mask[rows].to(device), T)
            if real:
                out.append(v.cpu())
        local = torch.cat(out) if out else torch.zeros(0, T)
        return local * response_mask[_local_rows(len(input_ids), self.rank, self.world)]

    def update(self, input_ids, attention_mask, plan: list[torch.Tensor], old_values: torch.Tensor,
               returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """One optimizer step per mini-batch of row indices in `plan`, through the loop the policy update uses
        (rltune/train/update.py: accumulate_steps); metric sums of this rank (`finish_critic_metrics` turns the
        ranks' sums into the step's metrics)."""
        c = self.cfg
        T = mask.shape[1]
        device = next(self.model.parameters()).device
        if device.type != "cpu":
            input_ids, attention_mask, old_values, returns, mask = (
                t.to(device) for t in (input_ids, attention_mask, old_values, returns, mask))

        def micro_loss(rows, mini, denom, acc):  # ½·vf_coef·clipped squared error, token-mean over the mini-batch
            v = self._module(input_ids[rows], attention_mask[rows], T)
            m = mask[rows]
            loss = c.vf_coef * value_loss(v, old_values[rows], returns[rows], m, c.value_clip, "token-mean", **denom)
            acc["loss/value"] += float(loss.detach())
            if c.value_clip is not None and m.any():
                lo, hi = old_values[rows] - c.value_clip, old_values[rows] + c.value_clip
                out = ((v.detach() < lo) | (v.detach() > hi)).float()
                acc["critic/value_clip_frac"] += float(masked_mean(out, m)) * float(m.sum()) / max(
                    1.0, denom["num_tokens"])
            return loss

        split = functools.partial(micro_batches, lengths=None, micro=self.micro, rank=self.rank,
                                  world_size=self.world)
        return dict(accumulate_steps(self.engine, plan, mask, "token-mean", split, micro_loss, CRITIC_KEYS,
                                     self.world))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **self.engine.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.engine.load_state_dict({k: sd[k] for k in ("optimizer", "scheduler")})


def _local_rows(n: int, rank: int, world: int) -> torch.Tensor:
    return torch.arange(n).tensor_split(world)[rank]


def finish_critic_metrics(per_rank: list[dict[str, float]] | dict[str, float], n_steps: int,
                          old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The ranks' sums (one dict in one process) → the step's critic metrics (means over the plan's optimizer
    steps), plus value statistics of the whole batch."""
    per_rank = [per_rank] if isinstance(per_rank, dict) else per_rank
    total: dict[str, float] = defaultdict(float)
    for i, stats in enumerate(per_rank):
        for k, v in stats.items():
            if k not in _GLOBAL or i == 0:
                total[k] += v
    out = {k: v / n_steps if k != "critic/skipped_steps" else v for k, v in total.items()}
    steps = n_steps - total.get("critic/skipped_steps", 0.0)
    if "critic/grad_norm" in total:
        out["critic/grad_norm"] = total["critic/grad_norm"] / max(1.0, steps)
    var_r = masked_var(returns, mask)
    out["critic/values_mean"] = float(masked_mean(old_values, mask))
    out["critic/returns_mean"] = float(masked_mean(returns, mask))
    out["critic/explained_var"] = float(1 - masked_var(returns - old_values, mask) / var_r) if var_r > 0 else 0.0
    return out
