"""The recipe tree: the one place where rltune's defaults live (with model.py, the `model:` section).

Every model is frozen and strict (`extra="forbid"`): a typo fails at load with the YAML path and the valid
keys (see `load.py`). Derived values are properties, never stored fields.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from rltune.config.base import Section
# The model section lives in model.py; its classes are part of this module's API.
from rltune.config.model import (  # noqa: F401
    DiffusionModelConfig,
    LoraConfig,
    ModelConfig,
    TinyDenoiserConfig,
    TinyModelConfig,
    TinyVarConfig,
    VarModelConfig,
)


# ----------------------------------------------------------------------------------------------- run
class RunConfig(Section):
    name: str = Field("rltune", description="Run name; used for the run directory and loggers.")
    seed: int = Field(0, description="Seeds data order, sampling, init and every modifier's RNG.")
    output_dir: str = Field("runs/${name}", description="Run directory (`${name}` is replaced by run.name).")
    steps: PositiveInt = Field(100, description="Optimizer steps of RL training (one rollout batch each).")
    log_interval: PositiveInt = Field(1, description="Print/log a metrics line every k steps.")
    eval_interval: int | None = Field(None, ge=0, description="Held-out evaluation every k steps and at start/end "
                                      "(unset = only at start/end; 0 = never, e.g. for a quick trial).")
    save_interval: int = Field(0, ge=0, description="Checkpoint every k steps (0 = only at the end / on signal).")
    keep_last: PositiveInt = Field(2, description="How many step checkpoints to keep.")
    save_final: bool = Field(True, description="At the end of a complete run write a checkpoint and run_dir/final; "
                             "false: a trial run writes no weights (a stop by signal still checkpoints).")
    checkpoint_optimizer: bool = Field(True, description="Checkpoints hold AdamW's moments (2× the weights in fp32); "
                                       "false: smaller checkpoints, and a resume restarts the moments.")
    threads: int = Field(0, ge=0, description="torch intra-op threads (0 = torch's default).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the driver's policy runs (rollout, scoring, single-process training): auto = "
        "cuda when a GPU is visible, else cpu. Training ranks (cluster.train_ranks) pick theirs from gpus_per_rank.")
    watchdog_s: float = Field(
        0.0, ge=0.0, description="Dump all stacks and name the phase when one makes no progress this long (0 = off)."
    )

    @property
    def run_dir(self) -> str:
        return self.output_dir.replace("${name}", self.name)


# ----------------------------------------------------------------------------------------------- data
class DataConfig(Section):
    source: str = Field(
        ...,
        description="`builtin:<task>` (e.g. builtin:addition), a local .jsonl/.json/.parquet/.csv file, or a "
        "datasets hub name (needs network).",
    )
    task_args: dict[str, Any] = Field(default_factory=dict, description="Arguments of a builtin task.")
    split: str = "train"
    eval_source: str | None = Field(None, description="Held-out set: a file, or None for the task's own test split.")
    eval_split: str = "test"
    eval_size: int = Field(0, ge=0, description="Use the first k held-out rows (0 = all).")
    prompt_column: str = "prompt"
    answer_column: str | None = Field("answer", description="Column the accuracy check compares with.")
    chat_template: bool = Field(False, description="Wrap prompts with the tokenizer's chat template.")
    system_prompt: str | None = None
    shuffle: bool = True
    max_prompt_tokens: PositiveInt = 512


# -------------------------------------------------------------------------------------------- rollout
class VLLMConfig(Section):
    """vLLM engine settings (rollout.engine=vllm; `pip install 'rltune[gpu]'`)."""

    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="Share of the GPU vLLM may take (weights "
                                          "+ KV cache); colocated with training, leave room for it.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = Field(False, description="No CUDA graphs (faster start, slower decode).")


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="Rollout engine: `hf` (the in-process transformers model) or `vllm` (GPU; in the driver, "
        "or in each rollout worker with cluster.rollout_workers). vLLM does not take LoRA policies yet.")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    decode: Literal["loop", "generate"] = Field(
        "loop", description="How the `hf` engine decodes: `loop` = rltune's loop (each prompt prefilled once per "
        "group, only the sampled tokens' log-probs kept; falls back to generate for hints or a model without a "
        "KV cache), `generate` = transformers.generate.")
    prompts_per_step: PositiveInt = Field(16, description="B: prompts per optimizer step.")
    samples_per_prompt: PositiveInt = Field(8, description="G: completions per prompt (the GRPO group).")
    max_new_tokens: PositiveInt = 64
    temperature: PositiveFloat = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off.")
    max_staleness: int = Field(
        0, ge=0, description="Async rollouts (Ray rollout workers): the workers sample up to this many steps ahead "
        "of the trainer, and no row trained at step t was sampled by weights older than t − max_staleness. 0 = the "
        "synchronous loop. Correct the off-policy gap with the `tis` or `icepop` modifiers (docs/scaling.md).")

    @property
    def batch_size(self) -> int:
        """N = B·G completions per step."""
        return self.prompts_per_step * self.samples_per_prompt


# ----------------------------------------------------------------------------------------------- algo
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


Advantage = Literal["group_norm", "group_mean", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"]
KLEstimator = Literal["k1", "k2", "k3", "abs", "k1+", "k2+", "k3+", "abs+"]
CRITIC_FREE = ("group_norm", "group_mean", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_RELATIVE = ("group_norm", "group_mean", "rloo", "reinforce_pp_baseline")  # need >= 2 samples per prompt


class DynamicSamplingConfig(Section):
    """DAPO dynamic sampling (2503.14476 §3.2; verl `algorithm.filter_groups`; TRL has none)."""

    enabled: bool = Field(False, description="Drop prompt groups whose raw reward is constant (all right or all "
                          "wrong: zero advantage) and generate more prompts until prompts_per_step groups vary.")
    max_rounds: int = Field(
        10, ge=0, description="Most generation rounds per step, the first included (verl max_num_gen_batches, whose "
        "default 0 = unlimited); hitting it stops the run with an error that says what to change. 0 = unlimited.")


class AlgoConfig(Section):
    advantage: Advantage = Field(
        "group_norm",
        description="Advantage estimator: group_norm (GRPO), group_mean (Dr.GRPO), rloo, reinforce_pp (batch-whitened "
        "discounted returns), reinforce_pp_baseline (group mean, then batch whitening), gae (PPO; needs `critic:`). "
        "verl: algorithm.adv_estimator (grpo, rloo, reinforce_plus_plus, ...); OpenRLHF: advantage.estimator.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="group_norm only: divide by the group std (GRPO), the batch std (TRL 'batch'), or not at "
        "all (= group_mean). verl: norm_adv_by_std_in_grpo; TRL: scale_rewards."
    )
    std_eps: float = Field(1e-6, gt=0, description="Added to the std (verl's 1e-6; TRL uses 1e-4).")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount of reinforce_pp and gae (verl default 1.0).")
    lam: float = Field(1.0, ge=0.0, le=1.0, description="GAE λ (verl default 1.0; TRL PPO 0.95).")
    policy_loss: Literal["ppo_clip", "gspo"] = Field(
        "ppo_clip", description="ppo_clip: token-level ratio (PPO/GRPO/DAPO); gspo: sequence-level ratio (GSPO, "
        "2507.18071; needs loss_agg seq-mean-token-mean, and differs from ppo_clip only off-policy, i.e. with "
        "ppo_epochs or mini_batches > 1). verl: actor.policy_loss.loss_mode; TRL: importance_sampling_level."
    )
    ppo_epochs: PositiveInt = Field(
        1, description="Passes over each rollout batch (verl ppo_epochs; TRL num_iterations). With ppo_epochs or "
        "mini_batches > 1 the old log-probs are recomputed once before the first update."
    )
    mini_batches: PositiveInt = Field(
        1, description="Optimizer steps per pass: the rollout batch splits into this many mini-batches (rows, in "
        "order, as verl's default shuffle=False), each normalised by its own token/sequence counts. verl sets the "
        "size instead (ppo_mini_batch_size); TRL steps_per_generation."
    )
    clip_low: float = Field(0.2, ge=0.0, description="PPO clip ε_low: ratio ≥ 1-ε_low (GSPO paper: 3e-4).")
    clip_high: float = Field(0.2, ge=0.0, description="PPO clip ε_high: ratio ≤ 1+ε_high (DAPO: 0.28; GSPO: 4e-4).")
    dual_clip_c: float | None = Field(None, gt=1.0, description="Dual-clip bound c for A<0, ppo_clip only (verl: "
                                      "3.0; TRL has none).")
    kl_coef: float = Field(0.0, ge=0.0, description="β of the KL to the reference (the initial β with the adaptive "
                           "controller); the reference model loads only if > 0. verl: kl_loss_coef / kl_ctrl.kl_coef; "
                           "TRL GRPO: beta.")
    kl_estimator: KLEstimator = Field(
        "k3", description="k1 = log π/π_ref, k2 = ½(log-ratio)², k3 = e^-x+x-1 (verl low_var_kl), abs; a '+' suffix "
        "keeps the value but takes k2's gradient (straight-through, loss placement only). TRL GRPO: k3 only."
    )
    kl_placement: Literal["loss", "reward"] = Field(
        "loss", description="loss: β·agg(kl_t) added to the loss (verl use_kl_loss; TRL GRPO). reward: r_t − β·kl_t "
        "of the rollout policy, before the estimator; outcome estimators get r − β·Σ_t kl_t (verl use_kl_in_reward, "
        "OpenRLHF's default; TRL RLOO)."
    )
    kl_controller: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed β, or adaptive toward kl_target (Ziegler et al. 1909.08593; verl kl_ctrl.type)."
    )
    kl_target: PositiveFloat | None = Field(None, description="Adaptive controller: target rollout KL (per-token "
                                            "mean per sequence, averaged; verl kl_ctrl.target_kl, e.g. 0.1).")
    kl_horizon: PositiveInt = Field(10_000, description="Adaptive controller horizon in samples (verl 10000).")
    loss_agg: LossAgg = Field("token-mean", description="How per-token losses reduce to a scalar (verl "
                              "loss_agg_mode; TRL loss_type: dapo/bnpo = token-mean, grpo = seq-mean-token-mean, "
                              "dr_grpo = seq-mean-token-sum-norm).")
    loss_scale_constant: PositiveInt | None = Field(
        None, description="L for seq-mean-token-sum-norm (Σ/(N·L)); default rollout.max_new_tokens."
    )
    entropy_coef: float = Field(0.0, description="Entropy bonus coefficient (0 = entropy only logged).")
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    mask_truncated: bool = Field(False, description="Overlong filtering (DAPO): completions that hit "
                                 "max_new_tokens without EOS get no loss (TRL mask_truncated_completions).")

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per rollout batch: ppo_epochs × mini_batches (1 = on-policy)."""
        return self.ppo_epochs * self.mini_batches

    @model_validator(mode="after")
    def _combinations(self) -> "AlgoConfig":
        if self.policy_loss == "gspo":
            if self.loss_agg != "seq-mean-token-mean":
                raise ValueError("algo.policy_loss=gspo is a sequence-level objective: set algo.loss_agg: "
                                 f"seq-mean-token-mean (verl forces it; got {self.loss_agg})")
            if self.dual_clip_c is not None:
                raise ValueError("algo.dual_clip_c applies to policy_loss=ppo_clip only; remove it for gspo")
            if self.updates_per_step == 1:
                warnings.warn("algo.policy_loss=gspo with ppo_epochs=1 and mini_batches=1 is on-policy: the sequence "
                              "ratio is 1, so the update equals ppo_clip with seq-mean-token-mean. GSPO differs only "
                              "off-policy (the paper takes 4 mini-batches per rollout: algo.mini_batches: 4)",
                              stacklevel=2)
        if self.kl_controller == "adaptive":
            if self.kl_target is None:
                raise ValueError("algo.kl_controller=adaptive needs algo.kl_target (the rollout KL to steer toward, "
                                 "e.g. 0.1)")
            if self.kl_coef <= 0:
                raise ValueError("algo.kl_controller=adaptive scales β multiplicatively from algo.kl_coef: set "
                                 "kl_coef > 0 (e.g. 0.001)")
        elif self.kl_target is not None:
            raise ValueError("algo.kl_target is only used by kl_controller: adaptive; set that, or remove kl_target")
        if self.kl_placement == "reward" and self.kl_estimator.endswith("+"):
            raise ValueError(f"algo.kl_estimator={self.kl_estimator}: a '+' variant only changes the gradient, and "
                             f"with kl_placement=reward the KL is a detached reward; use {self.kl_estimator[:-1]}")
        return self


