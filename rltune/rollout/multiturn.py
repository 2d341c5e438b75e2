"""Multi-turn agent rollouts: the model and an environment (rltune/envs) take turns until the episode ends.

One row = one trajectory. Its response is every model turn and every observation in order,
    [turn 0 tokens (..EOS)] [obs 0 tokens] [turn 1 tokens (..EOS)] [obs 1 tokens] ... [last turn tokens]
and the row's tensors mark who wrote what (N rows, T response positions):
    response_mask [N,T] bool   True on model tokens only: observations are context, never trained on
    rollout_logprobs [N,T]     the sampling log-prob at model tokens, 0 elsewhere
    extras["step_idx"] [N,T]   turn index on model tokens, −1 on observations and padding (EMPG segment=turn);
                               concat_batches (Ray shards, dynamic sampling) pads with 0: read it with the mask
    extras["turn_rewards"] [N,T] float: step t's reward on the last token of turn t, 0 elsewhere
    extras["traj_id"] [N] long: episode number, unique over this engine's lifetime (per Ray worker)
    meta["env_return"] [N]     the return (env.reward: final or sum; 0 for a failed episode), read by the
                               `env_return` reward; also meta["env_turns"], meta["env_end"], meta["env_error"]
An episode ends when the env says done, after env.max_turns turns, when its response reaches
env.max_total_tokens (then `truncated`), or when reset/step hangs past env.timeout_s or raises (return 0,
reason logged and kept in meta["env_error"]). Every turn samples all running episodes in one batched
`generate` (KV cache within a turn; the context is re-encoded each turn, which is cheap at these lengths).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rltune.config.schema import EnvSpec
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.envs.base import EnvFailure, as_step_result, call_all, env_factory
from rltune.rollout.base import SamplingParams
from rltune.rollout.hf_engine import HFEngine, PromptTooLongError, left_pad

__all__ = ["MultiTurnEngine"]

_log = logging.getLogger(__name__)
_WARN_FIRST = 10  # failed episodes logged at WARNING per engine, then at DEBUG


@dataclass
class _Episode:
    traj_id: int
    env: Any
    prompt: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)       # response: model and observation tokens
    step: list[int] = field(default_factory=list)         # turn index per token, −1 = observation
    logprobs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)    # one per completed env step
    reward_pos: list[int] = field(default_factory=list)   # last token of the turn each reward belongs to
    turns: int = 0
    end: str | None = None                                 # done | max_turns | max_total_tokens | timeout | error
    error: str = ""


class MultiTurnEngine:
    """Wraps an `HFEngine` (its model and tokenizer) and builds one environment per episode from `spec`.
    Same protocol as the single-turn engines: generate(prompts, params) -> RolloutBatch, sync, shutdown."""

    def __init__(self, engine: HFEngine, spec: EnvSpec, base_dir: str | Path | None = None):
        self.inner, self.spec = engine, spec
        self.make_env = env_factory(spec.use, spec.args, base_dir)
        self._episodes = 0
        self._failures = 0

    # The Ray worker and the trainer read/write these as on HFEngine.
    @property
    def model(self):
        return self.inner.model

    @property
    def tok(self):
        return self.inner.tok

    @property
    def weight_version(self) -> int:
        return self.inner.weight_version

    @weight_version.setter
    def weight_version(self, v: int) -> None:
        self.inner.weight_version = v

    def sync(self, model, version: int, **kwargs: Any) -> None:
        self.inner.sync(model, version, **kwargs)  # kwargs: whatever the wrapped engine's sync takes

    def shutdown(self) -> None:
        self.inner.shutdown()

    # ------------------------------------------------------------------------------------------ rollout
    @torch.inference_mode()
    def generate(self, prompts: PromptBatch, params: SamplingParams) -> RolloutBatch:
        if prompts.hints is not None:
            raise ValueError("forced response prefixes (PromptBatch.hints, ADHint) are not supported with env:")
        s, n = self.spec, params.n
        rows = [{k: v[i] for k, v in prompts.meta.items()} for i in range(len(prompts)) for _ in range(n)]
        texts = [p for p in prompts.prompts for _ in range(n)]
        eps, built = zip(*[self._new_episode() for _ in rows]) if rows else ((), ())
        first = call_all([functools.partial(e.env.reset, r) if e.env is not None else _noop for e, r in zip(eps, rows)],
                         s.timeout_s)
        for i, (ep, obs) in enumerate(zip(eps, first)):
            if isinstance(built[i], EnvFailure):
                self._fail(ep, built[i], "building the env", rows[i])
            elif isinstance(obs, EnvFailure) or not isinstance(obs, str):
                obs = obs if isinstance(obs, EnvFailure) else EnvFailure(
                    "error", f"returned {type(obs).__name__}, expected the first observation (str)")
                self._fail(ep, obs, "reset()", rows[i])
            else:
                texts[i] += obs
            ep.prompt = self._encode(texts[i])
            if len(ep.prompt) > self.inner.max_prompt_tokens:
                raise PromptTooLongError(f"prompt {i // n} with its first observation has {len(ep.prompt)} tokens > "
                                         f"data.max_prompt_tokens={self.inner.max_prompt_tokens}: {texts[i][:80]!r}")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        for turn in range(s.max_turns):
            live = [i for i, e in enumerate(eps) if e.end is None]
            if not live:
                break
            budgets = [min(s.max_tokens_per_turn, s.max_total_tokens - len(eps[i].tokens)) for i in live]
            sampled = self._sample([eps[i].prompt + eps[i].tokens for i in live], budgets, params)
            actions = []
            for i, (toks, lps) in zip(live, sampled):
                ep = eps[i]
                ep.tokens += toks
                ep.step += [turn] * len(toks)
                ep.logprobs += lps
                ep.turns += 1
                actions.append(self.tok.decode(toks, skip_special_tokens=True))
            results = call_all([functools.partial(eps[i].env.step, a) for i, a in zip(live, actions)], s.timeout_s)
            for i, res in zip(live, results):
                self._after_step(eps[i], as_step_result(res), rows[i])
        return self._batch(prompts, list(eps), texts, n)

    def _new_episode(self) -> tuple[_Episode, EnvFailure | None]:
        """(episode, None) or, when the env's constructor raised, (episode without env, the failure)."""
        ep = _Episode(traj_id=self._episodes, env=None)
        self._episodes += 1
        try:
            ep.env = self.make_env()
        except Exception as e:  # noqa: BLE001 - a constructor failing at runtime ends only this episode
            return ep, EnvFailure("error", f"raised {type(e).__name__}: {e}")
        return ep, None

    def _after_step(self, ep: _Episode, res, row: dict[str, Any]) -> None:
        s = self.spec
        if isinstance(res, EnvFailure):
            self._fail(ep, res, f"step() at turn {ep.turns - 1}", row)
            return
        ep.rewards.append(res.reward)
        ep.reward_pos.append(len(ep.tokens) - 1)
        if res.done:
            ep.end = "done"
        elif ep.turns >= s.max_turns:
            ep.end = "max_turns"
        else:
            room = s.max_total_tokens - len(ep.tokens)
            obs = self._encode(res.observation)[:room]  # cut to the budget: the next turn would get no room anyway
            ep.tokens += obs
            ep.step += [-1] * len(obs)
            ep.logprobs += [0.0] * len(obs)
            if len(ep.tokens) >= s.max_total_tokens:
                ep.end = "max_total_tokens"

    def _fail(self, ep: _Episode, f: EnvFailure, where: str, row: dict[str, Any]) -> None:
        ep.end, ep.error = f.kind, ep.error or f"{where} {f.reason}"
        self._failures += 1
        level = logging.WARNING if self._failures <= _WARN_FIRST else logging.DEBUG
        more = " (further env failures are logged at DEBUG)" if self._failures == _WARN_FIRST else ""
        _log.log(level, "env %s: episode %d ended: %s; return 0 (row %s)%s", self.spec.use, ep.traj_id, ep.error,
                 _short(row), more)

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def _sample(self, contexts: list[list[int]], budgets: list[int], params: SamplingParams):
        """One model turn for each context: [(tokens up to and including EOS, capped at the row's budget,
        their sampling log-probs)]. Log-probs are of the temperature-scaled full distribution (as HFEngine)."""
        model, tok = self.inner.model, self.inner.tok
        ids, mask = left_pad(contexts, tok.pad_token_id)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        sample = not params.greedy
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.long().to(device), max_new_tokens=max(budgets),
            do_sample=sample, temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=params.top_k if sample else None,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
            output_logits=sample,
        )
        if was_training:
            model.train()
        new = out.sequences[:, ids.shape[1]:].cpu()
        if sample:
            logits = torch.stack(out.logits, dim=1).float().cpu() / params.temperature  # [n, Tg, V]
            lp = torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1)
        else:
            lp = torch.zeros(new.shape)
        res = []
        for row, row_lp, budget in zip(new.tolist(), lp.tolist(), budgets):
            k = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            k = min(k, budget)
            res.append((row[:k], row_lp[:k]))
        return res

    def _token_rewards(self, eps, turn_rewards: torch.Tensor, failed: list[bool]) -> dict[str, torch.Tensor]:
        """reward: per_turn: the rewards of all turns but the last travel as token rewards [N,T] (the last one is
        the row's reward via env_return), so token-level estimators (reinforce_pp, gae) credit each turn at its own
        last token and outcome estimators see the episode's sum; nothing counts twice."""
        if self.spec.reward != "per_turn":
            return {}
        tr = turn_rewards.clone()
        for i, (e, bad) in enumerate(zip(eps, failed)):
            if bad:
                tr[i] = 0.0
            elif e.reward_pos:
                tr[i, e.reward_pos[-1]] -= e.rewards[-1]
        return {"token_rewards": tr}

    def _batch(self, prompts: PromptBatch, eps: list[_Episode], texts: list[str], n: int) -> RolloutBatch:
        N, pad = len(eps), self.inner.tok.pad_token_id
        T = max(1, max(len(e.tokens) for e in eps))
        response = torch.full((N, T), pad, dtype=torch.long)
        step_idx = torch.full((N, T), -1, dtype=torch.long)
        logprobs, turn_rewards = torch.zeros(N, T), torch.zeros(N, T)
        for i, e in enumerate(eps):
            L = len(e.tokens)
            response[i, :L] = torch.tensor(e.tokens, dtype=torch.long)
            step_idx[i, :L] = torch.tensor(e.step, dtype=torch.long)
            logprobs[i, :L] = torch.tensor(e.logprobs)
            for pos, r in zip(e.reward_pos, e.rewards):
                turn_rewards[i, pos] += r
        prompt_ids, prompt_mask = left_pad([e.prompt for e in eps], pad)
        failed = [e.end in ("timeout", "error") for e in eps]
        returns = [0.0 if bad else (e.rewards[-1] if e.rewards else 0.0) if self.spec.reward != "sum" else
                   sum(e.rewards) for e, bad in zip(eps, failed)]
        meta = {k: [v for v in vals for _ in range(n)] for k, vals in prompts.meta.items()}
        meta |= {"env_return": returns, "env_turns": [e.turns for e in eps], "env_end": [e.end for e in eps],
                 "env_error": [e.error for e in eps]}
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response, response_mask=step_idx >= 0,
            response_len=torch.tensor([len(e.tokens) for e in eps], dtype=torch.long), rollout_logprobs=logprobs,
            group_id=torch.arange(len(prompts)).repeat_interleave(n),
            truncated=torch.tensor([e.end == "max_total_tokens" for e in eps], dtype=torch.bool), prompts=texts,
            completions=self.inner.tok.batch_decode([e.tokens for e in eps], skip_special_tokens=True), meta=meta,
            weight_version=self.inner.weight_version,
            extras={"step_idx": step_idx, "turn_rewards": turn_rewards, **self._token_rewards(eps, turn_rewards, failed),
                    "traj_id": torch.tensor([e.traj_id for e in eps], dtype=torch.long)},
        )


def _noop() -> str:
    return ""


def _short(row: dict[str, Any], limit: int = 120) -> str:
    s = repr(row)
    return s if len(s) <= limit else s[: limit - 3] + "..."
