"""`Trainer.fit()`: one RL post-training step after another, read top to bottom.

    rltune train recipes/addition-tiny.yaml            # from the command line
    from rltune import train, load_recipe               # from Python
    train(load_recipe("recipes/addition-tiny.yaml"))

One step (B prompts, G samples each, N = B·G rows, T response positions):
rollout -> reward -> (old log-probs) -> advantage -> update (micro-batches) -> sync -> log/eval/checkpoint.
Each phase runs under a timer named after it (`time/rollout`, ...). Research variants hook in through
modifiers (rltune/modifiers); nothing in this file branches on a method name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rltune import algo
from rltune.config.load import dump_recipe
from rltune.config.schema import Recipe
from rltune.data.batch import RolloutBatch
from rltune.data.prompts import PromptLoader, load_rows
from rltune.logging import MetricLogger
from rltune.models.policy import load_policy, resolve_device
from rltune.modifiers.base import (
    AdvantageContext,
    LossContext,
    PromptContext,
    RewardContext,
    StepState,
)
from rltune.modifiers.pipeline import ModifierPipeline
from rltune.ops import masked_mean
from rltune.reward import RewardInput, RewardManager
from rltune.rollout.base import SamplingParams
from rltune.rollout.dynamic import sample_groups
from rltune.rollout.hf_engine import HFEngine
from rltune.rollout.pool import load_synced_weights
from rltune.train import checkpoint as ckpt
from rltune.train.critic import Critic, finish_critic_metrics
from rltune.train.scoring import score_rows
from rltune.train.torch_engine import TorchEngine
from rltune.train.update import UpdateInputs, UpdateSpec
from rltune.watchdog import Watchdog


class RunDirError(RuntimeError):
    pass


class TrainingDivergedError(RuntimeError):
    pass


class Trainer:
    def __init__(self, recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False):
        from rltune._env import apply_defaults

        apply_defaults()  # also for Python-API users: offline, and malloc's mmap threshold pinned (RSS follows tensors)
        self.recipe, self.base_dir = recipe, Path(base_dir)
        r = recipe
        self.run_dir = Path(r.run.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        resume_from = self._prepare_run_dir(resume, overwrite)
        if r.run.threads:
            torch.set_num_threads(r.run.threads)
        _seed_everything(r.run.seed)

        # Policy: a checkpoint when resuming, else the SFT warm start, else model.path / model.tiny.
        start = None
        if r.sft is not None:
            start = r.sft.output_dir
            if not (Path(start) / "config.json").is_file():
                raise RunDirError(f"no SFT model at {start}: run `rltune sft <recipe>` first (recipe has an sft: section)")
        # Actors build from this stable start (a resume checkpoint may be pruned before a worker restarts) and
        # then receive the current weights (sync, or the ranks' sharded checkpoint).
        actor_start = start
        if resume_from is not None and r.model.lora is None:
            start = str(resume_from / "model")
        self.device = resolve_device(r.run.device)
        self.model, self.tok = load_policy(r.model, path=start, seed=r.run.seed)
        self.model.to(self.device)
        if resume_from is not None and r.model.lora is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(resume_from / "model" / "adapter_model.safetensors"))
        # The reference model exists only when a KL term needs it (kl_coef > 0); with LoRA the base is the ref.
        # With training ranks the reference model lives on the ranks (sharded like the policy under ZeRO-3).
        self.ref_model = None
        if r.algo.kl_coef > 0 and r.model.lora is None and not r.cluster.train_ranks:
            self.ref_model, _ = load_policy(r.model, path=r.sft.output_dir if r.sft else None, seed=r.run.seed,
                                            trainable=False)
            self.ref_model.to(self.device)

        self.rewards = RewardManager(r.rewards, base_dir=self.base_dir)
        self.mods = ModifierPipeline.from_specs(r.modifiers, base_dir=self.base_dir)
        self.loader = PromptLoader(load_rows(r.data, r.data.split, base_dir=self.base_dir), r.data, self.tok, r.run.seed)
        self.eval_rows = self._load_eval_rows()
        c = r.cluster
        if c.rollout_workers or c.train_ranks:
            from rltune.cluster import ensure_ray

            ensure_ray(c)
        total = r.run.steps * r.algo.updates_per_step
        if c.train_ranks:  # DeepSpeed ZeRO ranks in Ray actors; this process keeps a synced copy for rollout/eval
            from rltune.train.worker import TrainGroup

            self.engine = TrainGroup(r, actor_start, total, base_dir=self.base_dir)
            if resume_from is not None:  # sharded weights, optimizer state and scheduler (policy and critic)
                self.engine.load(resume_from / "deepspeed")
        else:
            self.engine = TorchEngine(self.model, r.train, total)
        if c.rollout_workers:
            from rltune.rollout.pool import RolloutPool

            pg = self.engine.pg if c.train_ranks and c.placement == "colocated" else None
            self.rollout = RolloutPool(r.model, actor_start, c.rollout_workers, r.run.seed, r.data.max_prompt_tokens,
                                       self.tok.pad_token_id, c.address, c.cpus_per_worker, c.threads_per_worker,
                                       c.gpus_per_worker, placement_group=pg, env=r.env,
                                       restart_timeout_s=c.worker_restart_timeout_s, decode=r.rollout.decode,
                                       vllm=(r.rollout.vllm.model_dump() | {"max_new_tokens": r.rollout.max_new_tokens}
                                             if r.rollout.engine == "vllm" else None))
        elif r.rollout.engine == "vllm":  # vLLM in this process, next to the trainer (rltune/rollout/vllm_engine.py)
            from rltune.rollout.vllm_engine import VLLMEngine, model_dir_for

            self.rollout = VLLMEngine(model_dir_for(actor_start, r.model, self.model, self.tok, self.run_dir),
                                      self.tok, r.data.max_prompt_tokens, r.rollout.max_new_tokens, r.run.seed,
                                      **r.rollout.vllm.model_dump())
            self.rollout.sync(self.model, 0)  # the current weights (a resumed run's, not the folder's)
        else:
            self.rollout = HFEngine(self.model, self.tok, r.data.max_prompt_tokens, decode=r.rollout.decode)
            if r.env is not None:  # multi-turn agent episodes (docs/agents.md)
                from rltune.rollout.multiturn import MultiTurnEngine

                self.rollout = MultiTurnEngine(self.rollout, r.env, base_dir=self.base_dir)
        # PPO's value model (algo.advantage=gae) starts from the policy's starting model unless critic.path/tiny.
        # On training ranks it is a DeepSpeed engine there too (TrainGroup.critic, same interface).
        self.critic = None
        if r.critic is not None:
            self.critic = (self.engine.critic if c.train_ranks else
                           Critic(r.critic, r.model, start, r.run.seed, r.train.micro_batch_size))
        self.kl_ctl = algo.KLController(r.algo.kl_coef, r.algo.kl_target, r.algo.kl_horizon)
        self.step = 0
        self.best: tuple[float, int] | None = None
        if resume_from is not None:
            self._load_state(ckpt.load_state(resume_from))
        if c.rollout_workers:  # workers start from the same weights as the policy, at its version
            self.rollout.sync(self.model, self.rollout.weight_version)
        if c.rollout_workers or c.train_ranks:  # where each actor landed, for the user (and the multi-node test)
            import json

            placed = {"train_rank_nodes": getattr(self.engine, "nodes", []),
                      "rollout_worker_nodes": self.rollout.nodes() if c.rollout_workers else []}
            (self.run_dir / "cluster.json").write_text(json.dumps(placed, indent=1))
        self._stop_signal: str | None = None
        self._last_samples: list[dict[str, Any]] = []
        self._skipped_in_a_row = 0
        self.watchdog = Watchdog(r.run.watchdog_s, self.run_dir)
        self.logger: MetricLogger | None = None

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        r = self.recipe
        self.logger = MetricLogger(r.logging, self.run_dir, r.run.steps, r.model_dump(mode="json"), self.step,
                                   r.run.name)
        (self.run_dir / "recipe.yaml").write_text(dump_recipe(r))
        last: dict[str, Any] = {}
        with self._signals():
            if self.step == 0 and self.eval_rows is not None:
                with self.watchdog.watch("eval"):
                    last = self.evaluate()
                self.logger.log(0, last)
            while self.step < r.run.steps and self._stop_signal is None:
                last = self.train_step()
                self.step += 1
                self._check_diverged(last)
                if self.eval_rows is not None and (
                    (r.run.eval_interval and self.step % r.run.eval_interval == 0) or self.step == r.run.steps
                ):
                    with self.watchdog.watch("eval"):
                        last |= self.evaluate()
                    self._track_best(last)
                self.logger.log(self.step, last, samples=self._last_samples)
                if self.step % r.run.log_interval == 0 or self.step == r.run.steps:
                    self.logger.progress(self.step, last)
                if r.run.save_interval and self.step % r.run.save_interval == 0:
                    self.save_checkpoint()
            if self._stop_signal is not None:
                path = self.save_checkpoint()
                self.logger.print(f"[yellow]{self._stop_signal}: stopped after step {self.step}; saved {path}[/]",
                                  always=True)
            else:
                self.save_checkpoint()
                self.export(self.run_dir / "final")
        self.logger.close()
        self.watchdog.close()
        self.rollout.shutdown()
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
        return last

    def _check_diverged(self, metrics: dict[str, Any]) -> None:
        """Skipped steps (non-finite loss/grads) are counted; too many in a row stop the run. The last
        checkpoint on disk was written before the trouble, so it is left as it is."""
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if metrics.get("train/skipped_step") else 0
        limit = self.recipe.train.max_skipped_steps
        if self._skipped_in_a_row >= limit:
            self.logger.log(self.step, metrics)
            self.logger.close()
            self.watchdog.close()
            last = ckpt.find_latest(self.ckpt_root)
            raise TrainingDivergedError(
                f"{limit} steps in a row had a non-finite loss or gradient (last at step {self.step}); weights were "
                f"not updated by them. Last good checkpoint: {last or 'none'}. Lower train.lr, set "
                "train.max_grad_norm, or check rewards/modifiers for inf; then `--resume`."
            )

    @contextlib.contextmanager
    def _phase(self, timers: dict[str, float], key: str):
        """Time a phase (metric `key`) and let the watchdog know which phase is running."""
        with self.watchdog.watch(key), _timer(timers, key):
            yield

    @property
    def stopped_by(self) -> str | None:
        """The signal that stopped fit() early (a checkpoint was written), or None after a complete run."""
        return self._stop_signal

    def train_step(self) -> dict[str, Any]:
        r, a = self.recipe, self.recipe.algo
        state = StepState(step=self.step, seed=r.run.seed, total_steps=r.run.steps)
        step_seed = _step_seed(r.run.seed, self.step)
        # Reseeding per step makes a resumed run draw exactly what the uninterrupted run drew.
        torch.manual_seed(step_seed)
        timers: dict[str, float] = defaultdict(float)
        t_step = time.perf_counter()

        # -- rollout + reward: B prompts -> N = B·G completions with their sampling log-probs -> scores [N,K] ->
        #    raw rewards [N] (NaN = unscorable). DAPO dynamic sampling repeats rounds until B groups vary.
        with self._phase(timers, "time/rollout"):
            probe = self._probe if "probe" in self.mods.requires else None
            prompt_ctx = PromptContext(state, probe, r.rollout.samples_per_prompt)

        def generate(prompts, k):  # round k of this step (k > 0 only with dynamic sampling)
            with self._phase(timers, "time/rollout"):
                prompts = self.mods.on_prompts(prompts, prompt_ctx)
                return self.rollout.generate(prompts, self._sampling(seed=(step_seed + k * 104_729) % (2**31 - 1)))

        def score(b):
            with self._phase(timers, "time/reward"):
                return self.rewards(_reward_input(b, self.step))

        ds = a.dynamic_sampling
        batch, result, dyn = sample_groups(generate, score, self.loader.next, r.rollout.prompts_per_step,
                                           enabled=ds.enabled, max_rounds=ds.max_rounds, pad_id=self.tok.pad_token_id)
        # -- reward shaping (e.g. ReDit) on a copy; filtering and logs use the raw rewards
        with self._phase(timers, "time/reward"):
            raw = result.rewards
            rewards = self.mods.shape_rewards(raw.clone(), RewardContext(batch, raw, result.scores, state))

        # -- old log-probs / entropy: only when something reads them before the update
        mask = batch.response_mask
        need = self.mods.requires
        old_logprobs = entropy = ref_logprobs = None
        # More than one update per batch (ppo_epochs/mini_batches) needs the old policy's log-probs fixed first.
        if "entropy" in need or "old_logprobs" in need or a.kl_coef > 0 or a.updates_per_step > 1:
            with self._phase(timers, "time/old_logprobs"):
                old_logprobs, entropy, ref_logprobs = self._score_batch(batch, entropy="entropy" in need)

        values = returns = kl_tok = None
        if self.critic is not None:
            with self._phase(timers, "time/values"):
                values = self.critic.values(batch.input_ids, batch.attention_mask, batch.response_mask)

        # -- advantage: [N] rewards (minus β·KL to the reference when algo.kl_placement=reward) -> [N,T]
        #    advantages by the estimator named in algo.advantage (GAE also gives returns), then modifiers (EMPG)
        with self._phase(timers, "time/advantage"):
            if a.kl_coef > 0:
                kl_tok = algo.kl_penalty(old_logprobs, ref_logprobs, a.kl_estimator) * mask
            token_rewards = -self.kl_ctl.coef * kl_tok if kl_tok is not None and a.kl_placement == "reward" else None
            if "token_rewards" in batch.extras:  # per-token rewards from the rollout (e.g. per-turn env rewards)
                env_tr = batch.extras["token_rewards"] * mask
                token_rewards = env_tr if token_rewards is None else token_rewards + env_tr
            advantages, returns = algo.estimate(a.advantage, rewards, batch.group_id, mask, values=values,
                                                token_rewards=token_rewards, gamma=a.gamma, lam=a.lam,
                                                scale=a.scale_rewards, eps=a.std_eps)
            adv_ctx = AdvantageContext(batch, rewards, raw, mask, batch.group_id, state, old_logprobs, entropy,
                                       dict(batch.extras))
            advantages = self.mods.shape_advantages(advantages, adv_ctx)
            # Token weights/masks are constants of the loss: computed once for the whole batch so the global
            # token count (and with it token-mean) does not depend on how the batch is split.
            full_ctx = LossContext(torch.arange(len(batch)), old_logprobs if old_logprobs is not None else
                                   batch.rollout_logprobs, old_logprobs if old_logprobs is not None else
                                   batch.rollout_logprobs, advantages, mask, state, entropy, dict(batch.extras),
                                   total_rows=len(batch))
            tw = self.mods.token_weights(full_ctx)
            loss_mask = mask & tw.mask if tw.mask is not None else mask
            if a.mask_truncated:  # DAPO overlong filtering: completions cut at max_new_tokens get no loss
                loss_mask = loss_mask & ~batch.truncated[:, None]

        # -- update: one optimizer step per mini-batch (ppo_epochs × mini_batches), micro-batches accumulating;
        #    the critic first (PPO), then the policy unless the critic is still warming up (critic.warmup_steps)
        plan = _minibatches(len(batch), a.ppo_epochs, a.mini_batches)
        stats = dict(dyn)
        if self.critic is not None:
            with self._phase(timers, "time/critic"):
                stats |= finish_critic_metrics(
                    self.critic.update(batch.input_ids, batch.attention_mask, plan, values, returns, loss_mask),
                    len(plan), values, returns, loss_mask)
        if self.critic is None or self.step >= r.critic.warmup_steps:
            with self._phase(timers, "time/update"):
                x = UpdateInputs(batch.input_ids, batch.attention_mask, advantages, loss_mask, batch.rollout_logprobs,
                                 tw.weight, old_logprobs, entropy, ref_logprobs, dict(batch.extras))
                kl_coef = self.kl_ctl.coef if a.kl_placement == "loss" else 0.0
                stats |= self.engine.update(x, plan, UpdateSpec.from_recipe(r, kl_coef), state, self.mods)
        if kl_tok is not None:  # the rollout policy's KL to the reference drives the adaptive controller
            stats["algo/kl_rollout"] = float(masked_mean(kl_tok, mask, dim=-1).mean())
            stats["algo/kl_coef"] = self.kl_ctl.coef
            self.kl_ctl.update(stats["algo/kl_rollout"], len(batch))

        # -- sync: the training ranks' new weights (gathered from ZeRO-3 partitions; the adapter only with LoRA) go
        #    to this process's copy and the rollout workers (in-process: shared weights, version only)
        with self._phase(timers, "time/sync"):
            ref = None
            if r.cluster.train_ranks:
                ref = self.engine.weights_ref()
                load_synced_weights(self.model, ref)
            self.rollout.sync(self.model, self.rollout.weight_version + 1, weights_ref=ref)

        metrics = self._step_metrics(batch, result, raw, rewards, advantages, stats, timers)
        metrics["time/step"] = time.perf_counter() - t_step
        metrics |= self.mods.on_step_end(metrics, state)
        self._last_samples = _samples(batch, raw)
        return metrics

    def _probe(self, prompts, n: int) -> torch.Tensor:
        """Raw rewards [B,n] of n hint-free samples per prompt from the current policy (no training use)."""
        from rltune.data.batch import PromptBatch

        plain = PromptBatch(prompts=prompts.prompts, meta=prompts.meta)
        b = self.rollout.generate(plain, dataclasses.replace(self._sampling(), n=n))
        return self.rewards(_reward_input(b, self.step)).rewards.view(len(prompts), n)

    def _score_batch(self, batch: RolloutBatch, entropy: bool):
        """Old-policy log-probs (and entropy) and reference log-probs [N,T] for the whole batch, no grad; on the
        training ranks when there are some (each scores its slice; the reference model lives there too)."""
        r = self.recipe
        T = batch.response_ids.shape[1]
        kl = r.algo.kl_coef > 0
        if r.cluster.train_ranks:
            return self.engine.score(batch.input_ids, batch.attention_mask, T, r.rollout.temperature, entropy, kl)
        ref = (self.ref_model if self.ref_model is not None else "adapter_off") if kl else None
        return score_rows(self.model, ref, batch.input_ids, batch.attention_mask, T, r.rollout.temperature, entropy,
                          min(r.train.micro_batch_size, len(batch)))

    # ------------------------------------------------------------------------------------ eval / metrics
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions on the held-out rows; `eval/accuracy` is the first reward's mean."""
        from rltune.data.batch import PromptBatch

        rows, chunk, scores = self.eval_rows, 250, []
        t0 = time.perf_counter()
        for lo in range(0, len(rows), chunk):
            part = rows[lo:lo + chunk]
            pb = PromptBatch(prompts=part["prompts"], meta={k: v for k, v in part["meta"].items()})
            b = self.rollout.generate(pb, self._sampling(greedy=True))
            scores.append(self.rewards(_reward_input(b, self.step)).scores)
        s = torch.cat(scores)
        out = {"eval/accuracy": float(torch.nanmean(s[:, 0]))}
        for k, spec in enumerate(self.recipe.rewards):
            out[f"eval/reward/{spec.metric_name}"] = float(torch.nanmean(s[:, k]))
        out["time/eval"] = time.perf_counter() - t0
        return out

    def _step_metrics(self, batch, result, raw, rewards, advantages, stats, timers) -> dict[str, Any]:
        lens = batch.response_len.float()
        G = self.recipe.rollout.samples_per_prompt
        flat = _flat_groups(raw, batch.group_id) if G > 1 else 1.0
        out = {
            "reward/mean": float(torch.nanmean(raw)),
            "reward/shaped_mean": float(torch.nanmean(rewards)),
            "reward/unscorable_frac": float(torch.isnan(raw).float().mean()),
            "reward/flat_group_frac": flat,
            "algo/adv_abs_mean": float(masked_mean(advantages.abs(), batch.response_mask)),
            "rollout/response_len": float(lens.mean()),
            "rollout/truncated_frac": float(batch.truncated.float().mean()),
            "rollout/weight_version": batch.weight_version,
            "perf/tokens": int(batch.response_len.sum()),
            **result.metrics,
            **stats,
            **timers,
        }
        return out

    def _track_best(self, metrics: dict[str, Any]) -> None:
        acc = metrics.get("eval/accuracy")
        if acc is not None and (self.best is None or acc > self.best[0]):
            self.best = (acc, self.step)

    # --------------------------------------------------------------------------------- state and files
    def _sampling(self, greedy: bool = False, seed: int | None = None) -> SamplingParams:
        ro = self.recipe.rollout
        return SamplingParams(n=1 if greedy else ro.samples_per_prompt, max_new_tokens=ro.max_new_tokens,
                              temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k, greedy=greedy, seed=seed)

    def _load_eval_rows(self) -> _EvalRows | None:
        d = self.recipe.data
        if d.eval_source is None and not d.source.startswith("builtin:"):
            return None
        ds = load_rows(d, d.eval_split, source=d.eval_source or d.source, base_dir=self.base_dir)
        if d.eval_size:
            ds = ds.select(range(min(d.eval_size, len(ds))))
        from rltune.data.prompts import format_prompt

        cols = ds.to_dict()
        return _EvalRows([format_prompt(p, d, self.tok) for p in cols[d.prompt_column]], cols)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "engine": self.engine.state_dict(),
            "loader": self.loader.state_dict(),
            "modifiers": self.mods.state_dict(),
            "weight_version": self.rollout.weight_version,
            "best": self.best,
            "kl_ctl": self.kl_ctl.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _load_state(self, sd: dict[str, Any]) -> None:
        self.step = sd["step"]
        self.engine.load_state_dict(sd["engine"])
        self.loader.load_state_dict(sd["loader"])
        self.mods.load_state_dict(sd["modifiers"])
        self.rollout.weight_version = sd["weight_version"]
        self.best = sd.get("best")
        if "kl_ctl" in sd:
            self.kl_ctl.load_state_dict(sd["kl_ctl"])
        if self.critic is not None and sd.get("critic") is not None:
            self.critic.load_state_dict(sd["critic"])
        torch.set_rng_state(sd["rng"]["torch"])
        random.setstate(sd["rng"]["python"])
        np.random.set_state(sd["rng"]["numpy"])
        if sd["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["rng"]["cuda"])

    def save_checkpoint(self) -> Path:
        with self.watchdog.watch("checkpoint"):
            return ckpt.save_checkpoint(self.ckpt_root, self.step, self._save_model, self.state_dict(),
                                        self.recipe.run.keep_last)

    def _save_model(self, path: Path) -> None:
        self.model.save_pretrained(path)
        if self.recipe.cluster.train_ranks:  # the ranks write their shards next to it (a shared filesystem)
            self.engine.save(path.parent / "deepspeed")

    def export(self, out: Path) -> None:
        """A servable Hugging Face folder: LoRA adapters are merged into a copy of the base."""
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if self.recipe.model.lora is not None:
            import copy

            model = copy.deepcopy(self.model).merge_and_unload()
        model.save_pretrained(tmp)
        self.tok.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> Path | None:
        has_run = (self.run_dir / "metrics.jsonl").exists() or self.ckpt_root.exists()
        if resume:
            found = ckpt.find_latest(self.ckpt_root)
            if found is None:
                raise RunDirError(f"--resume: no valid checkpoint under {self.ckpt_root}; start without --resume")
            return found
        if has_run and not overwrite:
            raise RunDirError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or --overwrite to start over "
                "(or change run.name / run.output_dir)"
            )
        if has_run and overwrite:
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return None

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM finish the current step, then a checkpoint is written and fit() returns."""
        def handler(signum, _frame):
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in prev:
                signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. inside a Ray actor): no handlers
            prev = {}
        try:
            yield
        finally:
            for s, h in prev.items():
                signal.signal(s, h)


class _EvalRows:
    def __init__(self, prompts: list[str], meta: dict[str, list]):
        self.prompts, self.meta = prompts, meta

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, s: slice) -> dict[str, Any]:
        return {"prompts": self.prompts[s], "meta": {k: v[s] for k, v in self.meta.items()}}


def build_trainer(recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False):
    """The trainer of the recipe's policy family (model.kind): text LMs here, visual policies in rltune/visual/.
    Every trainer has fit(), step, run_dir, model, best and stopped_by."""
    kind = recipe.model.kind
    if kind == "var":
        from rltune.visual.var_trainer import VarTrainer as cls
    elif kind == "diffusion":
        from rltune.visual.diffusion_trainer import DiffusionTrainer as cls
    else:
        cls = Trainer
    return cls(recipe, base_dir, resume=resume, overwrite=overwrite)


def train(recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False) -> dict:
    """Python API: run a recipe to the end; returns the last step's metrics."""
    return build_trainer(recipe, base_dir, resume=resume, overwrite=overwrite).fit()


