"""Masked tensor statistics and logit helpers shared by the algorithm core.

Conventions: N = rows (responses), T = response positions, V = vocabulary. A ``mask`` is bool or {0,1}
float of the same shape as the values; positions where it is 0 never contribute, even when the values
there are NaN/inf (padding garbage), and receive zero gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "group_stats",
    "entropy_from_logits",
    "logprobs_from_logits",
]


def _as_weight(mask: Tensor, like: Tensor) -> Tensor:
    """The mask as a float tensor in ``like``'s dtype (bool -> 0/1)."""
    return mask.to(dtype=like.dtype)


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Σ x·mask over ``dim`` (all dims when None). ``x`` and ``mask`` broadcast to the same shape.

    ``torch.where`` instead of a bare product so that NaN/inf at masked positions cannot leak (0·inf = NaN).
    """
    m = _as_weight(mask, x)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Σ x·mask / Σ mask over ``dim``; 0 where the mask is empty (verl divides by Σmask+1e-8, also ~0).

    Shapes: x, mask [...]; result [] when dim is None, else x reduced over dim.
    """
    m = _as_weight(mask, x)
    count = m.sum() if dim is None else m.expand_as(x).sum(dim=dim)
    # Safe denominator: an empty mask gives 0/1 = 0 and no NaN in the backward pass.
    return masked_sum(x, m, dim) / torch.where(count > 0, count, torch.ones_like(count))


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of ``x`` (all dims) -> [].

    Unbiased uses Bessel's n/(n-1) like verl's ``masked_var``. verl raises for n ≤ 1; we return the
    (zero) biased value instead, so no host sync is needed and whitening a single token yields 0.
    """
    m = _as_weight(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = var * torch.where(n > 1, n / (n - 1).clamp_min(1e-12), torch.ones_like(n))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − μ)·rsqrt(σ² + eps)·mask with μ, σ² the masked mean and unbiased masked variance (verl VTF:322).

    Shapes: x, mask [N,T] (any shape) -> same shape; positions outside the mask are 0. With
    ``shift_mean=False`` the mean is added back (scale only), as in verl.
    """
    m = _as_weight(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m != 0, out * m, torch.zeros((), dtype=out.dtype, device=out.device))


def group_stats(values: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row statistics of the row's group, NaN-aware, vectorized (no Python loop over groups).

    Args:
        values: [N] float; NaN marks an unscorable sample and is excluded from its group's statistics.
        group_id: [N] integer ids (any values, any order); equal ids form a group.
    Returns:
        mean [N]: mean of the group's non-NaN values (0 if it has none),
        std [N]: unbiased std of those values (TRL ``nanstd``; 0 when fewer than 2 of them),
        count [N] long: number of non-NaN values in the group.
    """
    if values.ndim != 1 or group_id.shape != values.shape:
        raise ValueError(f"group_stats wants values [N] and group_id [N], got {tuple(values.shape)} "
                         f"and {tuple(group_id.shape)}")
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    uniq, inv = torch.unique(group_id, return_inverse=True)
    n_groups = uniq.numel()
    valid = ~torch.isnan(values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v0 = torch.where(valid, values, zero)
    cnt = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inv, valid.to(values.dtype))
    tot = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, inv, v0)
    mean_g = tot / cnt.clamp_min(1)
    # Two-pass variance (centre first) to avoid the cancellation of E[x²] − E[x]².
    dev = torch.where(valid, values - mean_g[inv], zero)
    ss = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, inv, dev * dev)
    var_g = ss / (cnt - 1).clamp_min(1)
    std_g = torch.where(cnt > 1, var_g.clamp_min(0).sqrt(), torch.zeros_like(var_g))
    return mean_g[inv], std_g[inv], cnt[inv].long()


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) − Σ softmax(z)·z (verl VTF:224).

    Shapes: logits [..., V] -> [...]. Pass temperature-scaled logits (the sampling distribution).
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _entropy(logits)
    # No graph to keep: a few rows at a time, so the softmax temporaries stay small (large vocabularies).
    flat = logits.reshape(-1, logits.shape[-1])
    rows = _chunk_rows(logits.shape[-1])
    out = [_entropy(flat[i:i + rows]) for i in range(0, flat.shape[0], rows)]
    return (torch.cat(out) if out else flat.new_zeros(0)).reshape(logits.shape[:-1])


def _entropy(z: Tensor) -> Tensor:
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)


def _chunk_rows(vocab: int, floats: int = 1 << 23) -> int:
    """Rows of a [*, V] tensor per chunk: about `floats` elements (32 MB in fp32)."""
    return max(1, floats // max(1, vocab))


def logprobs_from_logits(logits: Tensor, ids: Tensor, chunk_rows: int = 1024) -> Tensor:
    """log softmax(logits)[ids] without materialising the full [..., V] log-softmax.

    Shapes: logits [..., V], ids [...] long -> [...]. Computed as z[id] − logsumexp(z), a chunk of rows at a time
    (at most ``chunk_rows``, and about 32 MB of fp32 each) so the temporaries stay small. Half/bfloat16 logits are
    upcast to float32 per chunk (low-precision logsumexp loses the small log-probs): the result is float32.
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ids {tuple(ids.shape)} disagree")
    flat = logits.reshape(-1, logits.shape[-1])
    flat_ids = ids.reshape(-1)
    # logsumexp's exp(z − max) temporary is as large as its input: chunks keep it small, in fp32 as well.
    chunk_rows = min(chunk_rows, _chunk_rows(logits.shape[-1]))
    out = []
    for start in range(0, flat.shape[0], chunk_rows):
        z = flat[start:start + chunk_rows]
        z = z if z.dtype in (torch.float32, torch.float64) else z.float()
        i = flat_ids[start:start + chunk_rows]
        out.append(z.gather(-1, i.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    if not out:
        return torch.zeros(ids.shape, dtype=torch.float32, device=logits.device)
    return torch.cat(out).reshape(ids.shape)
