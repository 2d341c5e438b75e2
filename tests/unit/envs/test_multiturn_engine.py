"""MultiTurnEngine on hand-built episodes: a scripted policy replaces the model, so every token, mask, turn
boundary, reward position and end reason is known in advance."""

import logging
import time
from pathlib import Path

import pytest
from rltune.config.schema import EnvSpec
from rltune.data.batch import PromptBatch
from rltune.models.tokenizer import build_char_tokenizer
from rltune.rollout.base import SamplingParams
from rltune.rollout.hf_engine import HFEngine
from rltune.rollout.multiturn import MultiTurnEngine

ROOT = Path(__file__).resolve().parents[3]
TOK = build_char_tokenizer()
EOS = TOK.eos_token_id
LP = -0.5  # every scripted token's "sampling log-prob"


def enc(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


class Scripted(MultiTurnEngine):
    """Turn k of the episode whose prompt starts with `key` emits script[key][k] + EOS (cut at the budget)."""

    def __init__(self, script: dict[str, list[str]], **spec):
        super().__init__(HFEngine(None, TOK, 64), EnvSpec(**spec), base_dir=ROOT)
        self.script = script

    def _sample(self, contexts, budgets, params):
        out = []
        for ctx, budget in zip(contexts, budgets):
            text = TOK.decode(ctx, skip_special_tokens=True)
            turn = ctx.count(EOS)
            toks = (enc(self.script[text[0]][turn]) + [EOS])[:budget]
            out.append((toks, [LP] * len(toks)))
        return out


def batch_of(secrets: list[int], keys: str) -> PromptBatch:
    return PromptBatch(prompts=[f"{k}:" for k in keys], meta={"secret": secrets, "prompt": [f"{k}:" for k in keys]})


def test_hand_built_episode_layout():
    eng = Scripted({"A": ["8", "12", "11"], "B": ["13"]}, use="guess_number", max_turns=4, max_tokens_per_turn=4)
    b = eng.generate(batch_of([11, 13], "AB"), SamplingParams(n=1))
    # A: 8 -> higher, 12 -> lower, 11 -> done (reward 1 on turn 2)
    turns = [enc("8") + [EOS], enc("12") + [EOS], enc("11") + [EOS]]
    obs = [enc(" higher;"), enc(" lower;")]
    ids = turns[0] + obs[0] + turns[1] + obs[1] + turns[2]
    step = [0] * 2 + [-1] * len(obs[0]) + [1] * 3 + [-1] * len(obs[1]) + [2] * 3
    L = len(ids)
    T = b.response_ids.shape[1]
    assert T == L  # the longest episode sets the width
    assert b.response_ids[0].tolist() == ids and int(b.response_len[0]) == L
    assert b.extras["step_idx"][0].tolist() == step
    assert b.response_mask[0].tolist() == [s >= 0 for s in step]
    assert b.rollout_logprobs[0].tolist() == [LP if s >= 0 else 0.0 for s in step]
    tr = [0.0] * L
    tr[L - 1] = 1.0  # the reward sits on the last token of the turn that earned it
    assert b.extras["turn_rewards"][0].tolist() == tr
    assert b.meta["env_end"][0] == "done" and b.meta["env_return"][0] == 1.0 and b.meta["env_turns"][0] == 3
    assert b.completions[0] == "8 higher;12 lower;11"
    assert b.prompts == ["A:", "B:"] and b.prompt_ids[0, -2:].tolist() == enc("A:")
    assert b.group_id.tolist() == [0, 1] and b.truncated.tolist() == [False, False]
    assert b.extras["traj_id"].tolist() == [0, 1]
    # B guessed its secret at once: one turn, then padding (step −1, masked, not attended)
    assert b.response_ids[1, :3].tolist() == enc("13") + [EOS] and b.extras["step_idx"][1, 3:].eq(-1).all()
    assert b.meta["secret"] == [11, 13] and b.meta["env_error"] == ["", ""]
    # the attention mask covers observations (context) but not padding
    attn = b.attention_mask[1, b.prompt_ids.shape[1]:]
    assert attn.tolist() == [True] * int(b.response_len[1]) + [False] * (T - int(b.response_len[1]))


def test_max_turns_ends_without_a_trailing_observation_and_ids_keep_counting():
    eng = Scripted({"B": ["3", "2"]}, use="guess_number", max_turns=2)
    b = eng.generate(batch_of([1], "B"), SamplingParams(n=1))
    assert b.response_ids[0].tolist() == enc("3") + [EOS] + enc(" lower;") + enc("2") + [EOS]
    assert (b.meta["env_end"], b.meta["env_return"], b.meta["env_turns"]) == (["max_turns"], [0.0], [2])
    assert not b.truncated[0]
    b2 = eng.generate(batch_of([1], "B"), SamplingParams(n=1))
    assert b2.extras["traj_id"].tolist() == [1]  # unique over the engine's lifetime


def test_token_budget_truncates_the_turn_and_ends_the_episode():
    # 2 + 8 tokens after turn 0; turn 1 gets min(4, 12 - 10) = 2 tokens ("12" without EOS); no room for more
    eng = Scripted({"A": ["8", "12", "11"]}, use="guess_number", max_turns=4, max_tokens_per_turn=4,
                   max_total_tokens=12)
    b = eng.generate(batch_of([11], "A"), SamplingParams(n=1))
    assert b.response_ids[0].tolist() == enc("8") + [EOS] + enc(" higher;") + enc("12")
    assert b.extras["step_idx"][0].tolist()[-2:] == [1, 1]
    assert (b.meta["env_end"], b.meta["env_turns"], b.truncated.tolist()) == (["max_total_tokens"], [2], [True])


def test_n_samples_per_prompt_and_sum_of_per_turn_rewards():
    eng = Scripted({"A": ["x", "y", "z"]}, use="tests/unit/envs/fakes.py:PerTurn", args={"turns": 3},
                   reward="sum")
    b = eng.generate(batch_of([2], "A"), SamplingParams(n=2))
    assert b.group_id.tolist() == [0, 0] and b.prompts == ["A:[2]", "A:[2]"]  # reset's observation joins the prompt
    assert b.meta["env_return"] == [0.25 * 3 + 2] * 2
    tr = b.extras["turn_rewards"][0]
    ends = [i for i, v in enumerate(tr.tolist()) if v]
    assert tr[ends].tolist() == [0.25, 0.25, 2.25]
    assert [int(b.extras["step_idx"][0, i]) for i in ends] == [0, 1, 2]
    assert all(int(b.response_ids[0, i]) == EOS for i in ends)
    final = Scripted({"A": ["x", "y", "z"]}, use="tests/unit/envs/fakes.py:PerTurn", args={"turns": 3})
    assert final.generate(batch_of([2], "A"), SamplingParams(n=1)).meta["env_return"] == [2.25]


def test_hanging_raising_and_failing_envs_end_only_their_episode(caplog):
    eng = Scripted({k: ["x", "y", "z"] for k in "ABCD"}, use="tests/unit/envs/fakes.py:PerTurn",
                   args={"turns": 3, "hang_on": 7, "raise_on": 8, "fail_reset": 9}, timeout_s=0.5, reward="sum")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rltune.rollout.multiturn"):
        b = eng.generate(batch_of([7, 8, 9, 1], "ABCD"), SamplingParams(n=1))
    assert time.monotonic() - t0 < 5  # the hung step() was abandoned after timeout_s
    assert b.meta["env_end"] == ["timeout", "error", "error", "done"]
    assert b.meta["env_return"] == [0.0, 0.0, 0.0, 0.25 * 2 + 1.25]
    assert b.meta["env_error"][0] == "step() at turn 0 did not return within env.timeout_s=0.5 s (abandoned)"
    assert b.meta["env_error"][1] == "step() at turn 0 raised ValueError: cannot parse 'x'"
    assert b.meta["env_error"][2] == "reset() raised ConnectionError: sandbox unavailable"
    # the failed reset produced no response tokens at all; its row is still well-formed
    assert int(b.response_len[2]) == 0 and not b.response_mask[2].any() and b.prompts[2] == "C:"
    # the failed turn's tokens are kept (they were sampled) but no reward was recorded for them
    assert b.response_mask[0].sum() == 2 and b.extras["turn_rewards"][0].abs().sum() == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert any("episode 0 ended: step() at turn 0 did not return within env.timeout_s=0.5 s" in m and "return 0" in m
               for m in msgs)
    assert any("reset() raised ConnectionError: sandbox unavailable" in m for m in msgs)


def test_all_episodes_failing_at_reset_still_gives_a_batch():
    eng = Scripted({"C": ["x"]}, use="tests/unit/envs/fakes.py:PerTurn", args={"fail_reset": 9})
    b = eng.generate(batch_of([9], "C"), SamplingParams(n=2))
    assert b.response_ids.shape == (2, 1) and not b.response_mask.any() and b.meta["env_return"] == [0.0, 0.0]


def test_async_env():
    eng = Scripted({"A": ["5", "6"]}, use="tests/unit/envs/fakes.py:AsyncGuess")
    b = eng.generate(batch_of([6], "A"), SamplingParams(n=1))
    assert b.meta["env_end"] == ["done"] and b.meta["env_return"] == [1.0] and b.completions == ["5 no;6"]


def test_hints_are_rejected():
    eng = Scripted({}, use="guess_number")
    pb = PromptBatch(prompts=["A:"], meta={"secret": [1]}, hints=[["3"]])
    with pytest.raises(ValueError, match="hints"):
        eng.generate(pb, SamplingParams(n=1))


def test_weight_version_and_sync_pass_through():
    eng = Scripted({}, use="guess_number")
    eng.sync(None, 3)
    assert eng.weight_version == eng.inner.weight_version == 3
    eng.weight_version = 5
    assert eng.inner.weight_version == 5


def test_an_env_whose_constructor_raises_ends_only_that_episode(caplog):
    eng = Scripted({"A": ["6"]}, use="tests/unit/envs/fakes.py:FlakyInit")
    eng.make_env.func.built = 0
    with caplog.at_level(logging.WARNING, logger="rltune.rollout.multiturn"):
        b = eng.generate(batch_of([6], "A"), SamplingParams(n=2))
    assert b.meta["env_end"] == ["done", "error"] and b.meta["env_return"] == [1.0, 0.0]
    assert b.meta["env_error"][1] == "building the env raised RuntimeError: no sandbox"
    assert int(b.response_len[1]) == 0
    assert any("episode 1 ended: building the env raised RuntimeError: no sandbox" in r.getMessage()
               for r in caplog.records)


def test_per_turn_rewards_reach_token_level_estimators_without_double_counting():
    from rltune import algo

    eng = Scripted({"A": ["x", "y", "z"]}, use="tests/unit/envs/fakes.py:PerTurn", args={"turns": 3},
                   reward="per_turn")
    b = eng.generate(batch_of([2], "A"), SamplingParams(n=1))
    tr, tok_r = b.extras["turn_rewards"][0], b.extras["token_rewards"][0]
    ends = [i for i, v in enumerate(tr.tolist()) if v]
    assert b.meta["env_return"] == [2.25]                        # the last turn's reward is the row's reward
    assert tok_r[ends].tolist() == [0.25, 0.25, 0.0]              # earlier turns travel as token rewards
    assert float(tok_r.sum()) + b.meta["env_return"][0] == pytest.approx(0.25 * 3 + 2)  # the episode's sum, once
    # REINFORCE++ (γ = 1) return-to-go: each model token sees the rewards of its own turn and the later ones.
    reward = b.extras["turn_rewards"].new_tensor(b.meta["env_return"])
    adv, _ = algo.estimate("reinforce_pp", reward, b.group_id, b.response_mask, token_rewards=b.extras["token_rewards"],
                           gamma=1.0, lam=1.0, scale="none", eps=1e-6)
    step = b.extras["step_idx"][0]
    first_of_turn = [int((step == k).nonzero()[0]) for k in range(3)]
    # reinforce_pp whitens over the batch; the differences between turns survive: 0.25 more per earlier turn.
    togo = [float(adv[0, i]) for i in first_of_turn]
    assert togo[0] > togo[1] > togo[2]
