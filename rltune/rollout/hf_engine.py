"""Rollout with `transformers.generate` (batched, KV cache) on an in-process model.

Log-probs recorded are those of the temperature-scaled full distribution (what the trainer recomputes), not
of the top-k/top-p-renormalised one; the trainer logs the mismatch (`rollout/logprob_diff`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.rollout.base import SamplingParams


class PromptTooLongError(ValueError):
    pass


class HFEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int = 512):
        self.model, self.tok, self.max_prompt_tokens = model, tokenizer, max_prompt_tokens
        self.weight_version = 0

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Special tokens off: prompts are already templated text (a chat template adds its own).
        enc = self.tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        lens = enc["attention_mask"].sum(1)
        if int(lens.max()) > self.max_prompt_tokens:
            i = int(lens.argmax())
            raise PromptTooLongError(
                f"prompt {i} has {int(lens[i])} tokens > data.max_prompt_tokens={self.max_prompt_tokens}: "
                f"{prompts[i][:80]!r}...; raise data.max_prompt_tokens or filter long prompts"
            )
        return enc["input_ids"], enc["attention_mask"].bool()

    @torch.inference_mode()
    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        n = params.n
        texts = [p for p in prompts.prompts for _ in range(n)]
        prompt_ids, prompt_mask = self.encode_prompts(texts)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = not params.greedy
        out = self.model.generate(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.long().to(device),
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
            return_dict_in_generate=True,
            output_logits=sample,
        )
        if was_training:
            self.model.train()
        P = prompt_ids.shape[1]
        response = out.sequences[:, P:].cpu()
        N, T = response.shape
        is_eos = response == self.tok.eos_token_id
        has_eos = is_eos.any(1)
        first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full((N,), T - 1))
        response_len = torch.where(has_eos, first_eos + 1, torch.full((N,), T))
        pos = torch.arange(T)
        response_mask = pos[None, :] < response_len[:, None]
        response = response.masked_fill(~response_mask, self.tok.pad_token_id)
        if sample:
            logits = torch.stack(out.logits, dim=1).float().cpu() / params.temperature  # [N,T,V]
            logprobs = torch.log_softmax(logits, -1).gather(-1, response[..., None]).squeeze(-1)
            logprobs = logprobs.masked_fill(~response_mask, 0.0)
        else:
            logprobs = torch.zeros(N, T)
        text_len = response_len - has_eos.long()  # drop the EOS token from the text
        completions = self.tok.batch_decode(
            [r[:k].tolist() for r, k in zip(response, text_len.tolist())], skip_special_tokens=True
        )
        group_id = torch.arange(len(prompts)).repeat_interleave(n)
        meta = {k: [v for v in vals for _ in range(n)] for k, vals in prompts.meta.items()}
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response, response_mask=response_mask,
            response_len=response_len, rollout_logprobs=logprobs, group_id=group_id, truncated=~has_eos,
            prompts=texts, completions=completions, meta=meta, weight_version=self.weight_version,
        )
