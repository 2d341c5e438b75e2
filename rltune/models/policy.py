"""Policy loading: a transformers causal LM from a local folder, or a tiny random-init one built from config;
optional LoRA through PEFT."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from rltune.config.schema import ModelConfig, TinyModelConfig
from rltune.models.tokenizer import build_char_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    """run.device: auto = cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("run.device=cuda but torch sees no GPU (torch.cuda.is_available() is False); use "
                             "run.device=auto or cpu, or install a CUDA build of torch")
    return torch.device(name)


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a warm start or checkpoint (`path`, when not model.path) if it has one, else
    model.tokenizer: `char`, a folder, or `folder/file.gguf`."""
    name = cfg.tokenizer or "char"  # None only where no causal LM is built (diffusion/var recipes)
    if path and path != cfg.path and (Path(path) / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(path)
    elif name.endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(str(Path(name).parent), gguf_file=Path(name).name)
    elif name != "char":
        if not (Path(name) / "tokenizer_config.json").is_file():
            raise ModelLoadError(f"model.tokenizer={name!r}: no tokenizer_config.json there; give a tokenizer folder "
                                 "or 'char'")
        tok = AutoTokenizer.from_pretrained(name)
    else:
        tok = build_char_tokenizer()
    if tok.pad_token is None:
        # Generation needs a pad id; the EOS token is the usual stand-in (its positions are masked anyway).
        log.warning("tokenizer has no pad token; using eos_token %r as pad", tok.eos_token)
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise ModelLoadError("tokenizer has neither a pad nor an eos token; add one with tokenizer.add_special_tokens")
    tok.padding_side = "left"
    return tok


def check_model_folder(cfg: ModelConfig) -> None:
    """Cheap checks of model.path and model.tokenizer (no weights read), so `rltune validate` catches what
    `rltune train` would otherwise meet as a transformers traceback. Raises ModelLoadError naming the lack."""
    if cfg.kind != "causal_lm":
        return
    if cfg.path is not None:
        p = Path(cfg.path)
        if not p.is_dir():
            raise ModelLoadError(f"model.path={cfg.path!r} is not a folder; point it at a local model folder "
                                 "(config.json + *.safetensors, as save_pretrained writes it)")
        if cfg.gguf_file is not None:
            if not (p / cfg.gguf_file).is_file():
                found = sorted(x.name for x in p.glob("*.gguf")) or "none"
                raise ModelLoadError(f"model.gguf_file={cfg.gguf_file!r}: no such file in {p} (GGUF files there: "
                                     f"{found})")
        elif not (p / "config.json").is_file():
            raise ModelLoadError(f"model.path={cfg.path!r} has no config.json (it holds: {_listing(p)}); point "
                                 "model.path at the folder save_pretrained wrote, or name a GGUF file there with "
                                 "model.gguf_file")
        elif not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise ModelLoadError(f"model.path={cfg.path!r} has a config.json but no weights (*.safetensors or *.bin); "
                                 f"it holds: {_listing(p)}")
    tok = cfg.tokenizer
    if tok and tok != "char" and not tok.endswith(".gguf") and not (Path(tok) / "tokenizer_config.json").is_file():
        what = "model.path's folder" if tok == cfg.path else "model.tokenizer"
        raise ModelLoadError(f"{what} {tok!r} holds no tokenizer (tokenizer_config.json); save the model's "
                             "tokenizer there, or set model.tokenizer to a tokenizer folder or 'char'")


def _listing(p: Path, n: int = 8) -> str:
    names = sorted(x.name for x in p.iterdir())
    return (", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "")) or "nothing"


def build_tiny_model(cfg: TinyModelConfig, tok: PreTrainedTokenizerBase, seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


def _load_gguf(folder: str, gguf_file: str, dtype: torch.dtype):
    """A GGUF file's weights unpacked into a plain dense model in `dtype` (trainable, saved as safetensors):
    transformers would otherwise keep quantised blocks packed, which it can neither train nor save."""
    kw = {}
    try:
        from transformers import GgufConfig

        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always unpack GGUF weights
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype, **kw)
    if getattr(model, "hf_quantizer", None) is not None:  # every weight is dense now: drop the quantizer's marks
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load_policy(cfg: ModelConfig, path: str | None = None, seed: int = 0, trainable: bool = True):
    """(model, tokenizer). `path` overrides cfg.path (e.g. the SFT warm start)."""
    src = path or cfg.path
    own = path is None or path == cfg.path  # the recipe's model (not a warm start or checkpoint)
    if own:
        check_model_folder(cfg)
    tok = load_tokenizer(cfg, src)
    if src is not None:
        gguf = cfg.gguf_file if own else None
        if not own and not (Path(src) / "config.json").is_file():
            raise ModelLoadError(f"model folder {src!r} has no config.json (a save_pretrained folder is expected)")
        try:
            model = (_load_gguf(src, gguf, DTYPES[cfg.dtype]) if gguf
                     else AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[cfg.dtype]))
        except (OSError, ValueError, ImportError) as e:
            raise ModelLoadError(f"could not load the model in {src!r}" + (f" (GGUF file {gguf})" if gguf else "") +
                                 f": {e}") from None
    else:
        assert cfg.tiny is not None
        model = build_tiny_model(cfg.tiny, tok, seed).to(DTYPES[cfg.dtype])
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    if cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    if cfg.lora is not None and trainable:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lcfg)
    if not trainable:
        model.requires_grad_(False).eval()
    return model, tok
