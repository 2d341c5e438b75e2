"""The env_return reward (rewards/env_return.py) and the modules' doctests."""

import doctest
import importlib

import pytest

from rltune.reward import RewardError, RewardInput, RewardManager
from rltune.config.schema import RewardSpec


def inp(meta):
    n = len(next(iter(meta.values())))
    return RewardInput(prompts=["p"] * n, completions=["c"] * n, completion_ids=[[]] * n, meta=meta)


def test_values_and_metrics_through_the_manager():
    m = RewardManager([RewardSpec(use="env_return")])
    res = m(inp({"env_return": [1.0, 0.0, 0.5, 0.0], "env_turns": [1, 4, 2, 3],
                 "env_end": ["done", "max_turns", "done", "timeout"]}))
    assert res.rewards.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert res.metrics["reward/env_return/turns"] == 2.5
    assert res.metrics["reward/env_return/end_done"] == 0.5
    assert res.metrics["reward/env_return/end_timeout"] == 0.25
    assert res.metrics["reward/env_return/end_error"] == 0.0


def test_without_an_env_it_says_what_to_add():
    with pytest.raises(RewardError, match="add an `env:` section"):
        RewardManager([RewardSpec(use="env_return")])(inp({"answer": ["1"]}))


@pytest.mark.parametrize("module", ["rltune_rewards.env_return", "rltune.envs.tools"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
