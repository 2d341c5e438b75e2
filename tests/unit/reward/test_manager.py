"""RewardManager: weights, None = n/a, validation that names the reward and sample, timeouts, on_error."""

from __future__ import annotations

import asyncio
import logging
import math
import threading

import pytest
import torch

from rltune.config.schema import RewardSpec
from rltune.plugins import PluginError
from rltune.reward import RewardError, RewardInput, RewardManager, RewardResult, Scores
from rltune.reward import manager as manager_mod

HERE = __name__
RELEASE = threading.Event()  # lets the abandoned timeout thread finish at the end of the test


def make_input(n: int = 4) -> RewardInput:
    prompts = ["1+1=", "2+2=", "12+3=", "3+3="][:n]
    completions = ["2", "5", "15", "6"][:n]
    return RewardInput(prompts, completions, [[1]] * n, meta={"answer": ["2", "4", "15", "6"][:n]})


def spec(attr: str, **kw) -> RewardSpec:
    return RewardSpec(use=f"{HERE}:{attr}", **kw)


# --- rewards used by the specs above (looked up by dotted path) -------------------------------------
def acc(completions, answer, **kwargs):  # TRL style
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def sometimes_na(inp: RewardInput):  # native: n/a on rows 1 and 3
    return [0.4, None, -0.2, None]


def all_na(inp):
    return [None] * len(inp)


def divides(prompts, completions, **kwargs):  # raises on "12+3=" only
    return [1.0 / (0 if c == "15" else 1) for c in completions]


def short(inp):
    return [1.0, 0.0, 1.0]


def string_at_2(inp):
    return [1.0, 0.0, "yes", 1.0]


def list_at_0(inp):
    return [[1.0], 0.0, 0.0, 0.0]


def not_a_list(inp):
    return "1.0"


def nan_at_3(inp):
    return [1.0, 0.0, 0.0, float("nan")]


def inf_at_1(inp):
    return [1.0, float("-inf"), 0.0, 0.0]


def hangs(inp):
    RELEASE.wait(10)
    return [1.0] * len(inp)


def batch_only_failure(inp):
    if len(inp) > 1:
        raise RuntimeError("batch too large")
    return [2.0]


def tensor_out(inp):
    return torch.tensor([1.0, 0.0, 1.0, 0.0])


class AsyncJudge:
    async def __call__(self, inp: RewardInput):
        await asyncio.sleep(0.01)
        return [float(len(c)) for c in inp.completions]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):  # verl style
    ok = solution_str == ground_truth
    return {"score": 1.0 if ok else 0.0, "acc": float(ok)}


