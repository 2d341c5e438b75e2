"""call_all (timeouts, errors, async), step-result checks and env_factory."""

import asyncio
import time

import pytest

from rltune.envs.base import EnvFailure, StepResult, as_step_result, call_all, env_factory
from rltune.plugins import PluginError


def test_call_all_values_errors_and_timeouts_share_one_deadline():
    def slow():
        time.sleep(5)
        return "late"

    def bad():
        raise KeyError("k")

    async def coro():
        await asyncio.sleep(0.01)
        return "async ok"

    t0 = time.monotonic()
    out = call_all([lambda: 1, slow, bad, coro, slow], timeout_s=0.3)
    elapsed = time.monotonic() - t0
    assert out[0] == 1 and out[3] == "async ok"
    assert out[1] == out[4] == EnvFailure("timeout", "did not return within env.timeout_s=0.3 s (abandoned)")
    assert out[2] == EnvFailure("error", "raised KeyError: 'k'")
    assert elapsed < 1.5  # two hung calls cost one deadline, not two


def test_call_all_without_timeout_waits():
    assert call_all([lambda: time.sleep(0.05) or "done"], timeout_s=None) == ["done"]


@pytest.mark.parametrize("value, expected", [
    (("obs", 1, True, {"k": 1}), StepResult("obs", 1.0, True, {"k": 1})),
    (("obs", 0.5, 0, None), StepResult("obs", 0.5, False, {})),
    (StepResult("o", 2.0, False), StepResult("o", 2.0, False)),
])
def test_as_step_result_accepts(value, expected):
    assert as_step_result(value) == expected


@pytest.mark.parametrize("value, part", [
    ("obs", "returned str, expected (observation, reward, done, info)"),
    (("obs", 1.0, True), "returned tuple"),
    ((3, 1.0, True, {}), "observation of type int"),
    (("obs", float("nan"), True, {}), "reward nan"),
    (("obs", "1", True, {}), "reward '1'"),
])
def test_as_step_result_rejects(value, part):
    res = as_step_result(value)
    assert isinstance(res, EnvFailure) and res.kind == "error" and part in res.reason


def test_env_factory_builds_fresh_instances_and_checks_args_early():
    make = env_factory("guess_number", {"low": 1, "high": 8})
    a, b = make(), make()
    assert a is not b and (a.low, a.high) == (1, 8)
    with pytest.raises(PluginError, match="unexpected argument 'hi'"):
        env_factory("guess_number", {"hi": 8})
    with pytest.raises(PluginError, match="unknown envs plugin"):
        env_factory("guess_numbr")
    make = env_factory("rltune.envs.calculator:Calculator", {"max_calls_per_turn": 2})
    assert make().max_calls_per_turn == 2
