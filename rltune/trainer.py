"""`Trainer.fit()`: one RL post-training step after another, read top to bottom.

    rltune train recipes/addition-tiny.yaml            # from the command line
    from rltune import train, load_recipe               # from Python
    train(load_recipe("recipes/addition-tiny.yaml"))

One step (B prompts, G samples each, N = B·G rows, T response positions):
rollout -> reward -> (old log-probs) -> advantage -> update (micro-batches) -> sync -> log/eval/checkpoint.
Each phase runs under a timer named after it (`time/rollout`, ...). Research variants hook in through
modifiers (rltune/modifiers); nothing in this file branches on a method name. The step is the same for every
token policy family: what differs (how rows are sampled, rewarded, fed to the model, logged, saved) is the
family's (rltune/train/family.py): text causal LMs (rltune/train/text_family.py) here, VAR in
rltune/visual/var_trainer.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from rltune import algo
from rltune.config.schema import Recipe
from rltune.data.batch import RolloutBatch
from rltune.data.prompts import PromptLoader, load_rows
from rltune.families import FAMILIES, check_support
from rltune.modifiers.base import (
    AdvantageContext,
    LossContext,
    PromptContext,
    RewardContext,
    StepState,
)
from rltune.modifiers.pipeline import ModifierPipeline
from rltune.ops import masked_mean
from rltune.reward import RewardManager
from rltune.rollout.ahead import RolloutQueue
from rltune.rollout.base import SamplingParams
from rltune.rollout.dynamic import sample_groups
from rltune.rollout.naive_first import NaiveFirstGroups
from rltune.rollout.pool import load_synced_weights
from rltune.train import checkpoint as ckpt
from rltune.train.critic import finish_critic_metrics
from rltune.train.family import PolicyFamily, StepTensors
# RunDirError and TrainingDivergedError are also imported from here (cli, tests, the visual trainers).
from rltune.train.loop import RunDirError, RunLoop, TrainingDivergedError, rng_state, set_rng_state  # noqa: F401
from rltune.train.shared import best_worst_samples, minibatches, step_seed
from rltune.train.text_family import TextFamily
from rltune.train.update import UpdateInputs, UpdateSpec
from rltune.watchdog import Watchdog


class Trainer(RunLoop):
    """The one RL step of every token policy family; the family (`family_cls`, a PolicyFamily) says how its rows
    are sampled, rewarded, fed to the model and saved. The outer loop (fit, signals, eval cadence, checkpoints) is
    RunLoop's (rltune/train/loop.py)."""

    family_cls: type = TextFamily

    def _build(self, resume_from: Path | None) -> None:
        r = self.recipe
        check_support(r, base_dir=self.base_dir)   # every key set is honoured, every modifier runs (families.py)
        # The policy (from the checkpoint when resuming; + the frozen reference when a KL term needs it), its
        # tokenizer and the held-out rows.
        self.family: PolicyFamily = self.family_cls(r, self.base_dir, resume_from)
        f = self.family
        self.model, self.tok, self.ref_model, self.eval_rows = f.model, f.tokenizer, f.ref_model, f.eval_rows
        self.rewards = RewardManager(r.rewards, base_dir=self.base_dir)
        self.mods = ModifierPipeline.from_specs(r.modifiers, base_dir=self.base_dir)
        rows = load_rows(r.data, r.data.split, base_dir=self.base_dir)
        self.loader = PromptLoader(rows, r.data, self.tok, r.run.seed)
        f.check_prompts(self.loader.ds[r.data.prompt_column])
        self._claim_run_dir()  # recipe, model, data, rewards and modifiers all loaded: --overwrite may now delete
        c = r.cluster
        f.start(resume_from, self.run_dir)   # training and rollout engines (+ PPO's critic)
        self.engine, self.rollout, self.critic = f.engine, f.rollout, f.critic
        # With Ray rollout workers, rollouts of steps t..t+k are in flight while step t trains (k =
        # rollout.max_staleness; 0 = synchronous).
        # A probing modifier (ADHint) generates its groups in two phases, on the plain path (max_staleness must
        # be 0, checked below).
        self.ahead = (RolloutQueue(self.rollout, r.rollout.max_staleness)
                      if c.rollout_workers and "probe" not in self.mods.requires else None)
        self.kl_ctl = algo.KLController(r.algo.kl_coef, r.algo.kl_target, r.algo.kl_horizon)
        if r.rollout.max_staleness and "probe" in self.mods.requires:
            raise ValueError("rollout.max_staleness > 0 cannot run modifiers that probe the current policy before "
                             f"the rollout ({sorted(self.mods.requires)}); use rollout.max_staleness: 0")
        if resume_from is not None:
            sd = ckpt.load_state(resume_from)
            self._load_state(sd)
            if self.ahead is not None:  # the rollouts that were in flight at the checkpoint, as they were sampled
                self.ahead.load(resume_from / "inflight", sd.get("inflight", []))
        if c.rollout_workers:  # workers start from the same weights as the policy, at its version
            self.rollout.sync(self.model, self.rollout.weight_version)
        if c.rollout_workers or c.train_ranks:  # where each actor landed, for the user (and the multi-node test)
            import json

            placed = {"train_rank_nodes": self.engine.nodes,
                      "rollout_worker_nodes": self.rollout.nodes() if c.rollout_workers else []}
            (self.run_dir / "cluster.json").write_text(json.dumps(placed, indent=1))
        self.watchdog = Watchdog(r.run.watchdog_s, self.run_dir)  # last: its clock starts with the run

    # ------------------------------------------------------------------------------------ RunLoop hooks
    def _has_eval(self) -> bool:
        return self.eval_rows is not None

    def _watched_eval(self) -> dict[str, float]:
        with self.watchdog.watch("eval"):  # held-out generation over the whole eval set: name it if it hangs
            return self.evaluate()

    def _shutdown(self) -> None:
        self.rollout.shutdown()
        self.engine.shutdown()

    # ------------------------------------------------------------------------------------------- the step
    def train_step(self) -> dict[str, Any]:
        r = self.recipe
        state = StepState(step=self.step, seed=r.run.seed, total_steps=r.run.steps)
        seed = step_seed(r.run.seed, self.step)
        # Reseeding per step makes a resumed run draw exactly what the uninterrupted run drew.
        torch.manual_seed(seed)
        timers: dict[str, float] = defaultdict(float)
        t_step = time.perf_counter()

        # -- rollout + reward: B prompts -> N = B·G completions with their sampling log-probs -> scores [N,K] ->
        #    raw rewards [N] (NaN = unscorable). DAPO dynamic sampling repeats rounds until B groups vary.
        batch, result, dyn = self._rollout(state, seed, timers)
        # -- reward shaping (e.g. ReDit) on a copy; filtering and logs use the raw rewards
        with self._phase(timers, "time/reward"):
            raw = result.rewards
            rewards = self.mods.shape_rewards(raw.clone(), RewardContext(batch, raw, result.scores, state))

        # -- old log-probs / entropy / values, then advantages [N,T] and the step's token weights and loss mask
        s = self._advantage(batch, raw, rewards, state, timers)

        # -- update: the critic first (PPO), then the policy unless the critic is still warming up
        stats = dict(dyn) | self._update(batch, s, state, timers)

        # -- sync: the training ranks' new weights (gathered from ZeRO-3 partitions; the adapter only with LoRA) go
        #    to this process's copy and the rollout workers (in-process: shared weights, version only)
        with self._phase(timers, "time/sync"):
            ref = self.engine.weights_ref()   # None: this process's model is the one trained
            if ref is not None:
                load_synced_weights(self.model, ref)
            (self.ahead or self.rollout).sync(self.model, self.rollout.weight_version + 1, weights_ref=ref)

        metrics = self.family.step_metrics(batch, result, raw, rewards, s)
        metrics |= stats | timers
        metrics["time/step"] = time.perf_counter() - t_step
        metrics |= self.mods.on_step_end(metrics, state)
        # Training ranks report their own modifier instances' metrics (extra_loss/on_gradients run there).
        metrics |= {k: v for k, v in stats.items() if k.startswith(("mod/", "time/mod/"))}
        self._last_samples = best_worst_samples(raw, lambda i: self.family.describe(batch, i))
        return metrics

    def _rollout(self, state: StepState, seed: int, timers: dict[str, float]):
        """(batch, reward result, dynamic-sampling metrics) of the step: on_prompts, generate, score."""
        r, ds = self.recipe, self.recipe.algo.dynamic_sampling
        # A probing modifier (ADHint) samples hint-free completions first; kept ones are its groups' naive rows
        # (rltune/rollout/naive_first.py), scored there and counted as rollout time.
        def naive_score(b):
            return self.rewards(self.family.reward_input(b, self.step))

        groups = (NaiveFirstGroups(self.rollout.generate, naive_score, self._sampling(), self.tok.pad_token_id)
                  if "probe" in self.mods.requires else None)
        prompt_ctx = PromptContext(state, groups.probe if groups else None, r.rollout.samples_per_prompt)

        def generate(prompts, k):  # round k of this step (k > 0 only with dynamic sampling)
            with self._phase(timers, "time/rollout"):
                prompts = self.mods.on_prompts(prompts, prompt_ctx)
                sampling = self._sampling(seed=(seed + k * 104_729) % (2**31 - 1))
                return groups.generate(prompts, sampling) if groups else self.rollout.generate(prompts, sampling)

        def score(b):  # the family's view of the rows (text, or decoded images); reward extras for modifiers
            spliced = groups.result_for(b) if groups else None   # naive rows scored by the probe, the rest after
            if spliced is not None:
                self.family.on_rewards(b, spliced)
                return spliced
            with self._phase(timers, "time/reward"):
                result = self.rewards(self.family.reward_input(b, self.step))
                self.family.on_rewards(b, result)
                return result

        def draw(s):  # prompts and sampling of step s (s > self.step: a rollout that runs ahead)
            st = dataclasses.replace(state, step=s)
            prompts = self.mods.on_prompts(self.loader.next(r.rollout.prompts_per_step),
                                           dataclasses.replace(prompt_ctx, state=st))
            return prompts, self._sampling(seed=step_seed(r.run.seed, s))

        if self.ahead is None:
            return sample_groups(generate, score, self.loader.next, r.rollout.prompts_per_step, enabled=ds.enabled,
                                 max_rounds=ds.max_rounds, pad_id=self.tok.pad_token_id if self.tok is not None else 0)
        # Ray rollout workers: this step's rows were submitted up to rollout.max_staleness steps ago
        with self._phase(timers, "time/rollout"):
            batch, dyn = self.ahead.take(self.step, draw)
        result = score(batch)
        lag = (self.rollout.weight_version - batch.versions).float()
        return batch, result, dyn | {"rollout/staleness_mean": float(lag.mean()),
                                     "rollout/staleness_max": float(lag.max())}

    def _advantage(self, batch: RolloutBatch, raw, rewards, state: StepState, timers) -> StepTensors:
        a, mask, need = self.recipe.algo, batch.response_mask, self.mods.requires
        s = StepTensors()
        # Old log-probs / entropy only when something reads them before the update; more than one update per
        # batch (ppo_epochs/mini_batches) needs the old policy's log-probs fixed first.
        if "entropy" in need or "old_logprobs" in need or a.kl_coef > 0 or a.updates_per_step > 1:
            with self._phase(timers, "time/old_logprobs"):
                s.old_logprobs, s.entropy, s.ref_logprobs = self._score_batch(batch, entropy="entropy" in need)
        if self.critic is not None:
            with self._phase(timers, "time/values"):
                s.values = self.critic.values(batch.input_ids, batch.attention_mask, batch.response_mask)

        # [N] rewards (minus β·KL to the reference when algo.kl_placement=reward) -> [N,T] advantages by the
        # estimator named in algo.advantage (GAE also gives returns), then modifiers (EMPG)
        with self._phase(timers, "time/advantage"):
            if a.kl_coef > 0:
                s.kl_tok = algo.kl_penalty(s.old_logprobs, s.ref_logprobs, a.kl_estimator) * mask
            token_rewards = -self.kl_ctl.coef * s.kl_tok if s.kl_tok is not None and a.kl_placement == "reward" \
                else None
            if "token_rewards" in batch.extras:  # per-token rewards from the rollout (e.g. per-turn env rewards)
                env_tr = batch.extras["token_rewards"] * mask
                token_rewards = env_tr if token_rewards is None else token_rewards + env_tr
            advantages, s.returns = algo.estimate(a.advantage, rewards, batch.group_id, mask, values=s.values,
                                                  token_rewards=token_rewards, gamma=a.gamma, lam=a.lam,
                                                  scale=a.scale_rewards, eps=a.std_eps)
            adv_ctx = AdvantageContext(batch, rewards, raw, mask, batch.group_id, state, s.old_logprobs, s.entropy,
                                       dict(batch.extras))
            s.advantages = self.mods.shape_advantages(advantages, adv_ctx)
            # Token weights/masks are constants of the loss: computed once for the whole batch so the global
            # token count (and with it token-mean) does not depend on how the batch is split.
            base = s.old_logprobs if s.old_logprobs is not None else batch.rollout_logprobs
            tw = self.mods.token_weights(LossContext(torch.arange(len(batch)), base, base, s.advantages, mask, state,
                                                     s.entropy, dict(batch.extras), total_rows=len(batch),
                                                     rollout_logprobs=batch.rollout_logprobs))
            s.weight, s.loss_mask = tw.weight, mask & tw.mask if tw.mask is not None else mask
            if a.mask_truncated:  # DAPO overlong filtering: completions cut at max_new_tokens get no loss
                s.loss_mask = s.loss_mask & ~batch.truncated[:, None]
        return s

    def _update(self, batch: RolloutBatch, s: StepTensors, state: StepState, timers) -> dict[str, float]:
        """One optimizer step per mini-batch (ppo_epochs × mini_batches), micro-batches accumulating; the critic
        first (PPO), then the policy unless the critic is still warming up (critic.warmup_steps)."""
        r, a = self.recipe, self.recipe.algo
        plan = minibatches(len(batch), a.ppo_epochs, a.mini_batches)
        stats: dict[str, float] = {}
        if self.critic is not None:
            with self._phase(timers, "time/critic"):
                stats |= finish_critic_metrics(
                    self.critic.update(batch.input_ids, batch.attention_mask, plan, s.values, s.returns, s.loss_mask),
                    len(plan), s.values, s.returns, s.loss_mask)
        if self.critic is None or self.step >= r.critic.warmup_steps:
            with self._phase(timers, "time/update"):
                x = UpdateInputs(*self.family.update_rows(batch), s.advantages, s.loss_mask,
                                 batch.rollout_logprobs, s.weight, s.old_logprobs, s.entropy, s.ref_logprobs,
                                 dict(batch.extras))
                kl_coef = self.kl_ctl.coef if a.kl_placement == "loss" else 0.0
                # seq-mean-token-sum-norm's constant defaults to the family's response budget (text:
                # rollout.max_new_tokens; VAR: the pyramid's T tokens)
                spec = dataclasses.replace(UpdateSpec.from_recipe(r, kl_coef),
                                           loss_scale_constant=a.loss_scale_constant or self.family.response_budget)
                stats |= self.engine.update(x, plan, spec, state, self.mods)
        if s.kl_tok is not None:  # the rollout policy's KL to the reference drives the adaptive controller
            stats["algo/kl_rollout"] = float(masked_mean(s.kl_tok, batch.response_mask, dim=-1).mean())
            stats["algo/kl_coef"] = self.kl_ctl.coef
            self.kl_ctl.update(stats["algo/kl_rollout"], len(batch))
        return stats

    def _score_batch(self, batch: RolloutBatch, entropy: bool):
        """Old-policy log-probs (and entropy) and reference log-probs [N,T] for the whole batch, no grad; on the
        training ranks when there are some (each scores its slice; the reference model lives there too)."""
        r = self.recipe
        return self.engine.score(*self.family.update_rows(batch), batch.response_ids.shape[1],
                                 r.rollout.temperature, entropy, r.algo.kl_coef > 0)

    # ------------------------------------------------------------------------------------ eval / metrics
    def evaluate(self) -> dict[str, float]:
        """The family's held-out metrics (text: greedy completions); `eval/accuracy` is the first reward's mean."""
        return self.family.evaluate(self.eval_rows, self.rewards, self._sampling(greedy=True), self.step)

    # --------------------------------------------------------------------------------- state and files
    def _sampling(self, greedy: bool = False, seed: int | None = None) -> SamplingParams:
        ro = self.recipe.rollout
        return SamplingParams(n=1 if greedy else ro.samples_per_prompt, max_new_tokens=ro.max_new_tokens,
                              temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k, greedy=greedy, seed=seed)

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
            "rng": {**rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "inflight": self.ahead.drain() if self.ahead is not None else [],  # written by _save_model
        }

    def _load_state(self, sd: dict[str, Any]) -> None:
        self.step = sd["step"]
        self.engine.load_state_dict(sd["engine"])
        self.loader.load_state_dict(sd["loader"])
        self.mods.load_state_dict(sd["modifiers"])
        self.rollout.weight_version = sd.get("weight_version", sd["step"])  # VAR states before the shared step
        self.best = sd.get("best")
        if "kl_ctl" in sd:
            self.kl_ctl.load_state_dict(sd["kl_ctl"])
        if self.critic is not None and sd.get("critic") is not None:
            self.critic.load_state_dict(sd["critic"])
        set_rng_state(sd["rng"])
        if sd["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["rng"]["cuda"])

    def _save_model(self, path: Path) -> None:
        self.family.save_model(path)
        if self.ahead is not None:
            self.ahead.write(path.parent / "inflight")
        self.engine.save(path.parent / "deepspeed")  # training ranks write their shards next to it (shared fs)

    def export(self, out: Path) -> None:
        """The family's servable final model (text: a Hugging Face folder, LoRA merged into a copy of the base)."""
        self.family.export(out)


def build_trainer(recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False,
                  allow_changes: bool = False):
    """The trainer of the recipe's policy family (model.kind): text LMs here, visual policies in rltune/visual/.
    Every trainer has fit(), step, run_dir, model, best and stopped_by."""
    import importlib

    module, name = FAMILIES[recipe.model.kind].trainer.split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(recipe, base_dir, resume=resume, overwrite=overwrite, allow_changes=allow_changes)


def train(recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False,
          allow_changes: bool = False) -> dict:
    """Python API: run a recipe to the end; returns the last step's metrics."""
    return build_trainer(recipe, base_dir, resume=resume, overwrite=overwrite, allow_changes=allow_changes).fit()

