"""The recipe's `env:` section: strict keys, bounds, and the shipped agent recipes."""

from pathlib import Path

import pytest

from rltune.config.load import RecipeError, load_recipe, recipe_from_dict
from tests.conftest import TINY, merge

ROOT = Path(__file__).resolve().parents[3]


def test_env_section_defaults_and_strictness():
    r = recipe_from_dict(merge(TINY, {"env": {"use": "guess_number"}}))
    assert (r.env.max_turns, r.env.max_tokens_per_turn, r.env.max_total_tokens, r.env.timeout_s, r.env.reward) == \
        (4, 16, 128, 10.0, "final")
    assert recipe_from_dict(TINY).env is None
    with pytest.raises(RecipeError, match="max_turn"):
        recipe_from_dict(merge(TINY, {"env": {"use": "guess_number", "max_turn": 3}}))
    with pytest.raises(RecipeError, match="max_turns"):
        recipe_from_dict(merge(TINY, {"env": {"use": "guess_number", "max_turns": 0}}))
    with pytest.raises(RecipeError, match="reward"):
        recipe_from_dict(merge(TINY, {"env": {"use": "guess_number", "reward": "discounted"}}))


@pytest.mark.parametrize("name, env", [("agent-guess-tiny", "guess_number"), ("agent-calculator-tiny", "calculator")])
def test_agent_recipes_load_and_their_env_builds(name, env):
    from rltune.envs.base import env_factory

    r = load_recipe(ROOT / f"recipes/{name}.yaml")
    assert r.env.use == env and [s.use for s in r.rewards] == ["env_return"]
    e = env_factory(r.env.use, r.env.args)()
    assert callable(e.reset) and callable(e.step)