def verl_raises(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 / (solution_str != "15")


def needs_column(completions, solution, **kwargs):
    return [0.0] * len(completions)


# ------------------------------------------------------------------------------------------------ tests
def test_weights_and_none_give_hand_computed_rewards():
    m = RewardManager([spec("acc", weight=1.0), spec("sometimes_na", weight=0.5, name="half")])
    r = m(make_input())
    assert isinstance(r, RewardResult) and r.names == ("acc", "half")
    nan = math.nan
    torch.testing.assert_close(r.scores, torch.tensor([[1.0, 0.4], [0.0, nan], [1.0, -0.2], [1.0, nan]]),
                               equal_nan=True)
    # row 0: 1 + 0.5·0.4 = 1.2; row 1: 0 (None skipped); row 2: 1 + 0.5·(-0.2) = 0.9; row 3: 1
    torch.testing.assert_close(r.rewards, torch.tensor([1.2, 0.0, 0.9, 1.0]))
    assert r.metrics["reward/acc/mean"] == pytest.approx(0.75)
    assert r.metrics["reward/half/mean"] == pytest.approx(0.1)
    assert r.metrics["reward/half/na_frac"] == pytest.approx(0.5)
    assert r.metrics["reward/acc/na_frac"] == 0.0
    assert {"time/reward/acc", "time/reward/half"} <= set(r.metrics)
    assert "reward/acc/error_frac" not in r.metrics  # only with on_error="none"


def test_row_with_every_weighted_reward_na_is_nan():
    m = RewardManager([spec("sometimes_na"), spec("all_na"), spec("acc", weight=0.0)])  # weight 0: logged only
    r = m(make_input())
    assert torch.isnan(r.rewards[[1, 3]]).all()
    torch.testing.assert_close(r.rewards[[0, 2]], torch.tensor([0.4, -0.2]))
    assert math.isnan(r.metrics["reward/all_na/mean"]) and r.metrics["reward/all_na/na_frac"] == 1.0


def test_raise_names_reward_and_sample():
    m = RewardManager([spec("divides", name="acc")])
    with pytest.raises(RewardError) as e:
        m(make_input())
    assert str(e.value) == ("reward 'acc' raised ZeroDivisionError on sample 2 (prompt '12+3=', completion '15'): "
                            "float division by zero")
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_verl_error_names_sample_without_retry():
    with pytest.raises(RewardError, match=r"reward 'v' raised ZeroDivisionError on sample 2 \(prompt '12\+3='"):
        RewardManager([spec("verl_raises", name="v")])(make_input())


def test_slow_batch_failure_names_the_batch(monkeypatch):
    monkeypatch.setattr(manager_mod, "_LOCATE_IF_UNDER_S", -1.0)  # every batch call counts as expensive
    with pytest.raises(RewardError, match=r"reward 'divides' raised ZeroDivisionError on a batch of 4 completions"):
        RewardManager([spec("divides")])(make_input())


def test_batch_only_failure_is_reported_as_batch():
    pattern = r"raised RuntimeError on a batch of 4 completions: batch too large \(each sample alone succeeded\)$"
    with pytest.raises(RewardError, match=pattern):
        RewardManager([spec("batch_only_failure")])(make_input())


@pytest.mark.parametrize(
    "attr, pattern",
    [
        ("short", r"^reward 'short' returned 3 values for 4 completions$"),
        ("string_at_2", r"^reward 'string_at_2' returned a str \('yes'\) at sample 2 \(prompt '12\+3=', completion "
                        r"'15'\); expected a float or None$"),
        ("list_at_0", r"returned a list \(\[1\.0\]\) at sample 0"),
        ("not_a_list", r"returned a str, expected a list of 4 floats"),
        ("nan_at_3", r"^reward 'nan_at_3' returned nan at sample 3 \(prompt '3\+3=', completion '6'\); return None"),
        ("inf_at_1", r"returned -inf at sample 1"),
    ],
)
def test_bad_returns_name_reward_and_sample(attr, pattern):
    with pytest.raises(RewardError, match=pattern):
        RewardManager([spec(attr)])(make_input())


def test_timeout_names_reward_and_limit():
    RELEASE.clear()
    m = RewardManager([spec("hangs", timeout_s=0.2)])
    try:
        with pytest.raises(RewardError, match=r"reward 'hangs' did not return within timeout_s=0.2 s .* abandoned"):
            m(make_input())
    finally:
        RELEASE.set()


def test_on_error_none_scores_failing_samples_na(caplog):
    m = RewardManager([spec("divides", on_error="none"), spec("acc", weight=2.0)])
    with caplog.at_level(logging.WARNING, logger="rltune.reward.manager"):
        r = m(make_input())
    assert "reward 'divides' raised ZeroDivisionError on sample 2" in caplog.text
    assert "scored as n/a (on_error='none')" in caplog.text
    torch.testing.assert_close(r.scores[:, 0], torch.tensor([1.0, 1.0, math.nan, 1.0]), equal_nan=True)
    torch.testing.assert_close(r.rewards, torch.tensor([3.0, 1.0, 2.0, 3.0]))
    assert r.metrics["reward/divides/error_frac"] == 0.25


@pytest.mark.parametrize("attr, bad_rows", [("short", [0, 1, 2, 3]), ("string_at_2", [2]), ("nan_at_3", [3])])
def test_on_error_none_bad_returns(attr, bad_rows, caplog):
    with caplog.at_level(logging.WARNING, logger="rltune.reward.manager"):
        r = RewardManager([spec(attr, on_error="none")])(make_input())
    assert torch.isnan(r.scores[bad_rows, 0]).all() and f"reward '{attr}'" in caplog.text
    assert r.metrics[f"reward/{attr}/error_frac"] == len(bad_rows) / 4


def test_on_error_none_timeout_scores_batch_na():
    RELEASE.clear()
    try:
        r = RewardManager([spec("hangs", timeout_s=0.1, on_error="none")])(make_input())
    finally:
        RELEASE.set()
    assert torch.isnan(r.rewards).all() and r.metrics["reward/hangs/error_frac"] == 1.0


def test_wiring_errors_raise_even_with_on_error_none():
    with pytest.raises(RewardError, match=r"takes parameter 'solution'.*available columns: answer"):
        RewardManager([spec("needs_column", on_error="none")])(make_input())


def test_async_native_reward_and_tensor_return():
    r = RewardManager([spec("AsyncJudge", name="judge"), spec("tensor_out")])(make_input())
    torch.testing.assert_close(r.scores[:, 0], torch.tensor([1.0, 1.0, 2.0, 1.0]))
    torch.testing.assert_close(r.rewards, torch.tensor([2.0, 1.0, 3.0, 1.0]))


def test_verl_extras_become_metrics():
    r = RewardManager([spec("compute_score", name="v")])(make_input())
    assert r.metrics["reward/v/acc"] == pytest.approx(0.75) and r.metrics["reward/v/mean"] == pytest.approx(0.75)


def test_shipped_rewards_by_entry_point():
    m = RewardManager([RewardSpec(use="exact_match"), RewardSpec(use="math_accuracy", weight=0.5)])
    r = m(make_input())
    torch.testing.assert_close(r.rewards, torch.tensor([1.5, 0.0, 1.5, 1.5]))


def test_build_errors_and_duplicate_names():
    with pytest.raises(PluginError, match=r"did you mean 'exact_match'"):
        RewardManager([RewardSpec(use="exact_mach")])
    with pytest.raises(ValueError, match=r"repeated: \['acc'\]"):
        RewardManager([spec("acc"), spec("divides", name="acc")])


def test_input_lengths_are_checked_and_empty_batch():
    bad = RewardInput(["p"], ["a", "b"], [[1], [2]])
    with pytest.raises(ValueError, match=r"RewardInput.prompts has 1 entries for 2 completions"):
        RewardManager([spec("acc")])(bad)
    r = RewardManager([spec("all_na")])(RewardInput([], [], []))
    assert r.scores.shape == (0, 1) and r.rewards.shape == (0,)


def test_scores_extras_from_native_reward():
    def fn(inp):
        return Scores([1.0, 0.0, 1.0, 0.0], extras={"len": [1.0, 2.0, 3.0, None]}, metrics={"calls": 1})

    m = RewardManager([spec("acc")])
    m.fns[0] = manager_mod.adapt(fn, name="acc")
    r = m(make_input())
    assert r.metrics["reward/acc/len"] == pytest.approx(2.0) and r.metrics["reward/acc/calls"] == 1.0
