"""The recipe tree: the one place where rltune's defaults live.

Every model is frozen and strict (`extra="forbid"`): a typo fails at load with the YAML path and the valid
keys (see `load.py`). Derived values are properties, never stored fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ----------------------------------------------------------------------------------------------- run
class RunConfig(Section):
    name: str = Field("rltune", description="Run name; used for the run directory and loggers.")
    seed: int = Field(0, description="Seeds data order, sampling, init and every modifier's RNG.")
    output_dir: str = Field("runs/${name}", description="Run directory (`${name}` is replaced by run.name).")
    steps: PositiveInt = Field(100, description="Optimizer steps of RL training (one rollout batch each).")
    log_interval: PositiveInt = Field(1, description="Print/log a metrics line every k steps.")
    eval_interval: int = Field(0, ge=0, description="Held-out evaluation every k steps (0 = only at start/end).")
    save_interval: int = Field(0, ge=0, description="Checkpoint every k steps (0 = only at the end / on signal).")
    keep_last: PositiveInt = Field(2, description="How many step checkpoints to keep.")
    threads: int = Field(0, ge=0, description="torch intra-op threads (0 = torch's default).")

    @property
    def run_dir(self) -> str:
        return self.output_dir.replace("${name}", self.name)


# ---------------------------------------------------------------------------------------------- model
class TinyModelConfig(Section):
    """A random-init Qwen2-style causal LM built from config (tests, CPU demos)."""

    hidden_size: PositiveInt = 256
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 768
    max_position_embeddings: PositiveInt = 64
    tie_word_embeddings: bool = True


class LoraConfig(Section):
    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field("all-linear", description="PEFT target_modules.")


class ModelConfig(Section):
    path: str | None = Field(None, description="Local folder of a transformers causal LM (or a hub id online).")
    tiny: TinyModelConfig | None = Field(None, description="Build a random-init tiny model instead of `path`.")
    tokenizer: str = Field("char", description="`char` (built-in offline character tokenizer) or a folder.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = Field(None, description="Train a LoRA adapter (PEFT) instead of all weights.")
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path (a local model folder) or model.tiny (a config)")
        return self


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
class RolloutConfig(Section):
    engine: Literal["hf"] = Field("hf", description="Rollout engine: `hf` (transformers.generate).")
    prompts_per_step: PositiveInt = Field(16, description="B: prompts per optimizer step.")
    samples_per_prompt: PositiveInt = Field(8, description="G: completions per prompt (the GRPO group).")
    max_new_tokens: PositiveInt = 64
    temperature: PositiveFloat = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off.")

    @property
    def batch_size(self) -> int:
        """N = B·G completions per step."""
        return self.prompts_per_step * self.samples_per_prompt


# ----------------------------------------------------------------------------------------------- algo
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class AlgoConfig(Section):
    advantage: Literal["group_norm"] = Field("group_norm", description="Advantage estimator.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide by the group std (GRPO), the batch std, or not at all (Dr.GRPO)."
    )
    std_eps: float = Field(1e-6, gt=0, description="Added to the std (verl's 1e-6).")
    clip_low: float = Field(0.2, ge=0.0, description="PPO clip ε_low: ratio ≥ 1-ε_low.")
    clip_high: float = Field(0.2, ge=0.0, description="PPO clip ε_high: ratio ≤ 1+ε_high (DAPO: 0.28).")
    dual_clip_c: float | None = Field(None, gt=1.0, description="Dual-clip bound c for A<0 (verl: 3.0).")
    kl_coef: float = Field(0.0, ge=0.0, description="β of the KL loss; the reference model loads only if > 0.")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k3"
    loss_agg: LossAgg = Field("token-mean", description="How per-token losses reduce to a scalar.")
    loss_scale_constant: PositiveInt | None = Field(
        None, description="L for seq-mean-token-sum-norm (Σ/(N·L)); default rollout.max_new_tokens."
    )
    entropy_coef: float = Field(0.0, description="Entropy bonus coefficient (0 = entropy only logged).")


# ---------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    lr: PositiveFloat = 1e-6
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    micro_batch_size: PositiveInt = Field(64, description="Completions per forward/backward (gradient accumulation).")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the global gradient norm (None = off).")


class SFTConfig(Section):
    """Cold-start SFT with TRL's SFTTrainer (`rltune sft`): loss on the answer only."""

    output_dir: str = Field(..., description="Where the warmed-up model goes; `rltune train` starts from it.")
    steps: PositiveInt = 500
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128
    warmup_steps: int = Field(100, ge=0)
    num_examples: PositiveInt = Field(64000, description="Training examples drawn from the data source.")


# -------------------------------------------------------------------------------------------- plugins
class RewardSpec(Section):
    use: str = Field(..., description="Entry point name, `pkg.mod:Attr` or `path/file.py:Attr`.")
    name: str | None = Field(None, description="Metric name (reward/<name>); defaults to the `use` tail.")
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments (classes only).")
    style: Literal["auto", "native", "trl", "verl"] = Field(
        "auto", description="Calling convention; `auto` detects it from the signature."
    )
    timeout_s: PositiveFloat | None = Field(None, description="Per-call timeout (None = none).")
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


# -------------------------------------------------------------------------------------------- logging
class WandbConfig(Section):
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "rltune"
    entity: str | None = None


class LoggingConfig(Section):
    console: bool = True
    jsonl: bool = True
    wandb: WandbConfig = WandbConfig()


# ---------------------------------------------------------------------------------------------- recipe
class Recipe(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    train: TrainConfig = TrainConfig()
    rewards: list[RewardSpec] = Field(..., min_length=1)
    modifiers: list[ModifierSpec] = Field(default_factory=list)
    logging: LoggingConfig = LoggingConfig()
    sft: SFTConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        n = self.rollout.batch_size
        if n % self.train.micro_batch_size and self.train.micro_batch_size < n:
            raise ValueError(
                f"train.micro_batch_size={self.train.micro_batch_size} must divide the rollout batch "
                f"(prompts_per_step × samples_per_prompt = {n}); try {_divisor_near(n, self.train.micro_batch_size)}"
            )
        names = [m.key for m in self.modifiers]
        dup = {k for k in names if names.count(k) > 1}
        if dup:
            raise ValueError(f"modifier names must be unique; repeated: {sorted(dup)} (set `name:` on each)")
        rnames = [r.metric_name for r in self.rewards]
        rdup = {k for k in rnames if rnames.count(k) > 1}
        if rdup:
            raise ValueError(f"reward names must be unique; repeated: {sorted(rdup)} (set `name:` on each)")
        return self

    @property
    def micro_batches(self) -> int:
        """Gradient-accumulation micro-batches per optimizer step."""
        return max(1, self.rollout.batch_size // self.train.micro_batch_size)

    @property
    def loss_scale_constant(self) -> int:
        return self.algo.loss_scale_constant or self.rollout.max_new_tokens


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - k))
