"""Rollout on an in-process transformers model: rltune's decode loop or `transformers.generate`.

Log-probs recorded are those of the temperature-scaled full distribution (what the trainer recomputes), not
of the top-k/top-p-renormalised one; the trainer logs the mismatch (`rollout/logprob_diff`).
Forced response prefixes (`PromptBatch.hints`, ADHint) are part of the response: they are fed to the model
before it continues, marked in `extras["hint_mask"]`, and get rollout log-prob 0 (they were not sampled).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.rollout.base import SamplingParams
from rltune.rollout.decode import decode
from rltune.train.torch_engine import cache_kwarg


class PromptTooLongError(ValueError):
    pass


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> (ids [n,W] left-padded with `pad`, mask [n,W] bool, True on real tokens); W = longest row."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = True
    return ids, mask


def encode_texts(tok, texts: list[str]) -> list[list[int]]:
    # Special tokens off: prompts are already templated text (a chat template adds its own).
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_prompts(tok, prompts: PromptBatch, n: int, max_prompt_tokens: int):
    """Token ids of the distinct prompts [B][*], of every row's prompt [B·n][*] and of every row's forced prefix
    (hints; [] = none). Every rollout engine starts here."""
    unique = encode_texts(tok, list(prompts.prompts))
    for i, ids in enumerate(unique):
        if len(ids) > max_prompt_tokens:
            raise PromptTooLongError(
                f"prompt {i} has {len(ids)} tokens > data.max_prompt_tokens={max_prompt_tokens}: "
                f"{prompts.prompts[i][:80]!r}...; raise data.max_prompt_tokens or filter long prompts"
            )
    prompt_rows = [ids for ids in unique for _ in range(n)]
    hint_texts = [h for hs in prompts.hints for h in hs] if prompts.hints is not None else [""] * len(prompt_rows)
    if len(hint_texts) != len(prompt_rows):
        raise ValueError(f"PromptBatch.hints must hold {n} entries per prompt, got {len(hint_texts)} in all")
    forced = [encode_texts(tok, [h])[0] if h else [] for h in hint_texts]
    return unique, prompt_rows, forced


def assemble_batch(tok, prompts: PromptBatch, n: int, prompt_rows: list[list[int]], forced: list[list[int]],
                   new: torch.Tensor, gen_lp: torch.Tensor, weight_version: int) -> RolloutBatch:
    """The RolloutBatch of generated tokens `new` [N,Tg] (pad after EOS) with their log-probs `gen_lp` [N,Tg].
    Every rollout engine ends here."""
    texts = [p for p in prompts.prompts for _ in range(n)]
    prompt_ids, prompt_mask = left_pad(prompt_rows, tok.pad_token_id)
    N, Tg = new.shape
    is_eos = new == tok.eos_token_id
    has_eos = is_eos.any(1)
    gen_len = torch.where(has_eos, is_eos.float().argmax(1) + 1, torch.full((N,), Tg))

    # Response = forced prefix (if any) + generated tokens up to and including EOS, right-padded.
    hint_len = torch.tensor([len(f) for f in forced], dtype=torch.long)
    response_len = hint_len + gen_len
    T = int(response_len.max())
    response = torch.full((N, T), tok.pad_token_id, dtype=torch.long)
    logprobs = torch.zeros(N, T)
    for i in range(N):
        h, g = int(hint_len[i]), int(gen_len[i])
        if h:
            response[i, :h] = torch.tensor(forced[i])
        response[i, h:h + g] = new[i, :g]
        logprobs[i, h:h + g] = gen_lp[i, :g]
    pos = torch.arange(T)
    response_mask = pos[None, :] < response_len[:, None]
    text_len = response_len - has_eos.long()  # drop the EOS token from the text
    completions = tok.batch_decode(
        [r[:k].tolist() for r, k in zip(response, text_len.tolist())], skip_special_tokens=True
    )
    extras = {}
    if prompts.hints is not None:
        extras["hint_mask"] = pos[None, :] < hint_len[:, None]
        extras["is_hint"] = hint_len > 0
    group_id = torch.arange(len(prompts)).repeat_interleave(n)
    meta = {k: [v for v in vals for _ in range(n)] for k, vals in prompts.meta.items()}
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response, response_mask=response_mask,
        response_len=response_len, rollout_logprobs=logprobs, group_id=group_id, truncated=~has_eos,
        prompts=texts, completions=completions, meta=meta, weight_version=weight_version, extras=extras,
    )


class HFEngine:
    """`decode="loop"`: rltune's decode loop (rltune/rollout/decode.py: each prompt prefilled once per group, no
    full-vocabulary logits kept); `"generate"`: `transformers.generate`. The loop falls back to generate for
    forced prefixes (hints) and for models that return no reorderable KV cache."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int = 512,
                 decode: str = "loop"):
        self.model, self.tok, self.max_prompt_tokens = model, tokenizer, max_prompt_tokens
        self.decode = decode
        self.weight_version = 0

    def sync(self, model, version: int, weights_ref=None) -> None:
        """The in-process engine shares the trainer's model (already holding the new weights): only the version
        moves."""
        self.weight_version = version

    def shutdown(self) -> None:
        return None

    @torch.inference_mode()
    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        n = params.n
        unique, prompt_rows, forced = encode_prompts(self.tok, prompts, n, self.max_prompt_tokens)
        gen_ids, gen_mask = left_pad([p + f for p, f in zip(prompt_rows, forced)], self.tok.pad_token_id)

        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        looped = None
        if self.decode == "loop" and prompts.hints is None:
            u_ids, u_mask = left_pad(unique, self.tok.pad_token_id)
            looped = decode(self.model, u_ids.to(device), u_mask.to(device), n, params, self.tok.eos_token_id,
                            self.tok.pad_token_id, cache_kwarg(self.model))
        if looped is not None:
            new, gen_lp = looped[0].cpu(), looped[1].float().cpu()
        else:
            new, gen_lp = self._generate(gen_ids.to(device), gen_mask.to(device), params)
        if was_training:
            self.model.train()
        return assemble_batch(self.tok, prompts, n, prompt_rows, forced, new, gen_lp, self.weight_version)

    def _generate(self, gen_ids: torch.Tensor, gen_mask: torch.Tensor, params: SamplingParams):
        """`transformers.generate`: new tokens [N,Tg] (pad after EOS) and their log-probs [N,Tg] (0 for greedy)."""
        sample = not params.greedy
        out = self.model.generate(
            input_ids=gen_ids,
            attention_mask=gen_mask.long(),
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
        new = out.sequences[:, gen_ids.shape[1]:].cpu()
        if not sample:
            return new, torch.zeros(new.shape)
        logits = torch.stack(out.logits, dim=1).float().cpu() / params.temperature  # [N,Tg,V]
        return new, torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1)
