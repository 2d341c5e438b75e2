"""The `model:` section of a recipe (text causal LMs, VAR and diffusion policies): its defaults live here.

Re-exported by rltune.config.schema, where the rest of the recipe tree is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from rltune.config.base import Section


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


class TinyDenoiserConfig(Section):
    """A random-init tiny diffusers UNet (the CPU fixture of docs/diffusion.md), optionally pre-trained in-process on
    synthetic images (flat colour + coloured square) and cached by config hash under $RLTUNE_CACHE."""

    sample_size: PositiveInt = Field(16, description="Image side in pixels (pixel-space model, 3 channels).")
    block_out_channels: list[PositiveInt] = Field([16, 32], description="UNet widths per resolution level.")
    conditional: bool = Field(False, description="UNet2DConditionModel + a frozen byte-level text encoder (prompts "
                              "condition the model, CFG applies); false = unconditional UNet2DModel.")
    cross_attention_dim: PositiveInt = 32
    pretrain_steps: int = Field(400, ge=0, description="Synthetic pre-training steps (400 ≈ 25 s on "
                                "2 cores); 0 = random init.")
    pretrain_batch: PositiveInt = 32
    pretrain_lr: PositiveFloat = 2e-3


class DiffusionModelConfig(Section):
    """Diffusion policy (model.kind: diffusion): a tiny UNet or a local diffusers folder in model.path (SD-1.5
    layout); model.lora, model.gradient_checkpointing and model.dtype apply to the denoiser."""

    tiny: TinyDenoiserConfig | None = Field(None, description="Build a tiny UNet instead of loading model.path.")
    scheduler: Literal["ddim", "flow"] = Field(
        "ddim", description="ddim: ε-prediction, DDIM sampling; flow: velocity prediction (rectified flow), Euler ODE.")
    num_steps: PositiveInt = Field(50, description="Denoising steps T of a rollout (AlignProp: 50).")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM stochasticity of training rollouts (AlignProp: 1.0); "
                       "evaluation always samples with eta 0 (deterministic).")
    guidance_scale: float = Field(1.0, ge=1.0, description="Classifier-free guidance scale (1 = off; AlignProp: "
                                  "5.0). Needs a conditional model.")
    negative_prompt: str = Field("", description="Unconditional prompt of CFG.")
    flow_shift: PositiveFloat = Field(3.0, description="flow: σ grid shift s = shift·u/(1+(shift−1)u) (SRPO: 3).")
    resolution: PositiveInt | None = Field(None, description="Image side for model.path (None = the UNet's "
                                           "sample_size × the VAE factor, 512 for SD 1.5).")


class TinyVarConfig(Section):
    """A random-init VAR-like toy (rltune/models/var.py:TinyVAR) for CPU tests and demos."""

    scales: list[int] = Field([1, 2, 4, 8], description="Side of each square token map, coarse to fine.")
    vocab_size: PositiveInt = Field(8, description="Codebook entries (the frozen random codebook).")
    channels: PositiveInt = 3
    hidden_size: PositiveInt = 32
    num_classes: PositiveInt = Field(4, description="Class conditions (class `num_classes` is the null class of CFG).")
    patch: PositiveInt = Field(4, description="Decoded pixels per finest-scale token (image side = patch × last scale).")
    codebook_seed: int = 0


class VarModelConfig(Section):
    """A visual autoregressive (next-scale) policy: the tiny toy or an official VAR checkpoint folder."""

    tiny: TinyVarConfig | None = Field(None, description="Build the random-init toy instead of loading `path`.")
    path: str | None = Field(None, description="Local folder with the VAR repository code (models/) and its "
                             "vae_ch160v4096z32.pth and var_d{depth}.pth (nothing is downloaded).")
    depth: PositiveInt = Field(16, description="VAR depth of the checkpoint in `path` (16, 20, 24, 30).")
    scales: list[int] = Field([1, 2, 3, 4, 5, 6, 8, 10, 13, 16], description="Patch numbers of the checkpoint "
                              "in `path` (VAR's default 256px schedule).")
    num_classes: PositiveInt = Field(1000, description="Classes of the checkpoint in `path` (ImageNet: 1000).")
    cfg: float = Field(1.0, ge=0.0, description="Classifier-free guidance weight of rollouts: u + cfg·(c − u); "
                       "1 = off (the paper samples with 5; training forwards never use CFG).")
    cfg_schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear ramps the guidance from 1 at the first scale to `cfg` at the last (VAR's "
        "sampler).")
    label_column: str = Field("label", description="Dataset column with each prompt's class index (the condition).")

    @model_validator(mode="after")
    def _one_source(self) -> "VarModelConfig":
        if (self.tiny is None) == (self.path is None):
            raise ValueError("model.var: set exactly one of tiny (a config) or path (a VAR checkpoint folder)")
        return self


class ModelConfig(Section):
    kind: Literal["causal_lm", "var", "diffusion"] = Field(
        "causal_lm", description="Policy family: a text causal LM, a visual autoregressive (next-scale) model, or a "
        "diffusion model. Each family has its own one-file trainer (rltune/trainer.py, rltune/visual/).")
    path: str | None = Field(None, description="Local folder of a transformers causal LM (or a hub id online).")
    tiny: TinyModelConfig | None = Field(None, description="Build a random-init tiny model instead of `path`.")
    gguf_file: str | None = Field(None, description="A GGUF file inside the model.path folder: weights dequantised "
                                  "to model.dtype, tokenizer from the same file (needs the `gguf` package).")
    tokenizer: str | None = Field(None, description="`char` (built-in offline character tokenizer) or a folder; "
                                  "unset = model.path itself (the GGUF file with gguf_file), `char` for model.tiny; "
                                  "`rltune show` prints the one used.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = Field(None, description="Train a LoRA adapter (PEFT) instead of all weights.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward (policy and critic; the reference "
        "keeps none): the update's activations shrink to one hidden state per layer for about one more forward. "
        "Pays when a micro-batch's activations are large next to the 16 bytes/parameter of fp32 weights + grads + "
        "AdamW (long responses, big micro-batches; docs/scaling.md); also turns the shared-prompt forward off.")
    diffusion: DiffusionModelConfig | None = Field(None, description="Diffusion policy settings (kind: diffusion).")
    var: VarModelConfig | None = Field(None, description="VAR policy settings (kind: var).")
    start: Literal["auto", "sft", "model"] = Field(
        "auto", description="What `rltune train` starts from when the recipe has an `sft:` section: sft = the SFT "
        "result in sft.output_dir (model.path/tiny is then SFT's base model), model = model.path/tiny (the sft: "
        "section only serves `rltune sft`). auto = sft, except that model.path together with sft: must say which.")

    @model_validator(mode="before")
    @classmethod
    def _resolve_tokenizer(cls, data: Any) -> Any:
        # Filled in here so that `rltune show` and run_dir/recipe.yaml say which tokenizer is really used.
        if isinstance(data, dict) and data.get("tokenizer") is None and data.get("kind", "causal_lm") == "causal_lm":
            path, gguf = data.get("path"), data.get("gguf_file")
            data = {**data, "tokenizer": (f"{path}/{gguf}" if gguf else path) if path is not None else "char"}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.gguf_file is not None and (self.path is None or self.kind != "causal_lm"):
            raise ValueError("model.gguf_file names a file inside model.path (the folder); set model.path and "
                             "remove model.tiny")
        if self.kind == "causal_lm" and (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path (a local model folder) or model.tiny (a config)")
        if (self.kind == "var") != (self.var is not None):
            raise ValueError("model.kind: var needs a model.var section, and only it uses one")
        if self.kind == "var" and (self.path is not None or self.tiny is not None):
            raise ValueError("model.kind: var reads model.var.path or model.var.tiny; remove model.path/model.tiny")
        if (self.kind == "diffusion") != (self.diffusion is not None):
            raise ValueError("model.kind: diffusion needs a model.diffusion section, and only it uses one")
        if self.diffusion is not None and (self.path is None) == (self.diffusion.tiny is None):
            raise ValueError("diffusion: set exactly one of model.path (a local diffusers folder) or "
                             "model.diffusion.tiny (a config)")
        return self
