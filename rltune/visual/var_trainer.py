"""`VarTrainer.fit()`: GRPO for visual autoregressive (next-scale) policies, the step of rltune/trainer.py over
token pyramids, read top to bottom.

    rltune train recipes/var-tiny.yaml                 # a recipe with model.kind: var

One step (B prompts = class labels, G samples each; a row holds T = Σ_t h_t·w_t scale-tokens, docs/var.md):
  plan      mods.on_prompts may attach a VMR plan (PromptBatch.plan, a RolloutPlan): full | prefix | suffix
  rollout   token pyramids with per-token log-probs (CFG, top-k/top-p); N rows; the loss mask = the stage's scales
  reward    decode -> images -> RewardManager(RewardInput(images=...)) -> rewards [N] + spatial extras (boxes)
  advantage algo.estimate over the groups -> mods.shape_advantages (VMR: soft values of the prefixes)
  update    teacher-forcing log-probs [n,T] -> algo.policy_loss × mods.token_weights (scale_reweight, var_mask)
            -> algo.aggregate -> optimizer step; then log / checkpoint
Batch extras the modifiers read: scale_idx [N,T], scale_hw [N,S,2], image_hw [N,2], prefix_id [N], and every
reward extra (boxes [N,K,4] NaN-padded, saliency [N,H,W], numbers [N]). Run-directory rules, signals and
checkpoints are RunLoop's, as for the text trainer (rltune/train/loop.py, rltune/train/checkpoint.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rltune import algo
from rltune.config.load import RecipeError, dump_recipe
from rltune.config.schema import AlgoConfig, Recipe
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.data.prompts import PromptLoader, load_rows
from rltune.families import VAR, check_support
from rltune.models.policy import resolve_device
from rltune.models.var import VarPolicy, VarSample, build_var_policy, sample_var, scale_index, token_logprobs
from rltune.modifiers.base import AdvantageContext, LossContext, PromptContext, RewardContext, StepState
from rltune.modifiers.pipeline import ModifierPipeline
from rltune.ops import entropy_from_logits, masked_mean
from rltune.reward import RewardManager
from rltune.train import checkpoint as ckpt
from rltune.train.loop import RunLoop, rng_state, set_rng_state
from rltune.train.shared import (
    best_worst_samples,
    eval_metrics,
    image_reward_input,
    load_eval_rows,
    minibatches,
    reward_input,
    step_seed,
)
from rltune.train.torch_engine import TorchEngine
from rltune.train.update import UpdateInputs, UpdateSpec
from rltune.visual.var_plan import STAGES, RolloutPlan
from rltune.watchdog import Watchdog

LAYOUT_KEYS = ("scale_idx", "scale_hw", "image_hw", "prefix_id")


class VarTrainer(RunLoop):
    manifest = VAR
    NONFINITE = "gradient"
    DIVERGED_ADVICE = "Lower train.lr, set train.max_grad_norm, or check rewards/modifiers"

    def _build(self, resume_from: Path | None) -> None:
        r = self.recipe
        check_support(r, base_dir=self.base_dir)   # every key set is honoured, every modifier runs (families.py)

        # One device (run.device; auto = the GPU when there is one); batches live on the CPU and cross to the device
        # at the model's boundary (_sample, _decode, _logits).
        self.device = resolve_device(r.run.device)
        self.model: VarPolicy = build_var_policy(r.model.var, seed=r.run.seed)
        self.ref_model = None
        if r.algo.kl_coef > 0:  # the reference is the starting policy (also when resuming), frozen
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval().to(self.device)
        if resume_from is not None:
            self._load_weights(resume_from / "model")
        self.model.to(self.device)
        self.scales = self.model.scales
        self.layout = scale_index(self.scales)                                       # [T]
        with torch.no_grad():
            self.image_hw = tuple(self._decode(torch.zeros(1, self.layout.numel(), dtype=torch.long)).shape[-2:])
        self.rewards = RewardManager(r.rewards, base_dir=self.base_dir)
        self.mods = ModifierPipeline.from_specs(r.modifiers, base_dir=self.base_dir)
        self.loader = PromptLoader(load_rows(r.data, r.data.split, base_dir=self.base_dir), r.data, None, r.run.seed)
        self.eval_rows = self._load_eval_rows()
        self._claim_run_dir()  # policy, rewards, modifiers and data loaded: --overwrite may now delete
        self.engine = VarEngine(self.model, r.train, r.run.steps * r.algo.updates_per_step)
        if resume_from is not None:
            self._load_state(ckpt.load_state(resume_from))
        self.watchdog = Watchdog(r.run.watchdog_s, self.run_dir)  # last: its clock starts with the run

    # ------------------------------------------------------------------------------------ RunLoop hooks
    def _has_eval(self) -> bool:
        return self.eval_rows is not None

    # ------------------------------------------------------------------------------------------- the step
    def train_step(self) -> dict[str, Any]:
        r, a = self.recipe, self.recipe.algo
        state = StepState(step=self.step, seed=r.run.seed, total_steps=r.run.steps)
        torch.manual_seed(step_seed(r.run.seed, self.step))  # a resumed run draws what the uninterrupted one drew
        timers: dict[str, float] = defaultdict(float)
        t_step = time.perf_counter()

        # -- rollout: B prompts -> (modifiers may attach a VMR plan) -> N token pyramids with per-token log-probs
        with self._phase(timers, "time/rollout"):
            prompts = self.loader.next(r.rollout.prompts_per_step)
            prompts = self.mods.on_prompts(prompts, PromptContext(state, None, r.rollout.samples_per_prompt))
            plan = self._plan(prompts)
            batch, cond, sample_lp = self._rollout(prompts, plan)
        # -- reward: decode -> images -> scores [N,K] -> rewards [N]; spatial extras (boxes) ride in batch.extras
        with self._phase(timers, "time/reward"):
            with torch.no_grad():
                images = self._decode(batch.response_ids)
            result = self.rewards(reward_input(batch, self.step, images))
            batch.extras.update(_reward_extras(result.extras, len(batch)))
            raw = result.rewards
            rewards = self.mods.shape_rewards(raw.clone(), RewardContext(batch, raw, result.scores, state))

        mask = batch.response_mask
        need = self.mods.requires
        old_logprobs = entropy = ref_logprobs = None
        if "entropy" in need or "old_logprobs" in need or a.kl_coef > 0 or a.updates_per_step > 1:
            with self._phase(timers, "time/old_logprobs"):
                old_logprobs, entropy, ref_logprobs = self._score(batch.response_ids, cond)

        # -- advantage: group statistics of the rewards -> [N,T] (0 outside the stage's scales), then modifiers
        #    (VMR replaces a prefix step's advantages by the prefixes' soft values); token weights/masks once for the
        #    whole batch so token-mean does not depend on the micro-batch split
        with self._phase(timers, "time/advantage"):
            advantages, _ = algo.estimate(a.advantage, rewards, batch.group_id, mask, scale=a.scale_rewards,
                                          eps=a.std_eps, gamma=a.gamma, lam=a.lam)
            ctx = AdvantageContext(batch, rewards, raw, mask, batch.group_id, state, old_logprobs, entropy,
                                   dict(batch.extras))
            advantages = self.mods.shape_advantages(advantages, ctx)
            base = old_logprobs if old_logprobs is not None else batch.rollout_logprobs
            tw = self.mods.token_weights(LossContext(torch.arange(len(batch)), base, base, advantages, mask, state,
                                                     entropy, dict(batch.extras), total_rows=len(batch),
                                                     rollout_logprobs=batch.rollout_logprobs))
            loss_mask = mask & tw.mask if tw.mask is not None else mask

        # -- update: teacher-forcing log-probs, clipped surrogate × token weights, aggregate, optimizer step
        with self._phase(timers, "time/update"):
            stats = self._update(batch, cond, advantages, loss_mask, tw.weight, old_logprobs, ref_logprobs, state)

        metrics = self._step_metrics(batch, result, raw, rewards, advantages, loss_mask, tw.weight, sample_lp, plan)
        metrics |= stats | timers
        metrics["time/step"] = time.perf_counter() - t_step
        metrics |= self.mods.on_step_end(metrics, state)
        self._last_samples = best_worst_samples(raw, lambda i: {"prompt": batch.prompts[i]})
        return metrics

    # --------------------------------------------------------------------------------------- rollout
    def _plan(self, prompts: PromptBatch) -> RolloutPlan:
        """The step's sampling plan a modifier (VMR) attached to the prompts; `full` without one."""
        if prompts.plan is None:
            return RolloutPlan()
        if not isinstance(prompts.plan, RolloutPlan):
            raise ValueError(f"the VAR trainer samples by a rltune.visual.var_plan.RolloutPlan, got {prompts.plan!r}")
        return prompts.plan.check(len(self.scales))

    def _rollout(self, prompts: PromptBatch, plan: RolloutPlan) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
        """N rows of the plan -> (batch, cond [N], sampled-distribution log-probs [N,T])."""
        r, vc = self.recipe, self.recipe.model.var
        labels = torch.tensor([int(x) for x in prompts.meta[vc.label_column]], dtype=torch.long)
        if labels.min() < 0 or labels.max() >= self.model.num_classes:
            raise ValueError(f"class labels must be in [0, {self.model.num_classes}); got {labels.tolist()}")
        B, G = len(prompts), r.rollout.samples_per_prompt
        kw = dict(temperature=r.rollout.temperature, top_k=r.rollout.top_k, top_p=r.rollout.top_p, cfg=vc.cfg,
                  cfg_schedule=vc.cfg_schedule)
        T, m = self.layout.numel(), plan.split
        if plan.stage == "full":
            per, cond = G, labels.repeat_interleave(G)
            s = self._sample(cond, **kw)
            prefix_id, active = torch.arange(B * G), torch.ones(T, dtype=torch.bool)
        elif plan.stage == "prefix":  # G prefixes per prompt, each completed k times (for V_m, docs/var.md)
            per, pre_cond = G * plan.k, labels.repeat_interleave(G)
            pre = self._sample(pre_cond, stop_scale=m, **kw)
            cond = pre_cond.repeat_interleave(plan.k)
            s = self._sample(cond, prefix=pre.tokens.repeat_interleave(plan.k, 0), start_scale=m, **kw)
            prefix_id, active = torch.arange(B * G).repeat_interleave(plan.k), self.layout < m
        else:  # suffix: one prefix per prompt, G completions from the shared s_m (group key = the prefix)
            per, cond = G, labels.repeat_interleave(G)
            pre = self._sample(labels, stop_scale=m, **kw)
            s = self._sample(cond, prefix=pre.tokens.repeat_interleave(G, 0), start_scale=m, **kw)
            prefix_id, active = torch.arange(B).repeat_interleave(G), self.layout >= m
        N = cond.shape[0]
        H, W = self.image_hw
        extras = {"scale_idx": self.layout.expand(N, T).clone(), "prefix_id": prefix_id,
                  "scale_hw": torch.tensor(self.scales).expand(N, -1, -1).clone(),
                  "image_hw": torch.tensor([H, W]).expand(N, 2).clone()}
        rep = lambda xs: [x for x in xs for _ in range(per)]  # noqa: E731
        batch = RolloutBatch(
            prompt_ids=cond[:, None], prompt_mask=torch.ones(N, 1, dtype=torch.bool), response_ids=s.tokens,
            response_mask=active.expand(N, T).clone(), response_len=torch.full((N,), T), rollout_logprobs=s.logprobs,
            group_id=torch.arange(B).repeat_interleave(per), truncated=torch.zeros(N, dtype=torch.bool),
            prompts=rep(prompts.prompts), completions=[f"<image {H}x{W}>"] * N,
            meta={k: rep(v) for k, v in prompts.meta.items()}, weight_version=self.step, extras=extras)
        return batch, cond, s.sample_logprobs

    def _sample(self, cond: torch.Tensor, prefix: torch.Tensor | None = None, **kw) -> VarSample:
        s = sample_var(self.model, cond.to(self.device), prefix=None if prefix is None else prefix.to(self.device),
                       **kw)
        return VarSample(s.tokens.cpu(), s.logprobs.cpu(), s.sample_logprobs.cpu())

    @torch.no_grad()
    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens.to(self.device)).float().cpu()

    def _logits(self, model, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing logits [n,T,V] on the device (fp32)."""
        return model(tokens.to(self.device), cond.to(self.device)).float()

    @torch.no_grad()
    def _score(self, tokens: torch.Tensor, cond: torch.Tensor):
        """Old-policy log-probs and entropy, and the reference's log-probs, [N,T] each (no grad)."""
        olds, ents, refs = [], [], []
        for rows in torch.arange(tokens.shape[0]).split(self.recipe.train.micro_batch_size):
            tok = tokens[rows].to(self.device)
            logits = self._logits(self.model, tok, cond[rows])
            olds.append(token_logprobs(logits, tok).cpu())
            ents.append(entropy_from_logits(logits).cpu())
            if self.ref_model is not None:
                refs.append(token_logprobs(self._logits(self.ref_model, tok, cond[rows]), tok).cpu())
        return torch.cat(olds), torch.cat(ents), (torch.cat(refs) if refs else None)

    # ---------------------------------------------------------------------------------------- update
    def _update(self, batch, cond, advantages, loss_mask, weight, old_logprobs, ref_logprobs, state) -> dict:
        """The shared update (rltune/train/update.py: run_update) over rows [cond | tokens] (see VarEngine):
        mini-batches, micro-batch accumulation, loss, skip rule and metrics exactly as for text policies."""
        r, a = self.recipe, self.recipe.algo
        T = batch.response_ids.shape[1]
        x = UpdateInputs(torch.cat([cond[:, None], batch.response_ids], 1), torch.ones(len(batch), T + 1,
                         dtype=torch.long), advantages, loss_mask, batch.rollout_logprobs, weight, old_logprobs,
                         None, ref_logprobs, dict(batch.extras))
        # A VAR row has T tokens whatever rollout.max_new_tokens says: that is the seq-mean-token-sum-norm constant.
        spec = dataclasses.replace(UpdateSpec.from_recipe(r, a.kl_coef),
                                   loss_scale_constant=a.loss_scale_constant or T)
        return self.engine.update(x, minibatches(len(batch), a.ppo_epochs, a.mini_batches), spec, state, self.mods)

    # ------------------------------------------------------------------------------------ eval / metrics
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean first reward on the held-out prompts, G samples each, with a fixed sampling seed (the run's RNG
        state is saved and restored, so evaluating does not change training draws)."""
        r, vc = self.recipe, self.recipe.model.var
        t0 = time.perf_counter()
        rows, G = self.eval_rows, r.rollout.samples_per_prompt
        labels = torch.tensor([int(x) for x in rows[vc.label_column]]).repeat_interleave(G)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(r.run.seed + 99_991)
            s = self._sample(labels, temperature=r.rollout.temperature, top_k=r.rollout.top_k,
                             top_p=r.rollout.top_p, cfg=vc.cfg, cfg_schedule=vc.cfg_schedule)
        n = labels.shape[0]
        meta = {k: [x for x in v for _ in range(G)] for k, v in rows.items()}
        inp = image_reward_input(meta[r.data.prompt_column], meta, self._decode(s.tokens), self.step,
                                 completion_ids=s.tokens.tolist())
        return eval_metrics(self.rewards(inp).scores, r.rewards, t0)

    def _step_metrics(self, batch, result, raw, rewards, advantages, loss_mask, weight, sample_lp, plan) -> dict:
        m = loss_mask
        w = (weight if weight is not None else torch.ones_like(advantages)) * m
        per_scale = torch.zeros(len(self.scales)).index_add_(0, self.layout, w.sum(0).float())
        out = {
            "reward/mean": float(torch.nanmean(raw)),
            "reward/shaped_mean": float(torch.nanmean(rewards)),
            "reward/unscorable_frac": float(torch.isnan(raw).float().mean()),
            "algo/adv_abs_mean": float(masked_mean(advantages.abs(), m)) if m.any() else 0.0,
            "rollout/stage": float(STAGES.index(plan.stage)),
            "rollout/rows": float(len(batch)),
            # gap between the sampled distribution (CFG, top-k/p) and the trained one (docs/var.md)
            "rollout/sample_logprob_gap": float(masked_mean(sample_lp - batch.rollout_logprobs, batch.response_mask)),
            "perf/tokens": int(m.sum()),
            **result.metrics,
        }
        total = float(per_scale.sum()) or 1.0
        out |= {f"algo/scale_weight/{t}": float(v) / total for t, v in enumerate(per_scale)}
        return out

    # --------------------------------------------------------------------------------- state and files
    def _load_eval_rows(self) -> dict[str, list] | None:
        ds = load_eval_rows(self.recipe.data, self.base_dir)
        return None if ds is None else ds.to_dict()

    def _weights(self) -> dict[str, torch.Tensor]:
        # A frozen decoder (the official VQVAE) is not saved with every checkpoint: it never changes.
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("vae.")}

    def _save_model(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        # safetensors: a checkpoint's weights must not be able to run code when --resume reads them.
        save_file({k: v.detach().cpu().contiguous() for k, v in self._weights().items()},
                  str(out / "model.safetensors"))

    def _load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        if (folder / "model.safetensors").is_file():
            sd = load_file(str(folder / "model.safetensors"), device="cpu")
        else:  # written by an older rltune
            sd = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        bad = [k for k in missing if not k.startswith("vae.")] + list(unexpected)
        if bad:
            raise RecipeError(f"checkpoint {folder} does not match model.var: {bad[:5]}")

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "engine": self.engine.state_dict(), "loader": self.loader.state_dict(),
                "modifiers": self.mods.state_dict(), "best": self.best, "rng": rng_state()}

    def _load_state(self, sd: dict[str, Any]) -> None:
        self.step = sd["step"]
        self.engine.load_state_dict(sd["engine"])
        self.loader.load_state_dict(sd["loader"])
        self.mods.load_state_dict(sd["modifiers"])
        self.best = sd.get("best")
        set_rng_state(sd["rng"])

    def export(self, out: Path) -> None:
        self._save_model(out)
        (out / "recipe.yaml").write_text(dump_recipe(self.recipe))


class VarEngine(TorchEngine):
    """The shared TorchEngine with the VAR teacher-forcing forward: a row of `input_ids` is [class label | T
    scale-tokens]. Log-probs are the plain policy's (no temperature, no CFG: docs/var.md), in fp32."""

    def forward(self, input_ids, attention_mask, response_len, temperature=1.0, entropy=False, entropy_grad=False):
        device = self.params[0].device
        cond, tokens = input_ids[:, 0].to(device), input_ids[:, 1:].to(device)
        logits = self.model(tokens, cond).float()
        ent = None
        if entropy:
            ent = entropy_from_logits(logits) if entropy_grad else entropy_from_logits(logits.detach())
        return token_logprobs(logits, tokens), ent


def policy_loss(logits: torch.Tensor, tokens: torch.Tensor, old_logprobs: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, a: AlgoConfig, agg):
    """The clipped policy loss of one micro-batch (docs/var.md): agg(ℓ_PG · w, mask).

    logits [n,T,V] (with grad), tokens [n,T], old_logprobs [n,T] or None (on-policy single update: the old policy
    is the current one, so the ratio is 1 with the right gradient), advantages [n,T], mask [n,T] bool, weight [n,T]
    or None (= 1). agg(losses, mask) reduces to a scalar (algo.aggregate with the step's denominators).
    Returns (loss, logprobs [n,T] with grad, old [n,T], clipped [n,T])."""
    lp = token_logprobs(logits, tokens)
    old = lp.detach() if old_logprobs is None else old_logprobs
    pg, clipped = algo.policy_loss(a.policy_loss, lp, old, advantages, mask, clip_low=a.clip_low,
                                   clip_high=a.clip_high, dual_clip_c=a.dual_clip_c)
    if weight is not None:
        pg = pg * weight
    return agg(pg, mask), lp, old, clipped


def _reward_extras(extras: dict[str, list], n: int) -> dict[str, torch.Tensor]:
    """Reward extras (`<reward>/<key>` -> [N] values) as batch tensors under `<key>`: per-sample arrays of one shape
    are stacked ([N,...]); lists of [x0,y0,x1,y1] boxes are padded with NaN rows ([N,K,4]); numbers give [N]."""
    out: dict[str, torch.Tensor] = {}
    for full, vals in extras.items():
        key = full.rsplit("/", 1)[-1]
        if key in out or key in LAYOUT_KEYS:
            raise ValueError(f"reward extra {full!r}: the batch already has extras[{key!r}]; rename one of them")
        if all(isinstance(v, torch.Tensor) or isinstance(v, np.ndarray) for v in vals):
            out[key] = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vals])
        elif all(isinstance(v, (list, tuple)) for v in vals):
            k = max([len(v) for v in vals] + [1])
            t = torch.full((n, k, 4), math.nan)
            for i, boxes in enumerate(vals):
                if boxes:
                    t[i, : len(boxes)] = torch.tensor([list(b) for b in boxes], dtype=torch.float32).view(-1, 4)
            out[key] = t
        else:
            out[key] = torch.tensor([math.nan if v is None else float(v) for v in vals], dtype=torch.float32)
    return out