# ---------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    lr: PositiveFloat = 1e-6
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="LR warmup in optimizer steps (ppo_epochs × mini_batches "
                              "of them per RL step).")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    micro_batch_size: PositiveInt = Field(64, description="Completions per forward/backward (gradient accumulation).")
    max_tokens_per_micro_batch: PositiveInt | None = Field(
        None, description="Form the update's micro-batches by a token budget instead of micro_batch_size rows: "
        "consecutive rows while their real tokens (prompt + response, no padding) fit; a longer row goes alone. The "
        "loss is normalised by the mini-batch's counts, so the gradient does not depend on the split. None = rows.")
    autocast: Literal["off", "bfloat16"] = Field(
        "off", description="MEMORY OVER EXACTNESS: run the update's forward under bf16 autocast (weights, gradients "
        "and AdamW stay fp32; the LM head and the log-probs stay fp32). Activations are about half the bytes, but the "
        "log-probs differ from the fp32 ones by bf16 rounding (scoring stays fp32, so with ppo_epochs or mini_batches "
        "> 1 the first ratio is not exactly 1). off = exact fp32 (or the model's dtype).")
    padding_free: Literal["auto", "on", "off"] = Field(
        "auto", description="Run a micro-batch's real tokens as one packed sequence (per-row position ids, "
        "block-diagonal causal attention) where the shared-prompt forward is not taken. auto: only under "
        "flash-attention (varlen kernels); sdpa/eager would build a dense block mask over all the tokens, slower "
        "than padding on short rows. on: always (exact either way). off: padded rows.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the global gradient norm (None = off).")
    max_skipped_steps: PositiveInt = Field(
        5, description="Steps with a non-finite loss/gradient are skipped (weights untouched); this many in a row "
        "stop the run, leaving the last good checkpoint intact."
    )


