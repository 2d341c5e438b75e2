"""Rollout with vLLM (`pip install 'rltune[gpu]'`; CUDA only): `rollout.engine: vllm`.

The engine runs vLLM in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): in the driver next to the single-process
trainer (colocated on one GPU, as TRL's `vllm_mode="colocate"`), or inside each Ray rollout worker
(rltune/rollout/pool.py). It takes token ids, not text (`skip_tokenizer_init`): prompts are encoded by the same
code as the `hf` engine and the result is assembled by the same function, so both engines hand the trainer the
same RolloutBatch.

Weight sync loads the new tensors (the policy's `state_dict`, or what the training ranks gathered) through
the model's own `load_weights` (vLLM maps Hugging Face names to its fused layers), then drops the prefix cache,
whose KV entries were computed with the old weights. Log-probs are vLLM's `processed_logprobs`: after temperature
(and top-k/top-p, which then renormalise, unlike the `hf` engine; with both off they are the temperature-scaled
distribution the trainer recomputes, and `rollout/logprob_diff` shows any gap).

Not supported yet: LoRA policies (vLLM would need merged weights or LoRA requests per sync).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.rollout.base import SamplingParams
from rltune.rollout.hf_engine import assemble_batch, encode_prompts


class EngineUnavailableError(RuntimeError):
    """The recipe asks for vLLM where it cannot run (not installed, or no CUDA GPU in this process)."""


def pad_generations(tokens: list[list[int]], logprobs: list[list[float]], stopped: list[bool], eos: int,
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row generated token ids and their log-probs → (tokens [N,Tg], logprobs [N,Tg]) with pad after the
    end, EOS present on rows that stopped (appended with log-prob 0 when the engine left it out)."""
    rows, lps = [], []
    for t, lp, s in zip(tokens, logprobs, stopped):
        t, lp = list(t), list(lp)
        if s and (not t or t[-1] != eos):
            t, lp = t + [eos], lp + [0.0]
        rows.append(t)
        lps.append(lp)
    width = max(1, max(map(len, rows)))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    out_lp = torch.zeros(len(rows), width)
    for i, (t, lp) in enumerate(zip(rows, lps)):
        out[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        out_lp[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return out, out_lp


class VLLMEngine:
    def __init__(self, model_dir: str, tokenizer, max_prompt_tokens: int, max_new_tokens: int, seed: int,
                 gpu_memory_utilization: float = 0.3, dtype: str = "auto", enforce_eager: bool = False):
        try:
            import vllm
        except ImportError as e:
            raise EngineUnavailableError("rollout.engine=vllm needs vLLM (CUDA only): pip install 'rltune[gpu]', "
                                         "or use rollout.engine=hf") from e
        if not torch.cuda.is_available():
            raise EngineUnavailableError("rollout.engine=vllm needs a CUDA GPU in this process (Ray rollout workers: "
                                         "set cluster.gpus_per_worker); on CPU use rollout.engine=hf")
        # In-process engine: weight sync hands tensors to the model directly instead of pickling them to a
        # separate engine process.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm, self.tok, self.max_prompt_tokens = vllm, tokenizer, max_prompt_tokens
        self.llm = vllm.LLM(
            model=model_dir, skip_tokenizer_init=True, dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_prompt_tokens + max_new_tokens,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs", enforce_eager=enforce_eager,
        )
        self.weight_version = 0

    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        n = params.n
        unique, prompt_rows, forced = encode_prompts(self.tok, prompts, n, self.max_prompt_tokens)
        sp = lambda k, seed: self.vllm.SamplingParams(  # noqa: E731
            n=k, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_tokens=params.max_new_tokens, seed=seed, logprobs=0, stop_token_ids=[self.tok.eos_token_id],
            detokenize=False)
        TokensPrompt = self.vllm.inputs.TokensPrompt
        # A seed per request, distinct across the batch and across steps (step seeds are consecutive integers).
        if prompts.hints is None:  # one request per prompt, n samples each (vLLM shares the prompt's KV)
            reqs = [TokensPrompt(prompt_token_ids=ids) for ids in unique]
            sps = [sp(n, None if params.seed is None else params.seed * 100_003 + i) for i in range(len(unique))]
        else:  # forced prefixes differ per row: one request per row
            reqs = [TokensPrompt(prompt_token_ids=p + f) for p, f in zip(prompt_rows, forced)]
            sps = [sp(1, None if params.seed is None else params.seed * 100_003 + i) for i in range(len(reqs))]
        outs = [c for o in self.llm.generate(reqs, sps, use_tqdm=False) for c in o.outputs]
        toks = [list(c.token_ids) for c in outs]
        # logprobs=0: each position holds the sampled token's log-prob only.
        lps = [[0.0] * len(t) if params.greedy else [pos[tid].logprob for tid, pos in zip(t, c.logprobs)]
               for t, c in zip(toks, outs)]
        new, gen_lp = pad_generations(toks, lps, [c.finish_reason == "stop" for c in outs], self.tok.eos_token_id,
                                      self.tok.pad_token_id)
        return assemble_batch(self.tok, prompts, n, prompt_rows, forced, new, gen_lp, self.weight_version)

    def sync(self, model, version: int, weights_ref: Any = None) -> None:
        """Load the new weights (from the training ranks' object ref, else from `model`) into vLLM's model."""
        if weights_ref is not None:
            import ray

            sd = ray.get(weights_ref)
        else:
            sd = {k: v.detach() for k, v in model.state_dict().items()}
        self.load_state(sd)
        self.weight_version = version

    def load_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Full weights by Hugging Face name into vLLM's model; every parameter it holds must be written."""
        def load(m):
            loaded = m.load_weights(iter(sd.items()))
            return sorted({n for n, _ in m.named_parameters()} - set(loaded or ()))

        missing = [n for per_worker in self.llm.apply_model(load) for n in per_worker]
        if missing:
            raise RuntimeError(f"vLLM weight sync left {len(missing)} parameters unwritten, e.g. {missing[:5]}: the "
                               "synced state dict does not cover the model vLLM loaded")
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def checksum(self) -> float:
        """Σ of all weights in vLLM's model (a cheap check that a sync landed)."""
        return float(sum(self.llm.apply_model(lambda m: sum(float(p.float().sum()) for p in m.parameters()))))

    def shutdown(self) -> None:
        del self.llm


def model_dir_for(start: str | None, model_cfg, model, tok, scratch) -> str:
    """A Hugging Face folder vLLM can load: the start model's (SFT output or model.path), else `model` and its
    tokenizer saved under `scratch` (tiny random-init models exist only in memory). Its weights are replaced by
    the first sync anyway; vLLM needs the folder for the architecture."""
    if start is not None:
        return str(start)
    if model_cfg.path is not None:
        return str(model_cfg.path)
    from pathlib import Path

    out = Path(scratch) / "vllm_init"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
