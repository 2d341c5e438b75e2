import pytest

from rltune.config.load import RecipeError, apply_override, load_recipe, recipe_from_dict
from tests.conftest import TINY, merge


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"algo": {"kl_coeff": 0.1}}, ["algo.kl_coeff", "unknown key 'kl_coeff'", "did you mean 'kl_coef'"]),
        ({"rollout": {"temperature": "hot"}}, ["rollout.temperature", "valid number", "'hot'"]),
        ({"rollout": {"top_p": 1.5}}, ["rollout.top_p", "less than or equal to 1"]),
        ({"rewards": [{"use": "exact_match", "wieght": 2}]}, ["rewards.0.wieght", "did you mean 'weight'"]),
        ({"modle": {}}, ["modle", "did you mean 'model'", "valid keys: run, model"]),
        ({"algo": {"loss_agg": "tokenmean"}}, ["algo.loss_agg", "'token-mean'"]),
        ({"train": {"micro_batch_size": 5}}, ["micro_batch_size=5 must divide", "16", "try 4"]),
        ({"rewards": []}, ["rewards", "at least 1"]),
        ({"model": {"path": "x"}}, ["exactly one of model.path", "model.tiny"]),
    ],
)
def test_bad_recipes_name_the_problem(over, expected):
    raw = merge(TINY, over)
    if "path" in over.get("model", {}):
        raw["model"] = {"path": "x", "tiny": {}}
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(raw)
    for piece in expected:
        assert piece in str(e.value), (piece, str(e.value))


def test_defaults_and_derived_values():
    r = recipe_from_dict(TINY)
    assert r.rollout.batch_size == 16
    assert r.micro_batches == 2
    assert r.algo.clip_low == 0.2 and r.algo.kl_coef == 0.0
    assert r.loss_scale_constant == r.rollout.max_new_tokens


def test_recipe_is_frozen():
    r = recipe_from_dict(TINY)
    with pytest.raises(Exception):
        r.algo.kl_coef = 1.0  # type: ignore[misc]


def test_dotted_overrides(tmp_path):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(TINY))
    r = load_recipe(p, ["algo.kl_coef=0.01", "rollout.max_new_tokens=6", "rewards.0.weight=2", "run.name=x"])
    assert r.algo.kl_coef == 0.01 and r.rollout.max_new_tokens == 6 and r.rewards[0].weight == 2.0
    assert r.run.name == "x"
    with pytest.raises(RecipeError, match="section.key=value"):
        load_recipe(p, ["algo.kl_coef"])


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run:\n  name: [unclosed\n")
    with pytest.raises(RecipeError, match="malformed YAML at line"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_into_list_index():
    raw = merge(TINY, {})
    apply_override(raw, "rewards.0.weight=0.5")
    assert raw["rewards"][0]["weight"] == 0.5


def test_token_budget_is_refused_under_zero3_ranks():
    budget = {"train": {"max_tokens_per_micro_batch": 64}}
    with pytest.raises(Exception, match="max_tokens_per_micro_batch cannot be used with cluster.zero_stage=3"):
        recipe_from_dict(merge(merge(TINY, budget), {"cluster": {"train_ranks": 2, "zero_stage": 3}}))
    r = recipe_from_dict(merge(merge(TINY, budget), {"cluster": {"train_ranks": 2, "zero_stage": 2}}))
    assert r.train.max_tokens_per_micro_batch == 64 and r.train.padding_free == "auto"


def test_zero3_mini_batches_must_split_evenly_over_the_ranks():
    ok = merge(TINY, {"cluster": {"train_ranks": 2, "zero_stage": 3}})  # 16 rows over 2 ranks
    recipe_from_dict(ok)
    bad = merge(TINY, {"cluster": {"train_ranks": 3, "zero_stage": 3}})  # 16 rows over 3 ranks
    with pytest.raises(Exception, match="split evenly over cluster.train_ranks=3"):
        recipe_from_dict(bad)
    recipe_from_dict(merge(TINY, {"cluster": {"train_ranks": 3, "zero_stage": 2}}))  # only ZeRO-3's forward is collective
