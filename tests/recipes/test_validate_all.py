"""`rltune validate` passes on every shipped recipe, and names the problem on broken ones."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY, merge

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _validate(*paths):
    # --no-model-check: the GPU recipes name model folders that are not downloaded on a CI machine.
    return subprocess.run([sys.executable, "-m", "rltune.cli", "validate", "--no-model-check", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_recipe_validates():
    assert RECIPES, "no recipes found"
    r = _validate(*RECIPES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok") == len(RECIPES)


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"rewards": [{"use": "exact_mach"}]}, ["exact_mach", "did you mean 'exact_match'"]),
        ({"rewards": [{"use": "exact_match", "args": {"colum": "answer"}}]}, ["colum", "column"]),
        ({"rewards": [{"use": "no_such_pkg.mod:fn"}]}, ["no_such_pkg"]),
        ({"modifiers": [{"use": "nope_mod"}]}, ["nope_mod"]),
        ({"algo": {"kl_coeff": 1}}, ["kl_coeff", "did you mean 'kl_coef'"]),
    ],
)
def test_validate_names_the_problem(tmp_path, over, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(merge(TINY, over)))
    r = _validate(p)
    assert r.returncode == 2  # a user error (issue 20: validate exits 2 like train/show)
    for piece in expected:
        assert piece in r.stdout, (piece, r.stdout)


@pytest.mark.parametrize("recipe, over, expected", [
    ("diffusion-tiny-alignprop.yaml", {"algo": {"kl_coef": 0.1}}, ["algo.kl_coef=0.1", "model.kind: diffusion"]),
    ("diffusion-tiny-alignprop.yaml", {"modifiers": [{"use": "alignprop"}, {"use": "redit"}]},
     ["'redit'", "model.kind: diffusion", "shape_rewards"]),
])
def test_validate_refuses_what_the_family_ignores(tmp_path, recipe, over, expected):
    """A key or modifier the policy family would silently ignore fails `rltune validate` with exit 2."""
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(merge(yaml.safe_load((ROOT / "recipes" / recipe).read_text()), over)))
    r = _validate(p)
    assert r.returncode == 2
    for piece in expected:
        assert piece in " ".join(r.stdout.split()), (piece, r.stdout)
