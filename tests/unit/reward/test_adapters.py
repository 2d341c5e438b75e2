"""Adapters: TRL-style and verl-style reward functions work unchanged; native callables pass through."""

from __future__ import annotations

import asyncio
import functools
import re

import pytest

from rltune.reward import RewardError, RewardInput, Scores, adapt
from rltune.reward.adapters import SampleError, detect_style, row
from rltune_rewards.exact_match import ExactMatch


def make_input() -> RewardInput:
    return RewardInput(
        prompts=["1+1=", "2+2=", "3+3="],
        completions=["2", "5", "6"],
        completion_ids=[[5], [6, 7], [8]],
        meta={"answer": ["2", "4", "6"], "data_source": ["gsm8k", "gsm8k", "math"], "level": [1, 2, 3]},
        step=7,
    )


# --- written exactly as a TRL user would (dataset columns arrive as kwargs) ------------------------
def accuracy_reward(completions, answer, **kwargs):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def trl_all_kwargs(prompts, completions, completion_ids, trainer_state=None, **kwargs):
    assert trainer_state.global_step == 7 and kwargs["level"] == [1, 2, 3]
    return [float(len(ids)) for ids in completion_ids]


def trl_typo(prompts, completions, solution, **kwargs):
    return [0.0] * len(completions)


def trl_logs_metric(completions, log_metric=None, **kwargs):
    log_metric("mean_len", sum(map(len, completions)) / len(completions))
    return [None, 1.0, None]


async def trl_async(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [0.5] * len(completions)


# --- written exactly as a verl user would (called once per sample) -----------------------------------
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "math":
        return {"score": 1.0 if solution_str == ground_truth else -1.0, "acc": solution_str == ground_truth,
                "pred": solution_str}
    return 1.0 if solution_str == ground_truth else 0.0


def gsm8k_style(solution_str, ground_truth, method="strict", format_score=0.0, score=1.0):
    return score if solution_str == ground_truth else format_score


async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None):
    await asyncio.sleep(0)
    return float(extra_info["level"])


def native(inp: RewardInput) -> list[float | None]:
    return [float(inp.step)] * len(inp)


@pytest.mark.parametrize(
    "fn, style",
    [
        (accuracy_reward, "trl"),
        (trl_async, "trl"),
        (compute_score, "verl"),
        (gsm8k_style, "verl"),
        (native, "native"),
        (ExactMatch(), "native"),
        (lambda inp: [], "native"),
        (lambda batch, scale=1.0: [], "native"),
        (functools.partial(trl_all_kwargs, trainer_state=None), "trl"),
    ],
)
def test_detect_style(fn, style):
    assert detect_style(fn) == style


@pytest.mark.parametrize(
    "fn, expected",
    [
        (accuracy_reward, [1.0, 0.0, 1.0]),
        (trl_all_kwargs, [1.0, 2.0, 1.0]),
        (trl_async, [0.5, 0.5, 0.5]),
        (compute_score, [1.0, 0.0, 1.0]),
        (gsm8k_style, [1.0, 0.0, 1.0]),
        (functools.partial(gsm8k_style, format_score=-0.5), [1.0, -0.5, 1.0]),
        (compute_score_async, [1.0, 2.0, 3.0]),
        (native, [7.0, 7.0, 7.0]),
    ],
)
def test_functions_work_unchanged(fn, expected):
    assert list(adapt(fn)(make_input())) == expected


def test_verl_dict_return_gives_numeric_extras():
    out = adapt(compute_score)(make_input())
    assert isinstance(out, Scores)
    assert out.extras == {"acc": [None, None, 1.0]}  # "pred" is not a number: not a metric


def test_verl_arguments_and_ground_truth_column():
    seen = []

    def spy(data_source, solution_str, ground_truth, extra_info=None):
        seen.append((data_source, solution_str, ground_truth, extra_info))
        return 0.0

    adapt(spy)(make_input())
    assert seen[2] == ("math", "6", "6", {"level": 3})
    inp = RewardInput(["p"], ["x"], [[1]], meta={"ground_truth": ["g"], "answer": ["a"]})
    seen.clear()
    adapt(spy)(inp)
    assert seen == [("", "x", "g", {"answer": "a"})]  # ground_truth wins; no data_source column -> ""


def test_verl_errors_name_the_sample_and_columns():
    def flaky(data_source, solution_str, ground_truth, extra_info=None):
        return 1 / 0 if solution_str == "5" else 1.0

    with pytest.raises(SampleError) as e:
        adapt(flaky)(make_input())
    assert e.value.index == 1 and isinstance(e.value.error, ZeroDivisionError)
    with pytest.raises(SampleError, match="no 'score' key"):
        adapt(lambda data_source, solution_str, ground_truth: {"acc": 1.0}, style="verl")(make_input())
    no_gold = RewardInput(["p"], ["x"], [[1]], meta={"level": [1]})
    with pytest.raises(RewardError, match=r"needs a `ground_truth` or `answer` column \(available columns: level\)"):
        adapt(compute_score)(no_gold)


def test_trl_parameter_that_is_not_a_column_lists_available_columns():
    with pytest.raises(RewardError) as e:
        adapt(trl_typo)(make_input())
    msg = str(e.value)
    assert "takes parameter 'solution'" in msg
    assert "available columns: answer, data_source, level" in msg


def test_trl_log_metric_and_na():
    out = adapt(trl_logs_metric)(make_input())
    assert list(out) == [None, 1.0, None] and out.metrics == {"mean_len": 1.0}


def test_trl_recipe_args_are_not_overridden_by_columns():
    def fn(completions, level=0, **kwargs):
        return [float(x) for x in level] if isinstance(level, list) else [float(level)] * len(completions)

    assert adapt(functools.partial(fn, level=9))(make_input()) == [9.0] * 3
    assert adapt(fn)(make_input()) == [1.0, 2.0, 3.0]  # the column itself when not bound


def test_async_inside_running_event_loop():
    async def main():
        return adapt(trl_async)(make_input())

    assert asyncio.run(main()) == [0.5] * 3


@pytest.mark.parametrize(
    "fn, kwargs, pattern",
    [
        (lambda x, y: [], {}, r"cannot tell how to call reward '<lambda>'.*set `style:`"),
        (ExactMatch, {}, r"is a class; pass an instance"),
        (3, {}, r"not a callable"),
        (native, {"style": "ray"}, r"unknown reward style 'ray'"),
    ],
)
def test_adapt_errors(fn, kwargs, pattern):
    with pytest.raises(RewardError, match=pattern):
        adapt(fn, **kwargs)


def test_explicit_style_and_name():
    a = adapt(lambda x: [1.0] * len(x), style="native", name="mine")
    assert (a.style, a.name) == ("native", "mine") and "mine" in repr(a)


def test_row_slices_every_field():
    r = row(make_input(), 1)
    assert (r.prompts, r.completions, r.completion_ids, r.meta["level"], r.step) == (["2+2="], ["5"], [[6, 7]], [2], 7)
    assert re.search("sample 1", str(SampleError(1, ValueError("v"))))