class CriticConfig(Section):
    """PPO's value model (a transformers backbone + a linear value head) with its own optimizer. Used by
    algo.advantage=gae, which requires it. verl: `critic.*`, `trainer.critic_warmup`; TRL: PPOTrainer's
    value_model (experimental)."""

    path: str | None = Field(None, description="Model folder for the backbone; default (with `tiny` unset) the "
                             "policy's starting model: the SFT output if the recipe has `sft:`, else model.path/tiny.")
    tiny: TinyModelConfig | None = Field(None, description="Build a random-init tiny backbone instead.")
    lr: PositiveFloat = Field(1e-5, description="Critic learning rate (verl critic.optim.lr 1e-5).")
    vf_coef: PositiveFloat = Field(1.0, description="Scale of the value loss. The critic is a separate model with "
                                   "its own AdamW, so this mostly interacts with max_grad_norm (TRL's vf_coef=0.1 "
                                   "weighs it against a shared-backbone policy loss).")
    value_clip: PositiveFloat | None = Field(0.5, description="Clip V around the rollout-time value: V_old ± c "
                                             "(verl cliprange_value 0.5; TRL 0.2). None = off.")
    warmup_steps: int = Field(0, ge=0, description="First k steps update only the critic; the policy stays fixed "
                              "(verl trainer.critic_warmup). They count toward run.steps.")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the critic's gradient norm (None = off).")

    @model_validator(mode="after")
    def _one_source(self) -> "CriticConfig":
        if self.path is not None and self.tiny is not None:
            raise ValueError("set at most one of critic.path or critic.tiny (neither = the policy's starting model)")
        return self


