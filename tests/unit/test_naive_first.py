"""Two-phase groups for ADHint's difficulty prior (rltune/rollout/naive_first.py), without a model: the kept naive
samples are the first rows of each group, only the rest is generated, each row is scored once, and the step's
reward result is the two scorings spliced in row order."""

import pytest
import torch

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.modifiers.adhint import ADHint
from rltune.modifiers.base import PromptContext, StepState
from rltune.reward import RewardResult
from rltune.rollout.base import SamplingParams
from rltune.rollout.naive_first import NaiveFirstGroups

G = 4


class Engine:
    """Generates `n` rows per prompt; completion text says which call made it ('g<call>.<prompt>.<j>'), the hint is
    written in front, response width differs per call (re-padding)."""

    def __init__(self):
        self.calls: list[tuple[int, list]] = []

    def __call__(self, prompts: PromptBatch, sp: SamplingParams) -> RolloutBatch:
        call, n = len(self.calls), sp.n
        self.calls.append((n, prompts.hints))
        B, N, T = len(prompts), len(prompts) * n, 2 + call
        hints = [h for hs in prompts.hints for h in hs] if prompts.hints is not None else [""] * N
        comp = [hints[i] + f"g{call}.{prompts.prompts[i // n]}.{i % n}" for i in range(N)]
        extras = {}
        if prompts.hints is not None:
            extras = {"hint_mask": torch.arange(T)[None] < torch.tensor([len(h) for h in hints])[:, None],
                      "is_hint": torch.tensor([bool(h) for h in hints])}
        return RolloutBatch(
            prompt_ids=torch.full((N, 1), 7), prompt_mask=torch.ones(N, 1, dtype=torch.bool),
            response_ids=torch.full((N, T), 5), response_mask=torch.ones(N, T, dtype=torch.bool),
            response_len=torch.full((N,), T), rollout_logprobs=torch.full((N, T), -1.0),
            group_id=torch.arange(B).repeat_interleave(n), truncated=torch.zeros(N, dtype=torch.bool),
            prompts=[prompts.prompts[i // n] for i in range(N)], completions=comp,
            meta={k: [v[i // n] for i in range(N)] for k, v in prompts.meta.items()}, extras=extras)


class Scorer:
    """Reward 1 for completions of prompt 'a' from the first call, and for hinted ones; counts the rows scored."""

    def __init__(self):
        self.rows = 0

    def __call__(self, b: RolloutBatch) -> RewardResult:
        self.rows += len(b)
        r = torch.tensor([float(c.startswith("g0.a") or c.startswith("H")) for c in b.completions])
        return RewardResult(scores=r[:, None], rewards=r, metrics={"reward/x/mean": float(r.mean()),
                                                                  "time/reward/x": 1.0}, names=("x",))


def _prompts():
    return PromptBatch(prompts=["a", "b"], meta={"prompt": ["a", "b"], "solution": ["HHHHHHHHHH", "HHHHHHHHHH"]})


def test_adhint_prior_comes_from_the_groups_own_naive_samples():
    eng, sc = Engine(), Scorer()
    groups = NaiveFirstGroups(eng, sc, SamplingParams(n=G), pad_id=0)
    ctx = PromptContext(StepState(step=0, seed=1), groups.probe, samples_per_prompt=G)
    prompts = ADHint(w_min=0.5, delta=0.0).on_prompts(_prompts(), ctx)   # n_hint = 2: 2 naive first, kept
    assert eng.calls[0] == (2, None)                                   # phase 1: 2 hint-free samples per prompt
    # prompt a: naive rewards [1, 1] -> Diff_N = 0 -> no hint (skip_if_diff_le 0); b: [0, 0] -> Diff_N = 1, w = 0.8
    assert prompts.hints == [["", "", "", ""], ["", "", "HHHHHHHH", "HHHHHHHH"]]
    batch = groups.generate(prompts, SamplingParams(n=G, seed=5))
    assert eng.calls[1] == (2, [["", ""], ["HHHHHHHH", "HHHHHHHH"]])  # phase 2: only the 2 others per prompt
    assert batch.completions == ["g0.a.0", "g0.a.1", "g1.a.0", "g1.a.1",
                                 "g0.b.0", "g0.b.1", "HHHHHHHHg1.b.0", "HHHHHHHHg1.b.1"]
    assert batch.group_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and batch.response_ids.shape == (8, 3)
    assert batch.extras["is_hint"].tolist() == [False] * 6 + [True] * 2
    assert batch.extras["hint_mask"][:6].any().item() is False and batch.extras["hint_mask"][6:].all().item()
    res = groups.result_for(batch)
    assert res.rewards.tolist() == [1, 1, 0, 0, 0, 0, 1, 1] and sc.rows == 8   # each row scored once
    assert res.metrics["reward/x/mean"] == pytest.approx(0.5) and res.metrics["time/reward/x"] == 2.0
    assert groups.result_for(eng(_prompts(), SamplingParams(n=G))) is None       # another batch: score it


def test_probe_prior_throws_its_samples_away_and_bad_hints_are_refused():
    eng, sc = Engine(), Scorer()
    groups = NaiveFirstGroups(eng, sc, SamplingParams(n=G), pad_id=0)
    ctx = PromptContext(StepState(step=0, seed=1), groups.probe, samples_per_prompt=G)
    prompts = ADHint(prior="probe", n_probe=3).on_prompts(_prompts(), ctx)
    batch = groups.generate(prompts, SamplingParams(n=G))
    assert [c[0] for c in eng.calls] == [3, 4] and len(batch) == 8             # the old, separate probe
    groups.probe(_prompts(), 2, keep=True)
    with pytest.raises(ValueError, match="first n hints"):
        groups.generate(PromptBatch(["a", "b"], {}, hints=[["H"] * G] * 2), SamplingParams(n=G))
    with pytest.raises(ValueError, match="n_probe"):
        ADHint(n_probe=2)                                                       # prior: group has no probe size
    with pytest.raises(ValueError, match="leaves none"):
        ADHint(n_hint=G).on_prompts(_prompts(), ctx)
