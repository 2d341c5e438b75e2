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
    """The tokenizer of `path` if it has one, else the recipe's (`char` or a folder)."""
    for candidate in (path, cfg.tokenizer if cfg.tokenizer != "char" else None, cfg.path):
        if candidate and (Path(candidate) / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(candidate)
            break
    else:
        if cfg.tokenizer != "char":
            raise ModelLoadError(
                f"model.tokenizer={cfg.tokenizer!r}: no tokenizer_config.json there; give a tokenizer folder or 'char'"
            )
        tok = build_char_tokenizer()
    if tok.pad_token is None:
        # Generation needs a pad id; the EOS token is the usual stand-in (its positions are masked anyway).
        log.warning("tokenizer has no pad token; using eos_token %r as pad", tok.eos_token)
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise ModelLoadError("tokenizer has neither a pad nor an eos token; add one with tokenizer.add_special_tokens")
    tok.padding_side = "left"
    return tok


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


def load_policy(cfg: ModelConfig, path: str | None = None, seed: int = 0, trainable: bool = True):
    """(model, tokenizer). `path` overrides cfg.path (e.g. the SFT warm start)."""
    src = path or cfg.path
    tok = load_tokenizer(cfg, src)
    if src is not None:
        if not Path(src).exists():
            raise ModelLoadError(f"model path {src!r} does not exist (a local folder with config.json is expected)")
        model = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[cfg.dtype])
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