def _reward_input(batch: RolloutBatch, step: int) -> RewardInput:
    return RewardInput(prompts=batch.prompts, completions=batch.completions, completion_ids=batch.completion_ids,
                       meta=batch.meta, step=step)


def _samples(batch: RolloutBatch, raw: torch.Tensor, k: int = 2) -> list[dict[str, Any]]:
    """The k best and k worst completions of a step, for the run report."""
    order = torch.argsort(torch.nan_to_num(raw, nan=-float("inf")), descending=True).tolist()
    pick = order[:k] + [i for i in order[-k:] if i not in order[:k]]
    return [{"prompt": batch.prompts[i], "completion": batch.completions[i], "reward": _finite(raw[i])} for i in pick]


def _finite(x: torch.Tensor) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def _flat_groups(raw: torch.Tensor, group_id: torch.Tensor) -> float:
    flat = []
    for g in group_id.unique():
        vals = raw[group_id == g]
        vals = vals[~torch.isnan(vals)]
        flat.append(bool(len(vals) == 0 or (vals == vals[0]).all()))
    return float(np.mean(flat))


def _minibatches(n: int, epochs: int, mini_batches: int) -> list[torch.Tensor]:
    """Row indices of each optimizer step: `epochs` passes over the batch, each cut in order into `mini_batches`."""
    return [rows for _ in range(epochs) for rows in torch.arange(n).chunk(mini_batches)]


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _timer(timers: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers[key] += time.perf_counter() - t0
