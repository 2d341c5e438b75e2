"""The shipped rewards (rewards/ installed as rltune_rewards): table-driven expected floats and doctests."""

from __future__ import annotations

import doctest
import importlib
import threading

import pytest

from rltune.reward import RewardError, RewardInput
from rltune.reward.api import Reward
from rltune_rewards.exact_match import ExactMatch
from rltune_rewards.format import FormatReward
from rltune_rewards.length import LengthPenalty
from rltune_rewards.math_accuracy import MathAccuracy

MODULES = ["exact_match", "math_accuracy", "format", "length", "bright_window"]


def one(completion: str = "", gold=None, ids=None, column: str = "answer") -> RewardInput:
    return RewardInput(["q"], [completion], [ids if ids is not None else []], meta={column: [gold]})


@pytest.mark.parametrize(
    "kwargs, completion, gold, expected",
    [
        ({}, "42", "42", 1.0),
        ({}, "  42\n", 42, 1.0),
        ({}, "42.0", "42", 0.0),
        ({}, "43", 42, 0.0),
        ({}, "x", None, None),
        ({"strip": False}, " 42", "42", 0.0),
        ({"strip": False}, "42", "42", 1.0),
        ({"after": ","}, "46,102", "102", 1.0),
        ({"after": ","}, "46, 102 ", "102", 1.0),
        ({"after": ","}, "102,46", "102", 0.0),     # only the text after the LAST separator counts
        ({"after": ","}, "102", "102", 1.0),        # no separator: the whole completion
        ({}, "46,102", "102", 0.0),
    ],
)
def test_exact_match(kwargs, completion, gold, expected):
    assert ExactMatch(**kwargs)(one(completion, gold)) == [expected]


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("\\boxed{1/2}", "0.5", 1.0),
        ("so the answer is \\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("The answer is 42", "42", 1.0),
        ("I think 41, no wait, \\boxed{42}", "42", 1.0),
        ("\\boxed{3}", "2", 0.0),
        ("no idea", "42", 0.0),
        ("", "7", 0.0),
        ("$x+1$", "1+x", 1.0),
        ("\\boxed{7}", None, None),
        ("\\boxed{7}", "", None),
    ],
)
def test_math_accuracy(completion, gold, expected):
    assert MathAccuracy()(one(completion, gold)) == [expected]


def test_math_accuracy_works_off_the_main_thread():
    # math-verify's SIGALRM timeouts raise ValueError in a worker thread unless they are turned off
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("out", MathAccuracy()(one("\\boxed{1/2}", "0.5"))))
    t.start()
    t.join(30)
    assert box["out"] == [1.0]


@pytest.mark.parametrize(
    "kwargs, completion, expected",
    [
        ({}, "<think>a</think><answer>b</answer>", 1.0),
        ({}, "<think>line1\nline2</think>\n\n<answer>\n4\n</answer>", 1.0),
        ({}, "<answer>4</answer>", 0.0),
        ({}, "<think>a</think><answer>b</answer> trailing", 0.0),
        ({}, "preamble <think>a</think><answer>b</answer>", 0.0),
        ({"pattern": r"^\d+$"}, "123", 1.0),
        ({"pattern": r"^\d+$"}, "12a", 0.0),
    ],
)
def test_format(kwargs, completion, expected):
    assert FormatReward(**kwargs)(one(completion)) == [expected]


@pytest.mark.parametrize(
    "kwargs, length, expected",
    [
        ({"max_len": 10, "cache_len": 4}, 0, 0.0),
        ({"max_len": 10, "cache_len": 4}, 6, 0.0),       # = max_len - cache_len: free
        ({"max_len": 10, "cache_len": 4}, 7, -0.25),     # (6 - 7) / 4
        ({"max_len": 10, "cache_len": 4}, 8, -0.5),
        ({"max_len": 10, "cache_len": 4}, 10, -1.0),     # = max_len: end of the soft zone
        ({"max_len": 10, "cache_len": 4}, 11, -1.0),     # beyond max_len
        ({"max_len": 10, "cache_len": 4, "factor": 2.0}, 8, -1.0),
        ({"max_len": 10, "cache_len": 4, "factor": 2.0}, 50, -2.0),
        ({"max_len": 4, "cache_len": 4}, 2, -0.5),       # the whole budget is the soft zone
    ],
)
def test_length_penalty(kwargs, length, expected):
    assert LengthPenalty(**kwargs)(one(ids=[0] * length)) == [pytest.approx(expected)]


@pytest.mark.parametrize("max_len, cache_len", [(10, 0), (4, 5), (10, -1)])
def test_length_penalty_rejects_bad_budget(max_len, cache_len):
    with pytest.raises(ValueError, match="0 < cache_len <= max_len"):
        LengthPenalty(max_len, cache_len)


@pytest.mark.parametrize("reward", [ExactMatch(), MathAccuracy()])
def test_missing_column_lists_columns(reward):
    with pytest.raises(RewardError, match=r"needs the column 'answer' \(available columns: solution\)"):
        reward(one("1", "1", column="solution"))


@pytest.mark.parametrize("reward", [ExactMatch(), MathAccuracy(), FormatReward(), LengthPenalty(4, 2)])
def test_shipped_rewards_are_native_and_batch(reward):
    assert isinstance(reward, Reward)
    inp = RewardInput(["a", "b", "c"], ["1", "2", "3"], [[1], [1, 2], [1, 2, 3]], meta={"answer": ["1", "3", "3"]})
    assert len(reward(inp)) == 3


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    mod = importlib.import_module(f"rltune_rewards.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_exact_match_rejects_empty_separator():
    with pytest.raises(ValueError, match="non-empty separator"):
        ExactMatch(after="")
