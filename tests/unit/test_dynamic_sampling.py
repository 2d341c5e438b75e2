"""DAPO dynamic sampling without a model: fake generate / reward callables and a fake prompt stream."""

import pytest
import torch

from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.reward import RewardResult
from rltune.rollout.dynamic import DynamicSamplingError, concat_batches, sample_groups

G = 4


class Stream:
    """Prompts p0, p1, ... ; the prompt's number decides its rewards (see `rewards_of`)."""

    def __init__(self):
        self.position = 0

    def __call__(self, n):
        ids = list(range(self.position, self.position + n))
        self.position += n
        return PromptBatch(prompts=[f"p{i}" for i in ids], meta={"idx": ids})


def generate(prompts: PromptBatch, k: int) -> RolloutBatch:
    """G completions per prompt; response length (and prompt width) vary with the round to exercise re-padding."""
    B, N = len(prompts), len(prompts) * G
    T, P = 2 + k, 1 + k
    idx = [i for i in prompts.meta["idx"] for _ in range(G)]
    resp_len = torch.tensor([1 + (j % T) for j in range(N)])
    return RolloutBatch(
        prompt_ids=torch.full((N, P), 7), prompt_mask=torch.ones(N, P, dtype=torch.bool),
        response_ids=torch.full((N, T), 5), response_mask=torch.arange(T)[None] < resp_len[:, None],
        response_len=resp_len, rollout_logprobs=torch.full((N, T), -1.0),
        group_id=torch.arange(B).repeat_interleave(G), truncated=torch.zeros(N, dtype=torch.bool),
        prompts=[f"p{i}" for i in idx], completions=[f"c{i}.{j % G}" for j, i in enumerate(idx)],
        meta={"idx": idx}, weight_version=3, extras={"hint_mask": torch.ones(N, T, dtype=torch.bool)},
    )


def rewards_of(idx: int) -> list[float]:
    # every third prompt is all-correct, every third + 1 all-wrong (both constant), the rest mixed
    return {0: [1.0] * G, 1: [0.0] * G, 2: [1.0, 0.0, 0.0, 1.0]}[idx % 3]


def score(batch: RolloutBatch) -> RewardResult:
    r = torch.tensor([rewards_of(i)[j % G] for j, i in enumerate(batch.meta["idx"])])
    return RewardResult(scores=r[:, None], rewards=r, metrics={"reward/x/mean": float(r.mean()),
                                                              "time/reward/x": 1.0}, names=("x",))


def test_constant_groups_are_dropped_and_refilled():
    stream = Stream()
    batch, result, m = sample_groups(generate, score, stream, 4, enabled=True, max_rounds=0, pad_id=0)
    # 4 prompts per round, one in three qualifies (p2, p5, p8, p11): three rounds, 12 prompts drawn
    assert m["rollout/dynamic_rounds"] == 3 and stream.position == 12
    assert m["rollout/kept_group_frac"] == pytest.approx(4 / 12)
    assert sorted(set(batch.meta["idx"])) == [2, 5, 8, 11]
    assert len(batch) == 16 and batch.group_id.tolist() == [g for g in range(4) for _ in range(G)]
    for g in range(4):  # every kept group varies
        assert result.rewards[batch.group_id == g].unique().numel() == 2
    torch.testing.assert_close(result.rewards, score(batch).rewards)  # rows and rewards stay aligned
    # re-padded to the widest round: responses right-padded (mask False, logprob 0), prompts left-padded
    assert batch.response_ids.shape[1] == 4 and batch.prompt_ids.shape[1] == 3
    first = batch.meta["idx"].index(2)  # from round 0: T=2, P=1
    assert not batch.response_mask[first, 2:].any() and not batch.extras["hint_mask"][first, 2:].any()
    assert (batch.rollout_logprobs[first, 2:] == 0).all() and not batch.prompt_mask[first, :2].any()
    assert batch.response_mask.sum(1).tolist() == batch.response_len.tolist()
    assert result.metrics["time/reward/x"] == 3.0  # times add up over the rounds


def test_disabled_is_one_plain_round():
    stream = Stream()
    batch, result, m = sample_groups(generate, score, stream, 4, enabled=False)
    assert m == {} and stream.position == 4 and len(batch) == 16
    assert batch.meta["idx"][::G] == [0, 1, 2, 3]


def test_extra_qualified_groups_of_the_last_round_are_dropped():
    stream = Stream()
    batch, _, m = sample_groups(generate, score, stream, 1, enabled=True, max_rounds=5)
    # rounds of one prompt: p0 (flat), p1 (flat), p2 (kept)
    assert m["rollout/dynamic_rounds"] == 3 and set(batch.meta["idx"]) == {2}
    batch, _, _ = sample_groups(generate, score, Stream(), 2, enabled=True, max_rounds=5)
    assert sorted(set(batch.meta["idx"])) == [2, 5]


def test_cap_error_names_the_cap_and_the_fix():
    with pytest.raises(DynamicSamplingError) as e:
        sample_groups(generate, score, Stream(), 4, enabled=True, max_rounds=2)
    msg = str(e.value)
    for piece in ("only 2/4 prompt groups", "max_rounds=2", "0 = unlimited", "samples_per_prompt",
                  "dynamic_sampling.enabled: false"):
        assert piece in msg, (piece, msg)


def test_all_flat_stream_hits_the_cap():
    def flat(batch):
        r = torch.ones(len(batch))
        return RewardResult(scores=r[:, None], rewards=r, metrics={}, names=("x",))

    with pytest.raises(DynamicSamplingError, match="only 0/2"):
        sample_groups(generate, flat, Stream(), 2, enabled=True, max_rounds=3)


def test_nan_rewards_do_not_make_a_group_vary():
    def with_nan(batch):
        # odd prompts: 1, n/a, 1, 1 (flat once the n/a is ignored); even prompts: 0, 1, n/a, 0 (vary)
        rows = [[1.0, float("nan"), 1.0, 1.0], [0.0, 1.0, float("nan"), 0.0]]
        r = torch.tensor([rows[0 if i % 2 else 1][j % G] for j, i in enumerate(batch.meta["idx"])])
        return RewardResult(scores=r[:, None], rewards=r, metrics={}, names=("x",))

    batch, _, m = sample_groups(generate, with_nan, Stream(), 2, enabled=True, max_rounds=0)
    assert sorted(set(batch.meta["idx"])) == [0, 2]


def test_concat_renumbers_groups_in_order():
    a, b = generate(Stream()(2), 0), generate(Stream()(3), 1)
    out = concat_batches([a, b], pad_id=9)
    assert out.group_id.tolist() == [g for g in range(5) for _ in range(G)]
    assert (out.response_ids[: len(a), 2:] == 9).all() and (out.prompt_ids[: len(a), :1] == 9).all()
