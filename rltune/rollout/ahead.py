"""Rollouts that run ahead of the trainer by at most `rollout.max_staleness` steps (Ray rollout workers).

At the start of step t the queue makes sure that the rollouts of steps t .. t+k are submitted, each with the
weights the workers hold at submission (version v), then waits for step t's. The trainer is at version t, so a
row trained at step t lags by t − v ≤ k. Step t+k's generation thus overlaps with step t's update; the weight
sync after the update is queued on each worker behind the generations already running (Ray runs one caller's
calls to an actor in order) and is checked before the next collect. k = 0 submits step t at step t and waits
for it: the synchronous loop, bit for bit (tested against the plain path).

Prompts are drawn from the loader (and `on_prompts` modifiers run) when a step is submitted, in step order, so the
loader's position and every step's seed are the same whatever k is. A checkpoint waits for the rollouts in
flight and saves them (`drain`, `write`: safetensors + JSON); a resumed run trains on exactly those rows.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.rollout.base import SamplingParams

__all__ = ["RolloutQueue"]

_TENSORS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "response_len", "rollout_logprobs",
            "group_id", "truncated")


class RolloutQueue:
    def __init__(self, pool, max_staleness: int):
        self.pool = pool
        self.k = max_staleness
        self.next_step = 0                      # first step not yet submitted
        self._q: deque = deque()                # (step, Pending | RolloutBatch) in step order
        self._last_end: dict[int, float] = {}   # worker k -> when its previous generation ended

    def take(self, step: int, draw: Callable[[int], tuple[PromptBatch, SamplingParams]]) -> tuple[RolloutBatch,
                                                                                                   dict[str, float]]:
        """Step `step`'s batch and the overlap metrics. `draw(s)` gives the prompts and sampling of step s."""
        self.next_step = max(self.next_step, step)
        while self.next_step <= step + self.k:
            prompts, params = draw(self.next_step)
            self._q.append((self.next_step, self.pool.submit(prompts, params)))
            self.next_step += 1
        s, item = self._q.popleft()
        if s != step:
            raise RuntimeError(f"rollout queue out of order: step {step} asked, step {s} queued first")
        if isinstance(item, RolloutBatch):  # restored from a checkpoint
            return item, {"time/wait_rollout": 0.0}
        t0 = time.perf_counter()
        batch = self.pool.collect(item)
        metrics = {"time/wait_rollout": time.perf_counter() - t0}
        if item.spans:
            gen = max(t1 - t0 for t0, t1 in item.spans.values())
            metrics["rollout/overlap_frac"] = min(1.0, max(0.0, 1.0 - metrics["time/wait_rollout"] / max(gen, 1e-9)))
            idle = [max(0.0, t0 - self._last_end[w]) for w, (t0, _) in item.spans.items() if w in self._last_end]
            if idle:
                metrics["time/wait_train"] = sum(idle) / len(idle)
            self._last_end.update({w: t1 for w, (_, t1) in item.spans.items()})
        return batch, metrics

    def sync(self, model, version: int, weights_ref=None) -> None:
        """Push new weights; with k > 0 without waiting (checked at the next collect)."""
        self.pool.sync(model, version, weights_ref=weights_ref, wait=self.k == 0)

    # ------------------------------------------------------------------------------------------ checkpoints
    def drain(self) -> list[int]:
        """Wait for the rollouts in flight (they stay queued, now finished); returns their steps. A checkpoint
        calls this, then `write`."""
        self._q = deque((s, item if isinstance(item, RolloutBatch) else self.pool.collect(item)) for s, item in self._q)
        return [s for s, _ in self._q]

    def write(self, folder: Path) -> None:
        """Write the drained rollouts to `folder`: tensors as safetensors, text and columns as JSON (no pickle)."""
        from safetensors.torch import save_file

        if not self._q:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tensors, text = {}, {}
        for s, b in self._q:
            for name in _TENSORS:
                tensors[f"{s}.{name}"] = getattr(b, name).contiguous()
            tensors[f"{s}.row_version"] = b.versions.contiguous()
            for name, v in b.extras.items():
                tensors[f"{s}.extras.{name}"] = v.contiguous()
            text[str(s)] = {"prompts": b.prompts, "completions": b.completions, "meta": b.meta,
                            "weight_version": b.weight_version, "extras": sorted(b.extras)}
        save_file(tensors, str(folder / "inflight.safetensors"))
        (folder / "inflight.json").write_text(json.dumps(text))

    def load(self, folder: Path, steps: list[int]) -> None:
        """Queue the rollouts a checkpoint saved (`steps` from the saved state, checked against the files)."""
        self._q.clear()
        if not steps:
            return
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "inflight.safetensors"))
        text = json.loads((folder / "inflight.json").read_text())
        if sorted(int(s) for s in text) != sorted(steps):
            raise RuntimeError(f"checkpoint's in-flight rollouts are for steps {sorted(text)}, its state says {steps}")
        for s in sorted(steps):
            t = text[str(s)]
            b = RolloutBatch(**{n: tensors[f"{s}.{n}"] for n in _TENSORS}, prompts=t["prompts"],
                             completions=t["completions"], meta=t["meta"], weight_version=t["weight_version"],
                             extras={n: tensors[f"{s}.extras.{n}"] for n in t["extras"]},
                             row_version=tensors[f"{s}.row_version"])
            self._q.append((s, b))
        self.next_step = max(steps) + 1