class SFTConfig(Section):
    """Cold-start SFT with TRL's SFTTrainer (`rltune sft`): loss on the answer only."""

    output_dir: str = Field(..., description="Where the warmed-up model goes; `rltune train` starts from it.")
    steps: PositiveInt = 500
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128
    warmup_steps: int = Field(100, ge=0)
    num_examples: PositiveInt = Field(64000, description="Training examples drawn from the data source.")
    stop_at_accuracy: float | None = Field(
        None, gt=0.0, le=1.0, description="Stop SFT once greedy accuracy (the first reward's mean) on a validation "
        "set held back from the SFT rows reaches this value; `steps` is then the maximum. RL then starts from the "
        "same level on every machine, where a fixed step count lands anywhere on a steep SFT curve. None = run "
        "`steps`.")
    val_examples: PositiveInt = Field(200, description="Validation rows for stop_at_accuracy: the last rows of the "
                                      "SFT data (a builtin task draws them in addition), never trained on.")
    eval_every: PositiveInt = Field(10, description="SFT steps between two validation checks (stop_at_accuracy).")


# -------------------------------------------------------------------------------------------- plugins
class RewardSpec(Section):
    use: str = Field(..., description="Entry point name, `pkg.mod:Attr` or `path/file.py:Attr`.")
    name: str | None = Field(None, description="Metric name (reward/<name>); defaults to the `use` tail.")
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments: passed to a class's constructor, or bound to a function (functools.partial).")
    style: Literal["auto", "native", "trl", "verl"] = Field(
        "auto", description="Calling convention; `auto` detects it from the signature."
    )
    timeout_s: PositiveFloat | None = Field(
        60.0, description="Per-call timeout in seconds (a hanging reward stops the run naming it, or scores n/a with "
        "on_error: none); the call runs in a thread, which is abandoned, not killed. None = no limit, the call runs "
        "in the trainer's own thread.")
    on_error: Literal["raise", "none"] = Field(
        "raise", description="A failing call stops the run (`raise`) or scores the batch as n/a (`none`)."
    )

    @property
    def metric_name(self) -> str:
        return self.name or self.use.rsplit(":", 1)[-1].rsplit("/", 1)[-1].rsplit(".", 1)[-1]


