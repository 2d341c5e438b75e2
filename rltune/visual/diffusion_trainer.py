"""`DiffusionTrainer.fit()`: reward-backprop post-training of a diffusion policy, one step read top to bottom.

    rltune train recipes/diffusion-tiny-alignprop.yaml       # model.kind: diffusion selects this trainer

One step (B prompts, G samples each, N = B·G images, T denoising steps):
rollout (no grad, every latent recorded) -> reward (images [N,3,H,W]) -> advantage ([N,T], per denoising step)
-> update: the modifiers' extra_loss (AlignProp / Direct-Align re-run part of the chain *with* gradient through the
policy handle in `DiffusionLossContext`; DDPO's clipped policy gradient uses the advantages), per micro-batch,
then one optimizer step -> log / eval / checkpoint.
Run-directory rules, signals, atomic checkpoints and `--resume` are RunLoop's (rltune/train/loop.py), as for text.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from rltune import algo
from rltune.config.schema import Recipe
from rltune.data.prompts import PromptLoader, load_rows
from rltune.families import DIFFUSION, check_support
from rltune.models.diffusion import load_diffusion_policy
from rltune.models.policy import resolve_device
from rltune.modifiers.base import GradView, Modifier, PromptContext, StepState
from rltune.modifiers.pipeline import ModifierError, ModifierPipeline
from rltune.reward import RewardManager
from rltune.reward.image import TextImageScorer, is_differentiable, weighted_image_reward
from rltune.train import checkpoint as ckpt
from rltune.train.loop import RunDirError, RunLoop, rng_state, set_rng_state
from rltune.train.shared import (best_worst_samples, eval_metrics, image_reward_input, load_eval_rows, minibatches,
                                 step_seed)
from rltune.train.torch_engine import TorchEngine
from rltune.visual.diffusion_context import DiffusionAdvantageContext, DiffusionLossContext
from rltune.watchdog import Watchdog

EVAL_NOISE_SALT = 4_242


class DiffusionTrainer(RunLoop):
    manifest = DIFFUSION
    DIVERGED_ADVICE = "Lower train.lr or check the rewards for inf"

    def _build(self, resume_from: Path | None) -> None:
        r = self.recipe
        check_support(r, base_dir=self.base_dir)   # every key set is honoured, every modifier runs (families.py)
        self.device = resolve_device(r.run.device)

        # Policy: denoiser (+ LoRA) with its schedule, text encoder and VAE; only the trainable part is saved.
        self.model = load_diffusion_policy(r.model, r.run.seed, self.device)
        self.params = [p for _, p in self.model.trainable()]
        if not self.params:
            raise RunDirError("the diffusion policy has no trainable parameter (check model.lora.target_modules)")
        # The shared engine (rltune/train/torch_engine.py): AdamW, the one LR schedule, clipping, skip rule. It
        # holds the denoiser, whose trainable weights are the policy's; its train/eval mode is left as loaded.
        mode = self.model.denoiser.training
        self.engine = TorchEngine(self.model.denoiser, r.train, r.run.steps * r.algo.updates_per_step)
        self.model.denoiser.train(mode)

        # Rewards: all of them score the rollout (logs, eval); the differentiable ones form the backprop objective.
        self.rewards = RewardManager(r.rewards, base_dir=self.base_dir)
        objs = [getattr(fn, "fn", fn) for fn in self.rewards.fns]
        bad = [s.metric_name for s, o in zip(r.rewards, objs) if s.weight != 0 and not is_differentiable(o)]
        if bad:
            raise ModifierError(f"reward(s) {bad} are not differentiable (no score_images / differentiable=True), so "
                                "reward backprop cannot use them; give them weight: 0 to log them only")
        self.diff_rewards = [(s.weight, o) for s, o in zip(r.rewards, objs) if is_differentiable(o)]
        self.scorers = tuple(o for w, o in self.diff_rewards if w != 0 and isinstance(o, TextImageScorer))
        self.mods = ModifierPipeline.from_specs(r.modifiers, base_dir=self.base_dir)
        if not any(type(m).extra_loss is not Modifier.extra_loss for _, m in self.mods.mods):
            raise ModifierError("a diffusion recipe trains through its modifiers' extra_loss: add `modifiers: "
                                "[{use: alignprop}]`, `[{use: direct_align}]` (reward backprop) or `[{use: ddpo}]` "
                                "(policy gradient)")
        if r.algo.advantage in algo.NEEDS_VALUES:
            raise ModifierError(f"algo.advantage={r.algo.advantage} needs a critic, which diffusion policies do not "
                                "have; use a critic-free estimator (group_norm, rloo, ...)")

        self.loader = PromptLoader(load_rows(r.data, r.data.split, base_dir=self.base_dir), r.data, None, r.run.seed)
        self.eval_prompts = self._load_eval_prompts()
        self._claim_run_dir()  # policy, rewards, modifiers and data loaded: --overwrite may now delete
        if resume_from is not None:
            from safetensors.torch import load_file

            self.model.load_trained_state(load_file(str(resume_from / "model" / "denoiser_trained.safetensors")))
            self._load_state(ckpt.load_state(resume_from))
        self.last_eval_images: torch.Tensor | None = None
        self.watchdog = Watchdog(r.run.watchdog_s, self.run_dir)  # last: its clock starts with the run

    # ------------------------------------------------------------------------------------ RunLoop hooks
    def _has_eval(self) -> bool:
        return bool(self.eval_prompts)

    def _save_model(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def export(self, out: Path) -> None:
        """The final folder holds what a checkpoint holds: the trained part of the denoiser."""
        self.model.save_pretrained(out)

    # ------------------------------------------------------------------------------------------- the step
    def train_step(self) -> dict[str, Any]:
        r = self.recipe
        state = StepState(step=self.step, seed=r.run.seed, total_steps=r.run.steps)
        seed = step_seed(r.run.seed, self.step)
        torch.manual_seed(seed)  # reseeding per step: a resumed run draws what the uninterrupted one drew
        gen = torch.Generator().manual_seed(seed)
        timers: dict[str, float] = defaultdict(float)
        t_step = time.perf_counter()
        G = r.rollout.samples_per_prompt

        # -- rollout: B prompts -> N = B·G images, no grad; the chain's latents [T+1,N,...] are kept for the update
        with self._phase(timers, "time/rollout"):
            prompts = self.mods.on_prompts(self.loader.next(r.rollout.prompts_per_step), PromptContext(state, None, G))
            texts = [p for p in prompts.prompts for _ in range(G)]
            meta = {k: [v for v in col for _ in range(G)] for k, col in prompts.meta.items()}
            ro = self.model.rollout(texts, gen)

        # -- reward: every reward scores the images (logging); raw rewards [N] (NaN = unscorable)
        with self._phase(timers, "time/reward"):
            res = self.rewards(image_reward_input(texts, meta, ro.images, self.step))
            raw = res.rewards

        # -- advantage: rewards [N] -> [N,T] per denoising step (group_norm: over the G images of a prompt), then
        #    modifiers (ddpo: DDPO's per-prompt statistics); read by ddpo, ignored by reward backprop
        N, a = len(texts), r.algo
        with self._phase(timers, "time/advantage"):
            group_id = torch.arange(len(prompts)).repeat_interleave(G)
            mask = torch.ones(N, self.model.num_steps, dtype=torch.bool)
            advantages, _ = algo.estimate(a.advantage, raw, group_id, mask, gamma=a.gamma, lam=a.lam,
                                          scale=a.scale_rewards, eps=a.std_eps)
            advantages = self.mods.shape_advantages(advantages, DiffusionAdvantageContext(texts, raw, group_id, state))

        # -- update: one optimizer step per mini-batch (algo.ppo_epochs passes × algo.mini_batches), the modifiers'
        #    loss terms per micro-batch accumulating; ddpo's old policy is the rollout's, so its ratio moves after
        #    the first step
        with self._phase(timers, "time/update"):
            stats = self._update(ro, raw, advantages, state)
        metrics = {"reward/mean": float(torch.nanmean(raw)), "reward/std": float(raw[~raw.isnan()].std())
                   if int((~raw.isnan()).sum()) > 1 else 0.0, **res.metrics, **stats, **timers}
        metrics["time/step"] = time.perf_counter() - t_step
        metrics |= self.mods.on_step_end(metrics, state)
        self._last_samples = best_worst_samples(raw, lambda i: {"prompt": texts[i],
                                                                "completion": f"[image {i} of step {self.step + 1}]"})
        return metrics

    def _update(self, ro, raw: torch.Tensor, advantages: torch.Tensor, state: StepState) -> dict[str, float]:
        """Loss terms and optimizer steps over the rollout's N rows; losses are averaged over the updates."""
        r, a = self.recipe, self.recipe.algo
        plan = minibatches(len(raw), a.ppo_epochs, a.mini_batches)
        acc: dict[str, float] = defaultdict(float)
        stats: dict[str, float] = {"train/optimizer_steps": 0.0}
        for u, part in enumerate(plan):
            self.engine.optimizer.zero_grad(set_to_none=True)
            loss_u = 0.0
            for rows in part.split(r.train.micro_batch_size):
                ctx = DiffusionLossContext(rows, ro.rows(rows.to(ro.latents.device)), self.model, self._reward_fn,
                                           self.scorers, raw[rows], state, len(part), advantages[rows],
                                           epoch=u // a.mini_batches)
                terms = self.mods.extra_loss(ctx)
                loss = sum(terms.values())
                for name, term in terms.items():
                    acc[f"loss/{name}"] += float(term.detach()) / len(plan)
                if isinstance(loss, torch.Tensor) and loss.requires_grad:
                    loss.backward()
                loss_u += float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            acc["loss/total"] += loss_u / len(plan)
            self.mods.on_gradients(GradView(self.model.trainable()), state)
            # A skipped step leaves weights, optimizer state and the LR schedule where they were.
            if not (self.engine.grads_finite() and math.isfinite(loss_u)):
                self.engine.skip_step()
                stats["train/skipped_step"] = stats.get("train/skipped_step", 0.0) + 1.0
            else:
                stats["train/lr"] = self.engine.lr
                stats["train/grad_norm"] = self.engine.step()
                stats["train/optimizer_steps"] += 1.0
        return dict(acc) | stats

    def _reward_fn(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The differentiable objective Σ_k w_k R_k(images): [n,3,H,W] -> [n], with grad."""
        return weighted_image_reward(self.diff_rewards, images, prompts)

    # ------------------------------------------------------------------------------------ eval / metrics
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic samples (eta 0) from fixed noise on the held-out prompts; eval/accuracy = first reward."""
        t0 = time.perf_counter()
        prompts = self.eval_prompts
        g = torch.Generator().manual_seed(self.recipe.run.seed * 7 + EVAL_NOISE_SALT)
        noise = torch.randn((len(prompts), *self.model.latent_shape), generator=g)
        bs = self.recipe.rollout.batch_size  # eval in chunks of a training batch: it fits where training fits
        self.last_eval_images = torch.cat([self.model.rollout(prompts[i:i + bs], g, eta=0.0, noise=noise[i:i + bs])
                                           .images.cpu() for i in range(0, len(prompts), bs)])
        # What changed is easiest seen: one PNG grid per evaluation, same noises every time.
        image_grid(self.last_eval_images, self.run_dir / "samples" / f"eval_step_{self.step:06d}.png",
                   scale=max(1, 64 // self.last_eval_images.shape[-1]))
        s = self.rewards(image_reward_input(prompts, {}, self.last_eval_images, self.step)).scores
        return eval_metrics(s, self.recipe.rewards, t0)

    def _load_eval_prompts(self) -> list[str]:
        d = self.recipe.data
        ds = load_eval_rows(d, self.base_dir)
        if ds is None:
            return []
        prompts = list(ds[d.prompt_column])
        # Few held-out prompts: each gets several fixed noises so the eval mean is over ≥ 16 images.
        return [p for p in prompts for _ in range(max(1, math.ceil(16 / len(prompts))))]

    # --------------------------------------------------------------------------------- state and files
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "engine": self.engine.state_dict(), "loader": self.loader.state_dict(), "modifiers": self.mods.state_dict(), "best": self.best,
                "rng": rng_state()}

    def _load_state(self, sd: dict[str, Any]) -> None:
        self.step = sd["step"]
        # Checkpoints before the shared engine kept {"optimizer", "lr_sched"}: the same two state dicts.
        self.engine.load_state_dict(sd["engine"] if "engine" in sd else
                                    {"optimizer": sd["optimizer"], "scheduler": sd["lr_sched"]})
        self.loader.load_state_dict(sd["loader"])
        self.mods.load_state_dict(sd["modifiers"])
        self.best = sd.get("best")
        set_rng_state(sd["rng"])


def image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4) -> Path:
    """Save [N,3,H,W] images in [0,1] as one PNG grid (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image

    x = images.detach().float().clamp(0, 1).cpu()
    n, _, h, w = x.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    grid = torch.ones(3, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r_, c_ = divmod(i, cols)
        grid[:, 1 + r_ * (h + 1):1 + r_ * (h + 1) + h, 1 + c_ * (w + 1):1 + c_ * (w + 1) + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
