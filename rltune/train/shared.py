"""What the trainers of every policy family share (text, VAR, diffusion): the per-step seed, the mini-batch plan,
reward inputs, held-out rows and eval metrics, and the best/worst samples of a step for the run report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rltune.data.batch import RolloutBatch
from rltune.reward import RewardInput
from rltune.train.loop import finite_or_none

__all__ = ["step_seed", "minibatches", "reward_input", "image_reward_input", "load_eval_rows", "eval_metrics",
           "best_worst_samples", "text_eval_rows", "greedy_eval", "check_positions", "step_metrics"]


def step_seed(seed: int, step: int) -> int:
    """The seed every draw of one step derives from: reseeding per step makes a resumed run draw exactly what the
    uninterrupted run drew."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def minibatches(n: int, epochs: int, mini_batches: int) -> list[torch.Tensor]:
    """Row indices of each optimizer step: `epochs` passes over the batch, each cut in order into `mini_batches`."""
    return [rows for _ in range(epochs) for rows in torch.arange(n).chunk(mini_batches)]


def reward_input(batch: RolloutBatch, step: int, images: torch.Tensor | None = None) -> RewardInput:
    """The rewards' view of a rollout batch (images [N,3,H,W] for visual policies)."""
    return RewardInput(prompts=batch.prompts, completions=batch.completions, completion_ids=batch.completion_ids,
                       meta=batch.meta, step=step, images=images)


def image_reward_input(prompts: list[str], meta: dict[str, list], images: torch.Tensor, step: int,
                       completion_ids: list[list[int]] | None = None) -> RewardInput:
    """The rewards' view of N generated images [N,3,H,W] without a RolloutBatch (no completion text)."""
    return RewardInput(prompts=prompts, completions=[""] * len(prompts),
                       completion_ids=completion_ids if completion_ids is not None else [[] for _ in prompts],
                       meta=meta, step=step, images=images)


def load_eval_rows(data: Any, base_dir: str | Path):
    """The held-out rows (a datasets.Dataset, data.eval_size at most), or None when the recipe has none: only
    built-in tasks have a held-out split without data.eval_source."""
    from rltune.data.prompts import load_rows

    if data.eval_source is None and not data.source.startswith("builtin:"):
        return None
    ds = load_rows(data, data.eval_split, source=data.eval_source or data.source, base_dir=base_dir)
    if data.eval_size:
        ds = ds.select(range(min(data.eval_size, len(ds))))
    return ds


def text_eval_rows(data: Any, tok: Any, base_dir: str | Path) -> dict[str, Any] | None:
    """{"prompts": templated prompts, "meta": columns} of the held-out rows of a text recipe, or None."""
    from rltune.data.prompts import format_prompt

    ds = load_eval_rows(data, base_dir)
    if ds is None:
        return None
    cols = ds.to_dict()
    return {"prompts": [format_prompt(p, data, tok) for p in cols[data.prompt_column]], "meta": cols}


@torch.no_grad()
def greedy_eval(rollout: Any, rewards: Any, rows: dict[str, Any], sampling: Any, reward_specs: Sequence[Any],
                step: int, chunk: int = 250) -> dict[str, float]:
    """Greedy completions of a text rollout engine on the held-out `rows` (text_eval_rows), scored by the
    RewardManager `rewards` -> eval_metrics. `sampling`: SamplingParams with greedy=True."""
    from rltune.data.batch import PromptBatch

    prompts, meta, scores = rows["prompts"], rows["meta"], []
    t0 = time.perf_counter()
    for lo in range(0, len(prompts), chunk):
        pb = PromptBatch(prompts=prompts[lo:lo + chunk], meta={k: v[lo:lo + chunk] for k, v in meta.items()})
        scores.append(rewards(reward_input(rollout.generate(pb, sampling), step)).scores)
    return eval_metrics(torch.cat(scores), reward_specs, t0)


