"""Single-process training engine: forward for response log-probs, backward, optimizer step.

The DeepSpeed engine implements the same methods; the trainer only talks to this surface.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from rltune.config.schema import TrainConfig
from rltune.models.lm_head import head_logprobs, head_of, log_fallback
from rltune.modifiers.base import GradView
from rltune.ops import entropy_from_logits, logprobs_from_logits
from rltune.train.packing import pack_rows, use_packing


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    always_split: bool = False,
    pack: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n,T] of the last T tokens of `input_ids` [n,P+T], and their entropy [n,T] (detached unless
    `entropy_grad`, for an entropy bonus in the loss).

    Only the T+1 positions that predict response tokens go through the LM head (`logits_to_keep`), which is
    where the memory of a large vocabulary goes. Rows that share a prompt (a GRPO group) share its forward: the
    distinct prompts run once, their KV cache is gathered to the rows and only the responses run per row
    (gradients flow through the shared prompt as through separate copies; tested equal to the plain forward).
    `always_split` takes that two-pass path even when no prompt repeats: under ZeRO-3 every rank must run the same
    number of module forwards (each gathers the partitioned weights collectively). `pack`: where the shared-prompt
    forward is not taken, run the rows' real tokens as one packed sequence (rltune/train/packing.py).
    """
    T = response_len
    P = input_ids.shape[1] - T
    dec, head, why = head_of(model)
    if head is None:
        log_fallback(model, why)
    fwd = _Forward(model, dec)
    shared = _shared_prompt_outputs(fwd, input_ids, attention_mask, P, T, always_split) if P > 0 else None
    ids = input_ids[:, -T:]
    if shared is None and pack and head is not None:
        out = _packed_logprobs(fwd, head, input_ids, attention_mask, T, temperature, entropy, entropy_grad)
        if out is not None:
            return out
    if shared is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        shared = fwd(input_ids, _key_mask(attention_mask, P), position_ids, T + 1, use_cache=False)[0][:, :-1]
    if head is not None:  # [n,T,H] hidden states -> log-probs a chunk of tokens at a time, no [n,T,V] logits
        return head_logprobs(shared, head.weight, head.bias, ids, temperature, entropy, entropy_grad)
    logits = shared.float()
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = logprobs_from_logits(logits, ids)
    ent = None
    if entropy_grad:
        ent = entropy_from_logits(logits)
    elif entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach())
    return logprobs, ent


def _packed_logprobs(fwd, head, input_ids, attention_mask, T, temperature, entropy, entropy_grad):
    """response_logprobs on the packed real tokens (no padding); None when the rows cannot be packed."""
    packed = pack_rows(input_ids, attention_mask, T)
    if packed is None:
        log_fallback(fwd.model, "padding-free: a row's real tokens are not contiguous; padded forward")
        return None
    flat, pos, index, valid = packed
    hidden = fwd(flat, None, pos, flat.shape[1], use_cache=False)[0][0]  # [L,H]
    lp, ent = head_logprobs(hidden[index], head.weight, head.bias, input_ids[:, -T:], temperature, entropy,
                            entropy_grad)
    zero = lp.new_zeros(())
    return torch.where(valid, lp, zero), (None if ent is None else torch.where(valid, ent, zero))


class _Forward:
    """One forward of the causal LM returning (the last `keep` positions' outputs, cache): hidden states [n,keep,H]
    from the decoder when the chunked head is used (`decoder` given), else logits [n,keep,V] from the full model."""

    def __init__(self, model: nn.Module, decoder: nn.Module | None):
        self.model, self.decoder = model, decoder

    def __call__(self, ids, mask, pos, keep: int, use_cache: bool, cache=None):
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=use_cache)
        if cache is not None:
            kw[cache_kwarg(self.decoder or self.model)] = cache
        if self.decoder is None:
            out = self.model(**kw, logits_to_keep=keep)
            res = out.logits
        else:
            out = self.decoder(**kw)
            res = out.last_hidden_state[:, -keep:]
        return res, getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    @property
    def checkpointing(self) -> bool:
        base = getattr(self.model, "module", self.model)  # DeepSpeed wraps the module
        flag = ("is_activation_checkpointing" if hasattr(base, "is_activation_checkpointing")
                else "is_gradient_checkpointing")
        return bool(getattr(base, flag, False))


def _shared_prompt_outputs(fwd: _Forward, input_ids, attention_mask, P: int, T: int,
                           always: bool = False) -> torch.Tensor | None:
    """Outputs [n,T,·] (logits or hidden states, see _Forward) at the positions predicting the response tokens,
    with each distinct prompt forwarded once; None when no prompt repeats or the model cannot take a KV cache here
    (gradient checkpointing turns the cache off)."""
    if fwd.checkpointing:
        return None
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].long()], dim=1)
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    if len(uniq) == len(key) and not always:
        return None
    pm = uniq[:, P:]
    out_p, cache = fwd(uniq[:, :P], _key_mask(pm, P), (pm.cumsum(-1) - 1).clamp(min=0), 1, use_cache=True)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    cache.reorder_cache(inv)  # index_select per layer: differentiable, so prompt gradients add up per row
    mask = attention_mask.long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]
    out_r, _ = fwd(input_ids[:, P:], _key_mask(mask, P), pos, T, use_cache=True, cache=cache)
    # Position P−1 (the prompt's last) predicts response token 0; response positions 0..T−2 predict tokens 1..T−1.
    return torch.cat([out_p[:, -1:][inv], out_r[:, :-1]], dim=1)


