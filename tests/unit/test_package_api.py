"""`from rltune import train` stays the callable API however many rltune modules are imported and however often it
runs: `rltune.train` is both the API and the subpackage of the training engines (rltune/train/__init__.py)."""

import importlib
import pkgutil
import subprocess
import sys

import rltune


def test_train_is_callable_after_every_submodule_import_and_runs_twice(tiny_recipe):
    for m in pkgutil.walk_packages(rltune.__path__, "rltune."):
        importlib.import_module(m.name)
    from rltune import train

    assert callable(train) and train is rltune.train
    assert train.update is sys.modules["rltune.train.update"]  # still the package for its submodules
    r = tiny_recipe(run={"steps": 1}, data={"task_args": {"digits": 1, "n_train": 8, "n_test": 2}})
    first = train(r, overwrite=True)
    second = rltune.train(r, overwrite=True)  # a second run in the same process (used to raise TypeError)
    assert first["loss/total"] == second["loss/total"]  # same seed, same recipe: the same one-step run
    assert first["reward/mean"] == second["reward/mean"]


def test_issue_one_liner_in_a_fresh_process():
    code = "import rltune, rltune.train.update; from rltune import train; assert callable(train)"
    subprocess.run([sys.executable, "-c", code], check=True)