class ModifierSpec(Section):
    use: str = Field(..., description="Entry point name, `pkg.mod:Attr` or `path/file.py:Attr`.")
    name: str | None = Field(None, description="Metric prefix mod/<name>/ and checkpoint key.")
    args: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name or self.use.rsplit(":", 1)[-1].rsplit("/", 1)[-1].lower()


class EnvSpec(Section):
    """A multi-turn environment (docs/agents.md): rollouts alternate model turns and its observations, which
    are in the sequence but get no loss. rollout.max_new_tokens is unused; the budgets below apply."""

    use: str = Field(..., description="Entry point name (`rltune.envs`), `pkg.mod:Attr` or `path/file.py:Attr`: a "
                     "class (or factory) with reset(row) -> observation and step(action) -> (observation, reward, "
                     "done, info), sync or async. One instance per episode.")
    args: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")
    max_turns: PositiveInt = Field(4, description="Model turns per episode at most.")
    max_tokens_per_turn: PositiveInt = Field(16, description="New tokens per model turn (a turn ends at EOS).")
    max_total_tokens: PositiveInt = Field(128, description="Response tokens per episode, model and observation "
                                          "tokens together; an episode that reaches it ends (`truncated`).")
    timeout_s: PositiveFloat | None = Field(10.0, description="Per reset/step call; a call that hangs or raises ends "
                                            "its episode with return 0 and a logged reason (None = no limit).")
    reward: Literal["final", "sum", "per_turn"] = Field(
        "final", description="The episode return meta['env_return'] (read by the `env_return` reward): the last "
        "step's reward (final) or the sum over turns (sum). per_turn: the last turn's reward is the return and the "
        "earlier turns' rewards enter the advantage estimator as token rewards at their turn's last token "
        "(reinforce_pp/gae credit each turn; outcome estimators see the sum).")


# -------------------------------------------------------------------------------------------- logging
class WandbConfig(Section):
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "rltune"
    entity: str | None = None


class LoggingConfig(Section):
    console: bool = True
    jsonl: bool = True
    tensorboard: bool = Field(False, description="Also write the metrics as TensorBoard scalars to run_dir/tensorboard "
                              "(`tensorboard --logdir runs`; needs the `tensorboard` package).")
    wandb: WandbConfig = WandbConfig()


# ---------------------------------------------------------------------------------------------- recipe
class ClusterConfig(Section):
    """Where rollout and training run. rollout_workers = 0 keeps the in-process rollout engine; train_ranks = 0
    keeps the single-process training engine. Both 0: one process, shared weights."""

    address: str | None = Field(None, description="Ray address: None starts a local Ray, `auto` joins a running cluster.")
    rollout_workers: int = Field(0, ge=0, description="Ray actors sampling completions (prompts are sharded).")
    cpus_per_worker: PositiveFloat = Field(1.0, description="Ray CPUs reserved per rollout worker.")
    threads_per_worker: PositiveInt = Field(1, description="torch threads inside each rollout worker.")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="Ray GPUs per rollout worker (fractions share a GPU).")
    worker_restart_timeout_s: PositiveFloat = Field(
        600.0, description="How long a step waits for a dead rollout worker to come back (Ray restarts it; a large "
        "model takes minutes to load) before the run stops with an error.")
    train_ranks: int = Field(0, ge=0, description="DeepSpeed data-parallel ranks in Ray actors (0 = train in the "
                             "driver process with the single-process engine).")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage of the training ranks: 1 shards "
                                            "optimizer state, 2 also gradients, 3 also parameters.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on the CPU.")
    cpus_per_rank: PositiveFloat = Field(1.0, description="Ray CPUs per training rank (one placement-group bundle).")
    gpus_per_rank: float = Field(0.0, ge=0.0, description="Ray GPUs per training rank (0 on CPU: gloo backend).")
    threads_per_rank: PositiveInt = Field(1, description="torch threads inside each training rank.")
    placement: Literal["colocated", "disaggregated"] = Field(
        "disaggregated", description="colocated: rollout worker k shares training rank k's bundle (devices used one "
        "after the other); disaggregated: rollout workers get their own resources.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the training ranks' bundles.")

    @model_validator(mode="after")
    def _placement(self) -> "ClusterConfig":
        if self.placement == "colocated" and self.rollout_workers and self.rollout_workers > self.train_ranks:
            raise ValueError(f"cluster.placement=colocated puts rollout worker k on training rank k's bundle: "
                             f"rollout_workers ({self.rollout_workers}) must be <= train_ranks ({self.train_ranks})")
        return self


