"""Support manifests (rltune/families.py): the recipe check refuses keys a family ignores and modifiers it cannot
run, naming the key or modifier, the family and what to do instead; the docs table is the generated one."""

import pytest
import yaml

from rltune.config.load import RecipeError, recipe_from_dict
from rltune.families import DOCS, FAMILIES, check_support, docs_with_table, set_keys
from rltune.modifiers.base import CAPABILITIES
from rltune.modifiers.pipeline import ModifierError
from tests.conftest import ROOT, TINY, merge


def _recipe(path: str, **over):
    return recipe_from_dict(merge(yaml.safe_load((ROOT / path).read_text()), over))


def test_set_keys_lists_exactly_the_keys_away_from_their_defaults():
    r = recipe_from_dict(merge(TINY, {"algo": {"kl_coef": 0.1, "clip_high": 0.2}}))  # clip_high = its default
    keys = {k: (v, d) for k, v, d in set_keys(r)}
    assert keys["algo.kl_coef"] == (0.1, 0.0)
    assert "algo.clip_high" not in keys and "algo.dynamic_sampling.enabled" not in keys
    assert keys["rollout.max_new_tokens"] == (4, 64) and keys["train.lr"] == (1e-3, 1e-6)
    assert "model.tiny" in keys and "model.tiny.hidden_size" not in keys   # a present optional section is one key
    assert "data.source" in keys and "rewards" in keys                      # required keys always count


def test_every_shipped_recipe_passes():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        check_support(_recipe(str(path.relative_to(ROOT))), base_dir=ROOT)


def test_diffusion_honours_inner_epochs_and_mini_batches():
    # DDPO's inner epochs (old policy = the sampler): the diffusion step takes ppo_epochs × mini_batches steps
    check_support(_recipe("recipes/diffusion-tiny-alignprop.yaml", algo={"ppo_epochs": 2, "mini_batches": 2}),
                  base_dir=ROOT)


@pytest.mark.parametrize("path, over, pieces", [
    ("recipes/diffusion-tiny-alignprop.yaml", {"algo": {"kl_coef": 0.1}},
     ["algo.kl_coef=0.1", "model.kind: diffusion", "no KL term"]),
    ("recipes/diffusion-tiny-alignprop.yaml", {"algo": {"clip_low": 0.1, "loss_agg": "seq-mean-token-mean"}},
     ["algo.clip_low=0.1", "diffusion", "also ignored: algo.loss_agg"]),
    ("recipes/var-tiny.yaml", {"cluster": {"train_ranks": 2}}, ["cluster.train_ranks=2", "var", "one process"]),
    ("recipes/var-tiny.yaml", {"run": {"device": "cpu"}, "rollout": {"max_new_tokens": 9}},
     ["rollout.max_new_tokens=9", "var", "scales"]),
])
def test_ignored_key_is_refused(path, over, pieces):
    with pytest.raises(RecipeError) as e:
        check_support(_recipe(path, **over), base_dir=ROOT)
    for p in pieces:
        assert p in str(e.value)


@pytest.mark.parametrize("path, mods, pieces", [
    ("recipes/diffusion-tiny-alignprop.yaml", [{"use": "alignprop"}, {"use": "redit"}],
     ["'redit'", "diffusion", "shape_rewards", "causal_lm or var"]),
    ("recipes/var-tiny.yaml", [{"use": "adhint"}], ["'adhint'", "var", "probe", "causal_lm"]),
    ("recipes/addition-tiny.yaml", [{"use": "scale_reweight"}], ["'scale_reweight'", "causal_lm", "var_layout"]),
    ("recipes/addition-tiny.yaml", [{"use": "ddpo"}], ["'ddpo'", "causal_lm", "images", "diffusion"]),
])
def test_modifier_the_family_cannot_run_is_refused(path, mods, pieces):
    with pytest.raises(ModifierError) as e:
        check_support(_recipe(path, modifiers=mods), base_dir=ROOT)
    for p in pieces:
        assert p in str(e.value), (p, str(e.value))


def test_manifest_keys_exist_and_capabilities_are_the_modifier_union():
    from rltune.config.schema import Recipe

    def exists(key: str) -> bool:
        cls = Recipe
        for part in key.split("."):
            from rltune.families import _section

            if cls is None or part not in cls.model_fields:
                return False
            cls = _section(cls.model_fields[part].annotation)
        return True

    bad = [(m.family, k) for m in FAMILIES.values() for k in m.keys if not exists(k)]
    assert not bad, bad
    assert CAPABILITIES == frozenset().union(*(m.capabilities for m in FAMILIES.values()))


def test_docs_show_the_generated_table():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        assert text == docs_with_table(text), f"{doc} is stale: run python -m rltune.families --write"
