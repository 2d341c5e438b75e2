"""The VAR policy family (model.kind: var): GRPO for visual autoregressive (next-scale) policies, trained by the
one step of rltune/trainer.py over token pyramids.

    rltune train recipes/var-tiny.yaml                 # a recipe with model.kind: var

One step (B prompts = class labels, G samples each; a row holds T = Σ_t h_t·w_t scale-tokens, docs/var.md):
  plan      mods.on_prompts may attach a VMR plan (PromptBatch.plan, a RolloutPlan): full | prefix | suffix
  rollout   VarSampler: token pyramids with per-token log-probs (CFG, top-k/top-p); N rows; the loss mask = the
            stage's scales
  reward    decode -> images -> RewardManager(RewardInput(images=...)) -> rewards [N] + spatial extras (boxes)
  advantage algo.estimate over the groups -> mods.shape_advantages (VMR: soft values of the prefixes)
  update    rows [class label | T tokens] -> var_forward's teacher-forcing log-probs [n,T] -> run_update with
            mods.token_weights (scale_reweight, var_mask); then log / checkpoint
Batch extras the modifiers read: scale_idx [N,T], scale_hw [N,S,2], image_hw [N,2], prefix_id [N], and every
reward extra (boxes [N,K,4] NaN-padded, saliency [N,H,W], numbers [N]). Run-directory rules, signals and
checkpoints are RunLoop's, as for the text family (rltune/train/loop.py, rltune/train/checkpoint.py).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rltune import algo
from rltune.config.load import RecipeError, dump_recipe
from rltune.config.schema import AlgoConfig, Recipe
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.families import VAR
from rltune.models.policy import resolve_device
from rltune.models.var import VarPolicy, VarSample, build_var_policy, sample_var, scale_index, token_logprobs
from rltune.ops import entropy_from_logits, masked_mean
from rltune.reward import RewardInput, RewardResult
from rltune.rollout.base import SamplingParams
from rltune.train.engines import LocalEngine
from rltune.train.family import StepTensors
from rltune.train.shared import eval_metrics, image_reward_input, load_eval_rows, reward_input
from rltune.trainer import Trainer
from rltune.visual.var_plan import STAGES, RolloutPlan

LAYOUT_KEYS = ("scale_idx", "scale_hw", "image_hw", "prefix_id")


class VarFamily:
    """rltune.train.family.PolicyFamily for VAR policies. One device (run.device; auto = the GPU when there is
    one); batches live on the CPU and cross to the device at the model's boundary."""

    manifest = VAR
    tokenizer = None
    critic = None

    def __init__(self, r: Recipe, base_dir: Path, resume_from: Path | None):
        self.r, self.base_dir = r, base_dir
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
        self.image_hw = tuple(self.decode(torch.zeros(1, self.layout.numel(), dtype=torch.long)).shape[-2:])
        ds = load_eval_rows(r.data, base_dir)
        self.eval_rows = None if ds is None else ds.to_dict()

    def check_prompts(self, prompts: list[str]) -> None:
        return None  # class labels are checked against the model's classes at each rollout

    def start(self, resume_from: Path | None, run_dir: Path) -> None:
        r = self.r
        self.engine = LocalEngine(self.model, self.ref_model, r.train, r.run.steps * r.algo.updates_per_step,
                                  forward=var_forward)
        self.rollout = VarSampler(self)

    @property
    def response_budget(self) -> int:
        return self.layout.numel()  # a VAR row has T tokens whatever rollout.max_new_tokens says

    def reward_input(self, batch: RolloutBatch, step: int) -> RewardInput:
        return reward_input(batch, step, self.decode(batch.response_ids))

    def on_rewards(self, batch: RolloutBatch, result: RewardResult) -> None:
        batch.extras.update(_reward_extras(result.extras, len(batch)))  # spatial extras (boxes) for modifiers

    def update_rows(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """[class label | T tokens] rows (all attended)."""
        N, T = batch.response_ids.shape
        return torch.cat([batch.prompt_ids[:, :1], batch.response_ids], 1), torch.ones(N, T + 1, dtype=torch.long)

    def forward(self, model, input_ids, attention_mask, response_len, temperature=1.0, entropy=False,
                entropy_grad=False):
        return var_forward(model, input_ids, attention_mask, response_len, temperature, entropy, entropy_grad)

    def sample(self, cond: torch.Tensor, prefix: torch.Tensor | None = None, **kw) -> VarSample:
        s = sample_var(self.model, cond.to(self.device), prefix=None if prefix is None else prefix.to(self.device),
                       **kw)
        return VarSample(s.tokens.cpu(), s.logprobs.cpu(), s.sample_logprobs.cpu())

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens.to(self.device)).float().cpu()

    # ------------------------------------------------------------------------------------ eval / metrics
    @torch.no_grad()
    def evaluate(self, rows, rewards, sampling, step: int) -> dict[str, float]:
        """Mean first reward on the held-out prompts, G samples each at the rollout's sampling settings, with a
        fixed sampling seed (the run's RNG state is saved and restored, so evaluating does not change training
        draws). `sampling` (the text family's greedy settings) is not used: a VAR pyramid is sampled."""
        r, vc = self.r, self.r.model.var
        t0 = time.perf_counter()
        G = r.rollout.samples_per_prompt
        labels = torch.tensor([int(x) for x in rows[vc.label_column]]).repeat_interleave(G)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(r.run.seed + 99_991)
            s = self.sample(labels, temperature=r.rollout.temperature, top_k=r.rollout.top_k,
                            top_p=r.rollout.top_p, cfg=vc.cfg, cfg_schedule=vc.cfg_schedule)
        meta = {k: [x for x in v for _ in range(G)] for k, v in rows.items()}
        inp = image_reward_input(meta[r.data.prompt_column], meta, self.decode(s.tokens), step,
                                 completion_ids=s.tokens.tolist())
        return eval_metrics(rewards(inp).scores, r.rewards, t0)

    def step_metrics(self, batch, result, raw, rewards, s: StepTensors) -> dict[str, Any]:
        m, advantages = s.loss_mask, s.advantages
        w = (s.weight if s.weight is not None else torch.ones_like(advantages)) * m
        per_scale = torch.zeros(len(self.scales)).index_add_(0, self.layout, w.sum(0).float())
        plan, sample_lp = self.rollout.last_plan, self.rollout.last_sample_logprobs
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

    def describe(self, batch: RolloutBatch, i: int) -> dict[str, Any]:
        return {"prompt": batch.prompts[i]}

    # --------------------------------------------------------------------------------- files
    def _weights(self) -> dict[str, torch.Tensor]:
        # A frozen decoder (the official VQVAE) is not saved with every checkpoint: it never changes.
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("vae.")}

    def save_model(self, out: Path) -> None:
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

    def export(self, out: Path) -> None:
        self.save_model(out)
        (out / "recipe.yaml").write_text(dump_recipe(self.r))


