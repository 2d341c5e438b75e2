"""PPO's critic: a value model with its own AdamW, scored and updated beside the policy.

The trainer asks for `values(batch)` [N,T] before the advantage (GAE), then `update(...)` on the same
mini-batch plan as the policy (ppo_epochs × mini_batches optimizer steps); each mini-batch's clipped value
loss is normalised by that mini-batch's token count, so micro-batching does not change the update.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from rltune.algo import global_denominators, value_loss
from rltune.config.schema import CriticConfig, ModelConfig
from rltune.data.batch import RolloutBatch
from rltune.models.value import load_value_model
from rltune.ops import masked_mean, masked_var


class Critic:
    def __init__(self, cfg: CriticConfig, model_cfg: ModelConfig, start: str | None, seed: int, micro_batch_size: int):
        """`start` is the policy's starting model (SFT output or model.path; None = built from model.tiny)."""
        self.cfg, self.micro = cfg, micro_batch_size
        self.model = load_value_model(model_cfg, cfg.path or (None if cfg.tiny else start), cfg.tiny, seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """V [N,T] of the state before each response token, 0 outside the response mask."""
        T = batch.response_ids.shape[1]
        ids, attn = batch.input_ids, batch.attention_mask
        rows = torch.arange(len(batch)).split(self.micro)
        return torch.cat([self.model(ids[i], attn[i], T) for i in rows]) * batch.response_mask

    def update(self, batch: RolloutBatch, plan: list[torch.Tensor], old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor) -> dict[str, float]:
        """One optimizer step per mini-batch of row indices in `plan`; returns critic metrics (means over steps)."""
        c = self.cfg
        T = batch.response_ids.shape[1]
        ids, attn = batch.input_ids, batch.attention_mask
        acc: dict[str, float] = defaultdict(float)
        for mini in plan:
            denom = global_denominators(mask[mini])
            for rows in mini.split(self.micro):
                v = self.model(ids[rows], attn[rows], T)
                m = mask[rows]
                loss = c.vf_coef * value_loss(v, old_values[rows], returns[rows], m, c.value_clip, "token-mean",
                                              **denom)
                loss.backward()
                acc["loss/value"] += float(loss.detach())
                if c.value_clip is not None and m.any():
                    lo, hi = old_values[rows] - c.value_clip, old_values[rows] + c.value_clip
                    out = ((v.detach() < lo) | (v.detach() > hi)).float()
                    acc["critic/value_clip_frac"] += float(masked_mean(out, m)) * float(m.sum()) / max(
                        1.0, denom["num_tokens"])
            grads_ok = all(torch.isfinite(p.grad).all() for p in self.params if p.grad is not None)
            if grads_ok:
                if c.max_grad_norm is not None:
                    acc["critic/grad_norm"] += float(torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm))
                self.optimizer.step()
            else:
                acc["critic/skipped_steps"] += 1.0
            self.optimizer.zero_grad(set_to_none=True)
        out = {k: v / len(plan) if k != "critic/skipped_steps" else v for k, v in acc.items()}
        var_r = masked_var(returns, mask)
        out["critic/values_mean"] = float(masked_mean(old_values, mask))
        out["critic/returns_mean"] = float(masked_mean(returns, mask))
        out["critic/explained_var"] = float(1 - masked_var(returns - old_values, mask) / var_r) if var_r > 0 else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
