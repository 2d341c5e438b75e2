"""Log-probs and entropy of target tokens straight from hidden states, without full-vocabulary logits.

The LM head's logits are [tokens, V]: 104 MB for 16 rows × 33 positions of SmolLM2 (V = 49,152) in fp32, four times
that for a 151,936-token vocabulary (Qwen2.5), and the plain path keeps them, their log-softmax temporaries and their
gradient at once. `head_logprobs` runs the output projection a chunk of tokens at a time: each chunk's logits,
log-softmax, gathered log-prob and entropy are computed and dropped, and the backward recomputes each chunk's logits
to accumulate the gradients of the hidden states, the head weight and its bias. The same math as the plain path
(tested to 1e-5, gradients included); the idea is Liger-kernel's fused linear cross-entropy (arXiv:2410.10989).

`head_of(model)` finds the head to use (the plain nn.Linear of a transformers causal LM, tied or not) or says why
the plain path must be used instead (a logit soft-cap or scale, LoRA on the head, a ZeRO-3 partitioned weight).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["head_logprobs", "head_of", "chunk_tokens"]

# Config attributes of transformers models whose logits are not hidden @ W.T + b (soft-cap, scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logit_softcapping",
                     "output_logits_scale", "mup_width_multiplier", "dim_model_base", "lm_head_multiplier",
                     "output_multiplier_scale", "scale_width")


def chunk_tokens(vocab: int, floats: int = 1 << 21) -> int:
    """Tokens per chunk: about `floats` logits (8 MB in fp32) per chunk, at least 1. Each chunk has about four such
    temporaries alive (logits, probabilities, their gradient, a product); with 32 MB chunks the process training the
    151,936-vocabulary bench model peaked 150 MB higher (bench/results/smollm2_memory*.json)."""
    return max(1, floats // max(1, vocab))


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """Temperature-scaled fp32 logits [c,V] of hidden states h [c,H] (computed in the weight's dtype, like the
    plain path's `.float()` after the head)."""
    z = h @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()
    return z / temperature if temperature != 1.0 else z


class _HeadLogprob(torch.autograd.Function):
    """(log p(ids), entropy) per token from hidden states; see the module docstring. Shapes: hidden [n,H],
    weight [V,H], bias [V] or None, ids [n] long -> logprobs [n] fp32, entropy [n] fp32 (zeros if not wanted)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, chunk, want_entropy, entropy_grad):
        n = hidden.shape[0]
        lp = hidden.new_empty(n, dtype=torch.float32)
        ent = hidden.new_zeros(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        for s in range(0, n, chunk):
            z = _chunk_logits(hidden[s:s + chunk], weight, bias, temperature)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:s + chunk] = lse_c
            lp[s:s + chunk] = z.gather(-1, ids[s:s + chunk, None]).squeeze(-1) - lse_c
            if want_entropy:  # H = lse − Σ p·z
                ent[s:s + chunk] = lse_c - (torch.softmax(z, dim=-1) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, ids, lse, ent)
        ctx.temperature, ctx.chunk, ctx.entropy_grad = temperature, chunk, entropy_grad
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, ids, lse, ent = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        g_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            z = _chunk_logits(h, weight, bias, t)
            p = torch.exp(z - lse[s:s + chunk, None])
            # d logp_i / dz = onehot(i) − p;  dH / dz_j = −p_j (z_j − lse + H)
            dz = p * (-g_lp[s:s + chunk, None])
            dz.scatter_add_(-1, ids[s:s + chunk, None], g_lp[s:s + chunk, None])
            if ctx.entropy_grad and g_ent is not None:
                dz -= g_ent[s:s + chunk, None] * p * (z - lse[s:s + chunk, None] + ent[s:s + chunk, None])
            del p, z
            if t != 1.0:
                dz /= t
            dz = dz.to(weight.dtype)
            if need_h:
                g_h[s:s + chunk] = dz @ weight
            if need_w:
                g_w.addmm_(dz.t().float(), h.float()) if weight.dtype != torch.float32 else g_w.addmm_(dz.t(), h)
            if need_b:
                g_b += dz.float().sum(0)
        g_w = g_w.to(weight.dtype) if g_w is not None else None
        g_b = g_b.to(bias.dtype) if g_b is not None else None
        return g_h, g_w, g_b, None, None, None, None, None


def head_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, temperature: float = 1.0,
                  entropy: bool = False, entropy_grad: bool = False,
                  chunk: int | None = None) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ weight.T + bias)[ids] / temperature-scaled, and its entropy, chunk by chunk.

    Shapes: hidden [..., H], weight [V,H], bias [V] or None, ids [...] long -> logprobs [...] fp32 and entropy
    [...] fp32 (None unless `entropy` or `entropy_grad`; detached unless `entropy_grad`). `chunk` = tokens per
    chunk (default: about 8 MB of fp32 logits).
    """
    if hidden.shape[:-1] != ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and ids {tuple(ids.shape)} disagree")
    lead = ids.shape
    # The head runs in the weight's dtype with autocast off (under train.autocast the decoder's output may be bf16).
    h = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
    i = ids.reshape(-1)
    chunk = chunk or chunk_tokens(weight.shape[0])
    want = entropy or entropy_grad
    with torch.autocast(h.device.type, enabled=False):
        lp, ent = _HeadLogprob.apply(h, weight, bias, i, float(temperature), int(chunk), want, entropy_grad)
    lp = lp.reshape(lead)
    if not want:
        return lp, None
    ent = ent.reshape(lead)
    return lp, (ent if entropy_grad else ent.detach())


def head_of(model: nn.Module) -> tuple[nn.Module | None, nn.Linear | None, str]:
    """(decoder, head, "") for a causal LM whose logits are decoder(...).last_hidden_state @ head.weight.T (+ bias);
    (None, None, reason) when the plain path must be used. `model` may be wrapped by PEFT or DeepSpeed."""
    base = getattr(model, "module", model)  # DeepSpeed engine -> module
    lm = base.get_base_model() if hasattr(base, "get_base_model") else base  # PEFT -> the transformers model
    cfg = getattr(lm, "config", None)
    for name in _LOGIT_TRANSFORMS:
        v = getattr(cfg, name, None)
        if v not in (None, 1, 1.0, False):
            return None, None, f"the model's logits go through {name}={v}"
    getter = getattr(lm, "get_output_embeddings", None)
    head = getter() if getter else None
    dec = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if dec is None or head is None:
        return None, None, f"{type(lm).__name__} has no get_decoder()/get_output_embeddings()"
    if type(head) is not nn.Linear:
        return None, None, (f"the LM head is a {type(head).__module__}.{type(head).__name__} (e.g. LoRA on lm_head), "
                            "not a plain nn.Linear")
    if hasattr(head.weight, "ds_id") or head.weight.numel() == 0:
        return None, None, "the head weight is partitioned (DeepSpeed ZeRO-3)"
    return dec, head, ""


_LOGGED: set[tuple[str, str]] = set()


def log_fallback(model: nn.Module, reason: str) -> None:
    """Say once per model class and reason why the full-logits path is used."""
    key = (type(getattr(model, "module", model)).__name__, reason)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("chunked LM head off (%s): computing full-vocabulary logits", reason)
