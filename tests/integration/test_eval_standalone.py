"""`rltune eval` scores a saved model without building a training Trainer, and gives the numbers the trainer's own
held-out eval gives for the same weights; the start summary names the engines that really run."""

import pytest

from rltune.config.load import RecipeError
from rltune.evaluation import evaluate_model
from rltune.train.engines import describe_engines
from rltune.trainer import Trainer
from tests.conftest import ROOT


def test_standalone_eval_equals_the_trainers_eval(tiny_recipe):
    r = tiny_recipe(run={"steps": 1})
    t = Trainer(r)
    t.fit()
    want = t.evaluate()
    got = evaluate_model(r, t.run_dir / "final", base_dir=ROOT)
    keys = [k for k in want if k.startswith("eval/")]
    assert keys and {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert not (t.run_dir / "final" / ".eval").exists()       # no run directory made inside the model folder


def test_standalone_eval_refuses_visual_recipes(tiny_recipe):
    from rltune.config.load import load_recipe

    with pytest.raises(RecipeError, match="scores text models"):
        evaluate_model(load_recipe(ROOT / "recipes/var-tiny.yaml"), "unused")


def test_start_summary_names_the_engines(tiny_recipe):
    assert describe_engines(tiny_recipe()) == "in-process rollout (hf) + torch engine in this process"
    r = tiny_recipe(cluster={"train_ranks": 2, "rollout_workers": 2, "zero_stage": 3})
    assert describe_engines(r) == ("rollout in 2 Ray workers (hf) + DeepSpeed ZeRO-3 on 2 Ray training ranks (this "
                                   "process keeps a synced copy)")
