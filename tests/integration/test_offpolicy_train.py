"""`tis` and `icepop` inside real GRPO steps of a tiny model (CPU, seconds).

With the in-process engine the rollout log-probs are the trainer's own (same weights, same temperature): the ratio
is 1, nothing is truncated or masked and the first step's ppo_kl is 0. A deliberately perturbed rollout engine
(sampling at temperature 1.6 while the trainer scores at 1.0) must show up as a mismatch, and IcePop must mask.
"""

from __future__ import annotations

import dataclasses

import pytest

from rltune.logging import read_metrics
from rltune.trainer import Trainer


def _recipe(tiny_recipe, modifiers, steps=2):
    return tiny_recipe(run={"steps": steps, "eval_interval": 0}, modifiers=modifiers)


def _steps(tmp_path):
    return [m for m in read_metrics(tmp_path / "run") if "time/step" in m]


def test_matching_policies_leave_the_loss_unchanged(tiny_recipe, tmp_path) -> None:
    Trainer(_recipe(tiny_recipe, [{"use": "tis"}, {"use": "icepop"}])).fit()
    rows = _steps(tmp_path)
    assert len(rows) == 2
    for m in rows:
        for mod in ("tis", "icepop"):
            assert m[f"mod/{mod}/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
            assert m[f"mod/{mod}/ratio_min"] == pytest.approx(1.0, abs=1e-4)
            assert m[f"mod/{mod}/ratio_max"] == pytest.approx(1.0, abs=1e-4)
            assert abs(m[f"mod/{mod}/kl_k1"]) < 1e-5 and m[f"mod/{mod}/ess"] == pytest.approx(1.0, abs=1e-6)
        assert m["mod/tis/truncated_frac"] == 0 and m["mod/icepop/masked_frac"] == 0
    assert abs(rows[0]["algo/ppo_kl"]) < 1e-6


def test_a_perturbed_rollout_engine_is_measured_and_masked(tiny_recipe, tmp_path) -> None:
    recipe = _recipe(tiny_recipe, [{"use": "icepop", "args": {"low": 0.8, "high": 1.25}}], steps=1)
    trainer = Trainer(recipe)
    generate = trainer.rollout.generate
    # The engine samples (and records log-probs) at temperature 1.6; the trainer scores at the recipe's 1.0.
    trainer.rollout.generate = lambda prompts, params: generate(prompts, dataclasses.replace(params, temperature=1.6))
    trainer.fit()
    m = _steps(tmp_path)[0]
    assert m["mod/icepop/kl_k3"] > 1e-3 and m["mod/icepop/ess"] < 0.999
    assert m["mod/icepop/ratio_max"] > 1.25 or m["mod/icepop/ratio_min"] < 0.8
    assert 0 < m["mod/icepop/masked_frac"] < 1