def eval_metrics(scores: torch.Tensor, reward_specs: Sequence[Any], t0: float) -> dict[str, float]:
    """scores [N,K] (NaN = n/a) of the held-out samples -> `eval/accuracy` (the first reward's mean), one
    `eval/reward/<name>` per reward and `time/eval` (seconds since t0)."""
    out = {"eval/accuracy": float(torch.nanmean(scores[:, 0]))}
    for k, spec in enumerate(reward_specs):
        out[f"eval/reward/{spec.metric_name}"] = float(torch.nanmean(scores[:, k]))
    out["time/eval"] = time.perf_counter() - t0
    return out


def best_worst_samples(raw: torch.Tensor, describe: Callable[[int], dict[str, Any]], k: int = 2) -> list[dict]:
    """The k best and k worst rows of raw rewards [N] (NaN last), each `describe(i) | {"reward": r_i or None}`."""
    order = torch.argsort(torch.nan_to_num(raw, nan=-float("inf")), descending=True).tolist()
    pick = order[:k] + [i for i in order[-k:] if i not in order[:k]]
    return [describe(i) | {"reward": finite_or_none(raw[i])} for i in pick]


def step_metrics(batch: RolloutBatch, result: Any, raw: torch.Tensor, rewards: torch.Tensor, advantages: torch.Tensor,
                 samples_per_prompt: int) -> dict[str, Any]:
    """A text step's reward/rollout metrics: raw [N] and shaped [N] rewards, advantages [N,T], and the reward
    manager's own metrics (result.metrics)."""
    from rltune.algo import flat_group_frac
    from rltune.ops import masked_mean

    return {
        "reward/mean": float(torch.nanmean(raw)),
        "reward/shaped_mean": float(torch.nanmean(rewards)),
        "reward/unscorable_frac": float(torch.isnan(raw).float().mean()),
        "reward/flat_group_frac": flat_group_frac(raw, batch.group_id) if samples_per_prompt > 1 else 1.0,
        "algo/adv_abs_mean": float(masked_mean(advantages.abs(), batch.response_mask)),
        "rollout/response_len": float(batch.response_len.float().mean()),
        "rollout/truncated_frac": float(batch.truncated.float().mean()),
        "rollout/weight_version": batch.weight_version,
        "perf/tokens": int(batch.response_len.sum()),
        **result.metrics,
    }


def check_positions(r: Any, model: Any, tok: Any, train_prompts: list[str], eval_prompts: list[str]) -> None:
    """Longest prompt + rollout.max_new_tokens must fit the model's positions (past them a model with learned
    positions fails and a rotary one degrades without a word). `train_prompts` raw, `eval_prompts` templated."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if r.env is not None or not isinstance(limit, int):
        return
    if r.data.max_prompt_tokens + r.rollout.max_new_tokens <= limit:
        return  # every prompt that fits data.max_prompt_tokens fits (longer ones fail at the rollout)
    from rltune.data.prompts import format_prompt
    from rltune.rollout.hf_engine import PromptTooLongError, encode_texts

    texts = [format_prompt(p, r.data, tok) for p in train_prompts] + list(eval_prompts)
    lens = [len(ids) for ids in encode_texts(tok, texts)]
    longest = max(lens, default=0)
    if longest > r.data.max_prompt_tokens:  # found here, before any step, rather than at the first rollout
        text = texts[lens.index(longest)]
        raise PromptTooLongError(f"a prompt has {longest} tokens > data.max_prompt_tokens={r.data.max_prompt_tokens}: "
                                 f"{text[:80]!r}...; raise data.max_prompt_tokens or filter long prompts")
    if longest + r.rollout.max_new_tokens > limit:
        raise PromptTooLongError(
            f"the longest prompt ({longest} tokens) + rollout.max_new_tokens={r.rollout.max_new_tokens} exceeds "
            f"the model's {limit} positions (max_position_embeddings); lower max_new_tokens, shorten or filter "
            "the prompts, or use a model with more positions")