def autocast(mode: str, device: torch.device):
    """train.autocast: bf16 autocast for the update's forward (the backward runs outside it), or no-op."""
    if mode == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _key_mask(attention_mask: torch.Tensor, P: int) -> torch.Tensor | None:
    """The attention mask to pass, or None when no prompt is left-padded: with causal attention, padding after a
    response's end only changes positions that get no loss, so a pure causal mask gives the same log-probs for
    every real token, and transformers then skips building a 4-D mask (faster on small models)."""
    return None if bool(attention_mask[:, :P].all()) else attention_mask.long()


def cache_kwarg(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); take whichever the model's forward accepts."""
    import inspect

    model = getattr(model, "module", model)
    params = inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def text_forward(model: nn.Module, cfg: TrainConfig, input_ids, attention_mask, response_len, temperature=1.0,
                 entropy=False, entropy_grad=False):
    """The update's forward of a causal LM: response_logprobs under train.autocast, packed per train.padding_free."""
    with autocast(cfg.autocast, next(model.parameters()).device):
        return response_logprobs(model, input_ids, attention_mask, response_len, temperature, entropy,
                                 entropy_grad, pack=use_packing(cfg.padding_free, model))


class TorchEngine:
    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int, forward: Callable | None = None):
        """`forward(model, input_ids, attention_mask, T, temperature, entropy, entropy_grad) -> (log-probs [n,T],
        entropy [n,T] or None)`: the policy family's forward (rltune/train/family.py); None = text_forward."""
        self.model, self.cfg, self.forward_fn = model, cfg, forward
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (check model.lora / frozen layers)")
        # fused: one kernel per parameter, in place. The default multi-tensor (foreach) step allocates temporaries
        # for all parameters at once (+300 MB at SmolLM2-135M in fp32) and is slower on CPU (tiny model: −8% s/step).
        kw = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        try:
            self.optimizer = torch.optim.AdamW(self.params, fused=True, **kw)
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            self.optimizer = torch.optim.AdamW(self.params, foreach=False, **kw)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(cfg, total_steps))
        self.model.train()

    def forward(self, input_ids, attention_mask, response_len, temperature=1.0, entropy=False, entropy_grad=False):
        if self.forward_fn is not None:
            return self.forward_fn(self.model, input_ids, attention_mask, response_len, temperature, entropy,
                                   entropy_grad)
        return text_forward(self.model, self.cfg, input_ids, attention_mask, response_len, temperature, entropy,
                            entropy_grad)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def set_boundary(self, is_last_micro_batch: bool) -> None:
        """Gradient accumulation needs no bookkeeping in one process (DeepSpeed's engine does)."""

    def zero_loss(self) -> torch.Tensor:
        return sum(p.sum() * 0.0 for p in self.params)

    def grad_view(self) -> GradView:
        return GradView(self.named_parameters())

    def all_finite(self, local: bool) -> bool:
        return local

    def update(self, x, plan, spec, state, mods) -> dict[str, float]:
        """One training step's optimizer steps (rltune/train/update.py); metrics averaged over the plan."""
        from rltune.train.update import finish_metrics, run_update

        device = self.params[0].device
        if device.type != "cpu":
            x = x.to(device)
        return finish_metrics([run_update(self, mods, x, plan, spec, state)], len(plan))

    def named_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def grad_norm(self) -> float:
        sq = sum((p.grad.detach().float().pow(2).sum() for p in self.params if p.grad is not None), torch.zeros(()))
        return float(sq.sqrt())

    def grads_finite(self) -> bool:
        return all(torch.isfinite(p.grad).all() for p in self.params if p.grad is not None)

    def step(self) -> float:
        """Clip, step, zero grads, advance the schedule; returns the pre-clip global gradient norm."""
        if self.cfg.max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        else:
            norm = self.grad_norm()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def skip_step(self) -> None:
        """Drop this step's gradients (non-finite loss or grads): weights and optimizer state stay untouched."""
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        # The recipe's lr wins over the checkpoint's, so `train.lr=... --resume --allow-changes` works (e.g. after
        # divergence); the schedule position is kept.
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for g in self.optimizer.param_groups:
            g["initial_lr"], g["lr"] = self.cfg.lr, self.cfg.lr * factor
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def lr_schedule(cfg: TrainConfig, total: int):
    """The LambdaLR factor of optimizer step `step`: linear warmup over train.warmup_steps, then train.scheduler
    (constant, linear or cosine decay to 0 at `total` steps). Every engine uses this one schedule."""
    warm = cfg.warmup_steps

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