class Recipe(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    train: TrainConfig = TrainConfig()
    critic: CriticConfig | None = None
    rewards: list[RewardSpec] = Field(..., min_length=1)
    modifiers: list[ModifierSpec] = Field(default_factory=list)
    env: EnvSpec | None = Field(None, description="Multi-turn agent rollouts in this environment (None = one "
                                "completion per sample).")
    logging: LoggingConfig = LoggingConfig()
    sft: SFTConfig | None = None
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        n = self.rollout.batch_size
        if n % self.train.micro_batch_size and self.train.micro_batch_size < n:
            raise ValueError(
                f"train.micro_batch_size={self.train.micro_batch_size} must divide the rollout batch "
                f"(prompts_per_step × samples_per_prompt = {n}); try {_divisor_near(n, self.train.micro_batch_size)}"
            )
        a, mini = self.algo, self.algo.mini_batches
        if n % mini:
            raise ValueError(f"algo.mini_batches={mini} must divide the rollout batch (prompts_per_step × "
                             f"samples_per_prompt = {n}); try {_divisor_near(n, mini)}")
        if (n // mini) % self.train.micro_batch_size and self.train.micro_batch_size < n // mini:
            raise ValueError(f"train.micro_batch_size={self.train.micro_batch_size} must divide each mini-batch "
                             f"({n} rows / algo.mini_batches={mini} = {n // mini}); try "
                             f"{_divisor_near(n // mini, self.train.micro_batch_size)}")
        ranks = self.cluster.train_ranks
        if ranks > 1 and self.cluster.zero_stage == 3 and (n // mini) % ranks:
            # A ZeRO-3 forward is collective: ranks with unequal shares would run unequal numbers of forwards.
            raise ValueError(f"with cluster.zero_stage=3 each mini-batch ({n // mini} rows) must split evenly over "
                             f"cluster.train_ranks={ranks}; change rollout.prompts_per_step, samples_per_prompt or "
                             "algo.mini_batches")
        if ranks > 1 and self.cluster.zero_stage == 3 and self.train.max_tokens_per_micro_batch is not None:
            # Token budgets give ranks different micro-batch counts, hence different numbers of collective forwards.
            raise ValueError("train.max_tokens_per_micro_batch cannot be used with cluster.zero_stage=3 and several "
                             "train_ranks (ranks would run different numbers of collective forwards); use "
                             "train.micro_batch_size, or zero_stage 1/2")
        if a.advantage == "gae" and self.critic is None:
            raise ValueError("algo.advantage=gae needs a value model: add a `critic:` section (e.g. `critic: {lr: "
                             "1.0e-5}`; it starts from the policy's model) or pick a critic-free estimator ("
                             f"{', '.join(CRITIC_FREE)})")
        if self.critic is not None and a.advantage != "gae":
            raise ValueError(f"a `critic:` section is only used by algo.advantage=gae (got {a.advantage}); remove it "
                             "or set algo.advantage: gae")
        if a.dynamic_sampling.enabled and self.rollout.samples_per_prompt < 2:
            raise ValueError("algo.dynamic_sampling needs rollout.samples_per_prompt ≥ 2: a group of one sample "
                             "always has a constant reward")
        if self.rollout.engine == "vllm" and (self.model.lora is not None or self.env is not None):
            raise ValueError("rollout.engine=vllm does not take " + ("LoRA policies (model.lora)" if self.model.lora
                             else "multi-turn environments (env:)") + " yet; use rollout.engine=hf")
        if self.rollout.max_staleness:
            # In one process the rollout engine shares the model the update changes: it cannot run ahead.
            why = ("needs Ray rollout workers (cluster.rollout_workers ≥ 1): the in-process engine samples with the "
                   "model the update is changing" if not self.cluster.rollout_workers else
                   "does not combine with algo.dynamic_sampling (its extra rounds depend on this step's rewards)"
                   if a.dynamic_sampling.enabled else
                   f"is for text policies; model.kind={self.model.kind} has its own trainer"
                   if self.model.kind != "causal_lm" else None)
            if why:
                raise ValueError(f"rollout.max_staleness={self.rollout.max_staleness} {why}; set "
                                 "rollout.max_staleness: 0 or change the setting named")
        if not self.run.checkpoint_optimizer and self.cluster.train_ranks:
            raise ValueError("run.checkpoint_optimizer=false applies to single-process training; with "
                             "cluster.train_ranks DeepSpeed writes its own sharded optimizer state")
        names = [m.key for m in self.modifiers]
        dup = {k for k in names if names.count(k) > 1}
        if dup:
            raise ValueError(f"modifier names must be unique; repeated: {sorted(dup)} (set `name:` on each)")
        self._check_group_and_positions()
        if self.sft is not None and self.model.path is not None and self.model.start == "auto":
            raise ValueError(f"model.path ({self.model.path}) and an sft: section are both set, and `rltune train` "
                             "can start from only one: set model.start: sft (train from sft.output_dir; model.path is "
                             "the SFT base) or model.start: model (train from model.path, skipping the SFT result)")
        if self.model.start == "sft" and self.sft is None:
            raise ValueError("model.start: sft needs an sft: section (sft.output_dir); remove model.start or add one")
        rnames = [r.metric_name for r in self.rewards]
        rdup = {k for k in rnames if rnames.count(k) > 1}
        if rdup:
            raise ValueError(f"reward names must be unique; repeated: {sorted(rdup)} (set `name:` on each)")
        return self

    def _check_group_and_positions(self) -> None:
        g, a = self.rollout.samples_per_prompt, self.algo
        # Diffusion policies read the advantage only in policy-gradient modifiers (reward backprop needs no group).
        if g < 2 and a.advantage in GROUP_RELATIVE and self.model.kind != "diffusion":
            raise ValueError(f"algo.advantage={a.advantage} compares each completion with the others of its prompt: "
                             "with rollout.samples_per_prompt=1 every advantage is 0 and nothing is learned; set "
                             "samples_per_prompt >= 2 (GRPO uses 8-16) or use advantage reinforce_pp")
        limit = _max_positions(self.model)
        if limit is not None and self.env is None and self.rollout.max_new_tokens >= limit:
            raise ValueError(f"rollout.max_new_tokens={self.rollout.max_new_tokens} leaves no room for the prompt: "
                             f"the model holds {limit} positions in all (max_position_embeddings); lower "
                             "max_new_tokens")

    @property
    def starts_from_sft(self) -> bool:
        """`rltune train` starts from sft.output_dir (see model.start)."""
        return self.sft is not None and self.model.start != "model"

    @property
    def micro_batches(self) -> int:
        """Gradient-accumulation micro-batches per optimizer step (one step per algo.mini_batches part)."""
        return max(1, self.rollout.batch_size // self.algo.mini_batches // self.train.micro_batch_size)

    @property
    def loss_scale_constant(self) -> int:
        return self.algo.loss_scale_constant or self.rollout.max_new_tokens


def _max_positions(m: ModelConfig) -> int | None:
    """The position limit the model's config states (tiny config, or model.path/config.json); None if unknown."""
    if m.kind != "causal_lm":
        return None
    if m.tiny is not None:
        return m.tiny.max_position_embeddings
    cfg = Path(m.path) / "config.json" if m.path else None
    if cfg is None or not cfg.is_file():
        return None  # a hub id or a missing folder: the loader reports it
    try:
        c = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    c = c.get("text_config", c) if isinstance(c, dict) else {}
    n = next((c[k] for k in ("max_position_embeddings", "n_positions", "max_sequence_length") if k in c), None)
    return n if isinstance(n, int) and n > 0 else None


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - k))