class VarTrainer(Trainer):
    """The one Trainer step (rltune/trainer.py) with the VAR family."""

    family_cls = VarFamily
    NONFINITE = "gradient"
    DIVERGED_ADVICE = "Lower train.lr, set train.max_grad_norm, or check rewards/modifiers"


class VarSampler:
    """The VAR family's rollout engine (rltune.rollout.base.RolloutEngine): N token pyramids of a step's prompts
    by the plan a modifier attached (VMR), sampled from the policy this process trains (sync only counts
    versions) with the step's torch seed (sampling.seed is not used). Keeps the last step's plan and
    sampled-distribution log-probs for the step's metrics."""

    def __init__(self, family: VarFamily):
        self.f = family
        self.weight_version = 0
        self.last_plan, self.last_sample_logprobs = RolloutPlan(), None

    def sync(self, model: Any, version: int, weights_ref: Any = None) -> None:
        self.weight_version = version

    def shutdown(self) -> None:
        return None

    def plan(self, prompts: PromptBatch) -> RolloutPlan:
        """The step's sampling plan a modifier (VMR) attached to the prompts; `full` without one."""
        if prompts.plan is None:
            return RolloutPlan()
        if not isinstance(prompts.plan, RolloutPlan):
            raise ValueError(f"the VAR trainer samples by a rltune.visual.var_plan.RolloutPlan, got {prompts.plan!r}")
        return prompts.plan.check(len(self.f.scales))

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """N rows of the plan (sampling.n = G per prompt; the loss mask = the stage's scales)."""
        f, vc = self.f, self.f.r.model.var
        plan = self.plan(prompts)
        labels = torch.tensor([int(x) for x in prompts.meta[vc.label_column]], dtype=torch.long)
        if labels.min() < 0 or labels.max() >= f.model.num_classes:
            raise ValueError(f"class labels must be in [0, {f.model.num_classes}); got {labels.tolist()}")
        B, G = len(prompts), sampling.n
        kw = dict(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, cfg=vc.cfg,
                  cfg_schedule=vc.cfg_schedule)
        T, m = f.layout.numel(), plan.split
        if plan.stage == "full":
            per, cond = G, labels.repeat_interleave(G)
            s = f.sample(cond, **kw)
            prefix_id, active = torch.arange(B * G), torch.ones(T, dtype=torch.bool)
        elif plan.stage == "prefix":  # G prefixes per prompt, each completed k times (for V_m, docs/var.md)
            per, pre_cond = G * plan.k, labels.repeat_interleave(G)
            pre = f.sample(pre_cond, stop_scale=m, **kw)
            cond = pre_cond.repeat_interleave(plan.k)
            s = f.sample(cond, prefix=pre.tokens.repeat_interleave(plan.k, 0), start_scale=m, **kw)
            prefix_id, active = torch.arange(B * G).repeat_interleave(plan.k), f.layout < m
        else:  # suffix: one prefix per prompt, G completions from the shared s_m (group key = the prefix)
            per, cond = G, labels.repeat_interleave(G)
            pre = f.sample(labels, stop_scale=m, **kw)
            s = f.sample(cond, prefix=pre.tokens.repeat_interleave(G, 0), start_scale=m, **kw)
            prefix_id, active = torch.arange(B).repeat_interleave(G), f.layout >= m
        N = cond.shape[0]
        H, W = f.image_hw
        extras = {"scale_idx": f.layout.expand(N, T).clone(), "prefix_id": prefix_id,
                  "scale_hw": torch.tensor(f.scales).expand(N, -1, -1).clone(),
                  "image_hw": torch.tensor([H, W]).expand(N, 2).clone()}
        rep = lambda xs: [x for x in xs for _ in range(per)]  # noqa: E731
        self.last_plan, self.last_sample_logprobs = plan, s.sample_logprobs
        return RolloutBatch(
            prompt_ids=cond[:, None], prompt_mask=torch.ones(N, 1, dtype=torch.bool), response_ids=s.tokens,
            response_mask=active.expand(N, T).clone(), response_len=torch.full((N,), T), rollout_logprobs=s.logprobs,
            group_id=torch.arange(B).repeat_interleave(per), truncated=torch.zeros(N, dtype=torch.bool),
            prompts=rep(prompts.prompts), completions=[f"<image {H}x{W}>"] * N,
            meta={k: rep(v) for k, v in prompts.meta.items()}, weight_version=self.weight_version, extras=extras)


def var_forward(model, input_ids, attention_mask, response_len, temperature=1.0, entropy=False, entropy_grad=False):
    """The VAR teacher-forcing forward: a row of `input_ids` is [class label | T scale-tokens] -> log-probs [n,T]
    (+ entropy) of the plain policy (no temperature, no CFG: docs/var.md), in fp32."""
    device = next(model.parameters()).device
    cond, tokens = input_ids[:, 0].to(device), input_ids[:, 1:].to(device)
    logits = model(tokens, cond).float()
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
